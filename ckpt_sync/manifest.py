"""The manifest: what one committed checkpoint is.

Frozen dataclasses with explicit, versioned to/from-JSON; nothing else touches the JSON shape.
Documented in docs/FORMAT.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from .errors import IntegrityError
from .ordering import Position

MANIFEST_VERSION = 1
SEED_NAME = re.compile(r"^checkpoint_(?P<session>.+)_(?P<step>\d+)\.pt$")

# What a checkpoint is for (DESIGN.md §4): ``pull --latest`` and retention's N count resumable ones.
RESUMABLE, MODEL_ONLY, BEST = "resumable", "model-only", "best"
ROLES = (RESUMABLE, MODEL_ONLY, BEST)
BEST_MARKER = "best_metadata.json"  # the seed's best-model folder holds this file


def infer_role(tags: tuple[str, ...] | list[str], extra: dict[str, Any]) -> str:
    """The role of a checkpoint that does not record one (version-1 manifests written before roles):
    tagged ``best`` (or handed off as the best model) -> best, a model-only save -> model-only, else resumable."""
    kind = extra.get("checkpoint_kind")
    if "best" in tags or kind == "best":
        return BEST
    if kind == "model_only":
        return MODEL_ONLY
    return RESUMABLE


@dataclass(frozen=True)
class ChunkRef:
    id: str
    size: int


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative POSIX path inside the checkpoint
    size: int
    sha256: str
    chunks: tuple[ChunkRef, ...]
    mtime_ns: int | None = None  # the source file's modification time (restored by pull)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
            "mtime_ns": self.mtime_ns,
            "chunks": [[c.id, c.size] for c in self.chunks],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FileEntry:
        chunks = tuple(ChunkRef(str(i), int(s)) for i, s in d["chunks"])
        mtime = d.get("mtime_ns")
        entry = cls(str(d["path"]), int(d["size"]), str(d["sha256"]), chunks, int(mtime) if mtime is not None else None)
        if sum(c.size for c in chunks) != entry.size:
            raise IntegrityError(f"manifest entry {entry.path!r}: chunk sizes do not add up to the file size")
        return entry


@dataclass(frozen=True)
class Manifest:
    id: str  # object name under manifests/ (time-sortable, opaque)
    name: str  # file or directory name the user pushed
    created: float  # unix seconds
    host: str
    files: tuple[FileEntry, ...]
    kind: str = "file"  # "file" or "dir"
    session_id: str | None = None
    global_step: int | None = None
    epoch: int | None = None
    loss: float | None = None
    tags: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    role: str = RESUMABLE
    # The id of the manifest this one replaces (manifests are write-once: a tag change commits a new
    # one, then deletes the old). Readers hide a superseded manifest, so a crash in between still
    # shows one checkpoint.
    supersedes: str | None = None

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def source_mtime_ns(self) -> int | None:
        """The pushed file's (or folder's newest) modification time, when the push recorded it."""
        v = self.extra.get("source_mtime_ns")
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    @property
    def position(self) -> Position:
        """Where this checkpoint is in training (see ordering.py): what "newest" compares."""
        mtime = self.source_mtime_ns
        return Position(
            self.session_id if isinstance(self.session_id, str) else None,
            self.global_step if isinstance(self.global_step, int) and not isinstance(self.global_step, bool) else None,
            mtime / 1e9 if mtime is not None else None,
            self.created,
            self.id,
        )

    def same_version(self, other: Manifest) -> bool:
        """The same checkpoint committed twice: same name, kind, tags and files (paths, sizes, hashes)."""
        return (
            self.name == other.name
            and self.kind == other.kind
            and sorted(self.tags) == sorted(other.tags)
            and [(f.path, f.size, f.sha256) for f in self.files] == [(f.path, f.size, f.sha256) for f in other.files]
        )

    def chunk_ids(self) -> set[str]:
        return {c.id for f in self.files for c in f.chunks}

    def to_json(self) -> dict[str, Any]:
        return {
            "version": MANIFEST_VERSION,
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "created": self.created,
            "host": self.host,
            "session_id": self.session_id,
            "global_step": self.global_step,
            "epoch": self.epoch,
            "loss": self.loss,
            "tags": list(self.tags),
            "role": self.role,
            "extra": self.extra,
            "supersedes": self.supersedes,
            "files": [f.to_json() for f in self.files],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any], *, expected_id: str | None = None) -> Manifest:
        if d.get("version") != MANIFEST_VERSION:
            raise IntegrityError(f"unsupported manifest version {d.get('version')!r}; upgrade ckpt-sync")
        tags = tuple(d.get("tags", ()))
        extra = dict(d.get("extra") or {})
        m = cls(
            id=str(d["id"]),
            name=str(d["name"]),
            kind=str(d.get("kind", "file")),
            created=float(d["created"]),
            host=str(d.get("host", "")),
            session_id=d.get("session_id"),
            global_step=d.get("global_step"),
            epoch=d.get("epoch"),
            loss=d.get("loss"),
            tags=tags,
            extra=extra,
            supersedes=str(d["supersedes"]) if d.get("supersedes") else None,
            files=tuple(FileEntry.from_json(f) for f in d["files"]),
            role=str(d.get("role") or infer_role(tags, extra)),
        )
        # A manifest copied to another name would otherwise replay an old checkpoint as new.
        if expected_id is not None and m.id != expected_id:
            raise IntegrityError(f"manifest {expected_id} claims to be {m.id} (moved or replayed object)")
        return m


def parse_seed_name(name: str) -> tuple[str | None, int | None]:
    """``checkpoint_{session_id}_{global_step}.pt`` -> (session_id, global_step), else (None, None)."""
    m = SEED_NAME.match(name)
    if not m:
        return None, None
    return m.group("session"), int(m.group("step"))


def safe_relative_path(path: str) -> PurePosixPath:
    """Validate a manifest path: relative, no ``..``, no empty or ``.`` parts, no backslashes/drives."""
    if not path or "\\" in path or "\x00" in path:
        raise IntegrityError(f"unsafe path in manifest: {path!r}")
    p = PurePosixPath(path)
    if p.is_absolute() or any(part in ("", ".", "..") for part in path.split("/")) or ":" in p.parts[0]:
        raise IntegrityError(f"unsafe path in manifest: {path!r} (absolute or escaping the target folder)")
    return p
