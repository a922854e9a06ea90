"""The manager's file naming: ``checkpoint_{session_id}_{global_step}.pt`` (``.pt.zst`` / ``.zip`` when compressed).

One home for the pattern, so rotation, the session file, verification and recovery agree on which
files are checkpoints and in what order they were made.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ..errors import UsageError
from ..format.manifest import BEST_MARKER
from ..format.ordering import Position, oldest_first

SESSION_FILE = "training_session.json"
BEST_DIR = "best_model"
BEST_METADATA = BEST_MARKER
QUARANTINE_DIR = "quarantine"
SYNC_STATE_DIR = ".ckpt-sync"  # SyncClient: its durable queue and held copies

# Suffix by codec: "" is a plain torch.save file; the zip fallback replaces ".pt" by ".zip".
SUFFIXES = {"": ".pt", "zstd": ".pt.zst", "zip": ".zip"}
CHECKPOINT_NAME = re.compile(r"^checkpoint_(?P<session>.+)_(?P<step>\d+)(?P<suffix>\.pt\.zst|\.pt|\.zip)$")
SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def new_session_id(now: datetime | None = None) -> str:
    """A session id: local time as ``YYYYMMDD_HHMMSS``."""
    return (now or datetime.now()).strftime("%Y%m%d_%H%M%S")


def check_session_id(session_id: str) -> str:
    if not SESSION_ID.match(session_id):
        raise UsageError(f"session id {session_id!r} must be letters, digits, '.', '_' or '-' (it goes in file names)")
    return session_id


def checkpoint_name(session_id: str, global_step: int, codec: str = "") -> str:
    return f"checkpoint_{session_id}_{int(global_step)}{SUFFIXES[codec]}"


@dataclass(frozen=True)
class CheckpointFile:
    path: Path
    session_id: str
    global_step: int
    codec: str
    mtime_ns: int

    @property
    def position(self) -> Position:
        """Where this file is in training (ordering.py): session, step, then modification time."""
        return Position(self.session_id, self.global_step, self.mtime_ns / 1e9, self.mtime_ns / 1e9, self.path.name)


def parse_checkpoint_path(path: str | os.PathLike[str]) -> tuple[str, int, str] | None:
    """(session_id, global_step, codec) for a checkpoint named this way, else None."""
    m = CHECKPOINT_NAME.match(Path(path).name)
    if not m:
        return None
    codec = {v: k for k, v in SUFFIXES.items()}[m.group("suffix")]
    return m.group("session"), int(m.group("step")), codec


def list_checkpoints(directory: str | os.PathLike[str]) -> list[CheckpointFile]:
    """Checkpoint files named this way directly in ``directory``, oldest first by training position
    (session, step, then mtime: ordering.py), never by mtime alone (temp files never match)."""
    out: list[CheckpointFile] = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for e in entries:
        parsed = parse_checkpoint_path(e.name)
        if parsed is None:
            continue
        try:
            if not e.is_file(follow_symlinks=False):
                continue
            mtime = e.stat(follow_symlinks=False).st_mtime_ns
        except FileNotFoundError:  # removed by rotation while we looked
            continue
        out.append(CheckpointFile(Path(e.path), parsed[0], parsed[1], parsed[2], mtime))
    return oldest_first(out, lambda c: c.position)
