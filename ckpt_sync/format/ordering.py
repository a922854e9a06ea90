"""What "newest" means: the one order of checkpoints by training progress
(docs/FORMAT.md, "Which checkpoint is newest").

Every caller that picks or keeps "the newest" — ``pull --latest``, ``ls``, remote and local
retention, ``status`` lag, recovery and ``check --repair`` — sorts with :func:`newest_first` (or
:func:`oldest_first`) from here, never by commit time or file mtime alone.

A checkpoint's :class:`Position` is (session, global step), then the source file's modification
time, then the commit time:

- **Positioned first.** A checkpoint with no training position (neither a session nor a step, from
  its metadata, its content or its name) is older than every checkpoint that has one: a weights
  file or a config pushed by hand after the run never outranks the run's own checkpoints.

- **Sessions.** A session id of the form ``YYYYMMDD_HHMMSS`` (CheckpointManager's) is the session's start time, so
  sessions compare chronologically (a later run is newer whatever its steps). Any other id starts
  when its earliest checkpoint among the ones compared was made (source mtime, else commit time).
  Checkpoints without a session but with a step form one anonymous session; with neither, each is
  its own session, placed by its own time.
- **Inside a session** the higher global step is newer; a checkpoint without a step is placed by
  time after the stepped ones it ties with.
- **Ties** (same session and step, e.g. a re-saved step) go to the later source mtime, then the
  later commit time, then the key (a manifest id or path) so the order is total and stable.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

STAMP_SESSION = re.compile(r"^(\d{8}_\d{6})$")


@dataclass(frozen=True)
class Position:
    """Where a checkpoint is in training. ``mtime`` and ``created`` are unix seconds."""

    session_id: str | None = None
    global_step: int | None = None
    mtime: float | None = None  # the source file's modification time, when known
    created: float = 0.0  # commit time (a manifest) or discovery time (a local file)
    key: str = ""  # tie-breaker: manifest id, or file name

    @property
    def when(self) -> float:
        return self.mtime if self.mtime is not None else self.created

    @property
    def positioned(self) -> bool:
        """Whether training placed it: a session or a step is known."""
        return self.session_id is not None or self.global_step is not None


def session_time(session_id: str) -> float | None:
    """The start time a time-stamp session id (``YYYYMMDD_HHMMSS``, local time) encodes, else None."""
    if not STAMP_SESSION.match(session_id):
        return None
    try:
        return time.mktime(time.strptime(session_id, "%Y%m%d_%H%M%S"))
    except (ValueError, OverflowError):
        return None


def _session_starts(positions: Sequence[Position]) -> dict[object, float]:
    starts: dict[object, float] = {}
    for i, p in enumerate(positions):
        group = _group(p, i)
        start = session_time(p.session_id) if p.session_id is not None else None
        t = start if start is not None else p.when
        starts[group] = min(starts.get(group, t), t)
    return starts


def _group(p: Position, index: int) -> object:
    if p.session_id is not None:
        return ("session", p.session_id)
    if p.global_step is not None:
        return ("anonymous",)
    return ("alone", index)


def sort_keys(positions: Sequence[Position]) -> list[tuple]:
    """One comparable key per position (larger is newer); only meaningful within this set."""
    starts = _session_starts(positions)
    keys = []
    for i, p in enumerate(positions):
        group = _group(p, i)
        step = p.global_step if p.global_step is not None else -1
        keys.append((p.positioned, starts[group], p.session_id or "", step, p.when, p.created, p.key))
    return keys


def oldest_first(items: Iterable[T], position: Callable[[T], Position]) -> list[T]:
    """``items`` sorted by training position, oldest first."""
    listed = list(items)
    keys = sort_keys([position(x) for x in listed])
    return [listed[i] for _, i in sorted(zip(keys, range(len(listed)), strict=True))]


def newest_first(items: Iterable[T], position: Callable[[T], Position]) -> list[T]:
    """``items`` sorted by training position, newest first."""
    return list(reversed(oldest_first(items, position)))
