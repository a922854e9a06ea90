"""Writing a big file once, durably, without the page cache (O_DIRECT), with a buffered fallback.

A buffered write copies every byte into the page cache, and the fsync that must follow then has the
kernel write the pages back; a checkpoint file or a chunk is written once and made durable at once,
so the cache only costs. Measured here with ``dd`` (1 GiB, ext4 on a virtual disk): written through
the cache and fsynced, 1.90 s wall and 1.41 s of system CPU; with O_DIRECT, 0.78 s and 0.05 s.

O_DIRECT needs the memory, the file offset and the length of each write aligned to the device's
logical block. ``SequentialWriter`` writes whole aligned blocks straight from the caller's buffer
where its memory is aligned as its place in the file is (``aligned_buffer`` memory; pull decrypts
each chunk at its file offset modulo ``ALIGN``) and copies the rest through a small aligned staging
buffer; the last block is padded with zeros and the file then truncated to its real size.
``read_file_into`` reads a chunk the same way, except what the page cache already holds. Where the
file system refuses O_DIRECT (some FUSE or network mounts, old tmpfs), both go through the cache as
before. The caller still fsyncs: that makes the size and the blocks' allocation durable and
flushes the device's own cache. Where the platform has no O_DIRECT (platform.py: F_NOCACHE on
macOS, nothing on Windows), writes and reads go through the cache the same way.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from .. import platform

ALIGN = 4096  # a multiple of every logical block size Linux uses (512, 4096) and of the page size
# Files and reads at least this big go around the cache; smaller ones (manifests, locks, the config)
# through it, where O_DIRECT's padded block and device round trip would cost more than they save.
DIRECT_MIN = 1 << 20
# Writes through the cache go in slices this size: one 8 MiB write() costs several times the system
# time of the same bytes in 256 KiB pieces (bench/ab.py; the copy stays in the CPU cache).
WRITE_SLICE = 256 << 10


def aligned_buffer(size: int) -> mmap.mmap | bytearray:
    """A writable, zero-filled buffer of at least ``size`` bytes starting on a page boundary (an
    anonymous mapping; a plain bytearray where the platform has none, used through the cache),
    rounded up to whole blocks so the padded last block of a write fits."""
    return platform.anonymous_memory(max(ALIGN, -(-size // ALIGN) * ALIGN))


def write_all(fd: int, view: memoryview, offset: int | None = None) -> None:
    """All of ``view`` to ``fd`` (at ``offset`` when given, else at the file position), in WRITE_SLICE pieces."""
    done = 0
    while done < len(view):
        piece = view[done : done + WRITE_SLICE]
        done += os.write(fd, piece) if offset is None else platform.pwrite(fd, piece, offset + done)


def read_file_into(fd: int, size: int, out: bytearray | mmap.mmap) -> memoryview:
    """The ``size`` bytes of the file ``fd`` (from its start) in ``out``, a buffer at least ``size``
    long; stops early at the file's end and returns the view of what was read.

    What the page cache holds is copied from it; the rest is read with O_DIRECT when ``out`` is
    aligned with room for the last whole block and the file system allows it. A chunk on the disk
    is then not copied through the cache (nor does it push other data out of it), and one in the
    cache is not read from the disk again."""
    view = memoryview(out).cast("B")
    padded = -(-size // ALIGN) * ALIGN
    if size < DIRECT_MIN or len(view) < padded or not is_aligned(view):
        return view[: _read_at(fd, view[:size], 0)]
    done = _read_cached(fd, view[:size])
    if done < size and _set_direct(fd, True):
        start = done // ALIGN * ALIGN  # buffer offset = file offset, so the rest is aligned in both
        try:
            return view[: start + _read_at(fd, view[start:padded], start)]
        except OSError as err:
            if err.errno != errno.EINVAL:
                raise
            _set_direct(fd, False)
    return view[: done + _read_at(fd, view[done:size], done)]


def _read_at(fd: int, view: memoryview, offset: int) -> int:
    done = 0
    while done < len(view) and (n := platform.pread_into(fd, view[done:], offset + done)):
        done += n
    return done


def _read_cached(fd: int, view: memoryview) -> int:
    """Read from offset 0 what the page cache holds, without waiting for the disk (RWF_NOWAIT).

    A miss still makes the kernel start reading the range asked for into the cache (read-ahead
    included), which the O_DIRECT read of the same range then waits for: a cold restore ran ~25 %
    slower, and filled the cache it means to bypass. So read-ahead is off for this descriptor, the
    first page is asked alone, and the probe stops at the first short read."""
    platform.no_read_ahead(fd)
    done = 0
    while done < len(view):
        want = min(ALIGN, len(view)) if done == 0 else len(view) - done
        n = platform.pread_cached(fd, view[done : done + want], done) or 0
        done += n
        if n < want:
            break
    return done


def _set_direct(fd: int, on: bool) -> bool:
    """Turn O_DIRECT (or the platform's equivalent) on or off for ``fd``; False when there is none
    or the file system refuses it."""
    return platform.set_uncached(fd, on)


def _after_both(fn: Callable[[], object]) -> Callable[[], None]:
    """A callable that calls ``fn`` on its second call (both users of a buffer are done with it)."""
    left = [2]

    def arrive() -> None:
        left[0] -= 1
        if left[0] == 0:
            fn()

    return arrive


def is_aligned(view: memoryview) -> bool:
    """Whether ``view`` starts on a block boundary in memory (read-only views are never used directly)."""
    return not view.readonly and ctypes.addressof(ctypes.c_char.from_buffer(view)) % ALIGN == 0


class SequentialWriter:
    """Writes ``fd`` from offset 0, in order, with O_DIRECT where the file system allows it.

    Whole blocks go straight from the caller's buffer where its memory is aligned as its place in
    the file is (``aligned_buffer`` memory, at a shift of the file offset modulo ``ALIGN``); the
    rest is copied through a staging buffer. ``finish()`` writes what is staged and sets the
    file's size; without it the file may end in a padded block or lack its last bytes.

    With ``background``, writes run on threads of their own while the caller goes on (it waits on
    the disk only when it is ahead of it); use the writer as a context manager then, so no write
    outlives the file descriptor. A caller's buffer is written from in the background only when
    ``write`` is given ``release``, called once the writer is done with it; otherwise it is copied.
    Not thread-safe: one caller per file.
    """

    IN_FLIGHT = 3  # writes queued or running in the background: two keep the disk busy while one waits

    def __init__(self, fd: int, *, direct: bool = True, staging: int = 1 << 20, background: bool = False) -> None:
        self.fd = fd
        self.pos = 0  # bytes handed to the file so far (whole blocks while direct)
        self.direct = direct and _set_direct(fd, True)
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="direct-write") if background and self.direct else None
        self._size, self._unmade = staging, self.IN_FLIGHT if self._pool else 0  # staging buffers made on need
        self._free: list[mmap.mmap | bytearray] = []
        self._pending: deque[tuple[Future[None], Callable[[], object]]] = deque()
        self._stage = aligned_buffer(staging) if self.direct else None
        self._staged = 0

    def __enter__(self) -> SequentialWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._drain(raise_errors=exc[0] is None)

    def write(
        self, data: bytes | bytearray | memoryview | mmap.mmap, release: Callable[[], object] | None = None
    ) -> None:
        """Append ``data``; ``release()`` is called once the writer no longer needs its memory."""
        view = memoryview(data).cast("B")
        if self._stage is None:
            write_all(self.fd, view, self.pos)
            self.pos += len(view)
            if release is not None:
                release()
            return
        done = 0
        if self._staged % ALIGN:  # complete the block the staging buffer ends in
            done = self._stage_bytes(view[: ALIGN - self._staged % ALIGN])
        whole = (len(view) - done) // ALIGN * ALIGN
        direct_ok = self._pool is None or release is not None
        if whole and direct_ok and self._staged % ALIGN == 0 and is_aligned(view[done:]):
            if self._staged:
                self._hand_over(self._staged)  # whole blocks, and they come first in the file
            if release is not None:
                release = _after_both(release)  # the write from the buffer, and the tail's copy below
            self._submit(view[done : done + whole], release)  # straight from the caller's buffer
            done += whole
        while done < len(view):
            done += self._stage_bytes(view[done:])
        if release is not None:
            release()

    def _stage_bytes(self, view: memoryview) -> int:
        assert self._stage is not None
        n = min(len(view), len(self._stage) - self._staged)
        self._stage[self._staged : self._staged + n] = view[:n]
        self._staged += n
        if self._staged == len(self._stage):
            self._hand_over(len(self._stage))
        return n

    def _hand_over(self, n: int) -> None:
        """Write the first ``n`` bytes of the staging buffer at the file position, and take another
        staging buffer to fill while it is written (in the background)."""
        assert self._stage is not None
        stage = self._stage
        self._staged = 0
        if self._pool is None:
            self._submit(memoryview(stage)[:n], None)
            return
        self._submit(memoryview(stage)[:n], lambda: self._free.append(stage))
        if not self._free and self._unmade:
            self._unmade -= 1
            self._free.append(aligned_buffer(self._size))
        while not self._free:
            self._wait_oldest()
        self._stage = self._free.pop()

    def _submit(self, view: memoryview, done: Callable[[], object] | None) -> None:
        """Write ``view`` at the file position: now, or in the background (``done`` runs after)."""
        pos = self.pos
        self.pos += len(view)
        if self._pool is None:
            self._write_at(view, pos)
            if done is not None:
                done()
            return
        self._pending.append((self._pool.submit(self._write_at, view, pos), done or (lambda: None)))
        while len(self._pending) > self.IN_FLIGHT:
            self._wait_oldest()

    def _wait_oldest(self) -> None:
        fut, done = self._pending.popleft()
        try:
            fut.result()
        finally:
            done()

    def _write_at(self, view: memoryview, pos: int) -> None:
        done = 0
        while done < len(view):
            try:
                done += platform.pwrite(self.fd, view[done:], pos + done)
            except OSError as err:
                if err.errno != errno.EINVAL or not self.direct:
                    raise
                # Accepted at fcntl, refused at the write (an alignment this file system needs that we do
                # not meet): the rest goes through the cache, and nothing written so far is lost.
                self.direct = _set_direct(self.fd, False)

    def _drain(self, *, raise_errors: bool) -> None:
        """Wait for every background write (each one's ``done`` runs, whatever happened)."""
        first: BaseException | None = None
        while self._pending:
            try:
                self._wait_oldest()
            except BaseException as err:
                first = first or err
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if first is not None and raise_errors:
            raise first

    def finish(self) -> int:
        """Write what is staged, wait for every write, set the file's size, and return it."""
        size = self.pos + self._staged
        if self._staged:
            assert self._stage is not None
            padded = -(-self._staged // ALIGN) * ALIGN if self.direct else self._staged
            self._stage[self._staged : padded] = bytes(padded - self._staged)
            self._hand_over(padded)
        self._drain(raise_errors=True)
        self.pos = size
        if os.fstat(self.fd).st_size != size:
            os.ftruncate(self.fd, size)
        return size
