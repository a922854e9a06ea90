"""During an outage ``watch`` logs the first retry, then one summary line per job (and per storage
operation) a minute, not one line per retry; no foreign library warnings reach the console."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from faultproxy import FaultProxy
from helpers import start_cli, wait_until

from ckpt_sync.service.queue import JobQueue

if TYPE_CHECKING:
    from conftest import Cloud


@pytest.mark.s3
def test_an_outage_gives_a_few_log_lines_not_one_per_retry(
    cloud_factory: Callable[[str], Cloud], key: str, tmp_path: Path, cli
) -> None:
    s3 = cloud_factory("s3")
    url = s3.url(s3.new_bucket())
    ckdir = tmp_path / "ck"
    ckdir.mkdir()
    log = tmp_path / "watch.log"
    with FaultProxy(s3.server.port) as proxy:
        os.environ["AWS_ENDPOINT_URL"] = proxy.url  # the watch below inherits it (monkeypatched env)
        cli("init", "--repo", url, check=True)
        proc = start_cli(
            "watch", str(ckdir), "--to", url, "--settle", "0.2", "--retry-attempts", "3", "--retry-time", "3",
            log_file=log,
        )  # fmt: skip
        try:
            wait_until(lambda: proc.poll() is not None or "watching " in log.read_text(), "the watch started")
            assert proc.poll() is None, log.read_text()
            proxy.down = True  # the store is gone: every connection is refused or reset
            started = time.monotonic()
            name = "checkpoint_s_1.pt"
            (ckdir / name).write_bytes(os.urandom(300_000))

            def attempts() -> int:
                q = JobQueue(ckdir / ".ckpt-sync")
                try:
                    return max((j.attempts for j in q.jobs("pending", "running")), default=0)
                finally:
                    q.close()

            wait_until(lambda: proc.poll() is not None or attempts() >= 4, "four failed upload attempts", timeout=300)
            assert proc.poll() is None, log.read_text()
            outage = time.monotonic() - started
            proxy.down = False
            wait_until(lambda: name in cli("ls", "--from", url, check=True).stdout, "committed after the outage")
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
    lines = log.read_text().splitlines()
    minutes = int(outage // 60)
    job_lines = [x for x in lines if f"upload of {name}" in x]
    assert 1 <= len(job_lines) <= 1 + minutes, lines
    retry_lines = [x for x in lines if "retrying " in x and "after attempt" in x]
    ops = {x.split("retrying ", 1)[1].split()[0] for x in retry_lines}
    assert len(retry_lines) <= len(ops) * (1 + minutes), lines
    assert not [x for x in lines if "Warning" in x or "Traceback" in x], lines
    assert any(f"committed {name}" in x for x in lines), lines
