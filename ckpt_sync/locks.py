"""Coordination objects that make pruning safe next to concurrent writers.

Two kinds, both small plaintext JSON objects under ``locks/`` holding timestamps and their owner
(host, pid, process start time: owners.py):

- ``locks/push-<random>``: held by every push while it runs (refreshed by a heartbeat).
- ``locks/prune``: at most one pruner at a time (created with put-if-absent).
- ``locks/manifests``: at most one hand change of committed manifests (tag, forget) at a time.

The protocol (each side writes its own lock *before* reading the other's, so at least one sees the
other): a pruner takes ``locks/prune`` and then deletes unreferenced chunks only if no live push
lock exists; a pusher takes its push lock and then waits while a live prune lock exists before it
lists which chunks the repository already has. A lock is broken at once (ignored and removed)
when its owner is provably dead on this host (a ``kill -9``), or when its heartbeat is stale:
holders refresh it every ``ttl / 4`` seconds, so ``expires`` passing means the holder is gone.
Every wait for a lock honours a cancel event (SIGTERM) and raises Cancelled.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass

from .errors import Cancelled, NotFound, OperationFailed
from .owners import owner_alive, owner_id
from .providers import Provider

log = logging.getLogger("ckpt_sync.locks")

LOCKS = "locks/"
PRUNE_LOCK = "locks/prune"
MANIFESTS_LOCK = "locks/manifests"
DEFAULT_TTL = 120.0  # refreshed every ttl/4: a holder that stops beating for this long is gone


@dataclass(frozen=True)
class LockInfo:
    key: str
    created: float
    expires: float
    owner: str | None = None

    def live(self, now: float | None = None) -> bool:
        if (time.time() if now is None else now) >= self.expires:
            return False
        return self.owner is None or owner_alive(self.owner)


MAX_LOCK_BYTES = 4096


def _body(ttl: float, created: float | None = None) -> bytes:
    now = time.time()
    return json.dumps({"created": created or now, "expires": now + ttl, "owner": owner_id()}).encode()


def read_lock(provider: Provider, key: str) -> LockInfo | None:
    try:
        raw = provider.get(key, 0, MAX_LOCK_BYTES + 1)  # the store is not trusted: never read a huge object
        d = json.loads(raw) if len(raw) <= MAX_LOCK_BYTES else {}
        owner = d.get("owner")
        return LockInfo(key, float(d["created"]), float(d["expires"]), owner if isinstance(owner, str) else None)
    except NotFound:
        return None
    except (ValueError, KeyError, TypeError, AttributeError):
        return LockInfo(key, 0.0, 0.0)  # unreadable: treat as stale


class Lock:
    """A held lock object, refreshed in the background until released (a context manager)."""

    def __init__(self, provider: Provider, key: str, ttl: float) -> None:
        self.provider = provider
        self.key = key
        self.ttl = ttl
        self._created = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, name=f"lock {key}", daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                self.provider.put(self.key, _body(self.ttl, self._created))
            except Exception as err:  # a missed beat only shortens the lock's life
                log.warning("could not refresh %s: %s", self.key, err)

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self.provider.delete(self.key)
        except Exception as err:  # it will expire on its own
            log.warning("could not remove %s: %s", self.key, err)

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def live_push_locks(provider: Provider) -> list[LockInfo]:
    out = []
    for info in provider.list(LOCKS + "push-"):
        lock = read_lock(provider, info.key)
        if lock is None:
            continue
        if lock.live():
            out.append(lock)
        else:
            provider.delete(info.key)  # stale: its holder died
    return out


def acquire_push_lock(
    provider: Provider,
    *,
    ttl: float = DEFAULT_TTL,
    wait_for_prune: float = 3600.0,
    cancel: threading.Event | None = None,
) -> Lock:
    """Announce a push, then wait out a running prune so chunks we are about to reuse stay put.

    A prune lock whose owner died is broken at once; ``cancel`` ends the wait with Cancelled.
    """
    key = f"{LOCKS}push-{int(time.time() * 1000):013d}-{secrets.token_hex(6)}"
    provider.put(key, _body(ttl))
    lock = Lock(provider, key, ttl)
    deadline = time.monotonic() + wait_for_prune
    delay = 0.2
    while True:
        prune = read_lock(provider, PRUNE_LOCK)
        if prune is None:
            return lock
        if not prune.live():
            log.warning("breaking a stale prune lock on %s (its owner is gone)", provider.url)
            provider.delete(PRUNE_LOCK)
            return lock
        if time.monotonic() > deadline:
            lock.release()
            raise OperationFailed(f"{provider.url} is being pruned by another process; try again later")
        log.info("waiting for a prune of %s to finish", provider.url)
        if (cancel or threading.Event()).wait(delay):
            lock.release()
            raise Cancelled("stopped while waiting for a prune to finish; nothing was committed")
        delay = min(delay * 2, 5.0)


def _try_acquire(provider: Provider, key: str, ttl: float, what: str) -> Lock | None:
    """The exclusive lock ``key``, or None if a live holder has it (a stale one is broken)."""
    for _ in range(2):
        if provider.put_if_absent(key, _body(ttl)):
            return Lock(provider, key, ttl)
        held = read_lock(provider, key)
        if held is not None and held.live():
            return None
        log.warning("breaking a stale %s on %s", what, provider.url)
        provider.delete(key)
    return None


def try_acquire_prune_lock(provider: Provider, *, ttl: float = DEFAULT_TTL) -> Lock | None:
    """The exclusive prune lock, or None if another live pruner holds it (a stale one is broken)."""
    return _try_acquire(provider, PRUNE_LOCK, ttl, "prune lock")


def acquire_manifests_lock(
    provider: Provider,
    *,
    ttl: float = DEFAULT_TTL,
    wait: float = 600.0,
    cancel: threading.Event | None = None,
) -> Lock:
    """The exclusive lock of changes made to committed manifests by hand (``tag``, ``forget``),
    waited for. Without it two tag changes of one checkpoint both replaced the same manifest: the
    checkpoint was listed twice, each copy missing the other's tag. Pushes and prunes do not take it
    (a commit adds a new checkpoint; retention next to a tag change is safe, see tags.py)."""
    deadline = time.monotonic() + wait
    delay = 0.1
    while True:
        lock = _try_acquire(provider, MANIFESTS_LOCK, ttl, "tag/forget lock")
        if lock is not None:
            return lock
        if time.monotonic() > deadline:
            raise OperationFailed(f"another tag or forget is changing {provider.url}; try again later")
        log.info("waiting for another tag or forget on %s to finish", provider.url)
        if (cancel or threading.Event()).wait(delay):
            raise Cancelled("stopped while waiting for another tag or forget; nothing was changed")
        delay = min(delay * 2, 2.0)
