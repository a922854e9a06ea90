"""What to keep: small composable policies shared by local rotation and remote pruning.

A policy looks at candidates (checkpoints, newest or oldest first in any order) and returns the
keys it wants kept; ``AnyOf`` keeps what any member keeps. Whatever no policy keeps may be removed.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Candidate:
    key: Hashable  # a manifest id, or a local path
    created: float  # orders candidates: larger is newer
    tags: frozenset[str] = frozenset()


class RetentionPolicy(Protocol):
    def keep(self, candidates: Sequence[Candidate]) -> set[Hashable]: ...


@dataclass(frozen=True)
class KeepLatest:
    """FIFO: the ``n`` newest."""

    n: int

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError("keep must be at least 1 (the newest checkpoint is never removed)")

    def keep(self, candidates: Sequence[Candidate]) -> set[Hashable]:
        newest = sorted(candidates, key=lambda c: c.created, reverse=True)
        return {c.key for c in newest[: self.n]}


@dataclass(frozen=True)
class KeepTagged:
    """Every candidate carrying one of ``tags`` (``best``, ``pinned``): never removed by FIFO."""

    tags: frozenset[str] = frozenset({"best", "pinned"})

    def keep(self, candidates: Sequence[Candidate]) -> set[Hashable]:
        return {c.key for c in candidates if c.tags & self.tags}


@dataclass(frozen=True)
class AnyOf:
    policies: tuple[RetentionPolicy, ...]

    def keep(self, candidates: Sequence[Candidate]) -> set[Hashable]:
        kept: set[Hashable] = set()
        for p in self.policies:
            kept |= p.keep(candidates)
        return kept


@dataclass(frozen=True)
class KeepNewestTagged:
    """The newest candidate carrying ``tag``: the current best model survives FIFO, older bests do not."""

    tag: str = "best"

    def keep(self, candidates: Sequence[Candidate]) -> set[Hashable]:
        tagged = [c for c in candidates if self.tag in c.tags]
        return {max(tagged, key=lambda c: c.created).key} if tagged else set()


def fifo_with_tags(n: int) -> AnyOf:
    """The seed's rotation: keep the ``n`` newest, the newest ``best``, and everything ``pinned``."""
    return AnyOf((KeepLatest(n), KeepNewestTagged("best"), KeepTagged(frozenset({"pinned"}))))


def to_remove(policy: RetentionPolicy, candidates: Iterable[Candidate]) -> list[Candidate]:
    """Candidates no policy keeps, oldest first."""
    items = list(candidates)
    kept = policy.keep(items)
    return sorted((c for c in items if c.key not in kept), key=lambda c: c.created)
