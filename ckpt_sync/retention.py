"""What to keep: small composable policies shared by local rotation and remote pruning.

A policy looks at candidates (checkpoints, in any order) and returns the keys it wants kept;
``AnyOf`` keeps what any member keeps. Whatever no policy keeps may be removed. "Newest" is always
the one training order of ordering.py (session, step, source mtime, commit time), and the N of
``KeepLatest`` counts resumable checkpoints only by default (DESIGN.md §4).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from .manifest import BEST, RESUMABLE, Manifest
from .ordering import Position, newest_first, oldest_first


@dataclass(frozen=True)
class Candidate:
    key: Hashable  # a manifest id, or a local path
    position: Position  # orders candidates (ordering.py)
    role: str = RESUMABLE
    tags: frozenset[str] = frozenset()

    @classmethod
    def of(cls, m: Manifest) -> Candidate:
        return cls(m.id, m.position, m.role, frozenset(m.tags))


def _position(c: Candidate) -> Position:
    return c.position


class RetentionPolicy(Protocol):
    def keep(self, candidates: Sequence[Candidate]) -> set[Hashable]: ...


@dataclass(frozen=True)
class KeepLatest:
    """FIFO: the ``n`` newest candidates whose role is in ``roles``."""

    n: int
    roles: tuple[str, ...] = (RESUMABLE,)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError("keep must be at least 1 (the newest checkpoint is never removed)")

    def keep(self, candidates: Sequence[Candidate]) -> set[Hashable]:
        # Ordered as a whole, then filtered: a session's start is judged from all its checkpoints.
        counted = [c for c in newest_first(candidates, _position) if c.role in self.roles]
        return {c.key for c in counted[: self.n]}


@dataclass(frozen=True)
class KeepTagged:
    """Every candidate carrying one of ``tags`` (``pinned``): never removed by FIFO."""

    tags: frozenset[str] = frozenset({"pinned"})

    def keep(self, candidates: Sequence[Candidate]) -> set[Hashable]:
        return {c.key for c in candidates if c.tags & self.tags}


@dataclass(frozen=True)
class KeepNewestOfRole:
    """The newest candidate with ``role``: the current best model survives FIFO, older bests do not."""

    role: str = BEST

    def keep(self, candidates: Sequence[Candidate]) -> set[Hashable]:
        same = [c for c in newest_first(candidates, _position) if c.role == self.role]
        return {same[0].key} if same else set()


@dataclass(frozen=True)
class AnyOf:
    policies: tuple[RetentionPolicy, ...]

    def keep(self, candidates: Sequence[Candidate]) -> set[Hashable]:
        kept: set[Hashable] = set()
        for p in self.policies:
            kept |= p.keep(candidates)
        return kept


def fifo_with_tags(n: int, roles: tuple[str, ...] = (RESUMABLE,)) -> AnyOf:
    """The seed's rotation: the ``n`` newest (counting ``roles``: resumable checkpoints by default),
    the newest ``best``, and everything ``pinned``."""
    return AnyOf((KeepLatest(n, roles), KeepNewestOfRole(BEST), KeepTagged(frozenset({"pinned"}))))


def to_remove(policy: RetentionPolicy, candidates: Iterable[Candidate]) -> list[Candidate]:
    """Candidates no policy keeps, oldest first."""
    items = list(candidates)
    kept = policy.keep(items)
    return [c for c in oldest_first(items, _position) if c.key not in kept]
