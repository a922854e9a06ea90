"""Completion detection where the observer reports no close-after-write (FSEvents, Windows'
ReadDirectoryChangesW, polling): a unit is ready once its size and mtime have not changed for the
settle period, so a file still being written is never reported. A fake clock drives the settle
period; events are fed as watchdog delivers them."""

from __future__ import annotations

import errno
import os
import time
import types

from watchdog.events import FileClosedEvent, FileModifiedEvent

from ckpt_sync import platform
from ckpt_sync.service import watcher
from ckpt_sync.service.watcher import CheckpointFinder, CompletionTracker, FolderWatcher, event_handler

SETTLE = 5.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def _setup(monkeypatch, tmp_path, closes: bool):
    clock = Clock()
    monkeypatch.setattr(watcher, "time", types.SimpleNamespace(monotonic=clock.monotonic, time=time.time))
    finder = CheckpointFinder(tmp_path)
    tracker = CompletionTracker(SETTLE)
    return clock, tracker, event_handler(finder, tracker, closes)


def _append(path, data: bytes, mtime_ns: int) -> None:
    with open(path, "ab") as f:
        f.write(data)
    os.utime(path, ns=(mtime_ns, mtime_ns))  # a coarse-mtime file system still sees the size change


def test_a_file_being_written_is_not_ready_until_it_stops_changing_for_the_settle_period(monkeypatch, tmp_path):
    clock, tracker, events = _setup(monkeypatch, tmp_path, closes=False)
    path = tmp_path / "checkpoint_run1_100.pt"
    for i in range(6):  # a slow writer: a piece every 4 s, each within the settle period of the last
        _append(path, b"x" * 4096, 10**18 + i)
        events.dispatch(FileModifiedEvent(str(path)))
        assert tracker.ready() == [], f"reported while still being written (piece {i})"
        clock.now += 4.0
    assert tracker.ready() == []  # 4 s since the last change
    clock.now += 1.5
    assert [u.path.name for u in tracker.ready()] == [path.name]


def test_with_close_events_a_write_waits_for_its_close(monkeypatch, tmp_path):
    clock, tracker, events = _setup(monkeypatch, tmp_path, closes=True)
    path = tmp_path / "checkpoint_run1_200.pt"
    _append(path, b"y" * 4096, 10**18)
    events.dispatch(FileModifiedEvent(str(path)))
    tracker.ready()
    clock.now += 2 * SETTLE
    assert tracker.ready() == []  # open for writing: inotify will say when it is closed
    events.dispatch(FileClosedEvent(str(path)))
    tracker.ready()
    clock.now += SETTLE + 0.1
    assert [u.path.name for u in tracker.ready()] == [path.name]


def test_a_native_observer_that_cannot_start_gives_way_to_polling(monkeypatch, tmp_path):
    native, _ = platform.folder_observer()

    class Refusing(native):  # inotify out of watches, say
        def start(self) -> None:
            raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(platform, "folder_observer", lambda: (Refusing, True))
    watch = FolderWatcher(CheckpointFinder(tmp_path), CompletionTracker(SETTLE))
    watch.start()
    try:
        assert watch.reports_close is False
        assert type(watch.observer).__name__ == "PollingObserver"
    finally:
        watch.stop()
