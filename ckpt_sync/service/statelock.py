"""One ``watch`` per state folder: an exclusive lock on ``STATE_DIR/watch.lock`` (platform.try_lock).

Two daemons on one folder would race to hold and upload the same checkpoints. The lock is held by
the open file, so the operating system releases it whatever way the process ends (``kill -9``
included): a stale file never blocks a restart. The file holds the owner's pid for the message the
second one prints.
"""

from __future__ import annotations

import os
from pathlib import Path

from .. import platform
from ..errors import UsageError

LOCK_FILE = "watch.lock"


class StateDirLock:
    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.path = Path(state_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> StateDirLock:
        """Take the lock or raise UsageError naming the running watch (its pid)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | platform.BINARY, 0o644)
        try:
            taken = platform.try_lock(fd)
        except BaseException:
            os.close(fd)
            raise
        if not taken:
            holder = platform.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UsageError(
                f"another ckpt-sync watch (pid {holder}) is already running on {self.path.parent}: "
                "stop it first, or give this one another --state-dir"
            )
        os.ftruncate(fd, 0)
        platform.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> StateDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
