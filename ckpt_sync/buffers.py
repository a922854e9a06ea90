"""A fixed set of reusable chunk buffers for one push or pull.

Memory is then count x size by construction, and no 8 MiB buffer is allocated per chunk: measured
here, decrypting into a fresh zero-filled buffer ran at ~0.9 GB/s (zeroing under the GIL, page
faults) and into a reused one at ~6.5 GB/s.
"""

from __future__ import annotations

import queue
import threading


class BufferPool:
    def __init__(self, count: int, size: int) -> None:
        self.size = size
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self._unmade = count  # buffers are made on first need, never more than ``count``
        self._lock = threading.Lock()

    def acquire(self) -> bytearray:
        """A free buffer; blocks until one is released once ``count`` exist (that bounds the pipeline)."""
        try:
            return self._free.get_nowait()
        except queue.Empty:
            with self._lock:
                make = self._unmade > 0
                self._unmade -= make
            return bytearray(self.size) if make else self._free.get()

    def release(self, buf: bytearray) -> None:
        self._free.put(buf)
