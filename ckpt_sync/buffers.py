"""A fixed set of reusable chunk buffers for one push or pull.

Memory is then count x size by construction, and no 8 MiB buffer is allocated per chunk: measured
here, decrypting into a fresh zero-filled buffer ran at ~0.9 GB/s (zeroing under the GIL, page
faults) and into a reused one at ~6.5 GB/s. ``aligned`` buffers start on a page boundary
(direct_io.aligned_buffer), so the local provider moves a chunk between one and the disk with
O_DIRECT and no copy; the others are bytearrays, which the S3 SDK sends as they are (it copies any
other buffer once).
"""

from __future__ import annotations

import mmap
import queue
import threading

from .fs.direct_io import aligned_buffer


class BufferPool:
    def __init__(self, count: int, size: int, *, aligned: bool = False) -> None:
        self.size = size
        self._make = aligned_buffer if aligned else bytearray
        self._free: queue.SimpleQueue[bytearray | mmap.mmap] = queue.SimpleQueue()
        self._unmade = count  # buffers are made on first need, never more than ``count``
        self._lock = threading.Lock()

    def acquire(self) -> bytearray | mmap.mmap:
        """A free buffer; blocks until one is released once ``count`` exist (that bounds the pipeline)."""
        try:
            return self._free.get_nowait()
        except queue.Empty:
            with self._lock:
                make = self._unmade > 0
                self._unmade -= make
            return self._make(self.size) if make else self._free.get()

    def release(self, buf: bytearray | mmap.mmap) -> None:
        self._free.put(buf)
