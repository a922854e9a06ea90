"""What the three cloud providers share: URL parsing, key mapping, one-line messages, put-if-absent.

Each cloud provider subclasses :class:`ObjectStoreProvider` and supplies the SDK calls; the shared
part keeps the Provider semantics identical across stores (range edge cases, key checks, the
create-only write and its fallback), so one contract suite holds for all of them.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from ckpt_sync.errors import NotFound, StorageError, UsageError

from .base import ObjectInfo
from .retry import attempt_timeout

log = logging.getLogger("ckpt_sync.providers")

# Connections kept per client: the pipeline runs up to 16 workers, and a retry may open a second
# socket while the first is still being torn down. Idle sockets cost nothing on loopback or in a VPC.
POOL_CONNECTIONS = 32
# Page size for listings. S3 caps it at 1000; using the same everywhere makes paging behave alike.
LIST_PAGE_SIZE = 1000
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0


@dataclass(frozen=True)
class Connection:
    """How a cloud provider talks to its endpoint: the connection pool and the per-attempt timeouts."""

    pool_connections: int = POOL_CONNECTIONS
    connect_timeout: float = CONNECT_TIMEOUT
    read_timeout: float = READ_TIMEOUT

    @classmethod
    def of(cls, options: dict[str, Any]) -> Connection:
        """The connection settings among ``open_provider``'s options (the others are not ours)."""
        return cls(**{k: options[k] for k in ("pool_connections", "connect_timeout", "read_timeout") if k in options})


DEFAULT_CONNECTION = Connection()


PROBE_PREFIX = ".ckpt-sync-probe/"
# An attempt's timeouts are cut to what is left of its retry budget, rounded up to one of these
# steps (S3 needs a client per distinct timeout; a few steps keep that to a few clients).
TIMEOUT_STEPS = (1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0, 45.0)


def attempt_timeouts(connect: float, read: float) -> tuple[float, float]:
    """(connect, read) timeouts for the call running now: never beyond the rest of its retry budget."""
    left = attempt_timeout()
    if left is None or left >= read:
        return connect, read
    step = next((s for s in TIMEOUT_STEPS if s >= left), left)
    return min(connect, step), min(read, step)


def one_line(text: object, limit: int = 200) -> str:
    """First line of an SDK message, trimmed: error lines must stay one line and short."""
    s = str(text).strip().splitlines()[0] if str(text).strip() else type(text).__name__
    return s if len(s) <= limit else s[: limit - 3] + "..."


def parse_url(url: str, scheme: str, noun: str) -> tuple[str, str]:
    """``scheme://container/some/prefix`` -> ("container", "some/prefix")."""
    parsed = urlparse(url)
    if parsed.scheme.lower() != scheme or not parsed.netloc:
        raise UsageError(f"malformed {scheme}:// URL {url!r}: expected {scheme}://{noun}/optional/prefix")
    if parsed.query or parsed.fragment or parsed.params:
        raise UsageError(f"{url!r}: {scheme}:// URLs take no ?query or #fragment")
    prefix = parsed.path.strip("/")
    if re.search(r"(^|/)\.\.?(/|$)|//", prefix):
        raise UsageError(f"{url!r}: the prefix may not contain '.', '..' or empty path segments")
    return parsed.netloc, prefix


class ConditionalWriteUnsupported(Exception):
    """The store rejected the create-only precondition itself (e.g. 501 Not Implemented)."""


class ObjectStoreProvider:
    """Base of the cloud providers: a container (bucket) plus a key prefix, and shared semantics.

    Subclasses implement ``_put``, ``_create_only``, ``_get``, ``size``, ``_list``, ``_delete``,
    ``check`` and ``close`` on full object names. ``custom_endpoint`` is the endpoint URL when the
    store is not the cloud itself (an emulator or S3-compatible store): only there is it probed
    whether create-only writes are honoured, the real services are known to honour them.
    """

    scheme: str
    noun = "bucket"

    def __init__(self, container: str, prefix: str, custom_endpoint: str | None) -> None:
        self.container = container
        self.prefix = prefix
        self.url = f"{self.scheme}://{container}/{prefix}" if prefix else f"{self.scheme}://{container}"
        self._base = f"{prefix}/" if prefix else ""
        self._probe_lock = threading.Lock()
        self._use_endpoint(custom_endpoint)

    @classmethod
    def from_url(cls, url: str, *, endpoint_url: str | None = None, **options: Any) -> Any:
        """Build from ``scheme://container/prefix``; options this store does not know are ignored."""
        container, prefix = parse_url(url, cls.scheme, cls.noun)
        return cls(container, prefix, endpoint_url=endpoint_url, connection=Connection.of(options))  # type: ignore[call-arg]

    def _use_endpoint(self, custom_endpoint: str | None) -> None:
        self.endpoint = custom_endpoint.rstrip("/") if custom_endpoint else None
        # None: not yet known (probed on first put_if_absent); True: the store refuses a second create.
        self.atomic_put_if_absent: bool | None = None if custom_endpoint else True

    # --- naming and messages -------------------------------------------------------------------

    def _name(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"bad object key {key!r}")
        return self._base + key

    def where(self, key: str = "") -> str:
        """What to name in a message: the object's URL, plus the endpoint when it is not the cloud's own."""
        at = f" at {self.endpoint}" if self.endpoint else ""
        return (f"{self.url}/{key}" if key else self.url) + at

    def _missing_container(self) -> str:
        return (
            f"the {self.noun} {self.container!r} does not exist ({self.where()}): create it or fix the repository URL"
        )

    # --- Provider, shared part -------------------------------------------------------------------

    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        self._put(self._name(key), data, key)

    def get(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        name = self._name(key)
        if start < 0 or (length is not None and length < 0):
            raise ValueError(f"bad range start={start} length={length}")
        if length == 0:  # no store has an empty Range; still say NotFound for a missing object
            if self.size(key) is None:
                raise NotFound(f"{self.where(key)} does not exist")
            return b""
        return self._get(name, start, length, key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        cut = len(self._base)
        for info in self._list(self._base + prefix):
            yield ObjectInfo(info.key[cut:], info.size, info.modified)

    def delete(self, key: str) -> None:
        self._delete(self._name(key), key)

    def put_if_absent(self, key: str, data: bytes | bytearray | memoryview) -> bool:
        """The store's conditional create; where the store ignores it, check-then-put (one writer only)."""
        name = self._name(key)
        if self.atomic_put_if_absent is None:
            self._probe()
        if self.atomic_put_if_absent:
            try:
                return self._create_only(name, data, key)
            except ConditionalWriteUnsupported:
                self._fall_back("rejects")
        if self.size(key) is not None:
            return False
        self._put(name, data, key)
        return True

    # --- create-only writes: detection and fallback ----------------------------------------------

    def _probe(self) -> None:
        """Write one probe object twice, create-only: a store that honours the condition refuses the second."""
        with self._probe_lock:
            if self.atomic_put_if_absent is not None:
                return
            probe = PROBE_PREFIX + secrets.token_hex(8)
            name = self._name(probe)
            try:
                honoured = self._create_only(name, b"1", probe) and not self._create_only(name, b"2", probe)
            except ConditionalWriteUnsupported:
                honoured = False
            finally:
                try:
                    self._delete(name, probe)
                except StorageError as err:  # a leftover probe object is harmless; the answer is what matters
                    log.debug("could not remove the probe object %s: %s", probe, err)
            if honoured:
                self.atomic_put_if_absent = True
            else:
                self._fall_back("ignores")

    def _fall_back(self, how: str) -> None:
        if self.atomic_put_if_absent is not False:
            log.warning(
                "%s %s create-only writes; falling back to check-then-put, which is safe with one writer "
                "at a time (see docs/PROVIDERS.md)",
                self.where(),
                how,
            )
        self.atomic_put_if_absent = False

    # --- for subclasses --------------------------------------------------------------------------

    def _put(self, name: str, data: bytes | bytearray | memoryview, key: str) -> None:
        raise NotImplementedError

    def _create_only(self, name: str, data: bytes | bytearray | memoryview, key: str) -> bool:
        raise NotImplementedError

    def _get(self, name: str, start: int, length: int | None, key: str) -> bytes:
        raise NotImplementedError

    def _list(self, full_prefix: str) -> Iterator[ObjectInfo]:
        raise NotImplementedError

    def _delete(self, name: str, key: str) -> None:
        raise NotImplementedError
