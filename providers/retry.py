"""Retrying wrapper: any provider, transient errors retried with tenacity.

Exponential backoff with full jitter, bounded by attempts and total time; each retry is logged at
WARNING with the operation and key. Only ``TransientStorageError`` is retried: a provider's
permanent errors (no bucket, access denied) and NotFound pass straight through.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from ckpt_sync.errors import TransientStorageError

from .base import ObjectInfo, Provider

log = logging.getLogger("ckpt_sync.retry")
T = TypeVar("T")

# Called as observer(op, error) before each retry's wait (metrics count retries by reason here).
# Observers must be quick and must not raise: an error in one is logged and ignored.
RETRY_OBSERVERS: list[Callable[[str, BaseException | None], None]] = []


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 8
    max_seconds: float = 120.0
    initial_wait: float = 0.2
    max_wait: float = 15.0


class RetryingProvider:
    def __init__(self, inner: Provider, policy: RetryPolicy = RetryPolicy()) -> None:
        self.inner = inner
        self.url = inner.url
        self.policy = policy

    def _call(self, op: str, key: str, fn: Callable[[], T]) -> T:
        def before_sleep(state: RetryCallState) -> None:
            err = state.outcome.exception() if state.outcome else None
            log.warning("retrying %s after attempt %d: %s", op, state.attempt_number, err)
            for observe in RETRY_OBSERVERS:
                try:
                    observe(op, err)
                except Exception:
                    log.debug("retry observer failed", exc_info=True)

        retrying = Retrying(
            stop=stop_after_attempt(self.policy.attempts) | stop_after_delay(self.policy.max_seconds),
            wait=wait_random_exponential(multiplier=self.policy.initial_wait, max=self.policy.max_wait),
            retry=retry_if_exception_type(TransientStorageError),
            before_sleep=before_sleep,
            reraise=True,
        )
        started = time.monotonic()
        try:
            return retrying(fn)
        except TransientStorageError as err:
            attempts = retrying.statistics.get("attempt_number", 1)
            spent = time.monotonic() - started
            limit = (
                f"its {self.policy.max_seconds:g}s retry budget"
                if attempts < self.policy.attempts
                else f"{attempts} attempts"
            )
            # The provider's message already names the object; say only how we gave up.
            raise TransientStorageError(f"gave up after {limit} ({spent:.1f}s): {err}") from err

    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        self._call("put", key, lambda: self.inner.put(key, data))

    def put_if_absent(self, key: str, data: bytes | bytearray | memoryview) -> bool:
        # A retried conditional put may find its own earlier, successful attempt: the caller
        # (commit) compares contents when this returns False.
        return self._call("put_if_absent", key, lambda: self.inner.put_if_absent(key, data))

    def get(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        return self._call("get", key, lambda: self.inner.get(key, start, length))

    def size(self, key: str) -> int | None:
        return self._call("size", key, lambda: self.inner.size(key))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Materialised so a failure mid-listing retries the whole listing, not half of it.
        return iter(self._call("list", prefix, lambda: list(self.inner.list(prefix))))

    def delete(self, key: str) -> None:
        self._call("delete", key, lambda: self.inner.delete(key))

    def check(self) -> None:
        self._call("check", "", self.inner.check)

    def close(self) -> None:
        self.inner.close()
