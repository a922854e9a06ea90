"""Remote retention and garbage collection, alone and with concurrent writers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from helpers import chunk_files, manifest_ids

from ckpt_sync.api import open_repository
from ckpt_sync.format.layout import chunk_key
from ckpt_sync.format.locks import PRUNE_LOCK
from ckpt_sync.format.selection import newest
from ckpt_sync.service.queue import DONE, JobQueue


def _push(cli, repo_url, path, *args):
    return json.loads(cli("push", "--repo", repo_url, str(path), "--json", *args, check=True).stdout)[0]


def test_prune_keeps_the_newest_n_and_the_newest_best(tmp_path, key, repo_url, repo_dir, torch_checkpoint, cli):
    ids = []
    for i in range(5):
        tags = ("--tag", "best") if i in (0, 1) else ()
        ids.append(_push(cli, repo_url, torch_checkpoint(tmp_path / f"c{i}.pt", seed=i), *tags)["id"])
    dry = json.loads(cli("prune", "--repo", repo_url, "--keep", "2", "--dry-run", "--json", check=True).stdout)
    assert dry["removed"] == [ids[0], ids[2]] and manifest_ids(repo_dir) == sorted(ids)
    cli("prune", "--repo", repo_url, "--keep", "2", "--grace", "0", check=True)
    assert manifest_ids(repo_dir) == sorted([ids[1], ids[3], ids[4]])  # 2 newest + the newest best
    cli("verify", "--read-data", "--repo", repo_url, check=True)
    repo = open_repository(repo_url)
    live = set().union(*(repo.load_manifest(i).chunk_ids() for i in repo.manifest_ids()))
    assert {p.name for p in chunk_files(repo_dir)} == live  # grace 0: unreferenced chunks are gone


def test_grace_period_protects_young_unreferenced_chunks(tmp_path, key, repo_url, repo_dir, torch_checkpoint, cli):
    for i in range(3):
        _push(cli, repo_url, torch_checkpoint(tmp_path / f"c{i}.pt", seed=i))
    before = len(chunk_files(repo_dir))
    report = json.loads(cli("prune", "--repo", repo_url, "--keep", "1", "--json", check=True).stdout)
    assert len(report["removed"]) == 2 and report["chunks_removed"] == 0
    assert len(chunk_files(repo_dir)) == before


def test_the_newest_valid_checkpoint_survives_even_if_newer_ones_are_damaged(
    tmp_path, key, repo_url, repo_dir, torch_checkpoint, cli
):
    good = _push(cli, repo_url, torch_checkpoint(tmp_path / "good.pt", seed=1))["id"]
    bad = _push(cli, repo_url, torch_checkpoint(tmp_path / "bad.pt", seed=2))["id"]
    repo = open_repository(repo_url)
    unique = repo.load_manifest(bad).chunk_ids() - repo.load_manifest(good).chunk_ids()
    (repo_dir / chunk_key(sorted(unique)[0])).unlink()
    cli("prune", "--repo", repo_url, "--keep", "1", "--grace", "0", check=True)
    assert manifest_ids(repo_dir) == sorted([good, bad])
    cli("pull", "--latest", "--repo", repo_url, "--to", str(tmp_path / "o"), check=True)
    assert (tmp_path / "o" / "good.pt").exists()


def test_a_live_prune_lock_blocks_a_second_pruner_and_a_stale_one_is_broken(
    tmp_path, key, repo_url, repo_dir, torch_checkpoint, cli
):
    for i in range(3):
        _push(cli, repo_url, torch_checkpoint(tmp_path / f"c{i}.pt", seed=i))
    lock = repo_dir / PRUNE_LOCK
    lock.parent.mkdir(exist_ok=True)
    lock.write_text(json.dumps({"created": time.time(), "expires": time.time() + 600}))
    held = json.loads(cli("prune", "--repo", repo_url, "--keep", "1", "--json", check=True).stdout)
    assert held["removed"] == [] and "another prune" in held["gc_skipped"] and len(manifest_ids(repo_dir)) == 3
    # Stale is what the store says: not rewritten for longer than its lifetime (whatever its body claims).
    lock.write_text(json.dumps({"created": time.time(), "expires": time.time() + 600}))
    os.utime(lock, (time.time() - 400, time.time() - 400))
    proc = cli("prune", "--repo", repo_url, "--keep", "1", "--json", check=True)
    broke = json.loads(proc.stdout)
    assert len(broke["removed"]) == 2 and not lock.exists()
    assert "breaking the lock locks/prune" in proc.stderr and "by the store's clock" in proc.stderr, proc.stderr


def test_gc_waits_for_a_push_in_progress(tmp_path, key, repo_url, repo_dir, torch_checkpoint, cli):
    for i in range(3):
        _push(cli, repo_url, torch_checkpoint(tmp_path / f"c{i}.pt", seed=i))
    push_lock = repo_dir / "locks" / "push-9999999999999-abcdef"
    push_lock.parent.mkdir(exist_ok=True)
    push_lock.write_text(json.dumps({"created": time.time(), "expires": time.time() + 600}))
    report = json.loads(cli("prune", "--repo", repo_url, "--keep", "1", "--grace", "0", "--json", check=True).stdout)
    assert len(report["removed"]) == 2 and report["chunks_removed"] == 0 and "push" in report["gc_skipped"]
    push_lock.unlink()
    report = json.loads(cli("prune", "--repo", repo_url, "--keep", "1", "--grace", "0", "--json", check=True).stdout)
    assert report["chunks_removed"] > 0
    cli("verify", "--read-data", "--repo", repo_url, check=True)


WRITER = """
import sys, torch, ckpt_sync
from pathlib import Path
repo, state, folder, who = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]
torch.manual_seed(0)  # both writers share most tensors, so they reuse each other's chunks
base = {f"layer{i}": torch.randn(256, 256) for i in range(8)}
committed = []
with ckpt_sync.SyncClient(repo, state_dir=state, keep=3, grace=0.0, workers=2) as client:
    for step in range(6):
        state_dict = dict(base, head=torch.full((64, 64), float(step)), who=torch.tensor([ord(who)]))
        path = folder / f"checkpoint_{who}_{step}.pt"
        torch.save({"model_state_dict": state_dict, "global_step": step}, path)
        client.enqueue(path, metadata={"global_step": step})
        client.wait(timeout=300)
print("ok")
"""


def test_two_writers_pruning_one_repository_lose_nothing(tmp_path, key, repo_url, repo_dir, cli):
    procs = []
    for who in "ab":
        folder = tmp_path / who
        folder.mkdir()
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", WRITER, repo_url, str(tmp_path / f"state-{who}"), str(folder), who],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0 and out.strip() == "ok", err
    committed = [j.manifest_id for who in "ab" for j in JobQueue(tmp_path / f"state-{who}").jobs(DONE)]
    assert len(committed) == 12  # every checkpoint of both writers was committed
    # A final prune with no writer running applies retention to the repository as a whole.
    repo = open_repository(repo_url)
    before = newest(repo.manifests())
    cli("prune", "--repo", repo_url, "--keep", "3", "--grace", "0", check=True)
    survivors = newest(repo.manifests())
    assert [m.id for m in survivors] == [m.id for m in before[:3]]  # the 3 newest by training order
    assert all(m.id in committed for m in survivors)
    cli("verify", "--read-data", "--repo", repo_url, check=True)
    for m in survivors:
        out = tmp_path / "pulled" / m.id
        cli("pull", m.id, "--repo", repo_url, "--to", str(out), check=True)
        assert out.joinpath(m.name).read_bytes() == (tmp_path / m.name.split("_")[1] / m.name).read_bytes()


def test_a_push_waits_while_a_prune_is_running(tmp_path, key, repo_url, repo_dir, torch_checkpoint):
    from helpers import start_cli, wait_until

    first = torch_checkpoint(tmp_path / "first.pt", seed=1)
    import ckpt_sync

    ckpt_sync.push(first, repo=repo_url)
    lock = repo_dir / PRUNE_LOCK
    lock.parent.mkdir(exist_ok=True)
    lock.write_text(json.dumps({"created": time.time(), "expires": time.time() + 600}))
    second = torch_checkpoint(tmp_path / "second.pt", seed=2)
    chunks_before = len(chunk_files(repo_dir))
    said = tmp_path / "push.err"
    proc = start_cli("push", "--repo", repo_url, str(second), log_file=said)
    try:
        # The push has seen the prune's lock and is waiting: not one chunk may have been stored.
        wait_until(lambda: "waiting for a prune" in said.read_text(), "the push to wait for the prune")
        assert proc.poll() is None and len(chunk_files(repo_dir)) == chunks_before
        lock.unlink()
        wait_until(lambda: proc.poll() is not None, "the push to finish after the prune lock is gone")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and len(manifest_ids(repo_dir)) == 2


def test_commit_refuses_a_manifest_whose_chunks_are_gone(tmp_path, key, repo_url, repo_dir, torch_checkpoint):
    import dataclasses

    import pytest

    import ckpt_sync
    from ckpt_sync.errors import OperationFailed
    from ckpt_sync.format.layout import new_manifest_id

    mid = ckpt_sync.push(torch_checkpoint(tmp_path / "a.pt"), repo=repo_url)
    repo = open_repository(repo_url)
    manifest = repo.load_manifest(mid)
    (repo_dir / chunk_key(sorted(manifest.chunk_ids())[0])).unlink()  # as if a concurrent GC removed it
    with pytest.raises(OperationFailed, match="chunk"):
        repo.commit(dataclasses.replace(manifest, id=new_manifest_id(), tags=("pinned",)))  # a new version
    assert manifest_ids(repo_dir) == [mid]
