"""What to keep: small composable policies shared by local rotation and remote pruning.

A policy looks at candidates (checkpoints, in any order) and returns the keys it wants kept;
``AnyOf`` keeps what any member keeps. Whatever no policy keeps may be removed. "Newest" is always
the one training order of ordering.py (session, step, source mtime, commit time), and the N of
``KeepLatest`` counts resumable checkpoints only by default: a weights export never pushes a
resumable checkpoint out.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..format.manifest import BEST, MODEL_ONLY, RESUMABLE, Manifest
from ..format.ordering import Position, newest_first, oldest_first


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


@dataclass(frozen=True)
class KeepWithin:
    """Everything made within ``seconds`` of the newest candidate (its source mtime, else commit
    time): "the last two days of training", measured from the newest checkpoint, not from now, so
    a run that stopped a month ago does not lose everything to the clock."""

    seconds: float

    def __post_init__(self) -> None:
        if self.seconds <= 0:
            raise ValueError("keep-within must be a positive duration")

    def keep(self, candidates: Sequence[Candidate]) -> set[Hashable]:
        if not candidates:
            return set()
        newest = max(c.position.when for c in candidates)
        return {c.key for c in candidates if c.position.when >= newest - self.seconds}


@dataclass(frozen=True)
class KeepEverySteps:
    """Milestones: in each session, the first checkpoint (by training order) at or past every
    multiple of ``every`` steps, among candidates whose role is in ``roles``. The choice for an
    interval never changes as training goes on, so milestones are stable."""

    every: int
    roles: tuple[str, ...] = (RESUMABLE,)

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError("keep-every-steps must be at least 1")

    def keep(self, candidates: Sequence[Candidate]) -> set[Hashable]:
        kept: dict[tuple[str | None, int], Hashable] = {}
        for c in oldest_first(candidates, _position):
            step = c.position.global_step
            if step is None or c.role not in self.roles:
                continue
            kept.setdefault((c.position.session_id, step // self.every), c.key)
        return set(kept.values())


@dataclass(frozen=True)
class PerSession:
    """``policy`` applied to each training session's checkpoints on their own (``--per-session``):
    keep-last 3 then keeps the 3 newest of every session, not of the whole history."""

    policy: RetentionPolicy

    def keep(self, candidates: Sequence[Candidate]) -> set[Hashable]:
        sessions: dict[str | None, list[Candidate]] = {}
        for c in candidates:
            sessions.setdefault(c.position.session_id, []).append(c)
        kept: set[Hashable] = set()
        for group in sessions.values():
            kept |= self.policy.keep(group)
        return kept


def build_policy(
    *,
    keep_last: int | None = None,
    keep_within: float | None = None,
    keep_every_steps: int | None = None,
    keep_tags: Sequence[str] = (),
    per_session: bool = False,
    roles: tuple[str, ...] = (RESUMABLE,),
) -> AnyOf:
    """The union of the policies asked for (``--keep-last``, ``--keep-within``, ``--keep-every-steps``,
    each per session with ``per_session``; ``--keep-tag``), always with the newest ``best``, the
    newest ``model-only`` (exported weights) unless ``roles`` counts them, and every ``pinned``
    checkpoint. Raises ValueError
    when nothing that counts checkpoints is asked for."""
    counted: list[RetentionPolicy] = []
    if keep_last is not None:
        counted.append(KeepLatest(keep_last, roles))
    if keep_within is not None:
        counted.append(KeepWithin(keep_within))
    if keep_every_steps is not None:
        counted.append(KeepEverySteps(keep_every_steps, roles))
    if not counted:
        raise ValueError("give at least one of keep-last, keep-within, keep-every-steps")
    if per_session:
        counted = [PerSession(p) for p in counted]
    tagged = frozenset({"pinned", *keep_tags})
    newest_of = [KeepNewestOfRole(role) for role in (BEST, MODEL_ONLY) if role not in roles]
    return AnyOf((*counted, *newest_of, KeepTagged(tagged)))


def fifo_with_tags(n: int, roles: tuple[str, ...] = (RESUMABLE,)) -> AnyOf:
    """FIFO rotation: the ``n`` newest (counting ``roles``: resumable checkpoints by default),
    the newest ``best`` and ``model-only``, and everything ``pinned`` (``--keep N`` = ``--keep-last N``)."""
    return build_policy(keep_last=n, roles=roles)


def to_remove(policy: RetentionPolicy, candidates: Iterable[Candidate]) -> list[Candidate]:
    """Candidates no policy keeps, oldest first."""
    items = list(candidates)
    kept = policy.keep(items)
    return [c for c in oldest_first(items, _position) if c.key not in kept]


KEEP_SCOPES = ("run", "repository")


@dataclass(frozen=True)
class RunScope:
    """The checkpoints one run produced, which its ``--keep`` counts and may remove: those its queue
    committed (by manifest id), those a tag change replaced them with, and every checkpoint of a
    training session among them (a run resumed on another host continues its session). Another
    run's checkpoints in the same repository are outside it: only ``prune`` (repository-wide) or
    ``--keep-scope repository`` removes them."""

    committed: frozenset[str] = field(default_factory=frozenset)

    def members(self, manifests: Iterable[Manifest]) -> set[str]:
        listed = list(manifests)
        ids = set(self.committed)
        ids |= {m.id for m in listed if m.supersedes in ids or m.checkpoint_id in ids}  # after tag changes
        sessions = {m.session_id for m in listed if m.id in ids and m.session_id is not None}
        return {m.id for m in listed if m.id in ids or (m.session_id is not None and m.session_id in sessions)}
