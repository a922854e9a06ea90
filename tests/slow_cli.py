"""Run the real ``ckpt-sync`` CLI with every chunk upload slowed by $CKPT_TEST_PUT_DELAY seconds
(and every chunk download by $CKPT_TEST_GET_DELAY), and with $CKPT_TEST_HOLD_COMMIT=DIR, every
manifest write held (on any store) until DIR/go exists, DIR/reached saying it got there: held
before the write, or after it with $CKPT_TEST_HOLD_AT=after.

Test-only: it lets crash tests kill or stop a process reliably in the middle of a transfer, or
between a commit's chunk check and its manifest write.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ckpt_sync.providers import local, object_store

DELAY = float(os.environ.get("CKPT_TEST_PUT_DELAY", "0"))
GET_DELAY = float(os.environ.get("CKPT_TEST_GET_DELAY", "0"))
HOLD = os.environ.get("CKPT_TEST_HOLD_COMMIT")
HOLD_AFTER = os.environ.get("CKPT_TEST_HOLD_AT") == "after"
_real_put = local.LocalProvider.put
_real_get = local.LocalProvider.get


def _hold() -> None:
    assert HOLD is not None
    (Path(HOLD) / "reached").touch()
    while not (Path(HOLD) / "go").exists():
        time.sleep(0.05)


def _held(real: Callable[..., bool]) -> Callable[..., bool]:
    def put_if_absent(self: object, key: str, data: bytes | bytearray | memoryview) -> bool:
        manifest = key.startswith("manifests/")
        if manifest and not HOLD_AFTER:
            _hold()
        written = real(self, key, data)
        if manifest and HOLD_AFTER:
            _hold()
        return written

    return put_if_absent


def _slow_put(self: local.LocalProvider, key: str, data: bytes | bytearray | memoryview) -> None:
    _real_put(self, key, data)
    if key.startswith("chunks/"):
        time.sleep(DELAY)


def _slow_get(self: local.LocalProvider, key: str, start: int = 0, length: int | None = None) -> bytes:
    if key.startswith("chunks/"):
        time.sleep(GET_DELAY)
    return _real_get(self, key, start, length)


if DELAY:
    local.LocalProvider.put = _slow_put  # type: ignore[method-assign]
if GET_DELAY:
    local.LocalProvider.get = _slow_get  # type: ignore[method-assign]
if HOLD:
    for cls in (local.LocalProvider, object_store.ObjectStoreProvider):
        cls.put_if_absent = _held(cls.put_if_absent)  # type: ignore[method-assign]

if __name__ == "__main__":
    from ckpt_sync.cli import main

    sys.exit(main(sys.argv[1:]))
