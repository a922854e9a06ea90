"""``ckpt-sync watch`` as a real daemon: retention, kill -9, slow writers, rotation, SIGTERM, empty starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from helpers import chunk_files, json_events, make_torch_checkpoint, manifest_ids, start_cli, wait_until

from ckpt_sync.api import open_repository


def _save_atomically(path, **kw):
    """What a careful trainer does: write a temp file, then rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    make_torch_checkpoint(tmp, **kw)
    os.replace(tmp, path)


def _names(repo_url):
    repo = open_repository(repo_url)
    return [repo.load_manifest(i).name for i in repo.manifest_ids()]


def _stop(proc):
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=120)


def test_watch_keeps_the_3_newest_of_6_checkpoints_and_each_pulls_identical(
    tmp_path, key, repo_url, repo_dir, torch_checkpoint, cli
):
    ckdir = tmp_path / "checkpoints"
    ckdir.mkdir()
    log = tmp_path / "watch.log"
    proc = start_cli(
        "watch",
        str(ckdir),
        "--to",
        repo_url,
        "--keep",
        "3",
        "--settle",
        "0.3",
        "--rescan",
        "2",
        "--log-format",
        "json",
        log_file=log,
    )
    saved = {}
    try:
        for step in range(1, 7):
            path = ckdir / f"checkpoint_20251106_120000_{step * 100}.pt"
            if step % 2:
                torch_checkpoint(path, seed=step, step=step * 100)  # written in place, then closed
            else:
                _save_atomically(path, seed=step, step=step * 100)  # renamed into place
            saved[path.name] = path.read_bytes()
            wait_until(lambda n=step: len(json_events(log, "committed")) >= n, f"commit of step {step * 100}")
    finally:
        assert _stop(proc) == 0, log.read_text()
    assert sorted(_names(repo_url)) == sorted(f"checkpoint_20251106_120000_{s}.pt" for s in (400, 500, 600))
    for name in _names(repo_url):
        out = tmp_path / "pulled" / name
        cli("pull", name, "--repo", repo_url, "--to", str(out.parent), check=True)
        assert out.read_bytes() == saved[name]
    cli("verify", "--read-data", "--repo", repo_url, check=True)


def test_kill_9_mid_upload_then_restart_commits_without_resending_chunks(tmp_path, key, repo_url, repo_dir, cli):
    ckdir = tmp_path / "ck"
    ckdir.mkdir()
    src = ckdir / "checkpoint_run_1.pt"
    src.write_bytes(os.urandom(16 << 20))
    total = (16 << 20) // (64 << 10)
    proc = start_cli(
        "watch",
        str(ckdir),
        "--to",
        repo_url,
        "--settle",
        "0.2",
        "--chunk-size",
        "64K",
        "--workers",
        "2",
        put_delay=0.03,
    )
    try:
        wait_until(lambda: proc.poll() is not None or len(chunk_files(repo_dir)) >= 30, "30 chunks uploaded")
        assert proc.poll() is None
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert manifest_ids(repo_dir) == []
    before = len(chunk_files(repo_dir))
    assert 30 <= before < total

    log = tmp_path / "restart.log"
    restart = start_cli(
        "watch",
        str(ckdir),
        "--to",
        repo_url,
        "--once",
        "--settle",
        "0.2",
        "--chunk-size",
        "64K",
        "--log-format",
        "json",
        log_file=log,
    )
    assert restart.wait(timeout=300) == 0, log.read_text()
    (event,) = json_events(log, "committed")
    assert event["chunks"] == total
    assert event["chunks_new"] == total - before  # what was sent before the kill is not sent again
    assert len(manifest_ids(repo_dir)) == 1
    cli("pull", "--latest", "--repo", repo_url, "--to", str(tmp_path / "out"), check=True)
    assert (tmp_path / "out" / src.name).read_bytes() == src.read_bytes()


SLOW_WRITER = """
import os, sys, time
path = sys.argv[1]
with open(path, "wb") as f:
    for i in range(12):
        f.write(os.urandom(256 * 1024))
        f.flush()
        time.sleep(0.25)   # pauses longer than the settle period: only the close says "complete"
"""


def test_a_slow_writer_is_uploaded_once_and_complete(tmp_path, key, repo_url, repo_dir, cli):
    ckdir = tmp_path / "ck"
    ckdir.mkdir()
    log = tmp_path / "watch.log"
    proc = start_cli(
        "watch",
        str(ckdir),
        "--to",
        repo_url,
        "--settle",
        "0.1",
        "--rescan",
        "600",
        "--log-format",
        "json",
        log_file=log,
    )
    try:
        # The writer opens the file only once inotify is on (the "watching" line follows watcher.start):
        # a file already open when the watch starts is judged by the settle period alone.
        wait_until(lambda: log.exists() and "watching " in log.read_text(), "the watcher to start")
        target = ckdir / "checkpoint_slow_1.pt"
        subprocess.run([sys.executable, "-c", SLOW_WRITER, str(target)], check=True)
        wait_until(lambda: json_events(log, "committed"), "the slow file to be committed")
        # A later file committed means every event about the slow one has been handled: a second
        # upload of it would have been queued, and committed, before this one.
        marker = ckdir / "checkpoint_later_1.pt"
        marker.write_bytes(os.urandom(4096))
        wait_until(lambda: len(json_events(log, "committed")) >= 2, "a later checkpoint to be committed")
    finally:
        assert _stop(proc) == 0
    events = [e for e in json_events(log, "committed") if e["checkpoint"] != marker.name]
    assert len(events) == 1 and events[0]["size"] == 12 * 256 * 1024
    cli("pull", target.name, "--repo", repo_url, "--to", str(tmp_path / "out"), check=True)
    assert (tmp_path / "out" / target.name).read_bytes() == target.read_bytes()


def test_rotation_deleting_an_enqueued_checkpoint_does_not_lose_it(tmp_path, key, repo_url, torch_checkpoint, cli):
    import ckpt_sync

    ckdir = tmp_path / "ck"
    state = tmp_path / "state"
    path = torch_checkpoint(ckdir / "checkpoint_rot_5.pt", step=5)
    original = path.read_bytes()
    client = ckpt_sync.SyncClient(repo_url, state_dir=state, worker=False)  # a watch picks the job up
    client.enqueue(path)
    client.close()
    path.unlink()  # local FIFO rotation, right after the hand-off
    empty = tmp_path / "empty"
    empty.mkdir()
    cli("watch", str(empty), "--to", repo_url, "--state-dir", str(state), "--once", "--settle", "0.1", check=True)
    cli("pull", "checkpoint_rot_5.pt", "--repo", repo_url, "--to", str(tmp_path / "out"), check=True)
    assert (tmp_path / "out" / "checkpoint_rot_5.pt").read_bytes() == original
    assert not list((state / "staging").iterdir())  # the held copy is released once committed


def test_watch_on_an_empty_folder_deletes_nothing_remotely(tmp_path, key, repo_url, repo_dir, torch_checkpoint, cli):
    for step in range(5):
        cli(
            "push",
            "--repo",
            repo_url,
            str(torch_checkpoint(tmp_path / f"checkpoint_a_{step}.pt", seed=step)),
            check=True,
        )
    before = manifest_ids(repo_dir), sorted(p.name for p in chunk_files(repo_dir))
    fresh = tmp_path / "fresh-host"
    fresh.mkdir()
    cli("watch", str(fresh), "--to", repo_url, "--keep", "1", "--grace", "0", "--once", "--settle", "0.1", check=True)
    assert (manifest_ids(repo_dir), sorted(p.name for p in chunk_files(repo_dir))) == before


def test_sigterm_during_upload_exits_0_commits_nothing_and_resumes(tmp_path, key, repo_url, repo_dir, cli):
    ckdir = tmp_path / "ck"
    ckdir.mkdir()
    src = ckdir / "checkpoint_term_1.pt"
    src.write_bytes(os.urandom(16 << 20))
    proc = start_cli(
        "watch",
        str(ckdir),
        "--to",
        repo_url,
        "--settle",
        "0.2",
        "--chunk-size",
        "64K",
        "--workers",
        "2",
        put_delay=0.05,
    )
    wait_until(lambda: proc.poll() is not None or len(chunk_files(repo_dir)) >= 20, "20 chunks uploaded")
    assert _stop(proc) == 0
    assert manifest_ids(repo_dir) == []
    status = json.loads(cli("status", str(ckdir), "--repo", repo_url, "--json", check=True).stdout)
    assert status["backlog"] == 1 and status["jobs"]["pending"] == 1
    cli("watch", str(ckdir), "--to", repo_url, "--once", "--settle", "0.2", "--chunk-size", "64K", check=True)
    assert len(manifest_ids(repo_dir)) == 1
    cli("pull", "--latest", "--repo", repo_url, "--to", str(tmp_path / "out"), check=True)
    assert (tmp_path / "out" / src.name).read_bytes() == src.read_bytes()


def test_status_reports_backlog_lag_throughput_and_last_error(tmp_path, key, repo_url, torch_checkpoint, cli):
    ckdir = tmp_path / "ck"
    torch_checkpoint(ckdir / "checkpoint_st_10.pt", step=10)
    cli("watch", str(ckdir), "--to", repo_url, "--once", "--settle", "0.1", check=True)
    st = json.loads(cli("status", str(ckdir), "--repo", repo_url, "--json", check=True).stdout)
    assert st["backlog"] == 0 and st["jobs"]["done"] == 1
    assert st["newest_committed"]["step"] == 10 and st["newest_local"]["step"] == 10
    assert (st["lag_seconds"], st["lag_steps"]) == (0, 0)
    assert st["throughput_bytes_per_s"] > 0 and st["last_error"] is None

    time.sleep(0.05)
    torch_checkpoint(ckdir / "checkpoint_st_20.pt", step=20)  # saved, not yet synced
    st = json.loads(cli("status", str(ckdir), "--repo", repo_url, "--json", check=True).stdout)
    assert st["lag_steps"] == 10 and st["lag_seconds"] > 0
    human = cli("status", str(ckdir), "--repo", repo_url, check=True).stdout
    assert "lag:" in human and "10 step(s)" in human


def test_json_logs_have_one_object_per_committed_checkpoint(tmp_path, key, repo_url, torch_checkpoint):
    ckdir = tmp_path / "ck"
    torch_checkpoint(ckdir / "checkpoint_j_1.pt")
    log = tmp_path / "log"
    proc = start_cli(
        "watch", str(ckdir), "--to", repo_url, "--once", "--settle", "0.1", "--log-format", "json", log_file=log
    )
    assert proc.wait(timeout=120) == 0
    (event,) = json_events(log, "committed")
    assert event["checkpoint"] == "checkpoint_j_1.pt" and event["bytes_sent"] > 0 and event["level"] == "info"


def test_quarantined_hidden_and_temp_files_are_never_uploaded(tmp_path, key, repo_url, torch_checkpoint, cli):
    ckdir = tmp_path / "ck"
    torch_checkpoint(ckdir / "checkpoint_q_2.pt")
    torch_checkpoint(ckdir / "quarantine" / "checkpoint_q_1.pt")  # moved there by CheckpointManager.repair()
    torch_checkpoint(ckdir / ".hidden" / "checkpoint_q_3.pt")
    torch_checkpoint(ckdir / "checkpoint_q_4.pt.tmp")
    torch_checkpoint(ckdir / "notes.txt")
    cli("watch", str(ckdir), "--to", repo_url, "--once", "--settle", "0.1", check=True)
    assert _names(repo_url) == ["checkpoint_q_2.pt"]


def test_a_restored_checkpoint_is_not_committed_again(tmp_path, key, repo_url, repo_dir, torch_checkpoint, cli):
    ckdir = tmp_path / "ck"
    torch_checkpoint(ckdir / "checkpoint_r_1.pt", seed=1)
    torch_checkpoint(ckdir / "step_2" / "__0_0.distcp", seed=2)
    (ckdir / "step_2" / ".metadata").write_bytes(b"dcp metadata")
    cli("watch", str(ckdir), "--to", repo_url, "--once", "--settle", "0.1", check=True)
    assert len(manifest_ids(repo_dir)) == 2
    fresh = tmp_path / "fresh-host"  # a new machine: restore both, then run the sidecar there
    for name in ("checkpoint_r_1.pt", "step_2"):
        cli("pull", name, "--repo", repo_url, "--to", str(fresh), check=True)
    assert (fresh / "step_2" / ".metadata").read_bytes() == b"dcp metadata"
    cli("watch", str(fresh), "--to", repo_url, "--once", "--settle", "0.1", check=True)
    assert len(manifest_ids(repo_dir)) == 2
