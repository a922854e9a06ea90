"""kill -9 in the middle of a push: nothing visible, and the re-run sends only what is missing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

# Runs the real CLI with each chunk upload slowed down, so the test can kill it half-way.
SLOW_PUSH = """
import sys, time
from ckpt_sync.providers import local
real_put = local.LocalProvider.put
def slow_put(self, key, data):
    real_put(self, key, data)
    if key.startswith("chunks/"):
        time.sleep(0.03)
local.LocalProvider.put = slow_put
from ckpt_sync.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _chunks(repo_dir):
    return [p for p in (repo_dir / "chunks").rglob("*") if p.is_file() and not p.name.startswith(".")]


def test_sigkill_mid_push_leaves_no_checkpoint_and_rerun_sends_only_missing_chunks(
    tmp_path, key, repo_url, repo_dir, cli
):
    src = tmp_path / "checkpoint_s_9.pt"
    src.write_bytes(os.urandom(24 << 20))
    total_chunks = (24 << 20) // (64 << 10)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            SLOW_PUSH,
            "push",
            "--repo",
            repo_url,
            str(src),
            "--chunk-size",
            "64K",
            "--workers",
            "2",
        ],
    )
    try:
        while len(_chunks(repo_dir)) < 40 if (repo_dir / "chunks").exists() else True:
            assert proc.poll() is None, "push finished before it could be killed"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    manifests = repo_dir / "manifests"
    assert not manifests.exists() or not list(manifests.iterdir())
    assert cli("ls", "--repo", repo_url, check=True).stdout.startswith("no checkpoints")
    stored = len(_chunks(repo_dir))
    assert 40 <= stored < total_chunks

    rerun = json.loads(cli("push", "--repo", repo_url, str(src), "--chunk-size", "64K", "--json", check=True).stdout)
    assert rerun[0]["stats"]["chunks"] == total_chunks
    assert rerun[0]["stats"]["chunks_new"] == total_chunks - stored

    cli("pull", "--latest", "--repo", repo_url, "--to", str(tmp_path / "out"), check=True)
    assert (tmp_path / "out" / src.name).read_bytes() == src.read_bytes()
