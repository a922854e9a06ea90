"""The provider interface: a small object-store adapter.

Every store implements only these calls and classifies its SDK's errors into
``NotFound`` / ``PermanentStorageError`` / ``TransientStorageError`` (ckpt_sync.errors), so
cross-cutting behaviour (retries, fault injection, bandwidth limits) lives in wrappers that work
with any provider. Keys are relative, '/'-separated object names below the repository's prefix.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: float  # unix seconds


@runtime_checkable
class Provider(Protocol):
    """What the repository needs from a store. ``url`` names the repository for error messages."""

    url: str

    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        """Store ``data`` under ``key`` (replacing it). A reader sees the old or new object, never a part.

        Visible on return; durable on return, or at the latest when a later ``put_if_absent`` of the
        same provider returns (that is the commit point, and a durability barrier).
        """

    def put_if_absent(self, key: str, data: bytes | bytearray | memoryview) -> bool:
        """Store only if ``key`` does not exist; True if written, False if it already existed.

        Everything earlier ``put`` calls stored is durable before this object is.
        """

    def get(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        """Read the object (or ``length`` bytes from ``start``). Raises NotFound."""

    # Optional: ``get_into(key, out: bytearray) -> memoryview | None`` reads the whole object into
    # ``out`` and returns the view of ``out`` it fills, or None (nothing read) when it is larger than
    # ``out``. Chunks are read that way into reusable buffers; ``read_into`` falls back to ``get``.
    # Optional: ``aligned_buffers = True`` asks for chunk tokens in page-aligned buffers (the local
    # provider then writes and reads them with O_DIRECT, without a copy); see wants_aligned_buffers.

    def size(self, key: str) -> int | None:
        """The object's size, or None if it does not exist."""

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (all pages), in no particular order."""

    def delete(self, key: str) -> None:
        """Remove the object; removing a missing object is not an error."""

    def check(self) -> None:
        """Fail fast with PermanentStorageError if the store cannot be used (no bucket, no access)."""

    def close(self) -> None:
        """Release connections."""


def wants_aligned_buffers(provider: Provider) -> bool:
    """Whether ``provider`` moves tokens best from page-aligned buffers (``aligned_buffers``)."""
    return bool(getattr(provider, "aligned_buffers", False))


def read_into(provider: Provider, key: str, out: bytearray) -> bytes | memoryview | None:
    """The whole object ``key``: read into ``out`` (a view of it) when the provider has ``get_into``
    (no fresh allocation per object, no page faults), else the bytes ``get`` returned, never copied
    again. None when the object is larger than ``out`` and was not read; the caller, who knows the
    size to expect, checks it in every case."""
    fn = getattr(provider, "get_into", None)
    if fn is not None:
        return fn(key, out)
    data = provider.get(key, 0, len(out) + 1)  # bounded: the store is not trusted to return what we expect
    return data if len(data) <= len(out) else None
