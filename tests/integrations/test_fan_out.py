"""The fan-out schedule (integrations/fan_out.py plan_fan_out): which chunks are shared, who fetches
each, and how the rounds are cut. The exchange itself runs in real process groups
(tests/providers/test_dcp_fanout.py)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch.distributed")

from ckpt_sync.format.manifest import ChunkRef
from ckpt_sync.integrations.fan_out import plan_fan_out

MiB = 1 << 20


def ref(n: int, size: int = MiB) -> ChunkRef:
    return ChunkRef(f"{n:064x}", size)


def needs_of(*ranks: list[tuple[int, int]]) -> list[dict]:
    """Per rank, (chunk number, size) pairs; a chunk's place in the file is its number."""
    return [{ref(n, size).id: (("__0_0.distcp", n), ref(n, size)) for n, size in chunks} for chunks in ranks]


def test_only_chunks_two_ranks_need_are_shared_and_nothing_shared_means_no_schedule():
    assert plan_fan_out(needs_of([(0, MiB)], [(1, MiB)])) is None
    plan = plan_fan_out(needs_of([(0, MiB), (1, MiB)], [(1, MiB), (2, MiB)]))
    assert plan is not None and plan.shared_ids() == {ref(1).id}
    assert [c.owner for r in plan.rounds for c in r] == [0]  # the tie goes to the lower rank


def test_every_shared_chunk_is_fetched_by_a_rank_that_needs_it_and_the_store_traffic_is_even():
    replicated = [(n, MiB) for n in range(40)]
    private = {0: [(100, 8 * MiB)], 1: [], 2: [(101, 2 * MiB)]}
    needs = needs_of(*[replicated + private[r] for r in range(3)])
    plan = plan_fan_out(needs)
    assert plan is not None and len(plan.shared_ids()) == 40
    fetched = [sum(size for _, size in private[r]) for r in range(3)]
    for rnd in plan.rounds:
        for c in rnd:
            assert c.ref.id in needs[c.owner]
            fetched[c.owner] += c.ref.size
    assert max(fetched) - min(fetched) <= MiB  # within one chunk, the big private chunk counted


def test_rounds_follow_the_file_and_hold_at_most_the_budget_but_always_one_chunk():
    chunks = [(n, MiB) for n in range(10)] + [(10, 5 * MiB)]
    plan = plan_fan_out(needs_of(chunks, chunks), budget=3 * MiB)
    assert plan is not None
    order = [c.ref.id for r in plan.rounds for c in r]
    assert order == [ref(n, size).id for n, size in chunks]
    assert [len(r) for r in plan.rounds] == [3, 3, 3, 1, 1]  # the 5 MiB chunk alone, over the budget
    for r in plan.rounds:
        assert len({c.owner for c in r}) == 2 or len(r) == 1  # both ranks fetch in every full round
