"""The host's manifest cache: a host reads each manifest from the store once, and the cache never
changes an answer (a manifest deleted or altered in the store, or a damaged cache entry)."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from ckpt_sync.providers.wrapper import WrappingProvider

from ckpt_sync.api import open_repository


class Counting(WrappingProvider):
    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.calls: Counter[str] = Counter()

    def _call(self, op, key, fn):
        self.calls[op, key.split("/", 1)[0]] += 1
        return fn()


def _three_checkpoints(tmp_path: Path, cli, repo_url: str) -> list[Path]:
    paths = []
    for step in (1, 2, 3):
        p = tmp_path / f"checkpoint_c_{step}.pt"
        p.write_bytes(os.urandom(50_000 + step))
        cli("push", "--repo", repo_url, str(p), check=True)
        paths.append(p)
    return paths


def _ls_ids(cli, repo_url: str) -> tuple[list[str], str]:
    proc = cli("ls", "--repo", repo_url, "--json", check=True)
    return [row["id"] for row in json.loads(proc.stdout)], proc.stderr


def _cache_entries(home: Path) -> list[Path]:
    """The manifest copies (not the index of summaries beside them: test_manifest_index.py)."""
    return [p for p in (home / ".cache" / "ckpt-sync").glob("*/manifests/*") if p.is_file()]


def test_a_host_reads_each_manifest_from_the_store_once(tmp_path, key, repo_url, cli):
    _three_checkpoints(tmp_path, cli, repo_url)
    first = open_repository(repo_url)
    first.provider = counted = Counting(first.provider)
    seen = [m.id for m in first.manifests()]
    assert 1 <= counted.calls["get", "manifests"] <= 3  # the pushes on this host may have read some

    again = open_repository(repo_url)  # a new process on the same host
    again.provider = recounted = Counting(again.provider)
    assert [m.id for m in again.manifests()] == seen
    assert recounted.calls["get", "manifests"] == 0
    assert recounted.calls["list", "manifests"] == 1  # the store is still listed every time


def test_a_manifest_deleted_from_the_store_is_gone_though_cached(tmp_path, key, repo_url, repo_dir, cli, isolated_home):
    _, second, _ = _three_checkpoints(tmp_path, cli, repo_url)
    ids, _ = _ls_ids(cli, repo_url)
    assert len(_cache_entries(isolated_home)) == 3
    (repo_dir / "manifests" / ids[0]).unlink()  # a prune on another host

    assert _ls_ids(cli, repo_url)[0] == ids[1:]
    assert len(_cache_entries(isolated_home)) == 2  # the entry went with it
    cli("pull", "--latest", "--from", repo_url, "--to", str(tmp_path / "out"), check=True)
    assert (tmp_path / "out" / second.name).read_bytes() == second.read_bytes()


def test_a_manifest_altered_in_the_store_after_it_was_cached_is_judged_again(tmp_path, key, repo_url, repo_dir, cli):
    _three_checkpoints(tmp_path, cli, repo_url)
    ids, _ = _ls_ids(cli, repo_url)
    path = repo_dir / "manifests" / ids[0]
    data = bytearray(path.read_bytes())
    data[40] ^= 0x80  # same size: only the listing's modification time tells it changed
    path.write_bytes(bytes(data))

    listed, warnings = _ls_ids(cli, repo_url)
    assert listed == ids[1:] and f"skipping unreadable checkpoint {ids[0]}" in warnings
    verify = cli("verify", "--repo", repo_url)
    assert verify.returncode == 1 and ids[0] in verify.stdout


def test_a_damaged_cache_entry_is_never_trusted(tmp_path, key, repo_url, cli, isolated_home):
    _three_checkpoints(tmp_path, cli, repo_url)
    ids, _ = _ls_ids(cli, repo_url)
    for entry in _cache_entries(isolated_home):
        entry.write_bytes(os.urandom(entry.stat().st_size))  # what the store listed, but not its bytes

    listed, warnings = _ls_ids(cli, repo_url)
    assert listed == ids and "unreadable" not in warnings
    repo = open_repository(repo_url)
    repo.provider = counted = Counting(repo.provider)
    assert [m.id for m in repo.manifests()] == ids
    assert counted.calls["get", "manifests"] == 0  # the damaged copies were replaced by good ones
