"""After a crash the sidecar keeps working (issue 11): stale locks are broken, every wait honours
SIGTERM, a full state disk is one clear line, kill -9 leftovers are cleaned by the next run, and a
folder restore is atomic as a whole. Real processes, real torch checkpoints, a local repository."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import chunk_files, make_torch_checkpoint, manifest_ids, start_cli, wait_until

from ckpt_sync.api import open_repository
from ckpt_sync.fs.atomic import is_temp_name

HOLD_PRUNE_LOCK = """
import sys, time
from ckpt_sync.api import open_repository
from ckpt_sync.format.locks import try_acquire_prune_lock
repo = open_repository(sys.argv[1])
assert try_acquire_prune_lock(repo.provider) is not None
print("locked", flush=True)
time.sleep(3600)
"""


def _hold_prune_lock(repo_url):
    proc = subprocess.Popen([sys.executable, "-c", HOLD_PRUNE_LOCK, repo_url], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _init(repo_url, tmp_path, cli):
    seed = make_torch_checkpoint(tmp_path / "seed" / "checkpoint_seed_1.pt", hidden=32)
    cli("push", str(seed), "--to", repo_url, check=True)


def _wait(proc, what):
    try:
        return proc.wait(timeout=120)  # a hang guard, not a speed check
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"{what} did not finish") from None


# --- 8. locks: a dead owner's lock is broken at once; waits honour SIGTERM ----------------------


def test_a_prune_lock_left_by_a_killed_prune_does_not_stall_uploads(tmp_path, key, repo_url, cli):
    _init(repo_url, tmp_path, cli)
    holder = _hold_prune_lock(repo_url)
    holder.kill()  # kill -9: the lock object stays, its owner is gone
    holder.wait()
    assert (Path(repo_url[7:]) / "locks" / "prune").exists()
    ckdir = tmp_path / "ck"
    make_torch_checkpoint(ckdir / "checkpoint_l_1.pt")
    log = tmp_path / "watch.log"
    proc = start_cli("watch", str(ckdir), "--to", repo_url, "--once", "--settle", "0.1", log_file=log)
    assert _wait(proc, "watch --once after a killed prune") == 0, log.read_text()
    assert "checkpoint_l_1.pt" in [m.name for m in open_repository(repo_url).manifests()]
    assert "breaking the lock locks/prune" in log.read_text() and "has exited" in log.read_text()


def test_sigterm_while_waiting_for_a_live_prune_exits_0_and_commits_nothing(tmp_path, key, repo_url, cli):
    _init(repo_url, tmp_path, cli)
    holder = _hold_prune_lock(repo_url)
    try:
        ckdir = tmp_path / "ck"
        make_torch_checkpoint(ckdir / "checkpoint_l_2.pt")
        log = tmp_path / "watch.log"
        proc = start_cli("watch", str(ckdir), "--to", repo_url, "--settle", "0.1", log_file=log)
        wait_until(lambda: "waiting for a prune" in log.read_text(), "the upload waits for the prune")
        proc.send_signal(signal.SIGTERM)
        assert _wait(proc, "watch after SIGTERM") == 0, log.read_text()
    finally:
        holder.kill()
        holder.wait()
    assert len(manifest_ids(Path(repo_url[7:]))) == 1  # only the seed


# --- 10. a full state filesystem ------------------------------------------------------------------


@pytest.fixture
def tiny_fs(tmp_path):
    """A 2 MiB tmpfs (needs root, as in CI's container); filled up by the test."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(folder):
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


def test_a_full_state_filesystem_is_the_one_line_no_space_error_not_a_database_error(tmp_path, tiny_fs):
    from ckpt_sync.errors import OperationFailed
    from ckpt_sync.service.queue import JobQueue

    state = tiny_fs / "s"
    JobQueue(state).close()
    _fill(tiny_fs)
    with pytest.raises(OperationFailed, match="no space left on device for the queue"):
        queue = JobQueue(state)  # opening (its shared-memory file) or a write fails: one clear error either way
        try:
            for i in range(200):  # until the database needs a page the disk does not have
                queue.set(f"key-{i}", "x" * 4000)
        finally:
            queue.close()


def test_a_hold_that_runs_out_of_space_leaves_no_partial_copy(tmp_path, key, repo_url, cli, tiny_fs):
    ckdir = tmp_path / "ck"
    make_torch_checkpoint(ckdir / "checkpoint_n_2.pt", hidden=512)  # ~9 MiB: the copy cannot fit
    state = tiny_fs / "s"
    proc = cli("watch", str(ckdir), "--to", repo_url, "--once", "--settle", "0.1", "--state-dir", str(state))
    assert proc.returncode == 1
    assert "no space left on device" in proc.stderr and "unexpected" not in proc.stderr, proc.stderr
    assert not [p for p in (state / "staging").rglob("*") if p.is_file()]


# --- 11. kill -9 leftovers are cleaned by the next run of the same verb ---------------------------


def _folder_checkpoint(root, n=6):
    folder = root / "step_9"
    for i in range(n):
        make_torch_checkpoint(folder / f"__{i}_0.distcp", seed=i, hidden=192)
    (folder / ".metadata").write_bytes(b"dcp metadata")
    return folder


def test_a_pull_killed_mid_folder_restore_leaves_no_folder_that_looks_complete(tmp_path, key, repo_url, cli):
    folder = _folder_checkpoint(tmp_path / "src")
    cli("push", str(folder), "--to", repo_url, "--chunk-size", "64K", check=True)
    dest = tmp_path / "restore"
    proc = start_cli("pull", "step_9", "--from", repo_url, "--to", str(dest), "--workers", "1", get_delay=0.02)
    wait_until(lambda: dest.exists() and any(p.is_file() for p in dest.rglob("*")), "restore under way")
    wait_until(lambda: sum(p.stat().st_size for p in dest.rglob("*") if p.is_file()) > 2 << 20, "some data written")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (dest / "step_9").exists()  # nothing under the final name until it is whole
    assert [p.name for p in dest.iterdir() if p.name.startswith(".")]  # the killed run's temp folder
    cli("pull", "step_9", "--from", repo_url, "--to", str(dest), check=True)
    assert sorted(p.name for p in dest.iterdir()) == ["step_9"]  # the leftover is gone
    for f in folder.iterdir():
        assert (dest / "step_9" / f.name).read_bytes() == f.read_bytes()


def test_a_pull_killed_mid_file_restore_leaves_nothing_after_the_next_pull(tmp_path, key, repo_url, cli):
    ck = make_torch_checkpoint(tmp_path / "src" / "checkpoint_p_1.pt", hidden=512)
    cli("push", str(ck), "--to", repo_url, "--chunk-size", "64K", check=True)
    dest = tmp_path / "restore"
    for _ in range(2):
        proc = start_cli("pull", "--latest", "--from", repo_url, "--to", str(dest), "--workers", "1", get_delay=0.02)
        wait_until(lambda: dest.exists() and any(dest.iterdir()), "restore under way")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    cli("pull", "--latest", "--from", repo_url, "--to", str(dest), check=True)
    assert sorted(p.name for p in dest.iterdir()) == [ck.name]
    assert (dest / ck.name).read_bytes() == ck.read_bytes()


KILLED_WRITER = """
import os, sys
from pathlib import Path
from ckpt_sync.providers.local import LocalProvider
p = LocalProvider(sys.argv[1])
p.write_temp(Path(sys.argv[1]) / "chunks" / "ab" / ("ab" + "0" * 62), b"half a chunk", sync=False)
os.kill(os.getpid(), 9)
"""


def test_temp_objects_and_push_locks_of_a_killed_push_are_cleaned_by_the_next_push_and_prune(
    tmp_path, key, repo_url, repo_dir, cli
):
    _init(repo_url, tmp_path, cli)
    ck = make_torch_checkpoint(tmp_path / "src" / "checkpoint_k_1.pt", hidden=256)
    proc = start_cli("push", str(ck), "--to", repo_url, "--chunk-size", "64K", "--workers", "1", put_delay=0.05)
    base = len(chunk_files(repo_dir))
    wait_until(lambda: len(chunk_files(repo_dir)) > base + 3, "push under way")
    os.kill(proc.pid, signal.SIGKILL)  # leaves locks/push-* behind
    proc.wait()
    assert list((repo_dir / "locks").glob("push-*"))
    subprocess.run([sys.executable, "-c", KILLED_WRITER, str(repo_dir)], check=False)
    assert [q for q in repo_dir.rglob(".*") if is_temp_name(q.name)]
    pruned = cli("prune", "--repo", repo_url, "--keep", "5", "--grace", "0", "--json", check=True)
    report = json.loads(pruned.stdout)
    assert report["gc_skipped"] is None, report  # the dead push's lock does not block chunk GC
    assert not list((repo_dir / "locks").glob("push-*"))
    assert not [q for q in repo_dir.rglob(".*") if is_temp_name(q.name)]
    cli("push", str(ck), "--to", repo_url, check=True)
    cli("verify", "--read-data", "--repo", repo_url, check=True)


def test_the_next_push_removes_temp_objects_of_a_killed_writer(tmp_path, key, repo_url, repo_dir, cli):
    _init(repo_url, tmp_path, cli)
    subprocess.run([sys.executable, "-c", KILLED_WRITER, str(repo_dir)], check=False)
    assert [q for q in repo_dir.rglob(".*") if is_temp_name(q.name)]
    ck = make_torch_checkpoint(tmp_path / "src" / "checkpoint_k_2.pt", hidden=64)
    cli("push", str(ck), "--to", repo_url, check=True)
    assert not [q for q in repo_dir.rglob(".*") if is_temp_name(q.name)]


# --- 13. restore keeps the source's permission bits ------------------------------------------------


def test_restore_keeps_the_source_mode_bits_never_wider(tmp_path, key, repo_url, cli):
    ck = make_torch_checkpoint(tmp_path / "src" / "checkpoint_m_1.pt", hidden=32)
    ck.chmod(0o640)
    cli("push", str(ck), "--to", repo_url, check=True)
    cli("pull", "--latest", "--from", repo_url, "--to", str(tmp_path / "out"), check=True)
    assert (tmp_path / "out" / ck.name).stat().st_mode & 0o777 == 0o640
