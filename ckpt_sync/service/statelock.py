"""One ``watch`` per state folder: an exclusive ``flock`` on ``STATE_DIR/watch.lock``.

Two daemons on one folder would race to hold and upload the same checkpoints. The lock is held by
the open file, so the kernel releases it whatever way the process ends (``kill -9`` included): a
stale file never blocks a restart. The file holds the owner's pid for the message the second one prints.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ..errors import UsageError

LOCK_FILE = "watch.lock"


class StateDirLock:
    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.path = Path(state_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> StateDirLock:
        """Take the lock or raise UsageError naming the running watch (its pid)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UsageError(
                f"another ckpt-sync watch (pid {holder}) is already running on {self.path.parent}: "
                "stop it first, or give this one another --state-dir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
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
