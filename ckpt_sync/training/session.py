"""The session file ``training_session.json`` (its keys: SESSION_KEYS), always written atomically.

It is derived data: the checkpoint files in the folder are the truth. When the file is missing,
unreadable, or disagrees with the folder (a crash between a save and its update, a repair, a
hand-copied folder), it is rebuilt from the folder, keeping what it knew about the session.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from ..fs.atomic import atomic_write_json
from .naming import SESSION_FILE, CheckpointFile, list_checkpoints

log = logging.getLogger("ckpt_sync.training")

SESSION_KEYS = (
    "session_id",
    "start_time",
    "current_epoch",
    "current_step",
    "total_steps",
    "best_loss",
    "checkpoints",
    "last_checkpoint",
)


def session_path(directory: str | os.PathLike[str]) -> Path:
    return Path(directory) / SESSION_FILE


def listed_path(directory: str | os.PathLike[str], entry: str) -> Path:
    """Where a listed checkpoint is now: always in ``directory``, whatever prefix was recorded.

    Runs record paths like ``checkpoints/training/checkpoint_….pt`` relative to the working
    directory of the run; a resumed run may start elsewhere, or on another host.
    """
    return Path(directory) / Path(entry.replace("\\", "/")).name


def read_session(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The session file's content, or None when it is missing or unreadable."""
    p = session_path(directory)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        log.warning("[WARN] session file %s is unreadable (%s); rebuilding it from the folder", p, err)
        return None
    if not isinstance(data, dict) or not isinstance(data.get("checkpoints"), list):
        log.warning("[WARN] session file %s is not in the expected shape; rebuilding it", p)
        return None
    return data


def is_stale(directory: str | os.PathLike[str], session: dict[str, Any] | None) -> bool:
    """True when the file is missing or its checkpoint list differs from the folder's (names and order)."""
    on_disk = [c.path.name for c in list_checkpoints(directory)]
    if session is None:
        return bool(on_disk)
    listed = [listed_path(directory, str(e)).name for e in session.get("checkpoints", [])]
    return listed != on_disk


def build_session(
    directory: str | os.PathLike[str],
    *,
    session_id: str | None,
    start_time: float | None,
    current_epoch: int | None,
    current_step: int | None,
    total_steps: int | None,
    best_loss: float | None,
    last_checkpoint: float | None,
    files: list[CheckpointFile] | None = None,
    model_only: set[str] | None = None,
) -> dict[str, Any]:
    files = list_checkpoints(directory) if files is None else files
    data: dict[str, Any] = {
        "session_id": session_id,
        "start_time": start_time,
        "current_epoch": current_epoch,
        "current_step": current_step,
        "total_steps": total_steps,
        "best_loss": None if best_loss is None or not math.isfinite(best_loss) else float(best_loss),
        "checkpoints": [os.path.join(str(directory), c.path.name) for c in files],
        "last_checkpoint": last_checkpoint,
    }
    names = {c.path.name for c in files}
    kept = sorted(n for n in (model_only or set()) if n in names)
    if kept:  # only with full_every: which listed files lack optimizer state (recovery skips them)
        data["model_only"] = kept
    return data


def rebuild_session(
    directory: str | os.PathLike[str], base: dict[str, Any] | None = None, *, epoch_of: Any = None
) -> dict[str, Any]:
    """Rebuild from the folder and write it. ``base`` (the old content) keeps session id, start time,
    total steps and best loss; ``epoch_of(path)`` may supply the newest checkpoint's epoch."""
    base = base or {}
    files = list_checkpoints(directory)
    newest = files[-1] if files else None
    current_step = newest.global_step if newest else base.get("current_step")
    epoch = base.get("current_epoch") if newest is None or base.get("current_step") == current_step else None
    if epoch is None and newest is not None and epoch_of is not None:
        try:
            epoch = epoch_of(newest.path)
        except Exception as err:  # a damaged newest file: the epoch stays unknown, recovery will say more
            log.debug("could not read the epoch of %s: %s", newest.path, err)
    best = base.get("best_loss")
    session = build_session(
        directory,
        session_id=base.get("session_id") or (newest.session_id if newest else None),
        start_time=base.get("start_time") or (files[0].mtime_ns / 1e9 if files else None),
        current_epoch=epoch,
        current_step=current_step,
        total_steps=base.get("total_steps"),
        best_loss=float(best) if isinstance(best, int | float) else None,
        last_checkpoint=newest.mtime_ns / 1e9 if newest else base.get("last_checkpoint"),
        files=files,
        model_only=set(base.get("model_only") or ()),
    )
    write_session(directory, session)
    return session


def write_session(directory: str | os.PathLike[str], session: dict[str, Any]) -> Path:
    return atomic_write_json(session_path(directory), session)


def load_or_rebuild(directory: str | os.PathLike[str], *, epoch_of: Any = None) -> dict[str, Any] | None:
    """The current session file, rebuilt first if missing or stale; None for a folder with no checkpoints."""
    session = read_session(directory)
    if is_stale(directory, session):
        log.info("[INFO] session file in %s is missing or stale; rebuilding it from the folder", directory)
        session = rebuild_session(directory, session, epoch_of=epoch_of)
    return session
