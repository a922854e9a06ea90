"""Damaged repositories: every kind of damage is detected, and pull --latest falls back past it."""

from __future__ import annotations

import os
import shutil

import pytest

from ckpt_sync.api import open_repository
from ckpt_sync.format.layout import chunk_key


@pytest.fixture
def two_checkpoints(tmp_path, key, repo_url, repo_dir, torch_checkpoint, cli):
    """An older and a newer checkpoint with the same name; returns (old bytes, newer's unique chunk paths)."""
    path = tmp_path / "src" / "checkpoint_run_1.pt"
    torch_checkpoint(path, seed=1, hidden=384)
    old_bytes = path.read_bytes()
    cli("push", "--repo", repo_url, str(path), "--chunk-size", "64K", check=True)
    torch_checkpoint(path, seed=2, hidden=384)
    cli("push", "--repo", repo_url, str(path), "--chunk-size", "64K", check=True)
    repo = open_repository(repo_url)
    newest, older = (repo.load_manifest(i) for i in repo.manifest_ids())
    unique = sorted(newest.chunk_ids() - older.chunk_ids())
    assert len(unique) >= 2
    return old_bytes, newest, [repo_dir / chunk_key(c) for c in unique]


def _assert_detected_and_falls_back(tmp_path, repo_url, cli, old_bytes, newest, *, name_readable=True):
    verify = cli("verify", "--read-data", "--repo", repo_url)
    assert verify.returncode == 1, verify.stdout + verify.stderr
    assert newest.id in verify.stdout
    assert (newest.name if name_readable else "(unreadable manifest)") in verify.stdout
    assert "1 of 2 checkpoint(s) sound" in verify.stdout

    out = tmp_path / "restore"
    pull = cli("pull", "--latest", "--from", repo_url, "--to", str(out))
    assert pull.returncode == 0, pull.stderr
    named = f"{newest.name} ({newest.id})" if name_readable else newest.id
    assert f"checkpoint {named} is damaged" in pull.stderr and "falling back" in pull.stderr
    assert (out / newest.name).read_bytes() == old_bytes
    assert sorted(p.name for p in out.iterdir()) == [newest.name]  # no temp file left behind


def test_flipped_byte_in_a_chunk(tmp_path, repo_url, cli, two_checkpoints):
    old_bytes, newest, unique = two_checkpoints
    data = bytearray(unique[0].read_bytes())
    data[len(data) // 2] ^= 0x01
    unique[0].write_bytes(bytes(data))
    _assert_detected_and_falls_back(tmp_path, repo_url, cli, old_bytes, newest)


def test_deleted_chunk(tmp_path, repo_url, cli, two_checkpoints):
    old_bytes, newest, unique = two_checkpoints
    unique[0].unlink()
    quick = cli("verify", "--repo", repo_url)  # presence check alone catches it
    assert quick.returncode == 1 and "missing" in quick.stdout
    _assert_detected_and_falls_back(tmp_path, repo_url, cli, old_bytes, newest)


def test_truncated_chunk(tmp_path, repo_url, cli, two_checkpoints):
    old_bytes, newest, unique = two_checkpoints
    with open(unique[0], "r+b") as f:
        f.truncate(os.path.getsize(unique[0]) - 100)
    _assert_detected_and_falls_back(tmp_path, repo_url, cli, old_bytes, newest)


def test_swapped_chunk_objects(tmp_path, repo_url, cli, two_checkpoints):
    old_bytes, newest, unique = two_checkpoints
    by_size: dict[int, list] = {}
    for p in unique:
        by_size.setdefault(p.stat().st_size, []).append(p)
    # Same size, so only the id check can catch the swap.
    a, b = next(paths for paths in by_size.values() if len(paths) >= 2)[:2]
    tmp = a.with_name("swap")
    shutil.move(a, tmp)
    shutil.move(b, a)
    shutil.move(tmp, b)
    _assert_detected_and_falls_back(tmp_path, repo_url, cli, old_bytes, newest)


def test_flipped_byte_in_a_manifest(tmp_path, repo_url, repo_dir, cli, two_checkpoints):
    old_bytes, newest, _ = two_checkpoints
    path = repo_dir / "manifests" / newest.id
    data = bytearray(path.read_bytes())
    data[40] ^= 0x80
    path.write_bytes(bytes(data))
    _assert_detected_and_falls_back(tmp_path, repo_url, cli, old_bytes, newest, name_readable=False)


def test_a_replayed_manifest_under_a_new_name_is_rejected(tmp_path, repo_url, repo_dir, cli, two_checkpoints):
    manifests = repo_dir / "manifests"
    oldest = sorted(manifests.iterdir())[0]
    shutil.copy(oldest, manifests / "9999999999999-0000000000000000")  # make the old one look newest
    verify = cli("verify", "--repo", repo_url)
    assert verify.returncode == 1 and "moved or replayed" in verify.stdout


def test_nothing_valid_to_pull_exits_1(tmp_path, repo_url, repo_dir, cli, two_checkpoints):
    for p in (repo_dir / "chunks").rglob("*"):
        if p.is_file():
            p.unlink()
    pull = cli("pull", "--latest", "--from", repo_url, "--to", str(tmp_path / "out"))
    assert pull.returncode == 1
    assert pull.stderr.strip().splitlines()[-1].startswith("ckpt-sync: error: no valid checkpoint")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_a_chunk_cut_short_is_sent_again_not_trusted(tmp_path, key, repo_url, repo_dir, torch_checkpoint, cli):
    """What a power loss before the commit barrier can leave behind: a chunk name over a short file."""
    src = torch_checkpoint(tmp_path / "c.pt", hidden=384)
    cli("push", "--repo", repo_url, str(src), "--chunk-size", "64K", check=True)
    repo = open_repository(repo_url)
    victim = repo_dir / chunk_key(sorted(repo.load_manifest(repo.manifest_ids()[0]).chunk_ids())[0])
    victim.write_bytes(victim.read_bytes()[:100])
    import json

    again = json.loads(cli("push", "--repo", repo_url, str(src), "--chunk-size", "64K", "--json", check=True).stdout)
    assert again[0]["stats"]["chunks_new"] == 1
    out = tmp_path / "o"
    cli("pull", again[0]["id"], "--repo", repo_url, "--to", str(out), check=True)
    assert (out / "c.pt").read_bytes() == src.read_bytes()
    assert cli("verify", "--read-data", "--repo", repo_url).returncode == 0  # the replaced chunk heals both
