"""Pids only name a process inside their pid namespace: two containers of a pod share a host name
but not their pids. A lock or temp file written from another namespace is "another host" here: never
judged dead by a pid that means some other process on this side. Real processes in a real pid
namespace (``unshare``; skipped where the kernel or the sandbox does not allow one)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import make_torch_checkpoint

UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc"]

HOLD_PUSH_LOCK = """
import sys, time
from ckpt_sync.api import open_repository
from ckpt_sync.format.locks import acquire_push_lock
repo = open_repository(sys.argv[1])
lock = acquire_push_lock(repo.provider)
print(lock.key, flush=True)
sys.stdin.readline()
lock.release()
"""

PAUSED_TEMP = """
import sys
from pathlib import Path
from ckpt_sync.providers.local import LocalProvider
p = LocalProvider(sys.argv[1])
print(p.write_temp(Path(sys.argv[1]) / "probe" / "in-flight", b"a write from the other container"), flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def other_namespace():
    try:
        probe = subprocess.run([*UNSHARE, sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    except FileNotFoundError:
        pytest.skip("no unshare here")
    if probe.returncode != 0 or probe.stdout.strip() != b"1":
        pytest.skip(f"cannot make a pid namespace here: {probe.stderr.decode().strip()}")

    started = []

    def start(script: str, *args: str) -> tuple[subprocess.Popen[str], str]:
        proc = subprocess.Popen(
            [*UNSHARE, sys.executable, "-c", script, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        started.append(proc)
        return proc, proc.stdout.readline().strip()

    yield start
    for proc in started:
        proc.stdin.close()
        proc.wait(timeout=60)


def _repo(tmp_path, repo_url, cli):
    ck = make_torch_checkpoint(tmp_path / "src" / "checkpoint_ns_1.pt", hidden=32)
    cli("push", str(ck), "--to", repo_url, check=True)


def test_a_push_lock_held_in_another_pid_namespace_keeps_a_prune_from_collecting_chunks(
    tmp_path, key, repo_url, repo_dir, cli, other_namespace
):
    _repo(tmp_path, repo_url, cli)
    _holder, lock_key = other_namespace(HOLD_PUSH_LOCK, repo_url)
    assert lock_key.startswith("locks/push-")
    report = json.loads(cli("prune", "--repo", repo_url, "--keep", "1", "--grace", "0", "--json", check=True).stdout)
    assert report["gc_skipped"] and "push is in progress" in report["gc_skipped"], report
    assert (repo_dir / lock_key).exists()


def test_a_temp_written_in_another_pid_namespace_survives_prune_grace_0(
    tmp_path, key, repo_url, repo_dir, cli, other_namespace
):
    _repo(tmp_path, repo_url, cli)
    _writer, tmp = other_namespace(PAUSED_TEMP, str(repo_dir))
    assert Path(tmp).exists()
    cli("prune", "--repo", repo_url, "--keep", "1", "--grace", "0", check=True)
    assert Path(tmp).exists()  # another container's write: judged by age, never under the floor
