"""``torch.distributed.checkpoint`` storage that commits all ranks as one encrypted checkpoint.

``dcp.save(state, storage_writer=Writer(repo, name="step_100"))``: every rank cuts, encrypts and
uploads its own items straight into the repository (no local disk, deduplicated against what is
stored, memory bounded by the chunk window), and returns the chunk references of what it wrote in
its ``WriteResult``s. The coordinator's ``finish`` then writes DCP's ``.metadata`` and ONE manifest
listing every rank's files, after checking every chunk is stored: the same commit point as any
checkpoint. DCP calls ``finish`` only when every rank's ``write_data`` succeeded, so a failed or
killed rank leaves nothing visible; the chunks already sent are reused by the next save.

``dcp.load(state, storage_reader=Reader(repo))`` fetches only the chunks that hold the byte ranges
the rank's load plan asks for (each authenticated and checked against its id, as every read is).
In a process group the chunks several ranks need (replicated state) are fetched from the store once
for the group and shared over it, each checked against its id by every rank that takes it
(fan_out.py).

The layout is exactly ``FileSystemWriter``'s (``.metadata`` plus ``__<rank>_0.distcp`` files of
``torch.save``d items), so ``ckpt-sync pull`` restores a folder that ``FileSystemReader`` loads,
and ``ls``, ``verify`` and retention treat it as any folder checkpoint.

This module imports torch; ``import ckpt_sync`` does not import it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import pickle
import threading
import uuid
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future as PoolFuture
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed._shard._utils import narrow_tensor_by_index
from torch.distributed.checkpoint.filesystem import CURRENT_DCP_VERSION, _StorageInfo
from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex, StorageMeta
from torch.distributed.checkpoint.planner import (
    LoadItemType,
    LoadPlan,
    LoadPlanner,
    ReadItem,
    SavePlan,
    SavePlanner,
    WriteItem,
    WriteItemType,
)
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter, WriteResult
from torch.futures import Future

from ..buffers import BufferPool
from ..errors import IntegrityError, OperationFailed, UsageError
from ..format.checkpoint_content import Content, role_of
from ..format.chunking import ChunkPolicy
from ..format.contents import ChunkMap
from ..format.file_digest import FileHasher
from ..format.locks import Lock, acquire_push_lock
from ..format.lookup import find_manifest, latest
from ..format.manifest import RESUMABLE, ChunkRef, FileEntry, Manifest
from ..format.repository import Repository
from ..format.selection import Selection
from ..format.summary import Summary
from ..pipeline import default_workers
from ..transfer.counters import TransferStats
from ..transfer.push import commit_checked, describe, draft_manifest
from .fan_out import DEFAULT_BUDGET, Exchange, FanOutPlan, FanOutStats, RankStamp, plan_fan_out

log = logging.getLogger("ckpt_sync.dcp")
METADATA_FILE = ".metadata"  # DCP's name (FileSystemWriter), so a pulled folder loads with FileSystemReader
DATA_SUFFIX = ".distcp"
LAYOUT = "torch.distributed.checkpoint"  # manifest.extra["layout"]: how readers recognise one


def is_dcp_manifest(manifest: Manifest | Summary) -> bool:
    """A folder checkpoint holding DCP metadata at its top (written by the Writer, or a pushed DCP folder)."""
    return manifest.kind == "dir" and METADATA_FILE in manifest.paths


def _open(repo: str | Repository | None, key_file: str | os.PathLike[str] | None, *, create: bool) -> Repository:
    if isinstance(repo, Repository):
        return repo
    from ..api import open_repository

    return open_repository(repo, key_file=key_file, create=create)


# --- writing -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _RankPlan:
    """What the coordinator assigns each rank (``SavePlan.storage_data``)."""

    file: str  # the rank's data file, FileSystemWriter's name: __<rank>_0.distcp
    save_id: str


@dataclass(frozen=True)
class StoredItem:
    """``WriteResult.storage_data``: where the item is in its file, and that file's stored chunks.

    Every item of one file shares one ``FileEntry`` (pickled once per rank when DCP gathers the
    results), so the coordinator learns every rank's files without any other collective.
    """

    info: _StorageInfo
    file: FileEntry


class _ChunkSink(io.RawIOBase):
    """A write-only stream that cuts what is written into chunks and stores them in the background.

    ``cut()`` ends the current chunk (at item boundaries); full chunks are cut at the policy's size.
    At most ``window`` chunks are in flight and buffers are reused, so memory is
    (window + 1 + workers) x chunk size whatever is written. ``close_file()`` returns the FileEntry.
    """

    def __init__(
        self, repo: Repository, pool: ThreadPoolExecutor, path: str, policy: ChunkPolicy, workers: int, stats: Any
    ) -> None:
        super().__init__()
        self.repo = repo
        self.pool = pool
        self.path = path
        self.policy = policy
        self.stats = stats
        self.window = workers + 2
        self._inputs = BufferPool(self.window + 1, policy.chunk_size)
        self._tokens = repo.token_buffers(workers, policy.chunk_size)
        self._buf: bytearray | None = None
        self._fill = 0
        self._pos = 0
        self._sha = repo.file_hasher()
        self._pending: deque[PoolFuture[tuple[ChunkRef, int]]] = deque()
        self._refs: list[ChunkRef] = []

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def write(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        n = len(view)
        self._sha.update(view)
        while view:
            if self._buf is None:
                self._buf = self._inputs.acquire()
                self._fill = 0
            take = min(len(view), self.policy.chunk_size - self._fill)
            self._buf[self._fill : self._fill + take] = view[:take]
            self._fill += take
            view = view[take:]
            if self._fill == self.policy.chunk_size:
                self.cut()
        self._pos += n
        return n

    def pending_bytes(self) -> int:
        return self._fill if self._buf is not None else 0

    def cut(self) -> None:
        if self._buf is None or self._fill == 0:
            return
        buf, fill = self._buf, self._fill
        self._buf = None
        self._pending.append(self.pool.submit(self._store, buf, fill))
        while len(self._pending) >= self.window:
            self._collect(self._pending.popleft())

    def _store(self, buf: bytearray, fill: int) -> tuple[ChunkRef, int]:
        scratch = self._tokens.acquire()
        try:
            return self.repo.store_chunk(memoryview(buf)[:fill], scratch=scratch)
        finally:
            self._tokens.release(scratch)
            self._inputs.release(buf)

    def _collect(self, fut: PoolFuture[tuple[ChunkRef, int]]) -> None:
        ref, sent = fut.result()
        self._refs.append(ref)
        self.stats.chunks += 1
        self.stats.bytes_read += ref.size
        if sent:
            self.stats.chunks_new += 1
            self.stats.bytes_new += ref.size
            self.stats.bytes_sent += sent

    def close_file(self) -> FileEntry:
        self.cut()
        while self._pending:
            self._collect(self._pending.popleft())
        self.stats.files += 1
        return FileEntry(path=self.path, size=self._pos, chunks=tuple(self._refs), **self._sha.entry_hashes())

    def abandon(self) -> None:
        """Stop after an error: cancel what has not started, let running stores finish."""
        for fut in self._pending:
            fut.cancel()
        for fut in self._pending:
            if not fut.cancelled():
                fut.exception()
        self._pending.clear()


def _item_nbytes(item: WriteItem) -> int:
    if item.tensor_data is None:
        return item.bytes_io_data.nbytes if item.bytes_io_data is not None else 0
    n = 1
    for s in item.tensor_data.size:
        n *= s
    return n * torch._utils._element_size(item.tensor_data.properties.dtype)


def _cpu_tensor(data: Any) -> torch.Tensor:
    """As FileSystemWriter: on the host, and no bigger than its view (torch.save writes the whole storage)."""
    tensor = data.detach().cpu()
    if tensor.untyped_storage().size() != tensor.numel() * tensor.element_size():
        tensor = tensor.clone()
    return tensor


class Writer(StorageWriter):
    """A DCP ``StorageWriter`` committing every rank's items as one ckpt-sync checkpoint.

    ``repo``: a repository URL (or an open Repository, in this process), as ``ckpt-sync --repo``;
    ``name`` names the checkpoint (default: the ``checkpoint_id`` given to ``dcp.save``);
    ``metadata`` may carry ``session_id``, ``global_step``, ``epoch``, ``loss`` and any other
    JSON-serialisable values (kept under ``extra``), ``tags`` labels such as ``best``.
    After the save, ``manifest`` (coordinator) is the committed checkpoint and ``stats`` each rank's
    transfer counters. Every rank builds its own Writer with the same arguments.
    """

    def __init__(
        self,
        repo: str | Repository | None = None,
        *,
        name: str | None = None,
        tags: Iterable[str] = (),
        metadata: dict[str, Any] | None = None,
        key_file: str | os.PathLike[str] | None = None,
        chunk_size: int | None = None,
        workers: int | None = None,
    ) -> None:
        super().__init__()
        self._repo_arg = repo
        self.key_file = key_file
        self.name = name
        self.tags = tuple(tags)
        self.metadata = dict(metadata or {})
        self.policy = ChunkPolicy.of_size(chunk_size)
        self.workers = workers or default_workers()
        self.repo: Repository | None = None
        self.is_coordinator = False
        self.rank: int | None = None
        self.save_id = str(uuid.uuid4())
        self.manifest: Manifest | None = None
        self.stats = TransferStats()
        self._lock: Lock | None = None

    # -- the DCP protocol --

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        if checkpoint_id is not None:
            self.name = os.fspath(checkpoint_id)
        self.save_id = str(uuid.uuid4())
        self.manifest = None
        self.stats = TransferStats()
        self._release()

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        if not kwargs.get("use_collectives", True):
            raise UsageError(
                "ckpt_sync.dcp.Writer commits all ranks as one checkpoint and needs DCP's collectives "
                "(use_collectives=True)"
            )
        self.is_coordinator = is_coordinator
        self.rank = kwargs.get("rank")
        # A new save (DCP calls reset only when given a checkpoint_id): fresh counters, no lock left
        # over from a save that failed on another rank (finish never came).
        self._release()
        self.manifest = None
        self.stats = TransferStats()
        self.save_id = str(uuid.uuid4())
        if self.repo is None:
            self.repo = _open(self._repo_arg, self.key_file, create=True)

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        return [
            dataclasses.replace(plan, storage_data=_RankPlan(f"__{i}_0{DATA_SUFFIX}", self.save_id))
            for i, plan in enumerate(plans)
        ]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        assert self.repo is not None, "set_up_storage_writer was not called"
        rank_plan: _RankPlan = plan.storage_data
        self.save_id = rank_plan.save_id
        # Held through finish on the coordinator (the commit), through this call elsewhere: a prune
        # never removes chunks this save relies on while it runs.
        self._lock = acquire_push_lock(self.repo.provider)
        try:
            self.repo.forget_known_chunks()  # dedup against what is stored now
            results = self._write_file(rank_plan.file, plan.items, planner)
        except BaseException:
            self._release()
            raise
        if not self.is_coordinator:
            self._release()
        fut: Future[list[WriteResult]] = Future()
        fut.set_result(results)
        return fut

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        """Coordinator only, and only when every rank wrote its items: store .metadata, then commit."""
        assert self.repo is not None
        try:
            files: dict[str, FileEntry] = {}
            storage: dict[MetadataIndex, _StorageInfo] = {}
            for rank_results in results:
                for wr in rank_results:
                    stored: StoredItem = wr.storage_data
                    storage[wr.index] = stored.info
                    files[stored.file.path] = stored.file
            metadata.version = CURRENT_DCP_VERSION
            metadata.storage_data = storage
            metadata.storage_meta = self.storage_meta()
            blob = pickle.dumps(metadata)
            with ThreadPoolExecutor(self.workers, thread_name_prefix="ckpt-dcp") as pool:
                sink = _ChunkSink(self.repo, pool, METADATA_FILE, self.policy, self.workers, self.stats)
                try:
                    sink.write(blob)
                    files[METADATA_FILE] = sink.close_file()
                except BaseException:
                    sink.abandon()
                    raise
            meta = dict(self.metadata)
            meta.setdefault("layout", LAYOUT)
            meta.setdefault("ranks", len(results))
            # What the save holds decides its role unless the caller said: optimizer state (its keys
            # under optim*/param_groups) or a step makes it resumable (checkpoint_content.role_of).
            optimizer = any(k.startswith("optim") or "param_groups" in k for k in metadata.state_dict_metadata)
            content = Content(role_of(optimizer=optimizer, position="global_step" in meta, tensors=True))
            name = self.name or f"dcp_{self.save_id[:8]}"
            role, meta, _, _ = describe(name, "dir", [], self.tags, meta, None, content)
            entries = [files[p] for p in sorted(files)]
            manifest = draft_manifest(name, "dir", entries, None, None, self.tags, meta, role)
            # Verifies every chunk of every rank is stored, then the manifest (or finds this version
            # committed), then that no prune judged this save gone meanwhile (push.commit_checked).
            assert self._lock is not None
            self.manifest = commit_checked(self.repo, self._lock, manifest)
            self.stats.finish()
        finally:
            self._release()

    def storage_meta(self) -> StorageMeta | None:
        return StorageMeta(checkpoint_id=self.name, save_id=self.save_id)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return False  # never picked automatically from a checkpoint_id: pass storage_writer=Writer(...)

    # -- helpers --

    def _write_file(self, file: str, items: list[WriteItem], planner: SavePlanner) -> list[WriteResult]:
        """Serialise the items as FileSystemWriter does (bytes items, then tensors, each torch.save'd).

        Each item begins a chunk, so a reader fetches only the chunks of the items it needs.
        Small shards of this rank's tensors share chunks (fewer objects); whole tensors and bytes
        items, which other ranks read too, always stand alone.
        """
        ordered = [i for i in items if i.type == WriteItemType.BYTE_IO]
        ordered += [i for i in items if i.type != WriteItemType.BYTE_IO]
        if not ordered:
            return []
        placed: list[tuple[WriteItem, int, int]] = []
        with ThreadPoolExecutor(self.workers, thread_name_prefix="ckpt-dcp") as pool:
            sink = _ChunkSink(self.repo, pool, file, self.policy, self.workers, self.stats)  # type: ignore[arg-type]
            try:
                for item in ordered:
                    groupable = item.type == WriteItemType.SHARD and _item_nbytes(item) < self.policy.min_size
                    if not groupable or sink.pending_bytes() >= self.policy.min_size:
                        sink.cut()
                    start = sink.tell()
                    data = planner.resolve_data(item)
                    if item.type == WriteItemType.BYTE_IO:
                        sink.write(data.getbuffer())
                    else:
                        torch.save(_cpu_tensor(data), sink)
                    del data
                    placed.append((item, start, sink.tell() - start))
                    if not groupable:
                        sink.cut()
                entry = sink.close_file()
            except BaseException:
                sink.abandon()
                raise
        return [
            WriteResult(item.index, length, StoredItem(_StorageInfo(file, start, length), entry))
            for item, start, length in placed
        ]

    def _release(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._release()


# --- reading -------------------------------------------------------------------------------------


class Reader(StorageReader):
    """A DCP ``StorageReader`` over a committed checkpoint: ``checkpoint`` is ``"latest"`` — the
    newest intact DCP checkpoint of ``role`` (resumable by default; "model-only", "best" or "any"
    to load weights) by training position, the rule every reader shares (lookup.py) — a manifest id
    (or unique prefix) or a checkpoint name.

    In a process group the coordinator resolves ``"latest"`` and the others follow, so all ranks
    load the same checkpoint even while another one is being committed. ``stats`` counts what this
    rank fetched.

    ``fan_out`` (on by default in a process group of more than one rank; ``False`` turns it off):
    the chunks two or more ranks' load plans need are fetched from the store once for the group —
    the ranks split them, each fetches its share, and they are exchanged over the process group in
    rounds of at most ``fan_out_budget`` plaintext bytes. Every rank checks each chunk it receives
    against its id, and reads from the store any that fails the check or that its owner could not
    fetch (fan_out.py). ``fan_out_stats`` says what this rank did. The Reader's ``process_group``
    must be the one ``dcp.load`` is given (both default to the default group); where they differ
    every rank reads for itself.
    """

    def __init__(
        self,
        repo: str | Repository | None = None,
        *,
        checkpoint: str = "latest",
        role: str = RESUMABLE,
        key_file: str | os.PathLike[str] | None = None,
        workers: int | None = None,
        process_group: Any = None,
        fan_out: bool | None = None,
        fan_out_budget: int = DEFAULT_BUDGET,
    ) -> None:
        super().__init__()
        self._repo_arg = repo
        self.key_file = key_file
        self.checkpoint = checkpoint
        self.selection = Selection(role)  # UsageError for an unknown role, before anything is read
        self.workers = workers or default_workers()
        self.process_group = process_group
        if fan_out_budget <= 0:
            raise UsageError(f"fan_out_budget must be a positive number of bytes, not {fan_out_budget}")
        self.fan_out = fan_out
        self.fan_out_budget = fan_out_budget
        self.fan_out_stats = FanOutStats()
        self.repo: Repository | None = None
        self.manifest: Manifest | None = None
        self.storage_data: dict[MetadataIndex, _StorageInfo] = {}
        self.load_id = str(uuid.uuid4())
        self.stats = TransferStats()
        self._files: dict[str, ChunkMap] = {}
        self._recent: dict[str, Any] = {}  # the last chunk, when the next item may begin in it

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        if checkpoint_id is not None:
            self.checkpoint = os.fspath(checkpoint_id)
        self.manifest = None
        self.storage_data = {}
        self.load_id = str(uuid.uuid4())
        self.stats = TransferStats()
        self.fan_out_stats = FanOutStats()

    def read_metadata(self, *args: Any) -> Metadata:
        if self.repo is None:
            self.repo = _open(self._repo_arg, self.key_file, create=False)
        self.manifest = self._resolve()
        self._files = {f.path: ChunkMap(f) for f in self.manifest.files}
        meta_entry = self._files.get(METADATA_FILE)
        if meta_entry is None:
            raise UsageError(f"checkpoint {self.manifest.name} ({self.manifest.id}) is not a DCP checkpoint")
        blob = self._read_range(meta_entry, 0, meta_entry.entry.size)
        check = FileHasher.checking(meta_entry.entry)
        check.update(blob)
        if not check.matches(meta_entry.entry):
            raise IntegrityError(f"{self.manifest.name}/{METADATA_FILE}: whole-file hash mismatch")
        # An authenticated object of this repository (Fernet HMAC, chunk ids): as trusted as the
        # .metadata FileSystemReader unpickles from local disk.
        metadata: Metadata = pickle.loads(blob)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        if metadata.storage_data is None:
            raise IntegrityError("DCP metadata has no storage data")
        self.storage_data = metadata.storage_data

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        # Who this rank is in the reader's group: the coordinator fans out only when every rank's
        # stamp matches its place among DCP's plans.
        grouped = self.fan_out is not False and dist.is_available() and dist.is_initialized()
        rank = dist.get_rank(self.process_group) if grouped else 0
        world = dist.get_world_size(self.process_group) if grouped else 1
        return dataclasses.replace(plan, storage_data=RankStamp(rank, world, grouped and world > 1))

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        schedule = self._fan_out_plan(plans)
        return [dataclasses.replace(plan, storage_data=schedule) for plan in plans]

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        """Fetch only the chunks under the items of this rank's plan, in file order, each chunk once;
        with a fan-out schedule, the shared ones through the group's rounds."""
        reqs = sorted(plan.items, key=lambda r: self._where(r)[::-1])
        if isinstance(plan.storage_data, FanOutPlan):
            self._read_fanned_out(reqs, planner, plan.storage_data)
        else:
            for req in reqs:
                self._load_item(req, planner)
        self.stats.finish()
        fut: Future[None] = Future()
        fut.set_result(None)
        return fut

    def _load_item(self, req: ReadItem, planner: LoadPlanner, have: dict[str, Any] | None = None) -> None:
        info = self.storage_data[req.storage_index]
        if info.transform_descriptors:
            raise UsageError(f"DCP stream transforms {info.transform_descriptors} are not supported")
        data = self._read_range(self._file(info.relative_path), info.offset, info.length, have)
        if req.type == LoadItemType.BYTE_IO:
            planner.load_bytes(req, io.BytesIO(data))
            return
        tensor = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        del data
        tensor = narrow_tensor_by_index(tensor, req.storage_offsets, req.lengths)
        target = planner.resolve_tensor(req).detach()
        if target.size() != tensor.size():
            raise IntegrityError(f"{req.storage_index}: size {tuple(tensor.size())} != {tuple(target.size())}")
        target.copy_(tensor)
        planner.commit_tensor(req, target)

    def _chunks_of(self, req: ReadItem) -> dict[str, tuple[tuple[str, int], ChunkRef]]:
        """The chunks an item reads: id -> ((file, index), ref). Empty where the metadata points
        outside the file (the read itself raises then)."""
        info = self.storage_data.get(req.storage_index)
        f = self._files.get(info.relative_path) if info is not None else None
        if info is None or f is None:
            return {}
        try:
            covering = f.covering(info.offset, info.length)
        except ValueError:
            return {}
        return {f.chunk(i).id: ((info.relative_path, i), f.chunk(i)) for i in covering}

    def _fan_out_plan(self, plans: list[LoadPlan]) -> FanOutPlan | None:
        """The coordinator's schedule, when every rank takes part and something is shared."""
        world = len(plans)
        stamps = [p.storage_data for p in plans]
        if world < 2 or not all(
            isinstance(s, RankStamp) and s.enabled and s.rank == i and s.world == world for i, s in enumerate(stamps)
        ):
            return None
        needs: list[dict[str, tuple[tuple[str, int], ChunkRef]]] = []
        for plan in plans:
            wanted: dict[str, tuple[tuple[str, int], ChunkRef]] = {}
            for req in plan.items:
                for cid, (where, ref) in self._chunks_of(req).items():
                    if cid not in wanted or where < wanted[cid][0]:
                        wanted[cid] = (where, ref)
            needs.append(wanted)
        return plan_fan_out(needs, self.fan_out_budget)

    def _read_fanned_out(self, reqs: list[ReadItem], planner: LoadPlanner, schedule: FanOutPlan) -> None:
        """Walk every round of the schedule (all ranks do, in the same order), loading each item as
        soon as the shared chunks it reads have been through their round; its other chunks come from
        the store. A shared chunk is kept until the last item that reads it is loaded. An error in
        loading an item is raised after the last round, so no peer waits on this rank."""
        assert self.repo is not None
        repo = self.repo
        shared = schedule.shared_ids()
        needs = [set(self._chunks_of(r)) & shared for r in reqs]
        uses: dict[str, int] = {}
        for ids in needs:
            for cid in ids:
                uses[cid] = uses.get(cid, 0) + 1
        stats = self.fan_out_stats
        stats.shared_chunks = len(shared)

        counting = threading.Lock()  # fetches run on the exchange's threads

        def fetch(ref: ChunkRef) -> Any:
            plain = repo.load_chunk(ref)
            with counting:
                self.stats.chunks += 1
                self.stats.bytes_sent += repo.format.max_token_size(ref.size)
            return plain

        def matches(ref: ChunkRef, plain: Any) -> bool:
            return len(plain) == ref.size and repo.chunk_id(plain) == ref.id

        rank = dist.get_rank(self.process_group)
        have: dict[str, Any] = {}
        settled: set[str] = set()
        failure: BaseException | None = None
        nxt = 0

        def load_ready(everything: bool) -> None:
            nonlocal nxt, failure
            while nxt < len(reqs) and (everything or needs[nxt] <= settled):
                if failure is None:
                    try:
                        self._load_item(reqs[nxt], planner, have)
                    except Exception as err:
                        failure = err
                for cid in needs[nxt]:
                    uses[cid] -= 1
                    if not uses[cid]:
                        have.pop(cid, None)
                nxt += 1

        rounds = schedule.rounds
        with Exchange(self.process_group, rank, fetch, matches, workers=self.workers, stats=stats) as exchange:
            share = exchange.start(rounds[0])
            for k, chunks in enumerate(rounds):
                following = exchange.start(rounds[k + 1]) if k + 1 < len(rounds) else {}  # overlaps this round
                wanted = {c.ref.id for c in chunks if uses.get(c.ref.id)}
                have.update(exchange.run(chunks, wanted, share))
                share = following
                settled.update(c.ref.id for c in chunks)
                load_ready(everything=False)
        load_ready(everything=True)
        if failure is not None:
            raise failure

    @property
    def checkpoint_id(self) -> str:
        return self.manifest.id if self.manifest is not None else self.checkpoint

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return False

    # -- helpers --

    def _where(self, req: ReadItem) -> tuple[int, str]:
        info = self.storage_data[req.storage_index]
        return info.offset, info.relative_path

    def _file(self, path: str) -> ChunkMap:
        try:
            return self._files[path]
        except KeyError:
            raise IntegrityError(f"DCP metadata names {path!r}, which is not in the checkpoint") from None

    def _read_range(self, f: ChunkMap, start: int, length: int, have: dict[str, Any] | None = None) -> bytearray:
        """The plaintext bytes [start, start + length) of the file, from the chunks covering them:
        those in ``have`` (already checked against their id), the others fetched in parallel (each
        authenticated and checked against its id). Requests come in file order, so a chunk shared by
        several small items is kept for the next ones, not fetched again."""
        out = bytearray(length)
        try:
            covering = f.covering(start, length)
        except ValueError:
            raise IntegrityError(f"{f.entry.path}: DCP metadata points outside the file") from None
        assert self.repo is not None
        repo = self.repo
        last = f.chunk(covering[-1]) if covering else None

        def fetch(i: int) -> tuple[ChunkRef, Any]:
            ref = f.chunk(i)
            plain = repo.load_chunk(ref)
            f.copy_overlap(i, plain, out, start)
            return ref, (plain if ref is last else None)  # only the last may be needed again

        todo = []
        for i in covering:
            if have is not None and f.chunk(i).id in have:
                f.copy_overlap(i, have[f.chunk(i).id], out, start)
            elif f.chunk(i).id in self._recent:
                f.copy_overlap(i, self._recent[f.chunk(i).id], out, start)
            else:
                todo.append(i)
        fetched: dict[str, Any] = {}
        if todo:
            with ThreadPoolExecutor(min(self.workers, len(todo)), thread_name_prefix="ckpt-dcp") as pool:
                for ref, plain in pool.map(fetch, todo):
                    self.stats.chunks += 1
                    self.stats.bytes_sent += repo.format.max_token_size(ref.size)
                    if plain is not None:
                        fetched = {ref.id: plain}
        if last is not None:
            ends_inside = f.offsets[covering[-1] + 1] > start + length  # the next item begins in this chunk
            keep = fetched.get(last.id, self._recent.get(last.id))
            self._recent = {last.id: keep} if ends_inside and keep is not None else {}
        self.stats.bytes_read += length
        return out

    def _resolve(self) -> Manifest:
        """The manifest to load; in a process group, the coordinator's choice for every rank."""
        assert self.repo is not None
        group_size = dist.get_world_size(self.process_group) if dist.is_available() and dist.is_initialized() else 1
        if group_size == 1:
            return self._find()
        choice: list[Any] = [None]
        if dist.get_rank(self.process_group) == 0:
            try:
                choice[0] = ("ok", self._find().id)
            except Exception as err:  # every rank must raise the same error, none may hang
                choice[0] = ("error", f"{type(err).__name__}: {err}")
        src = dist.get_global_rank(self.process_group, 0) if self.process_group is not None else 0
        dist.broadcast_object_list(choice, src=src, group=self.process_group)
        status, value = choice[0]
        if status != "ok":
            raise OperationFailed(f"cannot load a checkpoint from {self.repo.url}: {value}")
        return self.repo.load_manifest(value)

    def _find(self) -> Manifest:
        assert self.repo is not None
        if self.checkpoint != "latest":
            return find_manifest(self.repo, self.checkpoint)
        # The one rule of "latest" (lookup.py), among DCP checkpoints: resumable and intact.
        return latest(self.repo, self.selection, accept=is_dcp_manifest, noun="DCP checkpoint", warn=log.warning)
