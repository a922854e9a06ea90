"""Each retention policy against a hand-built history of checkpoints (sessions, steps, times): the
objects `ckpt-sync prune`, `watch` and the manager's local FIFO share."""

from __future__ import annotations

import pytest

from ckpt_sync.format.manifest import BEST, MODEL_ONLY, RESUMABLE
from ckpt_sync.format.ordering import Position
from ckpt_sync.retention import (
    Candidate,
    KeepEverySteps,
    KeepLatest,
    KeepTagged,
    KeepWithin,
    PerSession,
    build_policy,
    fifo_with_tags,
    to_remove,
)
from ckpt_sync.units import parse_duration

DAY = 86400.0
T0 = 1_760_000_000.0


def ckpt(session: str, step: int, day: float, role: str = RESUMABLE, tags: tuple[str, ...] = ()) -> Candidate:
    key = f"{session}/{step}{'-' + role if role != RESUMABLE else ''}"
    return Candidate(key, Position(session, step, T0 + day * DAY, T0 + day * DAY, key), role, frozenset(tags))


# Two sessions (seed-style ids: the later one started later), saves every 2500 steps, one a day-ish.
HISTORY = [
    *(ckpt("20251001_000000", s, s / 2500 * 0.5) for s in range(2500, 25001, 2500)),  # days 0.5 .. 5
    ckpt("20251001_000000", 12500, 2.6, BEST, ("best",)),
    ckpt("20251001_000000", 5000, 1.1, MODEL_ONLY),
    *(ckpt("20251010_000000", s, 9 + s / 2500 * 0.25) for s in range(2500, 15001, 2500)),  # days 9.25 .. 10.5
]
HISTORY[2] = ckpt("20251001_000000", 7500, 1.5, tags=("pinned",))


def kept(policy, history=HISTORY):
    return sorted(str(k) for k in policy.keep(history))


def test_keep_last_keeps_the_newest_resumable_by_training_order():
    assert kept(KeepLatest(3)) == ["20251010_000000/10000", "20251010_000000/12500", "20251010_000000/15000"]


def test_keep_within_counts_from_the_newest_checkpoint_not_from_now():
    # The newest is day 10.5: two days back reaches day 8.5, i.e. all of the second session.
    assert kept(KeepWithin(parse_duration("2d"))) == sorted(
        f"20251010_000000/{s}" for s in range(2500, 15001, 2500)
    )
    assert kept(KeepWithin(parse_duration("6d"))) == sorted(
        [f"20251010_000000/{s}" for s in range(2500, 15001, 2500)]
        + ["20251001_000000/22500", "20251001_000000/25000"]
    )


def test_keep_every_steps_keeps_stable_milestones_per_session():
    milestones = KeepEverySteps(10000)
    assert kept(milestones) == sorted(
        [
            "20251001_000000/2500",  # the first of [0, 10000)
            "20251001_000000/10000",
            "20251001_000000/20000",
            "20251010_000000/2500",
            "20251010_000000/10000",
        ]
    )
    # A later save never changes an earlier interval's choice.
    later = [*HISTORY, ckpt("20251010_000000", 17500, 11)]
    assert set(milestones.keep(HISTORY)) <= set(milestones.keep(later))


def test_keep_tag_and_per_session():
    assert kept(KeepTagged(frozenset({"pinned"}))) == ["20251001_000000/7500"]
    assert kept(PerSession(KeepLatest(2))) == [
        "20251001_000000/22500",
        "20251001_000000/25000",
        "20251010_000000/12500",
        "20251010_000000/15000",
    ]


def test_build_policy_is_the_union_plus_the_newest_best_and_model_only_and_pinned():
    policy = build_policy(keep_last=1, keep_every_steps=20000, keep_tags=("paper",), per_session=True)
    history = [*HISTORY, ckpt("20251001_000000", 17500, 3.5, tags=("paper",))]
    assert kept(policy, history) == sorted([
        "20251001_000000/12500-best",  # the newest best
        "20251001_000000/17500",  # --keep-tag paper
        "20251001_000000/2500",  # milestone [0, 20000) of session 1
        "20251001_000000/20000",  # milestone [20000, 40000)
        "20251001_000000/25000",  # newest of session 1 (per session)
        "20251001_000000/5000-model-only",  # the newest model-only (exported weights)
        "20251001_000000/7500",  # pinned
        "20251010_000000/15000",  # newest of session 2
        "20251010_000000/2500",  # milestone of session 2
    ])
    removed = to_remove(policy, history)
    assert [c.key for c in removed][:2] == ["20251001_000000/5000", "20251001_000000/10000"]
    with pytest.raises(ValueError):
        build_policy(keep_tags=("paper",))  # nothing that counts checkpoints


def test_keep_n_stays_keep_last_n():
    assert kept(fifo_with_tags(2)) == kept(build_policy(keep_last=2)) == [
        "20251001_000000/12500-best",
        "20251001_000000/5000-model-only",
        "20251001_000000/7500",
        "20251010_000000/12500",
        "20251010_000000/15000",
    ]


def test_the_managers_fifo_counts_model_only_saves_too():
    # The manager's local rotation: fifo_with_tags(max_keep, (resumable, model-only)).
    local = [ckpt("s", s, s / 100, MODEL_ONLY if s % 200 else RESUMABLE) for s in range(100, 701, 100)]
    assert kept(fifo_with_tags(3, (RESUMABLE, MODEL_ONLY)), local) == ["s/500-model-only", "s/600", "s/700-model-only"]
    # Remote retention counts resumable ones, and keeps the newest model-only beside them.
    assert kept(fifo_with_tags(3), local) == ["s/200", "s/400", "s/600", "s/700-model-only"]


def test_durations_parse_and_refuse():
    assert parse_duration("2d") == 2 * DAY and parse_duration("1d12h") == 1.5 * DAY and parse_duration("90m") == 5400
    for bad in ("", "2x", "-1d", "0"):
        with pytest.raises(Exception, match="duration"):
            parse_duration(bad)
