"""Rollback detection: each host remembers the newest checkpoint it has seen per repository.

The store is not trusted (docs/FORMAT.md): deleting or withholding the newest manifests rolls a
repository back to an older, perfectly authentic state that nothing else would notice. So every
commit and every pull records, in this host's state folder
(``$XDG_STATE_HOME/ckpt-sync/seen/<repository id>.json``), the newest checkpoint it saw; ``ls``,
``verify`` and ``pull --latest`` warn in one line when the repository's newest is older than that.

"Newer" is the manifest id's order (commit time, milliseconds, then random bits): a rollback
removes commits, so the newest commit this host saw going missing is exactly the signal.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..format.manifest import Manifest
from ..fs.atomic import atomic_write_bytes
from ..locations import state_home

_ID = re.compile(r"^[0-9a-f]{16}$")


def seen_file(repository_id: str) -> Path:
    if not _ID.match(repository_id):
        raise ValueError(f"bad repository id {repository_id!r}")
    return state_home() / "seen" / f"{repository_id}.json"


def newest_seen(repository_id: str) -> dict[str, Any] | None:
    """What this host recorded (``id``, ``name``, ``step``), or None (never seen, or unreadable)."""
    try:
        data = json.loads(seen_file(repository_id).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("id"), str) else None


def remember(repository_id: str, manifest: Manifest) -> None:
    """Record ``manifest`` when it is newer than what this host has seen (atomic replace; a host
    that cannot write its state folder just loses the protection, never the operation)."""
    seen = newest_seen(repository_id)
    if seen is not None and seen["id"] >= manifest.id:
        return
    path = seen_file(repository_id)
    record = {"id": manifest.id, "name": manifest.name, "step": manifest.global_step}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps(record).encode())
    except OSError:
        pass


def removed_here(repository_id: str, removed_ids: set[str]) -> None:
    """This host itself removed manifests (prune, forget): when the newest it saw is among them, its
    record goes (the next push or pull makes a new one), so its own deletion is never a "rollback"."""
    seen = newest_seen(repository_id)
    if seen is not None and seen["id"] in removed_ids:
        seen_file(repository_id).unlink(missing_ok=True)


def rollback_warning(repository_id: str, newest_id: str | None) -> str | None:
    """One line when the repository's newest checkpoint is older than the newest this host saw."""
    seen = newest_seen(repository_id)
    if seen is None or (newest_id is not None and newest_id >= seen["id"]):
        return None
    now = f"its newest is {newest_id}" if newest_id else "it has no readable checkpoint"
    step = f", step {seen['step']}" if seen.get("step") is not None else ""
    return (
        f"possible rollback: this host saw checkpoint {seen['name']} ({seen['id']}{step}) in this repository, "
        f"but {now}: newer manifests were deleted or are being withheld"
    )
