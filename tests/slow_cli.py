"""Run the real ``ckpt-sync`` CLI with every chunk upload slowed by $CKPT_TEST_PUT_DELAY seconds
(and every chunk download by $CKPT_TEST_GET_DELAY).

Test-only: it lets crash tests kill or stop a process reliably in the middle of a transfer.
"""

from __future__ import annotations

import os
import sys
import time

from ckpt_sync.providers import local

DELAY = float(os.environ.get("CKPT_TEST_PUT_DELAY", "0"))
GET_DELAY = float(os.environ.get("CKPT_TEST_GET_DELAY", "0"))
_real_put = local.LocalProvider.put
_real_get = local.LocalProvider.get


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

if __name__ == "__main__":
    from ckpt_sync.cli import main

    sys.exit(main(sys.argv[1:]))
