"""Stats: what a repository holds and what deduplication saves, and what forgetting each
checkpoint would free.

All sizes come from one listing of the chunk objects and the readable manifests:

- ``logical_bytes``: the sum of every checkpoint's file sizes (what restoring them all would write).
- ``dedup_ratio``: logical bytes over the plaintext bytes of the distinct chunks they reference.
- ``checkpoints_stored_bytes``: what the checkpoints use in the store: the chunk objects they
  reference and their manifests (about ``logical_bytes / dedup_ratio``, plus encryption, padding,
  less compression).
- ``grace_bytes``: chunk objects no checkpoint references that are younger than the grace period
  (a prune keeps them: another writer may be about to commit them); ``collectable_bytes`` are the
  older ones, which the next prune removes.
- ``stored_bytes``: every chunk and manifest object, i.e. the three above together: what the store
  bills. Kept apart so that a forget not yet pruned never reads as stored above logical.
- a checkpoint's ``unique_bytes``: the stored size of the chunks no other checkpoint references,
  i.e. exactly what ``forget`` of it followed by a prune (past the grace period) frees.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field

from ..defaults import DEFAULT_GRACE
from ..format.layout import CHUNKS, MANIFESTS
from ..format.manifest import Manifest
from ..format.repository import Repository
from ..format.selection import newest


@dataclass(frozen=True)
class CheckpointStats:
    id: str
    name: str
    logical_bytes: int
    unique_bytes: int  # stored bytes only this checkpoint references

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class RepoStats:
    checkpoints: int = 0
    logical_bytes: int = 0
    referenced_plain_bytes: int = 0  # plaintext of the distinct chunks the checkpoints reference
    stored_bytes: int = 0  # every chunk and manifest object
    chunk_objects: int = 0
    manifest_bytes: int = 0
    referenced_chunk_objects: int = 0
    referenced_chunk_bytes: int = 0
    grace_bytes: int = 0
    collectable_bytes: int = 0
    missing_chunks: int = 0  # referenced but not stored (damage: `verify` says which checkpoint)
    unreadable: list[str] = field(default_factory=list)  # manifest ids: their chunks cannot be judged
    per_checkpoint: list[CheckpointStats] = field(default_factory=list)  # newest first

    @property
    def checkpoints_stored_bytes(self) -> int:
        """What the checkpoints use: their chunk objects and manifests (grace-held chunks apart)."""
        return self.referenced_chunk_bytes + self.manifest_bytes

    @property
    def dedup_ratio(self) -> float:
        return self.logical_bytes / self.referenced_plain_bytes if self.referenced_plain_bytes else 1.0

    def to_json(self) -> dict[str, object]:
        derived = {"checkpoints_stored_bytes": self.checkpoints_stored_bytes, "dedup_ratio": round(self.dedup_ratio, 4)}
        return {**asdict(self), **derived}


def repository_stats(repo: Repository, *, grace: float = DEFAULT_GRACE, now: float | None = None) -> RepoStats:
    """Count what ``repo`` holds (see the module docstring for each figure).

    With unreadable manifests (another key, damage) the unique and unreferenced figures would be
    guesses: they are still computed from the readable ones, and ``unreadable`` names the others.
    """
    st = RepoStats()
    manifests: list[Manifest] = list(repo.manifests(lambda mid, _err: st.unreadable.append(mid)))
    objects = {info.key.rsplit("/", 1)[-1]: info for info in repo.provider.list(CHUNKS)}
    st.manifest_bytes = sum(i.size for i in repo.provider.list(MANIFESTS))
    st.stored_bytes = sum(i.size for i in objects.values()) + st.manifest_bytes
    st.chunk_objects = len(objects)
    users: Counter[str] = Counter()
    plain: dict[str, int] = {}
    for m in manifests:
        st.logical_bytes += m.size
        for f in m.files:
            for c in f.chunks:
                plain[c.id] = c.size
        users.update(m.chunk_ids())
    st.checkpoints = len(manifests)
    st.referenced_plain_bytes = sum(plain.values())
    st.missing_chunks = sum(1 for cid in plain if cid not in objects)
    cutoff = (time.time() if now is None else now) - grace
    for cid, info in objects.items():
        if cid in users:
            st.referenced_chunk_objects += 1
            st.referenced_chunk_bytes += info.size
        elif info.modified >= cutoff:
            st.grace_bytes += info.size
        else:
            st.collectable_bytes += info.size
    for m in newest(manifests):
        unique = sum(objects[c].size for c in m.chunk_ids() if users[c] == 1 and c in objects)
        st.per_checkpoint.append(CheckpointStats(m.checkpoint_id, m.name, m.size, unique))
    return st
