"""Bandwidth-limiting wrapper: any provider, its put and get bytes paced by one shared token bucket.

So a sync never starves the training job's own network. One bucket per process (``shared_bucket``)
is shared by every upload and download of every provider the process opens, whatever the number of
worker threads: the limit is the process's total. It sits below the retry wrapper, so every attempt
pays for the bytes it actually moves.

Pacing is per call: a put waits until its bytes are paid for, then sends at line rate; a get pays
after it has its bytes (their count is only known then). Over any window the bytes moved stay within
``rate * seconds + burst`` plus one call's bytes, which is what a shared link notices.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .base import Provider, read_into
from .wrapper import WrappingProvider


class TokenBucket:
    """``rate`` bytes per second with ``burst`` bytes of headroom (default: one second's worth); thread-safe.

    The bucket starts empty, so from its creation the bytes paid never exceed ``rate * seconds``; idle
    time earns at most ``burst`` of credit. ``take(n)`` never refuses: a call larger than the bucket
    runs the balance into debt and waits until the debt is repaid, and callers queue behind that debt
    in the order they arrived (fair, no starvation).
    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.burst = float(rate if burst is None else burst)
        self._clock = clock
        self._sleep = sleep
        self._tokens = 0.0
        self._last = clock()
        self._lock = threading.Lock()

    def take(self, n: int) -> float:
        """Pay for ``n`` bytes, waiting as long as the rate demands; returns the seconds waited."""
        if n <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= n
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait


_shared: TokenBucket | None = None
_shared_lock = threading.Lock()


def shared_bucket(rate: int) -> TokenBucket:
    """The process's bucket for ``rate`` bytes/s (made on first use; a different rate replaces it)."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared.rate != rate:
            _shared = TokenBucket(rate)
        return _shared


class BandwidthLimitedProvider(WrappingProvider):
    """Pays the bucket for every byte put or got; listing, sizes and deletes pass through unpaced."""

    def __init__(self, inner: Provider, bucket: TokenBucket) -> None:
        super().__init__(inner)
        self.bucket = bucket

    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        self.bucket.take(len(data))
        self.inner.put(key, data)

    def put_if_absent(self, key: str, data: bytes | bytearray | memoryview) -> bool:
        self.bucket.take(len(data))
        return self.inner.put_if_absent(key, data)

    def get(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        # Paid for what came back: ``length`` is often a bound (size-checked reads ask for up to the
        # largest object that may be there), and paying for it would stall a small read for minutes.
        data = self.inner.get(key, start, length)
        self.bucket.take(len(data))
        return data

    def get_into(self, key: str, out: bytearray) -> bytes | memoryview | None:
        data = read_into(self.inner, key, out)
        if data is not None:
            self.bucket.take(len(data))
        return data
