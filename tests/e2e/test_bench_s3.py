"""bench/bench_s3.py runs end to end (its own moto, a small checkpoint) and prints every row it promises.

Not a performance test: no figure is checked, only that the benchmark measures what it says and that
ckpt-sync's push and pull inside it round-trip the bytes.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_s3.py"


def test_bench_s3_prints_ours_and_every_plain_row_for_each_round_order(tmp_path):
    out = subprocess.run(
        [sys.executable, str(BENCH), "--size", "16M", "--parts", "8M", "--repeat", "2", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {line.split("  ")[0] for line in out.stdout.splitlines()}
    for row in (
        "plain boto3 upload_file (s3transfer multipart)",
        "plain put_object per 8 MiB part, parallel",
        "plain put_object per 8 MiB part, no SDK checksums",
        "ckpt-sync push",
        "plain boto3 download_file (s3transfer ranged) *",  # * : moto re-reads the object per ranged GET
        "plain get_object per 8 MiB part, parallel, + fsync",
        "ckpt-sync pull --latest",
    ):
        assert row in rows, out.stdout
    assert re.search(r"ckpt-sync: push \d+\.\d\d x the faster plain parallel put_object", out.stdout), out.stdout
    assert "median of 2 interleaved rounds" in out.stdout
    assert "moto re-reads the whole object for every ranged GET" in out.stdout
    # s3torchconnector (the bench extra) is measured, or a line says why not: never left out silently
    measured = any(r.startswith("s3torchconnector S3Checkpoint.writer") for r in rows)
    assert measured or "s3torchconnector: not measured: " in out.stdout, out.stdout
    assert not list(tmp_path.iterdir()), "the benchmark leaves its scratch folder behind"
