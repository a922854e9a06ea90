"""Fan-out restore: the chunks several ranks need are fetched from the store once per process group.

A job restarting on N ranks reads its replicated state N times from the store when every rank
fetches what its load plan names. Here the ranks split the distinct chunks that two or more of them
need, each fetches (and authenticates: ``Repository.load_chunk``) its share from the store, and the
plaintexts travel over the job's own process group (gloo on CPU, NCCL on GPU): one broadcast per
owner per round, rounds bounded by a memory budget. A chunk only one rank needs is read by that
rank from the store, as without fan-out.

The peers are not trusted: a chunk id is a keyed hash of the plaintext (format/chunk_format.py), so
every rank checks each chunk it receives against its id before using it. A chunk that fails the
check, or one whose owner could not fetch it (a store error, which the owner marks in what it
sends), is read from the store by each rank that needs it. Nothing a peer sends can put other bytes
into a rank's state; a faulty peer can only cost that rank a read.

``plan_fan_out`` (pure: who needs what, who fetches what, in which round) runs on DCP's
coordinator, which sees every rank's load plan; ``Exchange`` runs one round on every rank. Every
rank walks the same rounds and owners in the same order, so the collectives always match; a rank
never leaves a round early, whatever fails, so none is left waiting in a collective.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from ..format.manifest import ChunkRef

log = logging.getLogger("ckpt_sync.dcp")

DEFAULT_BUDGET = 256 << 20  # plaintext bytes of shared chunks one round holds on each rank


@dataclass(frozen=True)
class RankStamp:
    """What each rank puts in its local load plan: who it is in the reader's group, and whether it
    takes part. The coordinator fans out only when every rank's stamp matches its place in DCP's
    list of plans (the reader's group is the one DCP loads with)."""

    rank: int
    world: int
    enabled: bool


@dataclass(frozen=True)
class SharedChunk:
    ref: ChunkRef
    owner: int  # the rank that fetches it from the store and sends it


@dataclass(frozen=True)
class FanOutPlan:
    """The whole schedule, the same on every rank: rounds of shared chunks in file order."""

    world: int
    rounds: tuple[tuple[SharedChunk, ...], ...]

    def shared_ids(self) -> set[str]:
        return {c.ref.id for r in self.rounds for c in r}


@dataclass
class FanOutStats:
    """What one rank did in a fan-out load (``Reader.fan_out_stats``)."""

    shared_chunks: int = 0  # chunks of the schedule (needed by two ranks or more)
    owned: int = 0  # of those, fetched from the store by this rank for the group
    owner_failed: int = 0  # owned chunks this rank could not fetch (its peers read them themselves)
    received: int = 0  # chunks taken from a peer, checked against their id
    rejected: int = 0  # chunks from a peer that did not match their id (or came marked failed)
    refetched: int = 0  # rejected or failed chunks this rank read from the store instead
    rounds: int = 0
    bytes_broadcast: int = 0  # plaintext bytes this rank sent to the group
    rejected_from: dict[int, int] = field(default_factory=dict)  # peer rank -> chunks that failed the check

    def to_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["rejected_from"] = {str(k): v for k, v in self.rejected_from.items()}
        return out


def plan_fan_out(
    needs: list[Mapping[str, tuple[tuple[str, int], ChunkRef]]], budget: int = DEFAULT_BUDGET
) -> FanOutPlan | None:
    """The schedule for ``needs``: per rank, the chunks its load plan reads (id -> (where in the
    checkpoint, as (file, index), ref)). Chunks two or more ranks need are shared; they go in rounds
    in the checkpoint's order, each holding at most ``budget`` plaintext bytes (at least one
    chunk). Within a round each chunk is given to the rank, among those that need it, with the
    fewest bytes to fetch from the store so far (its own chunks counted), largest chunks first: the
    ranks fetch a round in parallel and the store traffic is spread evenly. None when nothing is
    shared."""
    needers: dict[str, list[int]] = {}
    first: dict[str, tuple[str, int]] = {}
    refs: dict[str, ChunkRef] = {}
    for rank, wanted in enumerate(needs):
        for cid, (where, ref) in wanted.items():
            needers.setdefault(cid, []).append(rank)
            refs[cid] = ref
            first[cid] = min(first.get(cid, where), where)
    load = [0] * len(needs)
    for cid, ranks in needers.items():
        if len(ranks) == 1:
            load[ranks[0]] += refs[cid].size
    shared = sorted((cid for cid, ranks in needers.items() if len(ranks) > 1), key=lambda c: (first[c], c))
    if not shared:
        return None
    batches: list[list[str]] = [[]]
    held = 0
    for cid in shared:
        if batches[-1] and held + refs[cid].size > budget:
            batches.append([])
            held = 0
        batches[-1].append(cid)
        held += refs[cid].size
    rounds: list[tuple[SharedChunk, ...]] = []
    for batch in batches:
        owner: dict[str, int] = {}
        for cid in sorted(batch, key=lambda c: (-refs[c].size, c)):
            o = min(needers[cid], key=lambda r: (load[r], r))
            owner[cid] = o
            load[o] += refs[cid].size
        rounds.append(tuple(SharedChunk(refs[cid], owner[cid]) for cid in batch))
    return FanOutPlan(len(needs), tuple(rounds))


def collective_device(group: Any) -> torch.device:
    """Where the group's collectives take tensors: CPU when it has gloo, else the current GPU (NCCL)."""
    backend = str(dist.get_backend(group))
    if "gloo" not in backend and "nccl" in backend:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class Exchange:
    """One rank's side of the rounds. ``fetch(ref)`` reads, authenticates and checks a chunk from
    the store; ``matches(ref, plain)`` checks a plaintext against its id (the keyed hash).

    ``start(round)`` begins fetching this rank's share of a round in the background; ``run`` then
    takes part in the round's broadcasts. Starting the next round's share before running this one
    overlaps the store reads with the exchange (one extra share, about budget / ranks, held), and
    within a round a rank's own fetches go on while it receives the owners before it. Use as a
    context manager: leaving it stops the fetch threads."""

    def __init__(
        self,
        group: Any,
        rank: int,
        fetch: Callable[[ChunkRef], Any],
        matches: Callable[[ChunkRef, Any], bool],
        *,
        workers: int,
        stats: FanOutStats,
    ) -> None:
        self.group = group
        self.rank = rank
        self.fetch = fetch
        self.matches = matches
        self.workers = max(1, workers)
        self.stats = stats
        self.device = collective_device(group)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="ckpt-fanout-share")

    def __enter__(self) -> Exchange:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def start(self, chunks: Iterable[SharedChunk]) -> dict[str, Future[Any]]:
        """Begin fetching this rank's share of a round (never raises: a failed fetch is None)."""
        mine = [c for c in chunks if c.owner == self.rank]
        self.stats.owned += len(mine)
        return {c.ref.id: self._pool.submit(self._fetch_for_group, c.ref) for c in mine}

    def _fetch_for_group(self, ref: ChunkRef) -> Any:
        try:
            return self.fetch(ref)
        except Exception as err:  # the ranks that need it read it themselves
            log.warning(
                "[WARN] could not fetch chunk %s for the group (%s): each rank that needs it reads it itself",
                ref.id[:16],
                err,
            )
            return None

    def run(self, chunks: Iterable[SharedChunk], wanted: set[str], share: Mapping[str, Future[Any]]) -> dict[str, Any]:
        """Take part in one round (``share``: what ``start`` returned for it); returns the
        plaintexts of the round's chunks in ``wanted``, each from its owner and checked against its
        id, or else read from the store here. Never raises between collectives: a chunk this rank
        could not get at all is left out (the caller's read of it from the store raises then, after
        the rounds)."""
        chunks = tuple(chunks)
        self.stats.rounds += 1
        got: dict[str, Any] = {}
        for owner in sorted({c.owner for c in chunks}):
            theirs = [c for c in chunks if c.owner == owner]
            size = len(theirs) + sum(c.ref.size for c in theirs)
            if owner == self.rank:
                results = {cid: fut.result() for cid, fut in share.items()}
                fetched = {cid: plain for cid, plain in results.items() if plain is not None}
                self.stats.owner_failed += len(results) - len(fetched)
                self.stats.bytes_broadcast += sum(c.ref.size for c in theirs if c.ref.id in fetched)
                packed = self.pack(theirs, fetched)
                tensor = torch.frombuffer(packed, dtype=torch.uint8).to(self.device)
            else:
                tensor = torch.empty(size, dtype=torch.uint8, device=self.device)
            src = dist.get_global_rank(self.group, owner) if self.group is not None else owner
            dist.broadcast(tensor, src=src, group=self.group)
            if owner == self.rank:
                got.update((c.ref.id, fetched[c.ref.id]) for c in theirs if c.ref.id in wanted and c.ref.id in fetched)
                continue
            if not any(c.ref.id in wanted for c in theirs):
                continue
            data = memoryview(tensor.cpu().numpy())
            pos = len(theirs)
            for i, c in enumerate(theirs):
                plain = data[pos : pos + c.ref.size]
                pos += c.ref.size
                if c.ref.id not in wanted:
                    continue
                if not data[i]:  # the owner could not fetch it
                    self.stats.rejected += 1
                elif self.matches(c.ref, plain):
                    got[c.ref.id] = plain
                    self.stats.received += 1
                else:
                    self.stats.rejected += 1
                    self.stats.rejected_from[owner] = self.stats.rejected_from.get(owner, 0) + 1
                    log.warning(
                        "[WARN] chunk %s from rank %d does not match its id: reading it from the store",
                        c.ref.id[:16],
                        owner,
                    )
        self._read_the_rest(chunks, wanted, got)
        return got

    def pack(self, theirs: list[SharedChunk], fetched: Mapping[str, Any]) -> bytearray:
        """What this rank sends for its share of a round: one status byte per chunk (1: fetched),
        then the chunks' plaintexts in order (zeros where a fetch failed)."""
        out = bytearray(len(theirs) + sum(c.ref.size for c in theirs))
        pos = len(theirs)
        for i, c in enumerate(theirs):
            plain = fetched.get(c.ref.id)
            if plain is not None:
                out[i] = 1
                out[pos : pos + c.ref.size] = plain
            pos += c.ref.size
        return out

    def _read_the_rest(self, chunks: tuple[SharedChunk, ...], wanted: set[str], got: dict[str, Any]) -> None:
        missing = [c.ref for c in chunks if c.ref.id in wanted and c.ref.id not in got]
        if not missing:
            return

        def one(ref: ChunkRef) -> tuple[str, Any]:
            try:
                return ref.id, self.fetch(ref)
            except Exception as err:  # raised again where the item is read, after the rounds
                log.warning("[WARN] could not read chunk %s from the store either (%s)", ref.id[:16], err)
                return ref.id, None

        with ThreadPoolExecutor(min(self.workers, len(missing)), thread_name_prefix="ckpt-fanout-read") as pool:
            for cid, plain in pool.map(one, missing):
                if plain is not None:
                    got[cid] = plain
                    self.stats.refetched += 1
