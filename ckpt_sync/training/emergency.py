"""Emergency save on SIGINT/SIGTERM/SIGBREAK: the handler only raises a flag.

Saving from inside the handler would be unsafe. A Python signal handler runs between two bytecodes of the
main thread — possibly between ``loss.backward()`` and ``optimizer.step()``, or half-way through
the optimizer's per-parameter loop — so a state dict taken there can pair weights from step N with
optimizer moments from step N+1. Here the handler records the signal; the manager's next
``maybe_save``/``safe_point`` (between steps, where the state is consistent) writes the checkpoint.

A second signal while one is pending (before the safe point) restores the previous handlers and
re-delivers it, so a user pressing Ctrl-C twice still gets out, and ``kill -TERM`` twice still
terminates. Once the emergency checkpoint is being written, a further signal says it is finishing
and the process exits cleanly right after the save (``finishing``): no traceback, no half save.
A pid file (``logs/training.pid`` by default) lets external power-event hooks find the process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from .. import platform
from ..fs.atomic import atomic_write_bytes

log = logging.getLogger("ckpt_sync.training")


def default_signals() -> tuple[int, ...]:
    """SIGINT, SIGTERM, and SIGBREAK (Windows console Ctrl-Break) where it exists."""
    return platform.stop_signals()


class EmergencySignals:
    def __init__(self, signals: tuple[int, ...] | None = None, *, pid_file: str | os.PathLike | None = None):
        self.signals = default_signals() if signals is None else signals
        self.pid_file = Path(pid_file) if pid_file else None
        self.requested: int | None = None
        self.again: int | None = None  # a signal that came while the emergency checkpoint was written
        self._previous: dict[int, Any] = {}

    def install(self) -> bool:
        """Install the handlers (main thread only); write the pid file. False when handlers cannot be set."""
        if self.pid_file:
            self.pid_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.pid_file, f"{os.getpid()}\n".encode())
        if threading.current_thread() is not threading.main_thread():
            log.warning("[WARN] CheckpointManager created outside the main thread: no emergency save on signals")
            return False
        for s in self.signals:
            self._previous[s] = signal.getsignal(s)
            signal.signal(s, self._handle)
        return True

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:
            # Second signal: the user means it. Give the signal back to whoever handled it before us.
            self.uninstall(keep_pid_file=True)
            signal.raise_signal(signum)
            return
        self.requested = signum
        name = platform.signal_name(signum)
        # os.write, not print: print from a handler can hit a reentrant-I/O error mid-print.
        os.write(2, f"\n[EMERGENCY] {name} received; saving a checkpoint at the next safe point\n".encode())

    def clear(self) -> None:
        self.requested = None

    @contextlib.contextmanager
    def finishing(self) -> Iterator[None]:
        """While the emergency checkpoint is written: a further signal says so in one line and is held
        until the save is done (``again`` then holds it), instead of a KeyboardInterrupt mid-save."""
        self.again = None
        installed: dict[int, Any] = {}

        def hold(signum: int, _frame: FrameType | None) -> None:
            if self.again is None:
                name = platform.signal_name(signum)
                os.write(2, f"[EMERGENCY] {name} again: finishing the emergency checkpoint, then exiting\n".encode())
            self.again = signum

        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                with contextlib.suppress(ValueError, TypeError, OSError):
                    installed[s] = signal.signal(s, hold)
        try:
            yield
        finally:
            for s, prev in installed.items():
                with contextlib.suppress(ValueError, TypeError, OSError):
                    signal.signal(s, prev if prev is not None else signal.SIG_DFL)

    def uninstall(self, *, keep_pid_file: bool = False) -> None:
        if threading.current_thread() is threading.main_thread():
            for s, prev in self._previous.items():
                with contextlib.suppress(ValueError, TypeError, OSError):
                    signal.signal(s, prev if prev is not None else signal.SIG_DFL)
            self._previous.clear()
        if self.pid_file and not keep_pid_file:
            with contextlib.suppress(OSError, ValueError):
                if int(self.pid_file.read_text().strip()) == os.getpid():
                    self.pid_file.unlink()
