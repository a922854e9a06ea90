"""kill -9 in the middle of a push: nothing visible, and the re-run sends only what is missing."""

from __future__ import annotations

import json
import os
import signal

from helpers import chunk_files, manifest_ids, start_cli, wait_until


def test_sigkill_mid_push_leaves_no_checkpoint_and_rerun_sends_only_missing_chunks(
    tmp_path, key, repo_url, repo_dir, cli
):
    src = tmp_path / "checkpoint_s_9.pt"
    src.write_bytes(os.urandom(24 << 20))
    total_chunks = (24 << 20) // (64 << 10)
    proc = start_cli("push", "--repo", repo_url, str(src), "--chunk-size", "64K", "--workers", "2", put_delay=0.03)
    try:
        wait_until(lambda: proc.poll() is not None or len(chunk_files(repo_dir)) >= 40, "40 chunks stored")
        assert proc.poll() is None, "push finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    assert manifest_ids(repo_dir) == []
    assert cli("ls", "--repo", repo_url, check=True).stdout.startswith("no checkpoints")
    stored = len(chunk_files(repo_dir))
    assert 40 <= stored < total_chunks

    rerun = json.loads(cli("push", "--repo", repo_url, str(src), "--chunk-size", "64K", "--json", check=True).stdout)
    assert rerun[0]["stats"]["chunks"] == total_chunks
    assert rerun[0]["stats"]["chunks_new"] == total_chunks - stored

    cli("pull", "--latest", "--repo", repo_url, "--to", str(tmp_path / "out"), check=True)
    assert (tmp_path / "out" / src.name).read_bytes() == src.read_bytes()
