"""The sidecar never loses or tears a checkpoint (issue 11): moved-in files, relative holds, a
deleted or damaged queue, in-place rewrites, hidden temp files in folders, special files,
symlinks out of the folder, truncated saves. Real ``watch`` processes, real torch checkpoints."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from helpers import chunk_files, json_events, make_torch_checkpoint, manifest_ids, start_cli, wait_until

from ckpt_sync.api import open_repository
from ckpt_sync.service.queue import FAILED, JobQueue


def _manifests(repo_url):
    repo = open_repository(repo_url)
    return [repo.load_manifest(i) for i in repo.manifest_ids()]


def _names(repo_url):
    return sorted(m.name for m in _manifests(repo_url))


def _watch_once(cli, ckdir, repo_url, *extra, **kw):
    return cli("watch", str(ckdir), "--to", repo_url, "--once", "--settle", "0.1", *extra, **kw)


def _stop(proc):
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=120)


# --- 1. the rescan is a true fallback -----------------------------------------------------------


def test_a_checkpoint_moved_in_from_another_folder_is_uploaded_by_a_running_watch(tmp_path, key, repo_url, cli):
    ckdir = tmp_path / "ck"
    ckdir.mkdir()
    outside = make_torch_checkpoint(tmp_path / "elsewhere" / "checkpoint_mv_100.pt", step=100)
    log = tmp_path / "watch.log"
    proc = start_cli(
        "watch", str(ckdir), "--to", repo_url, "--settle", "0.2", "--rescan", "0.5", "--log-format", "json",
        log_file=log,
    )  # fmt: skip
    try:
        wait_until(lambda: "watching" in log.read_text(), "watch started")
        os.rename(outside, ckdir / outside.name)  # inotify: a moved-to with no close event after it
        wait_until(lambda: json_events(log, "committed"), "the moved-in checkpoint committed", timeout=60)
    finally:
        assert _stop(proc) == 0, log.read_text()
    assert _names(repo_url) == ["checkpoint_mv_100.pt"]


# --- 3. holds are found by job, whatever the caller's working directory --------------------------


def test_a_hold_made_from_a_relative_path_is_found_from_another_cwd(tmp_path, key, repo_url, cli, monkeypatch):
    (tmp_path / "run").mkdir()
    ck = make_torch_checkpoint(tmp_path / "run" / "ckpts" / "checkpoint_rel_1.pt", step=1)
    data = ck.read_bytes()
    monkeypatch.chdir(tmp_path / "run")
    JobQueue("ckpts/.ckpt-sync").enqueue("ckpts/checkpoint_rel_1.pt")  # as `watch ckpts` queues it
    ck.unlink()  # rotated away: only the held copy is left
    monkeypatch.chdir(tmp_path)  # a systemd unit started elsewhere, with the absolute path
    _watch_once(cli, tmp_path / "run" / "ckpts", repo_url, check=True)
    assert _names(repo_url) == ["checkpoint_rel_1.pt"]
    cli("pull", "--latest", "--repo", repo_url, "--to", str(tmp_path / "out"), check=True)
    assert (tmp_path / "out" / ck.name).read_bytes() == data


# --- 5, 6. in-place rewrites that keep size and mtime ------------------------------------------


def _rewrite_in_place(path, seed, **kw):
    """A same-size rewrite that restores the mtime: size and mtime alone cannot see it."""
    st = path.stat()
    other = make_torch_checkpoint(path.parent.parent / "rewrite" / path.name, seed=seed, **kw)  # same zip names
    new = other.read_bytes()
    other.unlink()
    assert len(new) == st.st_size
    with open(path, "r+b") as f:
        f.write(new)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    return new


def test_a_file_rewritten_in_place_during_push_is_not_committed(tmp_path, key, repo_url, repo_dir):
    ck = make_torch_checkpoint(tmp_path / "checkpoint_rw_1.pt", hidden=512, seed=1)
    log = tmp_path / "push.log"
    proc = start_cli("push", str(ck), "--to", repo_url, "--chunk-size", "64K", "--workers", "1", put_delay=0.05,
                     log_file=log)  # fmt: skip
    wait_until(lambda: len(chunk_files(repo_dir)) >= 3, "push under way")
    _rewrite_in_place(ck, seed=2, hidden=512)
    assert proc.wait(timeout=300) == 1, log.read_text()
    assert "changed while it was being read" in log.read_text()
    assert manifest_ids(repo_dir) == []


def test_a_held_copy_rewritten_in_place_before_upload_is_never_committed_under_the_old_metadata(
    tmp_path, key, repo_url, cli
):
    ckdir = tmp_path / "ck"
    ck = make_torch_checkpoint(ckdir / "checkpoint_h_100.pt", seed=1, step=100)
    old = ck.read_bytes()
    state = tmp_path / "state"
    JobQueue(state).enqueue(ck, metadata={"global_step": 100, "note": "queued as step 100"})
    new = _rewrite_in_place(ck, seed=2)  # the trainer reuses the name before the upload ran
    first = _watch_once(cli, ckdir, repo_url, "--state-dir", str(state))
    for m in _manifests(repo_url):
        pulled = tmp_path / f"pulled-{m.id}"
        cli("pull", m.id, "--repo", repo_url, "--to", str(pulled), check=True)
        got = (pulled / m.name).read_bytes()
        if m.extra.get("note") == "queued as step 100":
            assert got == old, "the step-100 job was committed with other bytes"
        else:
            assert got == new
    if first.returncode:
        assert "changed after it was queued" in first.stderr
    _watch_once(cli, ckdir, repo_url, "--state-dir", str(state), check=True)  # the new version goes up
    cli("pull", "--latest", "--repo", repo_url, "--to", str(tmp_path / "latest"), check=True)
    assert (tmp_path / "latest" / ck.name).read_bytes() == new


# --- 7. the queue database deleted or damaged -----------------------------------------------------


def test_a_deleted_queue_is_rebuilt_from_the_held_copies(tmp_path, key, repo_url, cli):
    ckdir = tmp_path / "ck"
    ck = make_torch_checkpoint(ckdir / "checkpoint_d_1.pt", step=1)
    data = ck.read_bytes()
    JobQueue(ckdir / ".ckpt-sync").enqueue(ck)
    ck.unlink()  # rotated away
    for p in (ckdir / ".ckpt-sync").glob("queue.sqlite3*"):
        p.unlink()
    _watch_once(cli, ckdir, repo_url, check=True)
    cli("pull", "--latest", "--repo", repo_url, "--to", str(tmp_path / "out"), check=True)
    assert (tmp_path / "out" / ck.name).read_bytes() == data


def test_a_damaged_queue_is_moved_aside_with_one_line_and_the_watch_carries_on(tmp_path, key, repo_url, cli):
    ckdir = tmp_path / "ck"
    held = make_torch_checkpoint(ckdir / "checkpoint_c_1.pt", step=1)
    JobQueue(ckdir / ".ckpt-sync").enqueue(held)
    held.unlink()
    make_torch_checkpoint(ckdir / "checkpoint_c_2.pt", step=2, seed=2)
    db = ckdir / ".ckpt-sync" / "queue.sqlite3"
    db.write_bytes(b"this is not a database" * 100)
    for p in (ckdir / ".ckpt-sync").glob("queue.sqlite3-*"):
        p.unlink()
    proc = _watch_once(cli, ckdir, repo_url)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "moved it aside" in line]
    assert len(lines) == 1 and "queue.sqlite3.damaged-" in lines[0]
    assert "unexpected" not in proc.stderr
    assert _names(repo_url) == ["checkpoint_c_1.pt", "checkpoint_c_2.pt"]
    assert list((ckdir / ".ckpt-sync").glob("queue.sqlite3.damaged-*"))


# --- 4. hidden temp files at any depth are never part of a folder checkpoint ---------------------


def test_hidden_temp_files_at_any_depth_of_a_folder_checkpoint_are_not_uploaded(tmp_path, key, repo_url, cli):
    ckdir = tmp_path / "ck"
    folder = ckdir / "step_7"
    make_torch_checkpoint(folder / "__0_0.distcp", seed=1)
    make_torch_checkpoint(folder / "sub" / "__1_0.distcp", seed=2)
    (folder / ".metadata").write_bytes(b"dcp metadata")
    (folder / ".__2_0.distcp.ckpt-sync-1a2b.part").write_bytes(b"\0" * 4096)  # a killed restore's leftover
    (folder / "sub" / ".__3_0.distcp.tmp").write_bytes(b"half")
    (folder / "sub" / "x.partial").write_bytes(b"half")
    _watch_once(cli, ckdir, repo_url, check=True)
    (m,) = _manifests(repo_url)
    # .metadata is the DCP marker itself (a hidden name by convention); nothing else hidden or temp.
    assert sorted(f.path for f in m.files) == [".metadata", "__0_0.distcp", "sub/__1_0.distcp"]


# --- 12. special files ------------------------------------------------------------------------------


def test_a_fifo_named_like_a_checkpoint_is_skipped_with_one_warning(tmp_path, key, repo_url, cli):
    ckdir = tmp_path / "ck"
    make_torch_checkpoint(ckdir / "checkpoint_f_1.pt")
    os.mkfifo(ckdir / "checkpoint_f_2.pt")
    for _ in range(2):
        proc = _watch_once(cli, ckdir, repo_url)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr.count("checkpoint_f_2.pt") == 1 and "not a regular file" in proc.stderr
    assert _names(repo_url) == ["checkpoint_f_1.pt"]
    assert JobQueue(ckdir / ".ckpt-sync").counts()[FAILED] == 0


def test_sigterm_with_a_fifo_in_the_folder_exits_0(tmp_path, key, repo_url):
    ckdir = tmp_path / "ck"
    ckdir.mkdir()
    os.mkfifo(ckdir / "checkpoint_f_3.pt")
    log = tmp_path / "watch.log"
    proc = start_cli(
        "watch", str(ckdir), "--to", repo_url, "--settle", "0.1", "--rescan", "0.3", "--debug", log_file=log
    )
    wait_until(lambda: "not a regular file" in log.read_text(), "the warning")

    def rescans_since_the_warning() -> int:
        return log.read_text().partition("not a regular file")[2].count("rescanned ")

    wait_until(lambda: rescans_since_the_warning() >= 3, "three rescans after the warning")
    assert _stop(proc) == 0, log.read_text()
    assert log.read_text().count("not a regular file") == 1


# --- 13. symlinks -------------------------------------------------------------------------------


def test_a_symlink_leading_out_of_the_watched_folder_is_never_uploaded(tmp_path, key, repo_url, cli):
    secret = tmp_path / "secret" / "shadow"
    secret.parent.mkdir()
    secret.write_bytes(b"root:$6$very-secret-hash:19000:0:99999:7:::\n")
    ckdir = tmp_path / "ck"
    make_torch_checkpoint(ckdir / "checkpoint_s_1.pt")
    (ckdir / "x.pt").symlink_to(secret)
    (ckdir / "step_3").mkdir()
    (ckdir / "step_3" / ".metadata").write_bytes(b"m")
    (ckdir / "step_3" / "__0_0.distcp").symlink_to(secret)  # a shard leading out: an error
    proc = _watch_once(cli, ckdir, repo_url)
    assert proc.stderr.count("x.pt") == 1 and "leading outside" in proc.stderr
    assert "step_3" in proc.stderr and "symlink" in proc.stderr
    assert _names(repo_url) == ["checkpoint_s_1.pt"]


def test_a_symlinked_subfolder_in_a_folder_checkpoint_is_an_error_not_an_omission(tmp_path, key, repo_url, cli):
    elsewhere = tmp_path / "elsewhere"
    make_torch_checkpoint(elsewhere / "__1_0.distcp")
    folder = tmp_path / "step_4"
    make_torch_checkpoint(folder / "__0_0.distcp")
    (folder / ".metadata").write_bytes(b"m")
    (folder / "shards").symlink_to(elsewhere, target_is_directory=True)
    proc = cli("push", str(folder), "--to", repo_url)
    assert proc.returncode == 2 and "symlinked folder" in proc.stderr, proc.stderr
    assert manifest_ids(Path(repo_url[len("file://") :])) == []


# --- 14. truncated or empty saves are held back -------------------------------------------------------


def test_empty_and_truncated_saves_are_held_back_and_never_become_the_newest(tmp_path, key, repo_url, cli):
    ckdir = tmp_path / "ck"
    good = make_torch_checkpoint(ckdir / "checkpoint_t_100.pt", step=100)
    time.sleep(0.05)
    (ckdir / "checkpoint_t_200.pt").write_bytes(b"")  # a crashed non-atomic save
    (ckdir / "checkpoint_t_300.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"w": np.zeros((64, 64), dtype=np.float32)}, str(ckdir / "model.safetensors"))
    whole = (ckdir / "model.safetensors").read_bytes()
    (ckdir / "model.safetensors").write_bytes(whole[:-100])
    proc = _watch_once(cli, ckdir, repo_url, "--keep", "1")
    assert proc.returncode == 0, proc.stderr
    for name in ("checkpoint_t_200.pt", "checkpoint_t_300.pt", "model.safetensors"):
        assert proc.stderr.count(name) == 1, proc.stderr
    assert _names(repo_url) == ["checkpoint_t_100.pt"]
    (ckdir / "model.safetensors").write_bytes(whole)  # the save completes: now it goes up
    _watch_once(cli, ckdir, repo_url, check=True)
    assert "model.safetensors" in _names(repo_url)
