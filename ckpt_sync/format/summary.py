"""What the everyday decisions need to know of a committed checkpoint, without its whole manifest.

Choosing "latest", applying retention, refusing a second commit of the same version and checking
the config against its checkpoints all look at a handful of fields: the training position, role,
tags, name, which repository the manifest names and which chunks it refers to. A ``Summary`` holds
exactly those, derived from an authenticated, strictly parsed ``Manifest`` (``summarize``) and
nothing else, so a host can keep one per checkpoint (transfer/manifest_index.py) and decide from
them without decrypting and parsing every manifest again. Whatever restores or copies a checkpoint
loads its whole manifest (``Repository.load_manifest``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from .manifest import Manifest, RepositoryBinding
from .ordering import Position


@dataclass(frozen=True)
class Summary:
    id: str
    name: str
    kind: str
    created: float
    host: str
    session_id: str | None
    global_step: int | None
    epoch: int | float | None
    tags: tuple[str, ...]
    role: str
    supersedes: str | None
    checkpoint_id: str
    position: Position
    paths: tuple[str, ...]
    version: str  # version_key: equal for two manifests exactly when Manifest.same_version says so
    repository: RepositoryBinding | None
    chunks: tuple[tuple[str, int], ...]  # (chunk id, plaintext size), in file order

    def chunk_ids(self) -> set[str]:
        return {cid for cid, _ in self.chunks}

    def to_json(self) -> dict[str, Any]:
        p = self.position
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "created": self.created,
            "host": self.host,
            "session_id": self.session_id,
            "global_step": self.global_step,
            "epoch": self.epoch,
            "tags": list(self.tags),
            "role": self.role,
            "supersedes": self.supersedes,
            "checkpoint_id": self.checkpoint_id,
            "position": [p.session_id, p.global_step, p.mtime, p.created, p.key],
            "paths": list(self.paths),
            "version": self.version,
            "repository": None if self.repository is None else self.repository.to_json(),
            "chunks": [list(c) for c in self.chunks],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any], bindings: dict[tuple, RepositoryBinding] | None = None) -> Summary:
        """A summary this host wrote (its index is authenticated as a whole before any entry is
        read: manifest_index.py), so it is rebuilt without the manifest's strict checks.
        ``bindings`` memoises the repository bindings (every summary of a repository has the same)."""
        binding = d["repository"]
        if binding is not None and bindings is not None:
            memo = tuple(sorted(binding.items()))
            binding = bindings.get(memo) or bindings.setdefault(memo, RepositoryBinding.from_json(binding))
        return cls(
            d["id"],
            d["name"],
            d["kind"],
            d["created"],
            d["host"],
            d["session_id"],
            d["global_step"],
            d["epoch"],
            tuple(d["tags"]),
            d["role"],
            d["supersedes"],
            d["checkpoint_id"],
            Position(*d["position"]),
            tuple(d["paths"]),
            d["version"],
            binding if not isinstance(binding, dict) else RepositoryBinding.from_json(binding),
            tuple((cid, size) for cid, size in d["chunks"]),
        )


def version_key(m: Manifest) -> str:
    """A digest of what ``Manifest.same_version`` compares (with chunk ids): name, kind, tags, and
    each file's path, size, hash and chunk ids."""
    what = [
        m.name,
        m.kind,
        sorted(m.tags),
        [[f.path, f.size, list(f.digest) if f.digest else None, [c.id for c in f.chunks]] for f in m.files],
    ]
    return hashlib.sha256(json.dumps(what, separators=(",", ":")).encode()).hexdigest()


def summarize(m: Manifest) -> Summary:
    return Summary(
        m.id,
        m.name,
        m.kind,
        m.created,
        m.host,
        m.session_id,
        m.global_step,
        m.epoch,
        m.tags,
        m.role,
        m.supersedes,
        m.checkpoint_id,
        m.position,
        tuple(f.path for f in m.files),
        version_key(m),
        m.repository,
        tuple((c.id, c.size) for f in m.files for c in f.chunks),
    )
