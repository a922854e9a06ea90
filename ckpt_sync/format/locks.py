"""Coordination objects that make pruning safe next to concurrent writers.

Small plaintext JSON objects under ``locks/``, each naming its owner (host, pid, process start time:
owners.py), a random token and the lifetime its holder keeps it alive for:

- ``locks/push-<ms>-<random>``: held by every push, tag change, copy and DCP save while it runs.
- ``locks/prune``: at most one pruner at a time (created with put-if-absent).
- ``locks/manifests``: at most one hand change of committed manifests (tag, forget) at a time.

The protocol (each side writes its own lock *before* reading the other's, so at least one sees the
other): a pruner takes ``locks/prune`` and then deletes unreferenced chunks only while no live push
lock exists; a pusher takes its push lock and then waits while a live prune lock exists before it
lists which chunks the repository already has.

**Liveness never compares two hosts' clocks.** A holder rewrites its lock every ``ttl / 4``
seconds, so the *store* stamps it with the store's time. A judge asks the store for its time (the
stamp of a probe object it writes, ``store_now``) and calls a lock stale when the store has not seen
it rewritten for longer than its lifetime (the longer of the holder's declared TTL and the judge's
own), or when its owner is provably dead on this host (a ``kill -9``). When the store's time cannot
be read, no lock is judged stale by age. A clock that is wrong on either host changes nothing; a
holder paused past its lifetime (SIGSTOP, a suspended VM) is judged gone, which is why:

**Breaking a lock leaves a mark.** The breaker logs which lock and why, writes
``locks/broken/<token>``, then deletes the lock. A holder checks ``Lock.lost`` (its mark exists, or
its lock object is gone) after its critical step: a push after committing (a collection may have
removed chunks it reused: it re-checks them under a new lock and uploads what is missing, see
push.commit_checked), a prune before each batch of deletions (it stops). docs/FORMAT.md states the
rule and its margins. Every wait for a lock honours a cancel event (SIGTERM) and raises Cancelled.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass

from ..errors import Cancelled, ConfigError, OperationFailed, StorageError
from ..owners import owner_alive, owner_id
from ..providers import Provider

log = logging.getLogger("ckpt_sync.locks")

LOCKS = "locks/"
PUSH_LOCKS = "locks/push-"
PRUNE_LOCK = "locks/prune"
MANIFESTS_LOCK = "locks/manifests"
BROKEN = "locks/broken/"
CLOCK_PROBES = "locks/clock-"
DEFAULT_TTL = 120.0  # refreshed every ttl/4: a holder the store has not heard from for this long is gone
MAX_DECLARED_TTL = 86400.0  # a lock declaring more is judged by a day (a damaged or hostile body)
MAX_LOCK_BYTES = 4096
TTL_ENV = "CKPT_SYNC_LOCK_TTL"


def lock_ttl() -> float:
    """The lifetime this process gives its locks and judges others' by (at least): $CKPT_SYNC_LOCK_TTL
    seconds, else 120. Holders declare theirs, and a judge waits for the longer of the two."""
    raw = os.environ.get(TTL_ENV)
    if not raw:
        return DEFAULT_TTL
    try:
        ttl = float(raw)
    except ValueError:
        ttl = 0.0
    if not 0 < ttl <= MAX_DECLARED_TTL:
        raise ConfigError(f"{TTL_ENV}={raw!r} is not a number of seconds between 0 and {MAX_DECLARED_TTL:.0f}")
    return ttl


@dataclass(frozen=True)
class LockInfo:
    key: str
    modified: float  # the store's stamp of the holder's last write
    owner: str | None = None
    token: str | None = None
    ttl: float = 0.0  # what the holder declared (0: not readable)

    def stale_because(self, store_now: float | None, ttl: float) -> str | None:
        """Why this lock's holder is gone, or None while it may be alive."""
        if self.owner is not None and not owner_alive(self.owner):
            return f"its owner {self.owner} has exited"
        if store_now is None:
            return None
        silent = store_now - self.modified
        lifetime = max(ttl, min(self.ttl, MAX_DECLARED_TTL))
        if silent > lifetime:
            return f"not refreshed for {silent:.0f}s by the store's clock (its lifetime is {lifetime:.0f}s)"
        return None

    @property
    def mark(self) -> str:
        return BROKEN + (self.token or self.key.rsplit("/", 1)[-1])


def _body(token: str, ttl: float, created: float) -> bytes:
    now = time.time()  # created/expires: read by older versions only; liveness is judged by store time
    return json.dumps(
        {"created": created, "expires": now + ttl, "owner": owner_id(), "token": token, "ttl": ttl}
    ).encode()


def _read(provider: Provider, key: str, modified: float) -> LockInfo | None:
    """The lock object ``key`` as its body describes it; None when it is gone."""
    try:
        raw = provider.get(key, 0, MAX_LOCK_BYTES + 1)  # the store is not trusted: never read a huge object
    except StorageError:
        return None if provider.size(key) is None else LockInfo(key, modified)
    try:
        d = json.loads(raw) if len(raw) <= MAX_LOCK_BYTES else {}
        owner, token, ttl = d.get("owner"), d.get("token"), d.get("ttl", 0.0)
        return LockInfo(
            key,
            modified,
            owner if isinstance(owner, str) else None,
            token if isinstance(token, str) and token.isalnum() and len(token) <= 64 else None,
            float(ttl) if isinstance(ttl, int | float) and ttl > 0 else 0.0,
        )
    except (ValueError, AttributeError):
        return LockInfo(key, modified)  # unreadable: judged by its age alone


def store_now(provider: Provider) -> float | None:
    """The store's current time: the stamp it gives an object written now (a probe under
    ``locks/``, removed again). None when it cannot be learnt (no write access, a listing that does
    not show the probe): then nothing may be judged by age."""
    probe = f"{CLOCK_PROBES}{secrets.token_hex(8)}"
    try:
        provider.put(probe, b"")
        try:
            return next((i.modified for i in provider.list(probe) if i.key == probe), None)
        finally:
            provider.delete(probe)
    except StorageError as err:
        log.debug("could not read the time of %s: %s", provider.url, err)
        return None


def judge(provider: Provider, prefix: str, ttl: float) -> tuple[list[LockInfo], list[tuple[LockInfo, str]]]:
    """(live, stale with the reason) among the lock objects whose key starts with ``prefix``.
    One listing; the store's time is asked for only when there is a lock to judge."""
    infos = [i for i in provider.list(prefix) if not i.key.startswith((BROKEN, CLOCK_PROBES))]
    if not infos:
        return [], []
    now = store_now(provider)
    live: list[LockInfo] = []
    stale: list[tuple[LockInfo, str]] = []
    for info in infos:
        lock = _read(provider, info.key, info.modified)
        if lock is None:
            continue  # released meanwhile
        why = lock.stale_because(now, ttl)
        if why is None:
            live.append(lock)
        else:
            stale.append((lock, why))
    return live, stale


def break_lock(provider: Provider, lock: LockInfo, why: str) -> None:
    """Remove a stale lock, leaving its mark first (so its holder, should it come back, learns of
    it: Lock.lost), and log which lock and why."""
    log.warning("breaking the lock %s on %s: %s", lock.key, provider.url, why)
    provider.put(lock.mark, json.dumps({"lock": lock.key, "by": owner_id(), "why": why}).encode())
    provider.delete(lock.key)


class Lock:
    """A held lock object, refreshed in the background until released (a context manager)."""

    def __init__(self, provider: Provider, key: str, ttl: float, token: str, created: float) -> None:
        self.provider = provider
        self.key = key
        self.ttl = ttl
        self.token = token
        self.mark = BROKEN + token
        self._marked = False
        self._created = created
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, name=f"lock {key}", daemon=True)
        self._thread.start()

    @classmethod
    def write(cls, provider: Provider, key: str, ttl: float, *, exclusive: bool = False) -> Lock | None:
        """Write the lock object (``exclusive``: only if absent; None when it exists) and start its heartbeat."""
        token, created = secrets.token_hex(8), time.time()
        body = _body(token, ttl, created)
        if exclusive:
            if not provider.put_if_absent(key, body):
                return None
        else:
            provider.put(key, body)
        return cls(provider, key, ttl, token, created)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                self.provider.put(self.key, _body(self.token, self.ttl, self._created))
            except Exception as err:  # a missed beat only shortens the lock's life
                log.warning("could not refresh %s: %s", self.key, err)

    def lost(self) -> bool:
        """Whether another process judged this lock's holder gone while it was held (its mark is
        there, or the lock object is not): a chunk collection may then have run without seeing it."""
        keys = {i.key for i in self.provider.list(LOCKS)}
        self._marked = self._marked or self.mark in keys
        return self._marked or self.key not in keys

    def release(self) -> None:
        """Stop the heartbeat and remove the lock (and its mark, when ``lost`` found one; a mark
        left behind is swept by a later prune)."""
        self._stop.set()
        self._thread.join()
        for key in (self.key, self.mark) if self._marked else (self.key,):
            try:
                self.provider.delete(key)
            except Exception as err:  # it will be judged stale on its own
                log.warning("could not remove %s: %s", key, err)

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def live_push_locks(provider: Provider, *, ttl: float | None = None) -> list[LockInfo]:
    """The push locks whose holders may be running; stale ones are broken (logged, marked)."""
    live, stale = judge(provider, PUSH_LOCKS, ttl or lock_ttl())
    for lock, why in stale:
        break_lock(provider, lock, why)
    return live


def acquire_push_lock(
    provider: Provider,
    *,
    ttl: float | None = None,
    wait_for_prune: float = 3600.0,
    cancel: threading.Event | None = None,
) -> Lock:
    """Announce a push, then wait out a running prune so chunks we are about to reuse stay put.

    A prune lock whose holder is gone is broken (logged, marked); ``cancel`` ends the wait with Cancelled.
    """
    ttl = ttl or lock_ttl()
    key = f"{PUSH_LOCKS}{int(time.time() * 1000):013d}-{secrets.token_hex(6)}"
    lock = Lock.write(provider, key, ttl)
    assert lock is not None
    deadline = time.monotonic() + wait_for_prune
    delay = 0.2
    while True:
        live, stale = judge(provider, PRUNE_LOCK, ttl)
        for held, why in stale:
            if held.key == PRUNE_LOCK:
                break_lock(provider, held, why)
        if not any(held.key == PRUNE_LOCK for held in live):
            return lock
        if time.monotonic() > deadline:
            lock.release()
            raise OperationFailed(f"{provider.url} is being pruned by another process; try again later")
        # Once as a warning (a verb that blocks for minutes says why), then quietly.
        log.log(logging.WARNING if delay == 0.2 else logging.DEBUG, "waiting for a prune of %s to finish", provider.url)
        if (cancel or threading.Event()).wait(delay):
            lock.release()
            raise Cancelled("stopped while waiting for a prune to finish; nothing was committed")
        delay = min(delay * 2, 5.0)


def _try_acquire(provider: Provider, key: str, ttl: float) -> Lock | None:
    """The exclusive lock ``key``, or None if a live holder has it (a stale one is broken)."""
    for _ in range(2):
        lock = Lock.write(provider, key, ttl, exclusive=True)
        if lock is not None:
            return lock
        live, stale = judge(provider, key, ttl)
        if any(held.key == key for held in live):
            return None
        for held, why in stale:
            if held.key == key:
                break_lock(provider, held, why)
    return None


def try_acquire_prune_lock(provider: Provider, *, ttl: float | None = None) -> Lock | None:
    """The exclusive prune lock, or None if another live pruner holds it (a stale one is broken)."""
    return _try_acquire(provider, PRUNE_LOCK, ttl or lock_ttl())


def acquire_manifests_lock(
    provider: Provider,
    *,
    ttl: float | None = None,
    wait: float = 600.0,
    cancel: threading.Event | None = None,
) -> Lock:
    """The exclusive lock of changes made to committed manifests by hand (``tag``, ``forget``),
    waited for. Without it two tag changes of one checkpoint both replaced the same manifest: the
    checkpoint was listed twice, each copy missing the other's tag. Pushes and prunes do not take it
    (a commit adds a new checkpoint; retention next to a tag change is safe, see tags.py)."""
    ttl = ttl or lock_ttl()
    deadline = time.monotonic() + wait
    delay = 0.1
    while True:
        lock = _try_acquire(provider, MANIFESTS_LOCK, ttl)
        if lock is not None:
            return lock
        if time.monotonic() > deadline:
            raise OperationFailed(f"another tag or forget is changing {provider.url}; try again later")
        level = logging.WARNING if delay == 0.1 else logging.DEBUG  # once as a warning, then quietly
        log.log(level, "waiting for another tag or forget on %s to finish", provider.url)
        if (cancel or threading.Event()).wait(delay):
            raise Cancelled("stopped while waiting for another tag or forget; nothing was changed")
        delay = min(delay * 2, 2.0)


def sweep_marks(provider: Provider, store_time: float, older_than: float) -> int:
    """Remove break marks (and clock probes a crash left) older than ``older_than`` seconds by the
    store's clock; a holder that comes back later finds its lock object gone, which says the same."""
    removed = 0
    for info in provider.list(LOCKS):
        if info.key.startswith((BROKEN, CLOCK_PROBES)) and store_time - info.modified > older_than:
            provider.delete(info.key)
            removed += 1
    return removed
