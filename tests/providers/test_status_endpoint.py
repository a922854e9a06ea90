"""``status DIR`` in a new shell reaches the S3-compatible store a watch uploaded to (issue 26, item 5):
the watch records the store's endpoint next to the repository URL, never credentials. Real moto
server, real processes."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest
from helpers import make_torch_checkpoint

pytestmark = pytest.mark.s3


def test_status_in_a_new_shell_uses_the_endpoint_the_watch_used(cloud_factory, cli, key, tmp_path):
    s3 = cloud_factory(
        "s3"
    )  # exports AWS_ENDPOINT_URL (and the credentials), as a user of an S3-compatible store would
    url = s3.url(s3.new_bucket())
    ckdir = tmp_path / "ck"
    make_torch_checkpoint(ckdir / "checkpoint_e_5.pt", step=5)
    cli("watch", str(ckdir), "--to", url, "--once", "--settle", "0.1", check=True)

    new_shell = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL")}
    proc = subprocess.run(
        [sys.executable, "-m", "ckpt_sync.cli", "status", str(ckdir), "--json"],
        capture_output=True,
        text=True,
        env=new_shell,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    st = json.loads(proc.stdout)
    assert st["repository"] == url and st["repository_error"] is None
    assert st["endpoint_url"] == s3.env["AWS_ENDPOINT_URL"].rstrip("/")
    assert st["newest_committed"]["name"] == "checkpoint_e_5.pt"

    with sqlite3.connect(ckdir / ".ckpt-sync" / "queue.sqlite3") as db:
        recorded = " ".join(v for (v,) in db.execute("SELECT value FROM kv"))
    for secret in (s3.env["AWS_SECRET_ACCESS_KEY"], s3.env["AWS_ACCESS_KEY_ID"], key):
        assert secret not in recorded


def test_status_in_the_watch_s_own_shell_reaches_every_store(cloud, cli, key, tmp_path):
    """The endpoint recorded is passed back to the store it came from: an emulator stays an emulator
    (the GCS one is anonymous only while it is named by STORAGE_EMULATOR_HOST)."""
    url = cloud.url(cloud.new_bucket())
    ckdir = tmp_path / "ck"
    make_torch_checkpoint(ckdir / "checkpoint_e_6.pt", step=6)
    cli("watch", str(ckdir), "--to", url, "--once", "--settle", "0.1", check=True)
    proc = cli("status", str(ckdir), "--json")
    assert proc.returncode == 0, proc.stderr
    st = json.loads(proc.stdout)
    assert st["repository"] == url and st["newest_committed"]["name"] == "checkpoint_e_6.pt"
