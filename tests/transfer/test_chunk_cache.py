"""The shared chunk cache of pull (transfer/chunk_cache.py): several processes on one host pulling
the same checkpoint read each chunk from the store once; an entry is checked on every use (a
damaged or planted one is removed and the store read instead); the folder stays under its bound."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from helpers import SLOW_CLI, run_together

from ckpt_sync import api
from ckpt_sync.api import open_repository
from ckpt_sync.errors import UsageError
from ckpt_sync.transfer.chunk_cache import ChunkCache

MiB = 1 << 20


@pytest.fixture
def checkpoint(tmp_path, key, repo_url) -> tuple[Path, int]:
    """A 12 MiB checkpoint of 12 chunks in the repository: (its file, its chunk count)."""
    src = tmp_path / "src" / "checkpoint_run_3.pt"
    src.parent.mkdir()
    src.write_bytes(os.urandom(12 * MiB))
    api.push(src, repo=repo_url, chunk_size=MiB)
    (m,) = open_repository(repo_url).manifests()
    return src, len(m.chunk_ids())


def entries(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*") if p.is_file() and len(p.name) == 64]


def test_a_second_pull_through_the_cache_reads_nothing_from_the_store(tmp_path, repo_url, checkpoint):
    src, n = checkpoint
    cache = ChunkCache(tmp_path / "cache")
    api.pull(to=tmp_path / "a", repo=repo_url, checkpoint="checkpoint_run_3.pt", chunk_cache=cache)
    assert (cache.stats.fetched, cache.stats.hits) == (n, 0)
    assert len(entries(tmp_path / "cache")) == n
    api.pull(to=tmp_path / "b", repo=repo_url, checkpoint="checkpoint_run_3.pt", chunk_cache=cache)
    assert (cache.stats.fetched, cache.stats.hits) == (n, n)
    for dest in ("a", "b"):
        assert (tmp_path / dest / src.name).read_bytes() == src.read_bytes()
    # Entries are the stored objects, encrypted: no plaintext of the checkpoint on this disk.
    assert all(p.read_bytes()[: 64 * 1024] not in src.read_bytes() for p in entries(tmp_path / "cache"))


@pytest.mark.parametrize("damage", ["flipped byte", "cut short", "another chunk's object"])
def test_a_damaged_or_planted_entry_is_removed_and_the_chunk_read_from_the_store(
    damage, tmp_path, repo_url, checkpoint
):
    src, n = checkpoint
    api.pull(to=tmp_path / "a", repo=repo_url, checkpoint="checkpoint_run_3.pt", chunk_cache=tmp_path / "cache")
    victim, other = sorted(entries(tmp_path / "cache"))[:2]
    data = bytearray(victim.read_bytes())
    if damage == "flipped byte":
        data[len(data) // 2] ^= 0x01
    elif damage == "cut short":
        del data[len(data) // 2 :]
    else:
        data = bytearray(other.read_bytes())
    victim.write_bytes(bytes(data))

    cache = ChunkCache(tmp_path / "cache")
    api.pull(to=tmp_path / "b", repo=repo_url, checkpoint="checkpoint_run_3.pt", chunk_cache=cache)
    assert (tmp_path / "b" / src.name).read_bytes() == src.read_bytes()
    assert (cache.stats.dropped, cache.stats.fetched, cache.stats.hits) == (1, 1, n - 1)
    assert victim.read_bytes() != bytes(data)  # replaced by the store's object


def test_the_cache_stays_under_its_bound_evicting_the_least_recently_used(tmp_path, repo_url, checkpoint):
    src, n = checkpoint
    bound = 5 * MiB
    cache = ChunkCache(tmp_path / "cache", max_bytes=bound)
    api.pull(to=tmp_path / "a", repo=repo_url, checkpoint="checkpoint_run_3.pt", chunk_cache=cache)
    assert (tmp_path / "a" / src.name).read_bytes() == src.read_bytes()
    held = sum(p.stat().st_size for p in entries(tmp_path / "cache"))
    assert 0 < held <= bound and cache.stats.evicted >= n - 5
    with pytest.raises(UsageError):
        ChunkCache(tmp_path / "cache", max_bytes=0)


def test_four_processes_pulling_one_checkpoint_at_once_fetch_each_chunk_once(tmp_path, repo_url, checkpoint):
    src, n = checkpoint
    # Every chunk read slowed (slow_cli.py), so the four pulls overlap and meet on the same chunks.
    env = {**os.environ, "CKPT_TEST_GET_DELAY": "0.5"}
    pull = [sys.executable, SLOW_CLI, "pull", "checkpoint_run_3.pt", "--repo", repo_url, "--workers", "2"]
    cache = ["--chunk-cache", str(tmp_path / "cache"), "--json"]
    reports = run_together([[*pull, "--to", str(tmp_path / f"p{i}"), *cache] for i in range(4)], env)
    counts = [r["chunk_cache"] for r in reports]
    assert sum(c["fetched"] for c in counts) == n  # each chunk read from the store by one process
    assert sum(c["fetched"] + c["hits"] for c in counts) == 4 * n
    assert sum(c["waited"] for c in counts) > 0  # they did meet: some waited for another's fetch
    for i in range(4):
        assert (tmp_path / f"p{i}" / src.name).read_bytes() == src.read_bytes()
