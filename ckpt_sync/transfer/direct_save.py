"""Saving straight into a repository: ``torch.save(state, writer)`` with no local file.

A ``CheckpointWriter`` is a write-only binary stream. The bytes written to it are cut into chunks as
they arrive (``chunking.StreamCuts``: the cuts a push of the same bytes from disk would make, so
each tensor still deduplicates on its own), hashed in order, and handed to a pool of workers that
id, encrypt and upload them (``Repository.store_chunk``) while the caller goes on producing bytes.
Memory stays at a few chunks: the bytes go once into one of a fixed set of reusable buffers, and a
write blocks while every buffer is in flight.

Closing the writer commits one checkpoint (its manifest is written last, under the push lock, as a
push commits). Until then nothing is visible: a writer that raises, is aborted or dies leaves only
unreferenced chunks, which a later push may reuse and ``prune`` collects. The role and training
position are read from what ``torch.save`` wrote first (its pickle, without unpickling) unless the
caller says.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ..buffers import BufferPool
from ..errors import UsageError
from ..format.checkpoint_content import torch_stream_head
from ..format.chunking import ChunkPolicy, StreamCuts
from ..format.locks import acquire_push_lock
from ..format.manifest import ROLES, ChunkRef, FileEntry, Manifest
from ..format.paths import component_problem
from ..format.repository import Repository
from ..pipeline import default_workers
from .counters import TransferStats
from .damage_record import damaged_chunks, record_healed
from .push import commit_checked, describe, draft_manifest

log = logging.getLogger("ckpt_sync.direct")

HEAD_BYTES = 8 << 20  # what is kept of the stream's start to read its role and position from
PIECE = 1 << 20  # a write is taken this much at a time, so a chunk's buffer never holds much past its cut


class CheckpointWriter(io.RawIOBase):
    """A checkpoint being written into ``repo`` under ``name``; see the module docstring.

    Use it as a context manager: leaving the block normally commits (``manifest`` is then the
    committed checkpoint), leaving it by an exception commits nothing. ``close()`` commits,
    ``abort()`` does not. ``metadata``, ``tags`` and ``role`` are a push's (transfer/push.py).
    """

    def __init__(
        self,
        repo: Repository,
        name: str,
        *,
        metadata: dict[str, Any] | None = None,
        tags: Iterable[str] = (),
        role: str | None = None,
        policy: ChunkPolicy = ChunkPolicy(),
        workers: int | None = None,
        owns_repo: bool = False,
    ) -> None:
        super().__init__()
        problem = component_problem(name)
        if problem:
            raise UsageError(f"cannot save as {name!r}: {problem}; choose another name")
        if role is not None and role not in ROLES:
            raise UsageError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
        self.repo, self.name, self.policy = repo, name, policy
        self._owns_repo = owns_repo  # opened for this writer: closed with it
        self._meta, self._tags, self._role = dict(metadata or {}), tuple(tags), role
        self.stats = TransferStats()
        self.manifest: Manifest | None = None
        self._cuts = StreamCuts(policy)
        # The chunk being filled: stream bytes [self._first, self._cuts.pos) in self._buf[: self._fill].
        # A cut may wait up to min_size past a chunk's size (StreamCuts), and a piece lands before it.
        self._first, self._fill = 0, 0
        self._head = bytearray()
        self._tail = b""  # the last bytes written: a torch.save ends with its zip's end record
        self._hasher = repo.file_hasher()
        self._workers = workers or default_workers()
        self._futures: list[Future[tuple[ChunkRef, int]]] = []
        self._failed = threading.Event()
        self._lock = acquire_push_lock(repo.provider)
        try:
            self._suspect = damaged_chunks(repo.id)
            repo.forget_known_chunks()  # what is stored now, under this lock
            repo.distrust(self._suspect)
            self._tokens = repo.token_buffers(self._workers, policy.chunk_size)
            # In flight at most: one per worker, two queued, the one being filled.
            self._inputs = BufferPool(self._workers + 3, policy.chunk_size + policy.min_size + PIECE)
            self._buf = self._inputs.acquire()
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="ckpt-save")
        except BaseException:
            self._lock.release()
            raise
        self._started = time.time_ns()

    # --- the stream --------------------------------------------------------------------------------

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self.closed:
            raise ValueError("write to a closed checkpoint writer")
        view = memoryview(data).cast("B")
        for start in range(0, len(view), PIECE):
            self._take(view[start : start + PIECE], continued=start > 0)
        return len(view)

    def _take(self, piece: memoryview, *, continued: bool) -> None:
        self._raise_if_failed()
        self._hasher.update(piece)
        if len(self._head) < HEAD_BYTES:
            self._head += piece[: HEAD_BYTES - len(self._head)]
        self._tail = (self._tail + bytes(piece[-64:]))[-64:]
        cuts = self._cuts.feed(piece, continued=continued)
        self._buf[self._fill : self._fill + len(piece)] = piece
        self._fill += len(piece)
        for at in cuts:
            self._send(at)

    def _send(self, at: int) -> None:
        """Hand the bytes up to stream offset ``at`` to the workers; what follows moves to a fresh buffer
        (acquiring it waits while every buffer is in flight: the writer keeps pace with the uploads)."""
        length = at - self._first
        full, rest = self._buf, self._fill - length
        self._buf = self._inputs.acquire()
        self._buf[:rest] = full[length : self._fill]
        self._first, self._fill = at, rest
        self.stats.bytes_read += length
        self._futures.append(self._pool.submit(self._store, full, length))

    def _store(self, buf: bytearray, length: int) -> tuple[ChunkRef, int]:
        scratch = self._tokens.acquire()
        try:
            return self.repo.store_chunk(memoryview(buf)[:length], scratch=scratch)
        except BaseException:
            self._failed.set()
            raise
        finally:
            self._tokens.release(scratch)
            self._inputs.release(buf)

    def _raise_if_failed(self) -> None:
        if self._failed.is_set():
            for future in self._futures:
                if future.done() and future.exception() is not None:
                    raise future.exception()  # type: ignore[misc]

    # --- the end ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Upload what is left and commit the checkpoint (once; nothing is committed after ``abort``)."""
        if self.closed:
            return
        try:
            for at in self._cuts.finish():
                self._send(at)
            self.manifest = self._commit()
        except BaseException:
            self._shut(cancel=True)
            raise
        finally:
            super().close()
        self._shut(cancel=False)
        record_healed(self.repo.id, self._suspect & self.manifest.chunk_ids())

    def __del__(self) -> None:
        """Never commit from the garbage collector: a writer dropped unclosed is aborted."""
        with contextlib.suppress(Exception):  # the interpreter may be shutting down
            self.abort()

    def abort(self) -> None:
        """Stop without committing anything (the uploaded chunks stay, unreferenced)."""
        if not self.closed:
            self._shut(cancel=True)
            super().close()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _shut(self, *, cancel: bool) -> None:
        self._pool.shutdown(wait=True, cancel_futures=cancel)
        self._lock.release()
        if self._owns_repo:
            self.repo.provider.close()

    def _commit(self) -> Manifest:
        refs = []
        for future in self._futures:
            ref, sent = future.result()
            refs.append(ref)
            self.stats.chunks += 1
            if sent:
                self.stats.chunks_new += 1
                self.stats.bytes_new += ref.size
                self.stats.bytes_sent += sent
        if not refs:
            raise UsageError(f"nothing was written to {self.name}: no checkpoint committed")
        if self._head[:4] == b"PK\x03\x04" and self._tail[-22:-18] != b"PK\x05\x06":
            raise UsageError(
                f"{self.name} ends before its zip does (torch.save stopped part way?): no checkpoint committed"
            )
        self.stats.files = 1
        entry = FileEntry(
            path=self.name,
            size=self._cuts.pos,
            chunks=tuple(refs),
            mtime_ns=self._started,
            mode=0o644,
            **self._hasher.entry_hashes(),
        )
        content = torch_stream_head(self._head)
        role, meta, session_id, step = describe(self.name, "file", [], self._tags, self._meta, self._role, content)
        meta.setdefault("source_mtime_ns", self._started)
        draft = draft_manifest(self.name, "file", [entry], session_id, step, self._tags, meta, role)
        committed = commit_checked(self.repo, self._lock, draft)
        self.stats.finish()
        return committed
