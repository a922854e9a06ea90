"""``ckpt-sync watch``: find complete checkpoints in a folder and keep the repository in step.

At start, what is already in the folder is reconciled with the repository (a file whose exact
version — name, size, mtime — is committed, or already queued, is not sent again); from then on
inotify events and a periodic rescan feed the durable queue, and a worker drains it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..defaults import DEFAULT_GRACE, DEFAULT_PATTERNS, WATCH_KEEP, WATCH_RESCAN, WATCH_SETTLE
from ..errors import UsageError
from ..format.chunking import ChunkPolicy
from ..fs.checkpoint_files import incomplete_reason, signature

if TYPE_CHECKING:  # the queue (sqlite3), the worker and the watcher are imported by run_watch: config
    # reads WatchOptions' defaults at every start-up, and only `watch` runs a daemon.
    from ..format.manifest import Manifest
    from ..format.repository import Repository
    from ..transfer.counters import TransferStats
    from ..transfer.retention import RetentionPolicy
    from .queue import Job, JobQueue
    from .watcher import Unit

log = logging.getLogger("ckpt_sync.watch")


@dataclass(frozen=True)
class WatchOptions:
    root: Path
    patterns: tuple[str, ...] = DEFAULT_PATTERNS
    settle: float = WATCH_SETTLE
    rescan_every: float = WATCH_RESCAN
    once: bool = False
    keep: int | None = WATCH_KEEP  # remote FIFO (retention.fifo_with_tags); 0 or None: no remote retention
    retention: RetentionPolicy | None = None  # when given, replaces keep (e.g. retention.build_policy(...))
    keep_scope: str = "run"  # what keep counts and removes: this folder's run, or the whole repository
    grace: float = DEFAULT_GRACE
    workers: int | None = None
    policy: ChunkPolicy = ChunkPolicy()
    once_attempts: int = 3


@dataclass(frozen=True)
class WatchHooks:
    """Observers of a running watch (metrics, health); they see what happens and change nothing."""

    on_commit: Callable[[Job, Manifest, TransferStats], None] | None = None
    on_failure: Callable[[Job, str, bool], None] | None = None  # (job, message, gave_up)
    on_tick: Callable[[bool], None] | None = None  # each turn of the main loop: is the worker thread alive?


def committed_versions(manifests: Iterable[Manifest]) -> set[tuple[str, int, int]]:
    """(name, size, source mtime) of every committed checkpoint that recorded its source: the
    versions a watch, and ``status``, count as uploaded (a job's name, size and mtime_ns)."""
    out = set()
    for m in manifests:
        mtime = m.extra.get("source_mtime_ns")
        if isinstance(mtime, int):
            out.add((m.name, m.size, mtime))
    return out


def default_state_dir(root: Path) -> Path:
    """Beside the checkpoints (hidden), so held copies are instant hard links on the same filesystem."""
    return root / ".ckpt-sync"


def run_watch(
    repo: Repository, queue: JobQueue, opts: WatchOptions, stop: threading.Event, hooks: WatchHooks | None = None
) -> int:
    """Run until ``stop`` (or, with ``once``, until everything present is committed). Returns the exit code."""
    from .queue import PENDING, RUNNING
    from .watcher import CheckpointFinder, CompletionTracker, FolderWatcher
    from .worker import SyncWorker

    root = opts.root.resolve()
    if not root.is_dir():
        raise UsageError(f"{root} is not a folder to watch")
    queue.set("watch_dir", str(root))
    queue.set("patterns", json.dumps(list(opts.patterns)))
    queue.retry_now()  # a new run tries what earlier runs left queued at once
    finder = CheckpointFinder(root, opts.patterns, warn=log.warning)
    tracker = CompletionTracker(opts.settle)
    committed = committed_versions(repo.manifests())
    worker = SyncWorker(
        repo,
        queue,
        keep=opts.keep,
        retention=opts.retention,
        keep_scope=opts.keep_scope,
        grace=opts.grace,
        workers=opts.workers,
        policy=opts.policy,
        on_commit=hooks.on_commit if hooks else None,
        on_failure=hooks.on_failure if hooks else None,
    )
    worker_stop = threading.Event()
    worker_thread = threading.Thread(target=worker.run, args=(worker_stop,), name="sync-worker", daemon=True)
    watcher = FolderWatcher(finder, tracker)
    if not opts.once:
        watcher.start()
    present = watcher.rescan()
    log.info("watching %s -> %s (%d checkpoint(s) present)", root, repo.url, len(present))
    worker_thread.start()
    next_scan = time.monotonic() + opts.rescan_every
    held_back: dict[Path, tuple[int, int]] = {}
    still_pending: list[Job] = []
    try:
        while not stop.is_set():
            if hooks and hooks.on_tick:
                hooks.on_tick(worker_thread.is_alive())
            if worker.superseded:  # a held copy was rewritten in place: look again for the version now on disk
                del worker.superseded[:]
                watcher.rescan()
            for unit in tracker.ready():
                if _enqueue_if_new(queue, unit, committed, held_back):
                    worker.wake()
            if opts.once and tracker.pending() == 0:
                unfinished = queue.jobs(PENDING, RUNNING)
                if not unfinished:
                    break
                if all(worker.tried.get(j.id, 0) >= opts.once_attempts for j in unfinished):
                    still_pending = unfinished
                    break
            if not opts.once and time.monotonic() >= next_scan:
                watcher.rescan()
                next_scan = time.monotonic() + opts.rescan_every
            stop.wait(0.2)
    finally:
        # On shutdown this cancels the upload in flight at its next chunk; nothing half-done is committed.
        worker_stop.set()
        worker_thread.join()
        if not opts.once:
            watcher.stop()
    if still_pending:
        last = still_pending[0]
        log.error(
            "%d checkpoint(s) not uploaded yet (%s; last error: %s): they stay queued and held, "
            "and the next run retries them",
            len(still_pending),
            ", ".join(j.name for j in still_pending[:3]) + (", ..." if len(still_pending) > 3 else ""),
            last.last_error,
        )
    return 1 if worker.failed or still_pending else 0


def _enqueue_if_new(
    queue: JobQueue, unit: Unit, committed: set[tuple[str, int, int]], held_back: dict[Path, tuple[int, int]]
) -> bool:
    """Queue ``unit`` unless this version is committed or queued already, or is not complete on
    disk (held back with one warning per version until it changes)."""
    try:
        size, mtime_ns = signature(unit.path)
    except FileNotFoundError:
        return False
    if (unit.path.name, size, mtime_ns) in committed or queue.find(unit.path, size, mtime_ns):
        return False
    if unit.path.is_file():
        reason = incomplete_reason(unit.path)
        if reason:
            if held_back.get(unit.path) != (size, mtime_ns):
                held_back[unit.path] = (size, mtime_ns)
                log.warning("not uploading %s yet: it %s", unit.path, reason)
            return False
    tags, metadata = unit.describe()
    try:
        job_id = queue.enqueue(unit.path, tags=tags, metadata=metadata)
    except FileNotFoundError:
        return False  # rotated away before we could hold it
    except UsageError as err:  # e.g. a symlink out of a folder checkpoint: an error, never a silent omission
        if held_back.get(unit.path) != (size, mtime_ns):
            held_back[unit.path] = (size, mtime_ns)
            log.error("not uploading %s: %s", unit.path, err)
        return False
    held_back.pop(unit.path, None)
    log.info("queued %s (job %d)", unit.path.name, job_id)
    return True
