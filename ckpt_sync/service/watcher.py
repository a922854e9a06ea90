"""Finding complete checkpoints in a folder.

A *unit* is what gets uploaded as one checkpoint: a file matching the patterns, or a folder that a
framework's layout claims (layouts.py: DCP, best model, Hugging Face ``checkpoint-N``, DeepSpeed
``global_stepN``; their inner files are never units). Hidden and temp files and symlinks are never
units, and hidden and temp files are never part of a folder unit, at any depth (checkpoint_files.py).
A symlink leading out of the watched folder, or a special file (FIFO, socket, device) with a
checkpoint's name, is skipped with one warning naming it.

A unit is complete when nothing is open for writing in it (inotify's close-after-write or a rename
into place), its size and mtime have not changed for the settle period, and (a folder) its layout
says it is complete; one that stays incomplete is reported once and waits. Events come from
watchdog's observer for this host (platform.folder_observer); the periodic rescan is a true
fallback, whatever the events said: a unit it finds unchanged since its previous pass is no longer
"open for writing" (a file moved in from another folder gets no close event; network filesystems
drop events).

Only inotify reports a file closed after writing. With any other observer (FSEvents on macOS,
ReadDirectoryChangesW on Windows, polling) a write is a change like any other, and completion is
the size and mtime unchanged for the settle period, checked on every pass of the main loop: a file
still being written keeps changing and is never reported; a writer that stops writing for longer
than the settle period without closing is indistinguishable from a finished one there.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .. import platform
from ..defaults import DEFAULT_PATTERNS
from ..fs.checkpoint_files import is_regular, is_temp, signature
from . import layouts

if TYPE_CHECKING:  # watchdog itself is imported when a FolderWatcher is made: only `watch` needs it
    from watchdog.events import FileSystemEvent

log = logging.getLogger("ckpt_sync.watch")

# Folders that hold files with checkpoint names that must not be uploaded as checkpoints:
# CheckpointManager.repair() moves damaged files into quarantine/.
IGNORED_DIRS = frozenset({"quarantine"})


def is_ignored_dir(name: str) -> bool:
    return is_temp(name) or name in IGNORED_DIRS


@dataclass(frozen=True)
class Unit:
    path: Path
    tags: tuple[str, ...] = ()
    layout: layouts.Layout | None = None  # a folder checkpoint's framework layout

    def missing(self) -> str | None:
        """Why this unit is not complete yet (its framework is still writing it); None when it is."""
        return self.layout.missing(self.path) if self.layout else None

    def describe(self) -> tuple[tuple[str, ...], dict]:
        """(tags, push metadata) as the checkpoint is now: step, epoch and role where its layout knows them."""
        if self.layout is None:
            return self.tags, layouts.file_metadata(self.path.name)
        return tuple(dict.fromkeys((*self.tags, *self.layout.tags(self.path)))), self.layout.describe(self.path)


class CheckpointFinder:
    def __init__(
        self, root: Path, patterns: Iterable[str] = DEFAULT_PATTERNS, *, warn: Callable[[str], None] | None = None
    ) -> None:
        self.root = root.resolve()  # events and scans name paths under the resolved root
        self.patterns = tuple(patterns)
        self._warn = warn
        self._warned: set[Path] = set()

    def _warn_once(self, path: Path, message: str) -> None:
        if self._warn is not None and path not in self._warned:
            self._warned.add(path)
            self._warn(message)

    def _acceptable(self, path: Path) -> bool:
        """Inside the watched folder (after symlinks) and a regular file or a folder; warned once if not."""
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError):
            return False  # gone, or a dangling or looping link
        if not real.is_relative_to(self.root):
            self._warn_once(path, f"skipping {path}: it is a symlink leading outside {self.root} (never followed)")
            return False
        if not (real.is_dir() or is_regular(real)):
            self._warn_once(path, f"skipping {path}: not a regular file (a FIFO, socket or device)")
            return False
        return True

    def _marked_dir(self, folder: Path) -> Unit | None:
        layout = layouts.folder_layout(folder)
        return Unit(folder, layout=layout) if layout else None

    def unit_for(self, path: Path) -> Unit | None:
        """The unit an event on ``path`` belongs to, or None if it is not part of a checkpoint."""
        try:
            rel = path.absolute().relative_to(self.root)
        except ValueError:
            return None
        parts = rel.parts
        if not parts or any(is_ignored_dir(p) for p in parts[:-1]):
            return None
        # Inside a framework's folder checkpoint: the outermost such folder is the unit.
        for depth in range(1, len(parts)):
            unit = self._marked_dir(self.root.joinpath(*parts[:depth]))
            if unit:
                return unit
        name = parts[-1]
        if layouts.is_alias(path):
            self._acceptable(path)  # an alias is never a unit; one leading outside is also worth a warning
            return None
        if path.is_dir():
            return self._marked_dir(path)
        if is_temp(name) or not any(fnmatch.fnmatch(name, p) for p in self.patterns):
            return None
        if not self._acceptable(path):
            return None
        return Unit(path.absolute())

    def scan(self) -> list[Unit]:
        units: dict[Path, Unit] = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            folder = Path(dirpath)
            if folder != self.root:
                unit = self._marked_dir(folder)
                if unit:
                    units[unit.path] = unit
                    dirnames[:] = []
                    continue
            dirnames[:] = sorted(d for d in dirnames if not is_ignored_dir(d))
            for name in filenames:
                unit = self.unit_for(folder / name)
                if unit:
                    units[unit.path] = unit
        return sorted(units.values(), key=lambda u: u.path)


@dataclass
class _Tracked:
    unit: Unit
    sig: tuple[int, int] | None = None
    stable_since: float = 0.0
    open_files: set[Path] = field(default_factory=set)
    incomplete_since: float | None = None  # stable, but its layout says it is not complete (checked then)
    rescan_sig: tuple[int, int] | None = None  # what the previous rescan saw


class CompletionTracker:
    """Remembers changing units and reports each once it is complete (thread-safe)."""

    def __init__(self, settle: float) -> None:
        self.settle = settle
        self._units: dict[Path, _Tracked] = {}
        self._warned: set[Path] = set()  # incomplete units already reported (once each)
        self._lock = threading.Lock()

    def touched(self, unit: Unit, *, writing: Path | None = None, closed: Path | None = None) -> None:
        with self._lock:
            t = self._units.setdefault(unit.path, _Tracked(unit))
            t.stable_since = time.monotonic()
            if writing is not None:
                t.open_files.add(writing)
            if closed is not None:
                t.open_files.discard(closed)

    def rescanned(self, unit: Unit) -> None:
        """The rescan saw ``unit``: unchanged since the previous rescan, it is no longer "open for
        writing", whatever the events said (a close that will never come is not waited for)."""
        try:
            sig = signature(unit.path)
        except FileNotFoundError:
            return
        with self._lock:
            t = self._units.get(unit.path)
            if t is None:
                # Unchanged on disk for the settle period already (a watch restarted over a folder
                # of finished saves): ready at once, so rotation gets no extra window to delete it
                # before it is held.
                unchanged_for = time.time() - sig[1] / 1e9
                stable_since = time.monotonic() - (self.settle if unchanged_for >= self.settle else 0.0)
                t = self._units[unit.path] = _Tracked(unit, sig=sig, stable_since=stable_since)
            elif t.open_files and t.rescan_sig == sig:
                log.debug("%s unchanged since the last rescan: no longer open for writing", unit.path)
                t.open_files.clear()
            t.rescan_sig = sig

    def forget(self, path: Path) -> None:
        with self._lock:
            self._units.pop(path, None)

    def pending(self) -> int:
        """Units still expected to complete (not those reported incomplete: they wait for their writer)."""
        with self._lock:
            return sum(t.incomplete_since is None for t in self._units.values())

    def ready(self) -> list[Unit]:
        """Units that are complete now, oldest first; they are forgotten (a later change makes them new again)."""
        now = time.monotonic()
        out = []
        with self._lock:
            for path, t in list(self._units.items()):
                try:
                    sig = signature(path)
                except FileNotFoundError:
                    del self._units[path]  # deleted (rotation) before it was complete: nothing to do
                    continue
                if sig != t.sig:
                    t.sig, t.stable_since, t.incomplete_since = sig, now, None
                    continue
                if t.open_files or now - t.stable_since < self.settle:
                    continue
                if t.incomplete_since is not None and now - t.incomplete_since < self.settle:
                    continue  # re-read what its layout checks once per settle period, not on every poll
                why = t.unit.missing()
                if why is not None:
                    t.incomplete_since = now
                    if path not in self._warned:
                        self._warned.add(path)
                        log.warning("checkpoint %s is incomplete on this host, waiting: %s", path, why)
                    continue
                out.append((sig[1], t.unit))
                del self._units[path]
        return [unit for _, unit in sorted(out, key=lambda x: (x[0], str(x[1].path)))]


class _Events:
    """What an event means for the tracker (made a watchdog handler by ``event_handler``).

    ``closes``: the observer reports a file closed after writing (inotify), so a write marks its
    file open until then; otherwise a write only restarts the settle period."""

    def __init__(self, finder: CheckpointFinder, tracker: CompletionTracker, closes: bool = True) -> None:
        self.finder = finder
        self.tracker = tracker
        self.closes = closes

    def on_any_event(self, event: FileSystemEvent) -> None:
        kind = event.event_type
        if kind in ("opened", "closed_no_write"):
            return
        src = Path(os.fsdecode(event.src_path))
        if kind == "moved":
            dest = Path(os.fsdecode(event.dest_path))
            unit = self.finder.unit_for(dest)
            if unit:  # renamed into place: complete as far as the writer is concerned
                self.tracker.touched(unit, closed=src if unit.path != dest else dest)
            return
        unit = self.finder.unit_for(src)
        if unit is None:
            return
        if kind == "deleted" and src == unit.path:
            self.tracker.forget(unit.path)
        elif kind == "closed":
            self.tracker.touched(unit, closed=src)
        elif kind == "modified" and not event.is_directory and self.closes:
            self.tracker.touched(unit, writing=src)
        # "created" alone is not "open for writing": a file moved in from another folder arrives as
        # a create with no close to follow. A real writer's first write is a "modified" anyway.
        else:
            self.tracker.touched(unit)


def event_handler(finder: CheckpointFinder, tracker: CompletionTracker, closes: bool) -> _Events:
    from watchdog.events import FileSystemEventHandler

    class Handler(_Events, FileSystemEventHandler):
        pass

    return Handler(finder, tracker, closes)


class FolderWatcher:
    """Events (watchdog: the native observer of this host, else polling) feeding a
    CompletionTracker; call ``rescan`` periodically too."""

    def __init__(self, finder: CheckpointFinder, tracker: CompletionTracker) -> None:
        self.finder = finder
        self.tracker = tracker
        observer, self.reports_close = platform.folder_observer()
        self.observer = observer()
        self.observer.schedule(event_handler(finder, tracker, self.reports_close), str(finder.root), recursive=True)

    def start(self) -> None:
        try:
            self.observer.start()
        except OSError as err:  # the native observer cannot watch this folder (inotify's watch limit, say)
            log.warning("cannot watch %s for changes (%s): polling it instead", self.finder.root, err)
            self.reports_close = False
            self.observer = platform.polling_observer()()
            handler = event_handler(self.finder, self.tracker, False)
            self.observer.schedule(handler, str(self.finder.root), recursive=True)
            self.observer.start()

    def stop(self) -> None:
        self.observer.stop()
        self.observer.join(timeout=10)

    def rescan(self) -> list[Unit]:
        units = self.finder.scan()
        for unit in units:
            self.tracker.rescanned(unit)
        log.debug("rescanned %s: %d checkpoint(s)", self.finder.root, len(units))
        return units
