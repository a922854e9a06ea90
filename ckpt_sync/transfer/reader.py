"""Read a checkpoint's file straight from the repository: a seekable, read-only binary file object.

``ckpt_sync.open(repo, "latest")`` fetches, authenticates and checks each chunk against its id only
when a read needs it, so ``torch.load(ckpt_sync.open(...), weights_only=True, map_location="cpu")``
works on a host with no room for a local copy. Memory is bounded by ``cache_bytes``: decrypted
chunks kept for the next reads plus the chunks being fetched, whatever the file's size (see
``CheckpointFile.__init__``; tests/transfer/test_memory.py measures it).

The whole-file hash is checked as soon as every chunk has been seen in file order (a sequential read
to the end, or torch.load's nearly sequential one: small chunks it skipped or read early are fetched
again for the hash); a mismatch fails that read. Every byte handed out
was already authenticated with its chunk, so the hash is a second line of defence, not the first.
"""

from __future__ import annotations

import io
import logging
import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..errors import IntegrityError, UsageError
from ..format.contents import ChunkMap
from ..format.file_digest import FileHasher
from ..format.manifest import FileEntry, Manifest
from ..format.repository import Repository

log = logging.getLogger("ckpt_sync.reader")

DEFAULT_CACHE_BYTES = 128 << 20
# A small chunk the hash chain is waiting for, though a later one was already read (a zip's central
# directory read first, a header nobody reads), is fetched again for the hash: it costs little.
HASH_GAP_MAX = 1 << 20


class CheckpointFile(io.RawIOBase):
    """One file of a committed checkpoint, read on demand. Not safe for concurrent use by several
    threads (like any file object); open one per thread.

    Raises IntegrityError (from a read) for any chunk that fails authentication, its id or its size,
    and for a whole-file hash mismatch; the error is also kept in ``error`` and logged, because
    torch's C++ reader replaces a Python error raised inside it with one of its own.
    """

    def __init__(
        self,
        repo: Repository,
        manifest: Manifest,
        entry: FileEntry,
        *,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        workers: int = 4,
        owns_repo: bool = False,
    ) -> None:
        super().__init__()
        self.repo = repo
        self.manifest = manifest
        self.entry = entry
        self.name = entry.path
        self._owns_repo = owns_repo
        self._map = ChunkMap(entry)
        self._pos = 0
        biggest = max((c.size for c in entry.chunks), default=1)
        # Plaintexts live in reusable buffers (no chunk-sized allocation per read, which glibc would
        # keep as heap): ``slots`` hold decrypted chunks for the next reads, ``parallel`` more are
        # being fetched. A fetch is charged three chunks: its buffer, its token while it is decrypted,
        # and the allocator's slack for a token freed by a worker thread (measured: about one chunk).
        # So memory stays within cache_bytes (at least 4 chunks), whatever the file's size.
        self._parallel = max(1, min(workers, cache_bytes // (4 * biggest)))
        self._slots = max(1, cache_bytes // biggest - 3 * self._parallel)
        self._buffer_size = repo.format.max_token_size(biggest)
        self._free: list[bytearray] = []
        self._made = 0
        self._cache: OrderedDict[int, tuple[bytearray, memoryview]] = OrderedDict()
        self._pool: ThreadPoolExecutor | None = None
        self._sha = FileHasher.checking(entry)
        self._hashed = 0  # chunks hashed so far, in file order
        self._furthest = -1  # the highest chunk index read so far
        self.verified = not entry.chunks and self._sha.matches(entry)
        self.error: IntegrityError | None = None

    # --- io.RawIOBase ----------------------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    @property
    def size(self) -> int:
        return self.entry.size

    def tell(self) -> int:
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._check_open()
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.entry.size}.get(whence)
        if base is None:
            raise ValueError(f"invalid whence {whence}")
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, b: Any) -> int:
        """Fill ``b`` from the current position (short only at the end of the file)."""
        self._check_open()
        try:
            return self._readinto(b)
        except IntegrityError as err:
            self.error = err
            log.error("%s of checkpoint %s (%s): %s", self.entry.path, self.manifest.name, self.manifest.id, err)
            raise

    def _readinto(self, b: Any) -> int:
        out = memoryview(b).cast("B")
        start = self._pos
        length = max(0, min(len(out), self.entry.size - start))
        if not length:
            return 0
        covering = self._map.covering(start, length)
        wanted = out[:length]
        # A few chunks at a time, so a long read (a large tensor, readall) never holds more than the budget.
        for lo_index in range(covering.start, covering.stop, self._parallel):
            batch = range(lo_index, min(covering.stop, lo_index + self._parallel))
            self._furthest = max(self._furthest, batch[-1])
            missing = [i for i in batch if i not in self._cache]
            fetched = self._fetch(missing)
            try:
                for i in batch:
                    plain = fetched[i][1] if i in fetched else self._cache[i][1]
                    self._map.copy_overlap(i, plain, wanted, start)
                    if i in self._cache:
                        self._cache.move_to_end(i)
                # Hash first (it may need the chunks just fetched), then keep them for the next reads.
                self._advance_hash(fetched)
            except BaseException:
                for buf, _ in fetched.values():
                    self._free.append(buf)
                raise
            for i in missing:
                self._remember(i, fetched[i])
        self._pos = start + length
        return length

    def readall(self) -> bytes:
        out = bytearray(max(0, self.entry.size - self._pos))
        n = self.readinto(out)
        del out[n:]
        return bytes(out)

    def close(self) -> None:
        if not self.closed:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            self._cache.clear()
            self._free.clear()
            if self._owns_repo:
                self.repo.provider.close()
        super().close()

    # --- chunks ----------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")

    def _buffer(self) -> bytearray:
        if self._free:
            return self._free.pop()
        # The cache never holds more than ``slots`` and at most ``parallel`` are fetched at once.
        assert self._made < self._slots + self._parallel, "reader buffers exhausted"
        self._made += 1
        return bytearray(self._buffer_size)

    def _load(self, index: int, buf: bytearray) -> tuple[bytearray, memoryview]:
        try:
            return buf, memoryview(self.repo.load_chunk(self.entry.chunks[index], out=buf))
        except BaseException:
            self._free.append(buf)
            raise

    def _fetch(self, indexes: list[int]) -> dict[int, tuple[bytearray, memoryview]]:
        """Fetch and check chunks (at most ``self._parallel`` are asked for at once) in parallel."""
        bufs = [self._buffer() for _ in indexes]
        if len(indexes) <= 1:
            return {i: self._load(i, buf) for i, buf in zip(indexes, bufs, strict=True)}
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._parallel, thread_name_prefix="ckpt-open")
        futures = [self._pool.submit(self._load, i, buf) for i, buf in zip(indexes, bufs, strict=True)]
        out: dict[int, tuple[bytearray, memoryview]] = {}
        error: BaseException | None = None
        for i, fut in zip(indexes, futures, strict=True):
            try:
                out[i] = fut.result()
            except BaseException as err:  # the others' buffers must still come back
                error = error or err
        if error is not None:
            for buf, _ in out.values():
                self._free.append(buf)
            raise error
        return out

    def _remember(self, index: int, loaded: tuple[bytearray, memoryview]) -> None:
        self._cache[index] = loaded
        self._cache.move_to_end(index)
        while len(self._cache) > self._slots:
            _, (buf, _) = self._cache.popitem(last=False)
            self._free.append(buf)

    def _advance_hash(self, fetched: dict[int, tuple[bytearray, memoryview]]) -> None:
        chunks = self.entry.chunks
        n = len(chunks)
        while self._hashed < n:
            loaded = fetched.get(self._hashed) or self._cache.get(self._hashed)
            if loaded is not None:
                self._sha.update(loaded[1])
            elif self._hashed > self._furthest or chunks[self._hashed].size > HASH_GAP_MAX:
                return
            else:  # small: read into its own small buffer, outside the budget's chunk buffers
                self._sha.update(self.repo.load_chunk(chunks[self._hashed]))
            self._hashed += 1
        if not self.verified:
            if not self._sha.matches(self.entry):
                raise IntegrityError(f"{self.entry.path}: whole-file hash mismatch")
            self.verified = True

    def __repr__(self) -> str:
        return f"<ckpt_sync.CheckpointFile {self.manifest.name}/{self.entry.path} ({self.manifest.id})>"


def open_file(
    repo: Repository,
    checkpoint: str = "latest",
    path: str | None = None,
    *,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    workers: int = 4,
    owns_repo: bool = False,
) -> CheckpointFile:
    """One file of a committed checkpoint in ``repo`` as a seekable, read-only binary file object
    (``ckpt_sync.open`` opens the repository by URL and calls this). ``checkpoint`` is an id, a
    unique id prefix, a name or ``latest``; ``path`` the file inside it (None for a one-file
    checkpoint); ``owns_repo``: closing the file closes the repository's connections.
    """
    from ..format.contents import file_entry
    from ..format.lookup import find_manifest

    if cache_bytes < 1:
        raise UsageError("cache_bytes must be positive")
    manifest = find_manifest(repo, checkpoint)
    entry = file_entry(manifest, path)
    return CheckpointFile(repo, manifest, entry, cache_bytes=cache_bytes, workers=workers, owns_repo=owns_repo)
