"""Which checkpoints a ``pull --latest`` or ``ls`` considers: filters by role, tag, session, host,
name, step; the result is always in the one training order (ordering.py), newest first."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import UsageError
from .manifest import RESUMABLE, ROLES, Manifest
from .ordering import newest_first

ANY = "any"


@dataclass(frozen=True)
class Selection:
    """A filter over committed checkpoints. ``role`` is one of ROLES or ``"any"``; the rest are
    None (no filter) or the value to match; ``before_step`` keeps steps strictly below it."""

    role: str = RESUMABLE
    tag: str | None = None
    session: str | None = None
    host: str | None = None
    name: str | None = None  # a glob, e.g. "checkpoint_*_3??.pt"
    step: int | None = None
    before_step: int | None = None

    def __post_init__(self) -> None:
        if self.role not in (*ROLES, ANY):
            raise UsageError(f"unknown role {self.role!r}: use one of {', '.join((*ROLES, ANY))}")
        if self.step is not None and self.before_step is not None:
            raise UsageError("give --step or --before-step, not both")

    def matches(self, m: Manifest) -> bool:
        if self.role != ANY and m.role != self.role:
            return False
        if self.tag is not None and self.tag not in m.tags:
            return False
        if self.session is not None and m.session_id != self.session:
            return False
        if self.host is not None and m.host != self.host:
            return False
        if self.name is not None and not fnmatch.fnmatchcase(m.name, self.name):
            return False
        step = m.position.global_step
        if self.step is not None and step != self.step:
            return False
        return self.before_step is None or (step is not None and step < self.before_step)

    def describe(self, noun: str = "checkpoint") -> str:
        """What was asked for, for error lines: ``resumable checkpoint with tag=best``."""
        parts = [f"{k.replace('_', '-')}={v}" for k in ("tag", "session", "host", "name", "step", "before_step")
                 if (v := getattr(self, k)) is not None]  # fmt: skip
        what = noun if self.role == ANY else f"{self.role} {noun}"
        return what + (f" with {', '.join(parts)}" if parts else "")


def select(manifests: Iterable[Manifest], selection: Selection) -> list[Manifest]:
    """The checkpoints ``selection`` matches, newest first by training position."""
    # Ordered as a whole, then filtered: a session's start is judged from all its checkpoints.
    return [m for m in newest(manifests) if selection.matches(m)]


def newest(manifests: Iterable[Manifest]) -> list[Manifest]:
    """Every checkpoint, newest first by training position."""
    return newest_first(manifests, lambda m: m.position)
