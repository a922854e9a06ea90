"""A repository that grows costs no more per commit or restore: commits, ``pull --latest`` and a
watch's retention pass decide from this host's authenticated index of manifest summaries and a
listing of the manifest names, and check only the chunks of the checkpoint at hand.

Requests are counted through a wrapper around the real local store (a listing counts as the pages
a cloud store would return); the index is attacked the ways a local process or a careless copy
would: edited, copied from another repository, outdated by a rewritten manifest.
"""

from __future__ import annotations

import base64
import logging
import os
import random
import shutil
from pathlib import Path

import pytest
from ckpt_sync.providers.local import LocalProvider
from helpers import PAGE, CountingProvider, fill_repository

from ckpt_sync.errors import OperationFailed
from ckpt_sync.format.crypto import KeyRing
from ckpt_sync.format.layout import chunk_key, manifest_key
from ckpt_sync.format.lookup import find_manifest, latest
from ckpt_sync.format.repository import Repository
from ckpt_sync.locations import cache_home
from ckpt_sync.transfer.forget import forget
from ckpt_sync.transfer.opening import with_host_state
from ckpt_sync.transfer.prune import prune
from ckpt_sync.transfer.push import push_path
from ckpt_sync.transfer.restore import pull
from ckpt_sync.transfer.retention import RunScope, fifo_with_tags
from ckpt_sync.transfer.tags import retag


@pytest.fixture
def keys(key: str) -> KeyRing:
    return KeyRing([base64.urlsafe_b64decode(key)])


def _open(root: Path, keys: KeyRing, *, host_state: bool = True) -> tuple[Repository, CountingProvider]:
    """A fresh process's view: a new Repository over the store, counted, with this host's state."""
    counted = CountingProvider(LocalProvider(root))
    repo = Repository.open(counted, keys, create=not root.exists())
    if host_state:
        with_host_state(repo)
    counted.reset()
    return repo, counted


def _new_file(folder: Path, name: str, data: bytes | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(os.urandom(4096) if data is None else data)
    return path


def _grown(tmp_path: Path, keys: KeyRing, count: int) -> Path:
    root = tmp_path / f"repo-{count}"
    repo, _ = _open(root, keys, host_state=False)
    fill_repository(repo, count)
    repo, _ = _open(root, keys)
    repo.summaries()  # this host has read them all once (as `ls` or an earlier push would)
    return root


def _push(root: Path, keys: KeyRing, path: Path, step: int) -> dict[str, int]:
    repo, counted = _open(root, keys)
    push_path(repo, path, metadata={"session_id": "growth", "global_step": step})
    return dict(counted.calls)


def _without_listings(calls: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in calls.items() if not k.startswith("list ") and k != "objects listed"}


def _pages(count: int) -> int:
    return -(-count // PAGE)


@pytest.mark.parametrize("reused", [False, True], ids=["new-data", "reused-chunk"])
def test_requests_per_commit_do_not_grow_with_the_repository(tmp_path, keys, reused):
    per_size = {}
    for count in (40, 1040):  # one listing page of manifest names, then two
        root = _grown(tmp_path, keys, count)
        first = _new_file(tmp_path / f"src-{count}", "first.pt")
        _push(root, keys, first, count)  # the previous commit: the next push reads it once
        data = first.read_bytes() if reused else None
        calls = _push(root, keys, _new_file(tmp_path / f"src-{count}", "second.pt", data), count + 1)
        per_size[count] = calls
        # Nothing but the listing of manifest names sees the repository's size: no manifest is read
        # but the one committed since this host last looked, no chunk is listed.
        assert calls.get("get manifests", 0) <= 1, calls
        assert "list chunks" not in calls, calls
        assert calls["list manifests"] <= 2 * _pages(count + 2), calls  # the agreement check, the commit
        assert calls.get("size chunks", 0) == 1, calls  # the one chunk asked of the store, once
        assert calls.get("put chunks", 0) == (0 if reused else 1), calls
    small, large = (_without_listings(per_size[c]) for c in (40, 1040))
    assert small == large, per_size


def test_pull_latest_reads_one_manifest_and_checks_only_its_chunks(tmp_path, keys):
    per_size = {}
    for count in (40, 1040):
        root = _grown(tmp_path, keys, count)
        repo, counted = _open(root, keys)
        m, _ = pull(repo, tmp_path / f"out-{count}")
        assert m.global_step == count - 1
        calls = per_size[count] = dict(counted.calls)
        assert calls.get("get manifests", 0) <= 1 and "list chunks" not in calls, calls
        assert calls["size chunks"] == len(m.chunk_ids()), calls
    assert _without_listings(per_size[40]) == _without_listings(per_size[1040]), per_size


def test_a_watch_retention_pass_reads_no_manifest(tmp_path, keys):
    root = _grown(tmp_path, keys, 1040)
    src = _new_file(tmp_path / "src", "checkpoint_growth_2000.pt")
    repo, counted = _open(root, keys)
    committed, _ = push_path(repo, src, metadata={"session_id": "growth", "global_step": 2000})
    counted.reset()
    report = prune(repo, fifo_with_tags(2000), scope=RunScope({committed.id}))
    assert report.removed == []
    # Decided from the index: the one manifest read is the commit it follows. What still grows is
    # the listing of chunk objects that collection needs (a page per 1,000 chunks).
    assert counted.calls.get("get manifests", 0) <= 1, counted.calls


def _index_file(repo: Repository) -> Path:
    (path,) = (cache_home() / repo.id).glob("index-*")
    return path


def test_an_edited_index_is_ignored_and_latest_stays_the_newest(tmp_path, keys, caplog):
    root = _grown(tmp_path, keys, 30)
    repo, _ = _open(root, keys)
    index = _index_file(repo)
    raw = index.read_bytes()
    # Promote the oldest checkpoint: the forger keeps the file well formed but cannot recompute the MAC.
    edited = raw.replace(b'"global_step":0,', b'"global_step":999999,', 1)
    assert edited != raw
    index.write_bytes(edited)
    repo, _ = _open(root, keys)
    with caplog.at_level(logging.WARNING, logger="ckpt_sync.index"):
        assert latest(repo).global_step == 29
    assert any("fails authentication" in r.getMessage() for r in caplog.records), caplog.text


def test_an_index_copied_from_another_repository_is_refused(tmp_path, keys, caplog):
    ours = _grown(tmp_path / "a", keys, 5)
    theirs = _grown(tmp_path / "b", keys, 12)  # same key ring, another repository (another id key)
    repo, _ = _open(ours, keys)
    other, _ = _open(theirs, keys)
    shutil.copy(_index_file(other), _index_file(repo))
    repo, _ = _open(ours, keys)
    with caplog.at_level(logging.WARNING, logger="ckpt_sync.index"):
        assert latest(repo).global_step == 4
        assert len(repo.summaries()) == 5
    assert "fails authentication" in caplog.text


def test_a_rewritten_manifest_is_read_again(tmp_path, keys):
    """An entry counts only for the very object it was read from: a manifest object replaced in the
    store (here by another authentic one, as a restore from a backup of the bucket would) is read
    again, not answered from the index."""
    root = _grown(tmp_path, keys, 3)
    repo, _ = _open(root, keys)
    newest = latest(repo)
    older = find_manifest(repo, "checkpoint_growth_0.pt")
    path = root / manifest_key(newest.id)
    token = (root / manifest_key(older.id)).read_bytes()
    # Same id inside: a replay of another checkpoint under this name is refused when read ...
    path.write_bytes(token)
    repo, _ = _open(root, keys)
    assert latest(repo).global_step == 1  # ... and the index's summary of the old object is not used
    assert newest.id not in {s.id for s in repo.summaries()}


def test_a_chunk_the_index_names_but_the_store_lost_is_uploaded_again(tmp_path, keys):
    root = _grown(tmp_path, keys, 3)
    src = _new_file(tmp_path / "src", "a.pt")
    repo, _ = _open(root, keys)
    first, _ = push_path(repo, src, metadata={"session_id": "growth", "global_step": 10})
    (cid,) = first.chunk_ids()
    (root / chunk_key(cid)).unlink()  # lost by the store after the commit
    copy = _new_file(tmp_path / "src2", "b.pt", src.read_bytes())
    repo, counted = _open(root, keys)
    second, stats = push_path(repo, copy, metadata={"session_id": "growth", "global_step": 11})
    assert counted.calls["put chunks"] == 1 and stats.bytes_new > 0
    pull(repo, tmp_path / "back", selector=second.id)
    assert (tmp_path / "back" / "b.pt").read_bytes() == src.read_bytes()


def _latest_id(repo: Repository) -> str:
    try:
        return latest(repo).id
    except OperationFailed as err:
        return str(err)


def _history(rng: random.Random, root: Path, keys: KeyRing, tmp_path: Path) -> None:
    """Random pushes (two sessions, steps out of order, a stray unpositioned file), tag changes
    (which supersede manifests) and forgets, checking after each that the index answers as
    reading every manifest does."""
    for i in range(14):
        repo, _ = _open(root, keys)
        op = rng.choice(["push", "push", "push", "stray", "tag", "forget"])
        ids = [s.id for s in repo.summaries()]
        if op == "push" or not ids:
            meta = {"session_id": rng.choice(["20260101_000000", "20260102_000000"]), "global_step": rng.randrange(50)}
            push_path(repo, _new_file(tmp_path / f"h{i}", f"checkpoint_{i}.pt"), metadata=meta)
        elif op == "stray":
            push_path(repo, _new_file(tmp_path / f"h{i}", "final_model.pt"))
        elif op == "tag":
            retag(repo, rng.choice(ids), add=[rng.choice(["best", "keep"])])
        else:
            forget(repo, [rng.choice(ids)], force=True)
        indexed, _ = _open(root, keys)
        plain, _ = _open(root, keys, host_state=False)
        assert [s.id for s in indexed.summaries()] == [m.id for m in plain.manifests()]
        assert _latest_id(indexed) == _latest_id(plain)
        dry = [prune(r, fifo_with_tags(3), dry_run=True) for r in (indexed, plain)]
        assert dry[0].removed == dry[1].removed and dry[0].kept == dry[1].kept
        assert indexed.referenced_chunks() == plain.referenced_chunks()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_index_answers_as_reading_every_manifest_does(tmp_path, keys, seed):
    _history(random.Random(seed), tmp_path / "repo", keys, tmp_path)
