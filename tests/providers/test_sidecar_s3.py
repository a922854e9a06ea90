"""The sidecar against S3 through a flaky link (issue 11): ``watch --once`` keeps what it could not
upload, ``--retry-time`` bounds a call even against a store that never answers, and SIGTERM ends
a watch promptly while the store is down. Real moto server, real processes, tests/faultproxy.py."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from pathlib import Path

import pytest
from ckpt_sync.providers import RetryPolicy
from faultproxy import FaultProxy
from helpers import make_torch_checkpoint, start_cli, wait_until

from ckpt_sync.api import open_repository
from ckpt_sync.errors import TransientStorageError
from ckpt_sync.service.queue import FAILED, PENDING, JobQueue

pytestmark = pytest.mark.s3


@pytest.fixture
def s3(cloud_factory):
    return cloud_factory("s3")


def _init_repo(cli, url, env, tmp_path):
    seed = make_torch_checkpoint(tmp_path / "seed" / "checkpoint_seed_1.pt", hidden=32)
    cli("push", str(seed), "--to", url, check=True, env=env)


def test_watch_once_during_an_outage_keeps_the_job_held_and_the_next_run_commits_it(s3, cli, key, tmp_path):
    bucket = s3.new_bucket()
    url = s3.url(bucket)
    ckdir = tmp_path / "ck"
    ck = make_torch_checkpoint(ckdir / "checkpoint_o_100.pt", hidden=256, step=100)
    data = ck.read_bytes()
    with FaultProxy(s3.server.port) as proxy:
        env = {"AWS_ENDPOINT_URL": proxy.url}
        _init_repo(cli, url, env, tmp_path)
        proxy.down_after_bytes = proxy.bytes_up + 300_000  # the store goes away during the upload
        budget = ["--retry-attempts", "2", "--retry-time", "2", "--chunk-size", "64K"]
        first = cli("watch", str(ckdir), "--to", url, "--once", "--settle", "0.1", *budget, env=env)
        assert first.returncode == 1, first.stderr
        assert "checkpoint_o_100.pt" in first.stderr and "next run retries" in first.stderr
        queue = JobQueue(ckdir / ".ckpt-sync")
        assert queue.counts()[PENDING] == 1 and queue.counts()[FAILED] == 0
        ck.unlink()  # local rotation: only the held copy is left
        proxy.down, proxy.down_after_bytes = False, None  # the outage ends
        second = cli("watch", str(ckdir), "--to", url, "--once", "--settle", "0.1", *budget, env=env)
        assert second.returncode == 0, second.stderr
        out = tmp_path / "out"
        cli("pull", "checkpoint_o_100.pt", "--from", url, "--to", str(out), check=True, env=env)
    assert (out / ck.name).read_bytes() == data


def test_retry_time_bounds_a_call_to_a_store_that_never_answers(s3, key):
    bucket = s3.new_bucket()
    with FaultProxy(s3.server.port, faults=["stall"], stall_seconds=None) as proxy:
        repo = open_repository(
            s3.url(bucket),
            create=True,
            retry=RetryPolicy(attempts=100, max_seconds=2, initial_wait=0.05),
            endpoint_url=proxy.url,
            read_timeout=3600,  # only the retry budget can end a stalled call
        )
        proxy.fault_rate = 1.0  # from now on every request hangs, the connection stays open
        outcome: list[BaseException | list[str]] = []

        def list_ids() -> None:
            try:
                outcome.append(repo.manifest_ids())
            except BaseException as err:
                outcome.append(err)

        t = threading.Thread(target=list_ids, daemon=True)
        t.start()
        t.join(timeout=120)  # a hang guard: without the bound this call waits an hour
        assert not t.is_alive(), "the call outlived its retry budget"
        repo.provider.close()
    (err,) = outcome
    assert isinstance(err, TransientStorageError) and "gave up" in str(err), err
    assert proxy.counts["stall"] >= 1


def test_sigterm_with_the_store_down_exits_0_promptly(s3, cli, key, tmp_path):
    bucket = s3.new_bucket()
    url = s3.url(bucket)
    ckdir = tmp_path / "ck"
    make_torch_checkpoint(ckdir / "checkpoint_o_200.pt", hidden=256, step=200)
    with FaultProxy(s3.server.port) as proxy:
        env = {"AWS_ENDPOINT_URL": proxy.url}
        _init_repo(cli, url, env, tmp_path)
        proxy.down_after_bytes = proxy.bytes_up + 200_000
        log = tmp_path / "watch.log"
        proc = start_cli(
            "watch", str(ckdir), "--to", url, "--settle", "0.1", "--chunk-size", "64K",
            "--retry-attempts", "1000", "--retry-time", "3600", log_file=log, env=env,
        )  # fmt: skip
        wait_until(lambda: proxy.down and "retrying put" in log.read_text(), "uploads failing against the dead store")
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=120)  # a hang guard: the retry budget alone would be an hour
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError("watch ignored SIGTERM while retrying") from None
    assert code == 0, log.read_text()
    assert JobQueue(ckdir / ".ckpt-sync").counts()[PENDING] == 1  # kept for the next start
    assert not Path(ckdir / ".ckpt-sync" / "staging").exists() or any((ckdir / ".ckpt-sync" / "staging").iterdir())


def test_a_job_held_through_an_outage_is_listed_and_dropped_only_when_the_user_says_so(s3, cli, key, tmp_path):
    bucket = s3.new_bucket()
    url = s3.url(bucket)
    ckdir = tmp_path / "ck"
    ck = make_torch_checkpoint(ckdir / "checkpoint_d_7.pt", hidden=256, step=7)
    with FaultProxy(s3.server.port) as proxy:
        env = {"AWS_ENDPOINT_URL": proxy.url}
        _init_repo(cli, url, env, tmp_path)
        proxy.down_after_bytes = proxy.bytes_up + 300_000  # the store goes away during the upload
        budget = ["--retry-attempts", "2", "--retry-time", "2", "--chunk-size", "64K"]
        assert cli("watch", str(ckdir), "--to", url, "--once", "--settle", "0.1", *budget, env=env).returncode == 1
        listed = cli("queue", str(ckdir), "--json", check=True)
        jobs = json.loads(listed.stdout)
        assert [(j["name"], j["status"]) for j in jobs] == [(ck.name, PENDING)]
        held = list((ckdir / ".ckpt-sync" / "staging").rglob(ck.name))
        assert held, "the job's copy is held while it is queued"
        unknown = cli("queue", str(ckdir), "--drop", "999")
        assert unknown.returncode == 2 and len(unknown.stderr.strip().splitlines()) == 1, unknown.stderr
        dropped = cli("queue", str(ckdir), "--drop", str(jobs[0]["id"]), check=True)
        assert f"dropped job {jobs[0]['id']} ({ck.name})" in dropped.stdout
        assert not any(p.exists() for p in held), "a dropped job's held copy is released"
        assert json.loads(cli("queue", str(ckdir), "--json", check=True).stdout)[0]["status"] == FAILED
        again = cli("queue", str(ckdir), "--drop", str(jobs[0]["id"]))
        assert again.returncode == 0  # dropping a given-up job again is harmless
        proxy.down, proxy.down_after_bytes = False, None
        ck.unlink()
        # The next run does not resurrect it (no held copy to adopt, nothing on disk): nothing committed.
        before = cli("ls", "--from", url, "--json", check=True, env=env).stdout
        assert cli("watch", str(ckdir), "--to", url, "--once", "--settle", "0.1", env=env).returncode == 0
        assert cli("ls", "--from", url, "--json", check=True, env=env).stdout == before
