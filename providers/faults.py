"""Fault injection for tests: wrap any provider and make a share of its calls fail like a bad link.

Three ways a call fails, all as ``TransientStorageError`` (what a provider reports for a network
fault), so the retry wrapper above it is exercised exactly as in production:

- ``before``: the call never reaches the store;
- ``after``: the store performs the call, then the answer is lost (a retried write meets its own
  earlier success: the interesting case for put_if_absent and commit);
- ``stall``: the call hangs for ``stall_seconds``, then fails as a timeout would.

``fail_next(op, mode, times)`` scripts exact failures; ``break_store()`` makes every call fail
from then on (a store that is gone for good). Test-only: nothing in the product constructs it.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TypeVar

from ckpt_sync.errors import TransientStorageError

from .base import Provider
from .wrapper import WrappingProvider

T = TypeVar("T")
MODES = ("before", "after", "stall")


class FaultyProvider(WrappingProvider):
    def __init__(
        self,
        inner: Provider,
        *,
        rate: float = 0.0,
        modes: Sequence[str] = ("before", "after"),
        ops: Sequence[str] | None = None,
        stall_seconds: float = 0.05,
        seed: int = 0,
    ) -> None:
        if set(modes) - set(MODES):
            raise ValueError(f"unknown fault modes {sorted(set(modes) - set(MODES))}")
        super().__init__(inner)
        self.rate = rate
        self.modes = tuple(modes)
        self.ops = set(ops) if ops is not None else None
        self.stall_seconds = stall_seconds
        self.counts: Counter[str] = Counter()
        self.broken = False
        self._scripted: list[tuple[str, str]] = []
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def fail_next(self, op: str, mode: str = "before", times: int = 1) -> None:
        """The next ``times`` calls of ``op`` fail in ``mode``, whatever the rate."""
        with self._lock:
            self._scripted += [(op, mode)] * times

    def break_store(self) -> None:
        self.broken = True

    def _fate(self, op: str) -> str | None:
        with self._lock:
            self.counts[op] += 1
            if self.broken:
                return "before"
            for i, (sop, mode) in enumerate(self._scripted):
                if sop == op:
                    del self._scripted[i]
                    return mode
            if (self.ops is None or op in self.ops) and self._rng.random() < self.rate:
                return self._rng.choice(self.modes)
            return None

    def _call(self, op: str, key: str, fn: Callable[[], T]) -> T:
        fate = self._fate(op)
        if fate is None:
            return fn()
        self.counts[f"fault:{fate}"] += 1
        where = f"{self.url}/{key}"
        if fate == "before":
            raise TransientStorageError(f"{op} {where}: injected connection reset")
        if fate == "stall":
            time.sleep(self.stall_seconds)
            raise TransientStorageError(f"{op} {where}: injected read timeout")
        fn()
        raise TransientStorageError(f"{op} {where}: injected lost response (the store did it)")

    # --- Provider --------------------------------------------------------------------------------
