"""Change a committed checkpoint's tags (``pinned``, ``best``, your own labels).

Manifests are write-once, so a tag change commits a new manifest with the new tags that names the
old one in ``supersedes``, then deletes the old one (Repository.supersede). Readers hide a
superseded manifest, so at every moment — and after a crash between the two writes — the
checkpoint is listed once; the next tag change or prune removes a left-behind old manifest. The
change runs under a push lock, so a concurrent prune never collects the checkpoint's chunks while
it is between its two manifests, and under the manifests lock, so two changes of one checkpoint
never both replace the same manifest (locks.py). A prune next to it: one that listed before the new
manifest may remove the old one by retention (the new one stays); one that lists after sees the old
one hidden; one that removes a leftover old manifest removes what the change would remove itself.
The new manifest has a new object id but keeps the id the checkpoint was first committed under in
``extra.checkpoint_id`` (Manifest.checkpoint_id): that is the id ``ls`` shows and every verb accepts,
so it stays the same across any number of tag changes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ..errors import UsageError
from ..format.layout import manifest_key, new_manifest_id
from ..format.locks import acquire_manifests_lock, acquire_push_lock
from ..format.lookup import find_manifest
from ..format.manifest import CHECKPOINT_ID, Manifest
from ..format.repository import Repository
from .push import commit_checked


def retag(repo: Repository, selector: str, *, add: Sequence[str] = (), remove: Sequence[str] = ()) -> Manifest:
    """Add and remove tags of the checkpoint ``selector`` names; returns the manifest now committed
    (a new id when the tags changed, the same checkpoint unchanged otherwise)."""
    for tag in (*add, *remove):
        if not tag or tag != tag.strip() or "," in tag:
            raise UsageError(f"not a tag: {tag!r} (no commas, no surrounding spaces)")
    both = set(add) & set(remove)
    if both:
        raise UsageError(f"cannot both add and remove {', '.join(sorted(both))}")
    with acquire_push_lock(repo.provider) as lock, acquire_manifests_lock(repo.provider):
        old = find_manifest(repo, selector)
        tags = tuple(t for t in dict.fromkeys((*old.tags, *add)) if t not in set(remove))
        if tags == old.tags:
            return old
        for leftover in repo.superseded_ids():  # an interrupted change: its old manifest must go first
            repo.provider.delete(manifest_key(leftover))
        new = dataclasses.replace(
            old,
            id=new_manifest_id(),
            tags=tags,
            supersedes=old.id,
            extra={**old.extra, CHECKPOINT_ID: old.checkpoint_id},  # the id users know it by stays
        )
        committed = repo.supersede(old, new)
        return commit_checked(repo, lock, committed)  # already committed: only the check after it runs
