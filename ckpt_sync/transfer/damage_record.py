"""What this host found damaged in a repository: chunk ids, so the next push replaces them.

``verify --read-data`` records every chunk it found missing or failing its checks, per repository
(``$XDG_STATE_HOME/ckpt-sync/damaged/<repository id>.json``). A push then uploads such a chunk again
instead of reusing the damaged object (a checkpoint pushed over it would be damaged from birth), and
``repair`` or a push that replaced it takes it off the record. The record lives on the host, never in
the repository: the store is not trusted to say what is damaged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

from ..fs.atomic import atomic_write_bytes
from ..locations import state_home

_ID = re.compile(r"^[0-9a-f]{16}$")
_CHUNK = re.compile(r"^[0-9a-f]{64}$")


def record_file(repository_id: str) -> Path:
    if not _ID.match(repository_id):
        raise ValueError(f"bad repository id {repository_id!r}")
    return state_home() / "damaged" / f"{repository_id}.json"


def damaged_chunks(repository_id: str) -> set[str]:
    """The chunk ids this host recorded as damaged in the repository (empty when none, or unreadable)."""
    try:
        data = json.loads(record_file(repository_id).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    chunks = data.get("chunks") if isinstance(data, dict) else None
    return {c for c in chunks if isinstance(c, str) and _CHUNK.match(c)} if isinstance(chunks, list) else set()


def _write(repository_id: str, chunks: set[str]) -> None:
    """Replace the record atomically (a host that cannot write its state folder only loses the hint)."""
    path = record_file(repository_id)
    try:
        if not chunks:
            path.unlink(missing_ok=True)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps({"chunks": sorted(chunks)}).encode())
    except OSError:
        pass


def record_damaged(repository_id: str, chunk_ids: Iterable[str]) -> None:
    found = set(chunk_ids)
    if found:
        _write(repository_id, damaged_chunks(repository_id) | found)


def record_healed(repository_id: str, chunk_ids: Iterable[str]) -> None:
    healed = set(chunk_ids)
    before = damaged_chunks(repository_id)
    if healed & before:
        _write(repository_id, before - healed)
