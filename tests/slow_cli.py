"""Run the real ``ckpt-sync`` CLI with every chunk upload slowed by $CKPT_TEST_PUT_DELAY seconds.

Test-only: it lets crash tests kill or stop a process reliably in the middle of an upload.
"""

from __future__ import annotations

import os
import sys
import time

from ckpt_sync.providers import local

DELAY = float(os.environ.get("CKPT_TEST_PUT_DELAY", "0"))
_real_put = local.LocalProvider.put


def _slow_put(self: local.LocalProvider, key: str, data: bytes | bytearray | memoryview) -> None:
    _real_put(self, key, data)
    if key.startswith("chunks/"):
        time.sleep(DELAY)


if DELAY:
    local.LocalProvider.put = _slow_put  # type: ignore[method-assign]

if __name__ == "__main__":
    from ckpt_sync.cli import main

    sys.exit(main(sys.argv[1:]))
