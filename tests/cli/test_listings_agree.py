"""Listings that agree with reality (issue 26, item 4): ``status``, ``queue``, ``stats`` and ``ls`` say
what is true of the folder, the queue and the repository at one moment. Real processes throughout."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

from helpers import chunk_files, make_torch_checkpoint, start_cli, wait_until

import ckpt_sync
from ckpt_sync.service.queue import JobQueue
from ckpt_sync.units import format_bytes


def _watch_once(cli, ckdir: Path, repo_url: str, *extra: str, check: bool = True):
    return cli("watch", str(ckdir), "--to", repo_url, "--once", "--settle", "0.1", *extra, check=check)


def _rewrite_in_place(path: Path, seed: int) -> bytes:
    """What a trainer that reuses a file name without a temp file does: open it and write new bytes."""
    new = make_torch_checkpoint(path.parent.parent / "rewrite" / path.name, seed=seed).read_bytes()
    with open(path, "r+b") as f:
        f.write(new)
        f.truncate()
    return new


# --- a checkpoint without a step --------------------------------------------------------------------


def test_status_prints_no_step_for_a_checkpoint_without_one(tmp_path, key, repo_url, cli):
    import torch

    ckdir = tmp_path / "ck"
    ckdir.mkdir()
    model = torch.nn.Linear(16, 16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    # Training state, but no step anywhere: not in its name, not in what it holds.
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, ckdir / "model.pt")
    _watch_once(cli, ckdir, repo_url)
    st = json.loads(cli("status", str(ckdir), "--json", check=True).stdout)
    assert st["newest_committed"]["step"] is None and st["newest_local"]["step"] is None
    human = cli("status", str(ckdir), check=True).stdout
    assert "None" not in human, human
    assert re.search(r"^committed:\s+model\.pt at ", human, re.M) and re.search(r"^local:\s+model\.pt at ", human, re.M)


# --- after kill -9 of a watch, the queue says interrupted, as status does -----------------------------


def test_queue_shows_the_job_of_a_killed_watch_as_interrupted(tmp_path, key, repo_url, repo_dir, cli):
    ckdir = tmp_path / "ck"
    ckdir.mkdir()
    (ckdir / "checkpoint_k_1.pt").write_bytes(os.urandom(8 << 20))
    proc = start_cli(
        "watch", str(ckdir), "--to", repo_url, "--settle", "0.2", "--chunk-size", "64K", "--workers", "1",
        put_delay=0.05,
    )  # fmt: skip
    try:
        wait_until(lambda: len(chunk_files(repo_dir)) >= 5, "an upload in flight")
        live = json.loads(cli("queue", str(ckdir), "--json", check=True).stdout)
        assert [j["status"] for j in live] == ["running"]  # its uploader is alive: running it is
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    (job,) = json.loads(cli("queue", str(ckdir), "--json", check=True).stdout)
    assert job["status"] == "interrupted"
    table = cli("queue", str(ckdir), check=True).stdout
    assert re.search(r"^\d+\s+interrupted\s+checkpoint_k_1\.pt", table, re.M), table
    assert "running" not in table
    st = json.loads(cli("status", str(ckdir), "--json", check=True).stdout)
    assert [j["name"] for j in st["interrupted"]] == ["checkpoint_k_1.pt"]
    _watch_once(cli, ckdir, repo_url)  # the next watch resumes it
    assert "the queue is empty" in cli("queue", str(ckdir), check=True).stdout


# --- one consistent snapshot --------------------------------------------------------------------------


def test_status_never_shows_one_checkpoint_as_both_uploading_and_committed(tmp_path, key, repo_url, cli):
    """The moment between an upload's commit and its job being marked done: the repository already
    holds the checkpoint while the queue still says its (live) uploader is running it."""
    ckdir = tmp_path / "ck"
    ck = make_torch_checkpoint(ckdir / "checkpoint_c_300.pt", step=300)
    queue = JobQueue(ckdir / ".ckpt-sync")
    queue.enqueue(ck)
    claimed = queue.claim()  # this test process is the uploader: alive, its heartbeat fresh
    assert claimed is not None
    ckpt_sync.push(str(ck), repo=repo_url)  # the commit has happened; complete() has not yet
    try:
        human = cli("status", str(ckdir), "--from", repo_url, check=True).stdout
        st = json.loads(cli("status", str(ckdir), "--from", repo_url, "--json", check=True).stdout)
    finally:
        queue.close()
    assert "uploading:" not in human and re.search(r"^committed:\s+checkpoint_c_300\.pt", human, re.M), human
    assert st["in_flight"] == [] and st["interrupted"] == [] and st["backlog"] == 0
    assert st["newest_committed"]["name"] == "checkpoint_c_300.pt"


# --- a version superseded by an in-place rewrite -------------------------------------------------------


def test_a_version_rewritten_in_place_is_superseded_not_failed_and_leaves_once_the_newer_one_commits(
    tmp_path, key, repo_url, cli
):
    ckdir = tmp_path / "ck"
    ck = make_torch_checkpoint(ckdir / "checkpoint_r_100.pt", seed=1, step=100)
    state = tmp_path / "state"
    JobQueue(state).enqueue(ck)  # queued (and held) ...
    new = _rewrite_in_place(ck, seed=2)  # ... then the trainer rewrites the same file in place
    elsewhere = tmp_path / "empty"
    elsewhere.mkdir()
    # A watch that only works through the queue (its own folder is empty): the queued version is gone.
    first = _watch_once(cli, elsewhere, repo_url, "--state-dir", str(state), check=False)
    assert first.returncode == 0, first.stderr  # nothing was lost: not a failure
    (job,) = json.loads(cli("queue", "--state-dir", str(state), "--json", check=True).stdout)
    assert job["status"] == "superseded" and "changed after it was queued" in job["last_error"]
    st = json.loads(cli("status", "--state-dir", str(state), "--json", check=True).stdout)
    assert st["failed"] == [] and st["jobs"]["failed"] == 0 and st["last_error"] is None

    JobQueue(state).enqueue(ck)  # the version on disk now
    _watch_once(cli, elsewhere, repo_url, "--state-dir", str(state))
    assert "the queue is empty" in cli("queue", "--state-dir", str(state), check=True).stdout
    assert json.loads(cli("queue", "--state-dir", str(state), "--json", check=True).stdout) == []
    cli("pull", "--latest", "--repo", repo_url, "--to", str(tmp_path / "out"), check=True)
    assert (tmp_path / "out" / ck.name).read_bytes() == new


# --- stats: what the checkpoints use, apart from what the grace period holds --------------------------


def test_stats_separates_what_checkpoints_use_from_what_grace_still_holds(tmp_path, key, repo_url, cli):
    a = make_torch_checkpoint(tmp_path / "a" / "checkpoint_d_100.pt", seed=1, hidden=512)
    b = tmp_path / "b" / "checkpoint_d_200.pt"  # the same bytes again: dedup 2x
    b.parent.mkdir()
    b.write_bytes(a.read_bytes())
    gone = make_torch_checkpoint(tmp_path / "c" / "checkpoint_d_50.pt", seed=3, hidden=512)
    for p in (a, b, gone):
        cli("push", str(p), "--to", repo_url, check=True)
    cli("forget", gone.name, "--repo", repo_url, check=True)  # its chunks wait out the grace period
    st = json.loads(cli("stats", "--repo", repo_url, "--json", check=True).stdout)
    assert 1.99 < st["dedup_ratio"] < 2.01
    used = st["checkpoints_stored_bytes"]
    assert st["grace_bytes"] > 0.9 * gone.stat().st_size
    assert used + st["grace_bytes"] + st["collectable_bytes"] == st["stored_bytes"]
    # What the checkpoints use is their logical size over the dedup ratio (plus encryption's overhead).
    assert st["logical_bytes"] / st["dedup_ratio"] <= used < 1.05 * st["logical_bytes"] / st["dedup_ratio"]
    lines = {
        k.strip(): v.strip()
        for k, _, v in (ln.partition(":") for ln in cli("stats", "--repo", repo_url).stdout.splitlines()[:9])
    }
    assert lines["used by checkpoints"].startswith(format_bytes(used)), lines
    assert lines["held by grace"].startswith(format_bytes(st["grace_bytes"])), lines
    assert lines["stored in all"].startswith(format_bytes(st["stored_bytes"])), lines


# --- tag keeps the id a user sees ---------------------------------------------------------------------


def test_a_checkpoint_keeps_its_id_across_tag_changes(tmp_path, key, repo_url, cli):
    src = make_torch_checkpoint(tmp_path / "checkpoint_t_100.pt", step=100)
    (pushed,) = json.loads(cli("push", str(src), "--to", repo_url, "--json", check=True).stdout)
    first = pushed["id"]
    for change in (["--add", "pinned"], ["--add", "paper"], ["--remove", "pinned"]):
        shown = json.loads(cli("tag", first, *change, "--repo", repo_url, "--json", check=True).stdout)
        assert shown["id"] == first and shown["manifest_id"] != first
        line = cli("tag", first, "--add", "x", "--remove", "x", "--repo", repo_url).stderr
        assert "cannot both add and remove" in line
    (listed,) = json.loads(cli("ls", "--repo", repo_url, "--json", check=True).stdout)
    assert listed["id"] == first and listed["tags"] == ["paper"]
    assert re.search(rf"^{first}\s+checkpoint_t_100\.pt", cli("ls", "--repo", repo_url, check=True).stdout, re.M)
    # Every verb that takes an id takes the first one, after any number of tag changes.
    cli("ls", first, "--repo", repo_url, check=True)
    cli("verify", first, "--read-data", "--repo", repo_url, check=True)
    cli("pull", first, "--repo", repo_url, "--to", str(tmp_path / "out"), check=True)
    assert (tmp_path / "out" / src.name).read_bytes() == src.read_bytes()
    assert ckpt_sync.checkpoint(first, repo_url).checkpoint_id == first
    stats = json.loads(cli("stats", "--repo", repo_url, "--json", check=True).stdout)
    assert [c["id"] for c in stats["per_checkpoint"]] == [first]
