"""Progress on a terminal: one line, redrawn in place, that fits the terminal's width.

``push``/``pull`` draw a bar for the transfer; ``watch`` draws a live line for the job in flight
(below its log lines, cleared before each one). Sizes and rates use ckpt_sync.units, the same
binary units (KiB, MiB/s) as every summary line. The ETA is the average rate since the first byte,
and is shown only after a second of data, so the first chunk's burst cannot make it nonsense.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

from ..units import format_bytes

MIN_BAR = 10  # columns the bar keeps whatever the width: the name is shortened first
ETA_AFTER = 1.0  # seconds of data before an ETA is shown
REDRAW_EVERY = 0.1


def terminal_columns(stream: TextIO) -> int:
    """The terminal's width; 80 when it reports none (serial consoles and bare ptys say 0x0)."""
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError):
        columns = 0
    return columns or int(os.environ.get("COLUMNS") or 0) or 80


def format_eta(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0 or seconds > 99 * 3600:
        return "--:--"
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def render(desc: str, done: int, total: int, elapsed: float, columns: int, base: int = 0) -> str:
    """``desc  42% [#####.....] 12.0 MiB/40.0 MiB 25.1 MiB/s ETA 0:03``, at most ``columns - 1`` wide.
    The rate is over the ``elapsed`` seconds in which ``done - base`` bytes moved."""
    done = min(done, total) if total else done
    frac = done / total if total else 1.0
    rate = (done - base) / elapsed if elapsed > 0 else 0.0
    timed = elapsed >= ETA_AFTER and rate > 0
    eta = format_eta((total - done) / rate if timed else None)
    speed = f"{format_bytes(rate)}/s" if timed else "--- MiB/s"
    tail = f" {format_bytes(done)}/{format_bytes(total)} {speed} ETA {eta}"
    head_pct = f" {frac * 100:3.0f}% "
    width = columns - 1
    room = width - len(head_pct) - len(tail) - 2  # 2: the brackets
    if room - len(desc) < MIN_BAR:  # shorten the name, then drop the numbers, never the bar
        keep = max(0, room - MIN_BAR)
        desc = desc if len(desc) <= keep else (desc[: max(0, keep - 1)] + "…" if keep else "")
    bar_width = max(MIN_BAR, room - len(desc))
    filled = int(bar_width * frac)
    line = f"{desc}{head_pct}[{'#' * filled}{'.' * (bar_width - filled)}]{tail}"
    return line[:width]


class ProgressLine:
    """A transfer's line on ``stream``: ``update(n)`` as bytes move (any thread), ``close()`` clears it."""

    def __init__(self, total: int, desc: str, stream: TextIO | None = None) -> None:
        self.total = total
        self.desc = desc
        self.stream = stream or sys.stderr
        self.done = 0
        self._started: float | None = None
        self._drawn = 0.0
        self._lock = threading.Lock()

    def update(self, n: int) -> None:
        with self._lock:
            now = time.monotonic()
            if self._started is None:
                self._started = now
            self.done += n
            if now - self._drawn >= REDRAW_EVERY or self.done >= self.total:
                self._drawn = now
                self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = now - self._started if self._started is not None else 0.0
        line = render(self.desc, self.done, self.total, elapsed, terminal_columns(self.stream))
        self.stream.write("\r" + line + "\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        with self._lock:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


class LiveLine(logging.Filter):
    """A line kept at the bottom of a terminal by a background thread: every ``every`` seconds it asks
    ``state()`` for ``(desc, done, total, elapsed, base)`` (None: nothing to show) and redraws. As a logging
    filter on the console handler it clears itself before each log line, and redraws on its next tick."""

    def __init__(
        self,
        state: Callable[[], tuple[str, int, int, float, int] | None],
        stream: TextIO | None = None,
        every: float = 0.5,
    ) -> None:
        super().__init__()
        self.state = state
        self.stream = stream or sys.stderr
        self.every = every
        self._shown = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="live-line", daemon=True)

    def filter(self, record: logging.LogRecord) -> bool:
        self._clear()
        return True

    def _clear(self) -> None:
        with self._lock:
            if self._shown:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
                self._shown = False

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                now = self.state()
            except Exception:  # the display must never take the daemon down
                now = None
            if now is None:
                self._clear()
                continue
            desc, done, total, elapsed, base = now
            line = render(desc, done, total, elapsed, terminal_columns(self.stream), base)
            with self._lock:
                self.stream.write("\r" + line + "\x1b[K")
                self.stream.flush()
                self._shown = True

    def start(self) -> LiveLine:
        for handler in logging.getLogger().handlers:
            handler.addFilter(self)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        for handler in logging.getLogger().handlers:
            handler.removeFilter(self)
        self._clear()
