"""A bounded, order-preserving parallel map: the shape of push's and pull's chunk pipelines.

Push and pull are both "a sequential stage in the caller's thread (read + hash, or hash + write)
around a parallel stage in workers (hash + encrypt + upload, or download + decrypt + check)".
At most ``window`` items are in flight, so memory is window x chunk size, never the file size.
Hashing, HMAC, file and socket I/O release the GIL; AES is fed in slices so the others interleave.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    return max(4, min(16, 2 * (os.cpu_count() or 2) + 2))


def ordered_map(pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T], window: int) -> Iterator[R]:
    """Yield ``fn(item)`` in input order, pulling a new item only when fewer than ``window`` are pending."""
    pending: deque[Future[R]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for fut in pending:
            fut.cancel()
        # Let running calls finish before the caller cleans up what they write into.
        for fut in pending:
            if not fut.cancelled():
                with suppress(BaseException):  # already failing; the first error wins
                    fut.exception()
