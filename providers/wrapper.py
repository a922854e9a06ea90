"""The base for wrappers: a provider that adds behaviour around another one.

Every Provider call goes through ``_call(op, key, fn)``; a wrapper (retries, fault injection)
overrides that one method instead of re-delegating each call. Wrappers that act on the bytes
(bandwidth limits) override the data calls and inherit the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

from ckpt_sync.errors import UsageError

from .base import ObjectInfo, Provider, read_into, wants_aligned_buffers

T = TypeVar("T")


class WrappingProvider:
    def __init__(self, inner: Provider) -> None:
        self.inner = inner
        self.url = inner.url
        self.endpoint = getattr(inner, "endpoint", None)  # a store's own endpoint, where it is not the cloud's
        self.aligned_buffers = wants_aligned_buffers(inner)

    def _call(self, op: str, key: str, fn: Callable[[], T]) -> T:
        return fn()

    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        self._call("put", key, lambda: self.inner.put(key, data))

    def put_if_absent(self, key: str, data: bytes | bytearray | memoryview) -> bool:
        return self._call("put_if_absent", key, lambda: self.inner.put_if_absent(key, data))

    def get(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        return self._call("get", key, lambda: self.inner.get(key, start, length))

    def get_into(self, key: str, out: bytearray) -> bytes | memoryview | None:
        return self._call("get", key, lambda: read_into(self.inner, key, out))

    def size(self, key: str) -> int | None:
        return self._call("size", key, lambda: self.inner.size(key))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Materialised so a wrapper that repeats a call repeats the whole listing, not half of it.
        return iter(self._call("list", prefix, lambda: list(self.inner.list(prefix))))

    @property
    def reads_locally(self) -> bool:
        """Whether the wrapped store is a local disk (a restore then reads ahead with threads of its own)."""
        return getattr(self.inner, "reads_locally", False)

    def delete(self, key: str) -> None:
        self._call("delete", key, lambda: self.inner.delete(key))

    def check(self) -> None:
        self._call("check", "", self.inner.check)

    def create_container(self) -> bool:
        """The bucket or container under the repository (``init --create-bucket``), where the store has one."""
        create = getattr(self.inner, "create_container", None)
        if create is None:
            raise UsageError(f"{self.url}: this kind of store has no bucket to create")
        return self._call("create_container", "", create)

    def remove_abandoned(self, older_than: float | None = None, *, now: float | None = None) -> int:
        """Temp objects left by crashed writers, where the store has any (see LocalProvider)."""
        inner = getattr(self.inner, "remove_abandoned", None)
        return inner(older_than, now=now) if inner is not None else 0

    def close(self) -> None:
        self.inner.close()
