"""Retrying wrapper: any provider, transient errors retried with tenacity.

Exponential backoff with full jitter, bounded by attempts and total time; the first retry of each
operation is logged at WARNING, then one line a minute with the count (the rest at DEBUG).
Only ``TransientStorageError`` is retried: a provider's
permanent errors (no bucket, access denied) and NotFound pass straight through.

The total time is a bound, not a hope: each attempt may take only what is left of the budget
(``attempt_timeout``, which the cloud providers turn into their connect and read timeouts), and
the waits between attempts end at once when the ``cancel`` event is set (SIGTERM), raising
Cancelled.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
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

from ckpt_sync.errors import Cancelled, TransientStorageError
from ckpt_sync.logs import Throttle

from .base import Provider
from .wrapper import WrappingProvider

log = logging.getLogger("ckpt_sync.retry")
T = TypeVar("T")
# During an outage every call retries: log the first retry of each operation, then one line a minute.
RETRY_LOG = Throttle(60.0)

# Called as observer(op, error) before each retry's wait (metrics count retries by reason here).
# Observers must be quick and must not raise: an error in one is logged and ignored.
RETRY_OBSERVERS: list[Callable[[str, BaseException | None], None]] = []
MIN_ATTEMPT_SECONDS = 0.5  # an attempt always gets at least this long, even at the end of its budget

_attempt = threading.local()


def attempt_timeout() -> float | None:
    """Seconds the storage call running on this thread may still take (the rest of its retry
    budget), or None outside a retried call. Providers cap their connect/read timeouts with it."""
    deadline = getattr(_attempt, "deadline", None)
    return None if deadline is None else max(MIN_ATTEMPT_SECONDS, deadline - time.monotonic())


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 8
    max_seconds: float = 120.0
    initial_wait: float = 0.2
    max_wait: float = 15.0
    quiet: bool = False  # retries logged at debug level only (a probe whose caller reports the outcome)


class RetryingProvider(WrappingProvider):
    def __init__(
        self, inner: Provider, policy: RetryPolicy = RetryPolicy(), *, cancel: threading.Event | None = None
    ) -> None:
        super().__init__(inner)
        self.policy = policy
        self.cancel = cancel

    def _call(self, op: str, key: str, fn: Callable[[], T]) -> T:
        def before_sleep(state: RetryCallState) -> None:
            err = state.outcome.exception() if state.outcome else None
            held = None if self.policy.quiet else RETRY_LOG.admit(op)
            if held is None:
                log.debug("retrying %s after attempt %d: %s", op, state.attempt_number, err)
            else:
                more = f" ({held} more {op} retries in the last minute)" if held else ""
                log.warning("retrying %s after attempt %d: %s%s", op, state.attempt_number, err, more)
            for observe in RETRY_OBSERVERS:
                try:
                    observe(op, err)
                except Exception:
                    log.debug("retry observer failed", exc_info=True)

        def sleep(seconds: float) -> None:
            if self.cancel is None:
                time.sleep(seconds)
            elif self.cancel.wait(seconds):
                raise Cancelled(f"stopped while retrying {op}; nothing was committed")

        started = time.monotonic()
        deadline = started + self.policy.max_seconds

        def attempt() -> T:
            outer = getattr(_attempt, "deadline", None)
            _attempt.deadline = deadline if outer is None else min(outer, deadline)
            try:
                return fn()
            finally:
                _attempt.deadline = outer

        retrying = Retrying(
            stop=stop_after_attempt(self.policy.attempts) | stop_after_delay(self.policy.max_seconds),
            wait=wait_random_exponential(multiplier=self.policy.initial_wait, max=self.policy.max_wait),
            retry=retry_if_exception_type(TransientStorageError),
            before_sleep=before_sleep,
            sleep=sleep,
            reraise=True,
        )
        try:
            return retrying(attempt)
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
