"""``ckpt-sync watch``: the sidecar daemon that uploads every complete checkpoint in a folder."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .. import platform
from ..defaults import DEFAULT_PATTERNS
from ..errors import Cancelled, UsageError
from ..format.chunking import ChunkPolicy
from ..service import settings
from ..service.statelock import StateDirLock
from ..units import parse_size
from .common import (
    OUTPUT,
    add_grace_option,
    add_repo_option,
    add_repository_settings_options,
    add_retention_options,
    open_repository,
    retention_policy,
)
from .progress import LiveLine

if TYPE_CHECKING:
    from ..service.queue import JobQueue
    from ..transfer.retention import RetentionPolicy

log = logging.getLogger("ckpt_sync")


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("watch", parents=[common], help="sidecar daemon: upload every complete checkpoint in DIR")
    p.add_argument(
        "dir", nargs="?", metavar="DIR", help="the folder the training job saves checkpoints into (or watch_dir)"
    )
    p.add_argument("--state-dir", metavar="DIR", help="queue and held files (default DIR/.ckpt-sync)")
    p.add_argument(
        "--pattern",
        action="append",
        metavar="GLOB",
        help=f"checkpoint file names (repeatable; default {' '.join(DEFAULT_PATTERNS)})",
    )
    p.add_argument(
        "--settle",
        type=float,
        metavar="SECONDS",
        help="a checkpoint must be closed and unchanged this long before upload (default 5)",
    )
    p.add_argument(
        "--rescan",
        type=float,
        metavar="SECONDS",
        help="full rescan interval, for filesystems that drop events (default 30)",
    )
    add_retention_options(p, zero="0 keeps everything")
    p.add_argument(
        "--keep-scope",
        choices=("run", "repository"),
        help="what --keep counts and removes: this folder's run, i.e. the sessions it uploaded (default), or "
        "every checkpoint in the repository (then another run's checkpoints can go too)",
    )
    add_grace_option(p)
    p.add_argument(
        "--once",
        action="store_true",
        help="upload what is there, wait until committed, exit (1 naming what is still queued if storage "
        "kept failing: it stays held, and the next run retries it)",
    )
    p.add_argument("--chunk-size", metavar="SIZE", help="chunk size, e.g. 8M (default 8M)")
    p.add_argument("--log-format", choices=("text", "json"), help="log lines as text or JSON (default text)")
    p.add_argument(
        "--metrics-addr",
        metavar="HOST:PORT",
        help="serve Prometheus /metrics and /healthz, /livez probes here, e.g. 127.0.0.1:9109 (default off)",
    )
    add_repository_settings_options(p)
    add_repo_option(p, "--to")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..service.daemon import default_state_dir  # the daemon, its queue (sqlite3) and inotify: only here

    if not args.dir:
        raise UsageError("watch needs a folder: ckpt-sync watch DIR, or watch_dir in the config file")
    root = Path(args.dir)
    if not root.is_dir():
        raise UsageError(f"{root} is not a folder to watch")
    retention = retention_policy(args)  # a bad --keep-* is exit 2 before anything starts
    state_dir = Path(args.state_dir) if args.state_dir else default_state_dir(root)
    lock = StateDirLock(state_dir).acquire()  # a second watch on this folder exits 2 naming the first
    try:
        return _watch(args, root, state_dir, retention)
    finally:
        lock.release()


def _watch(args: argparse.Namespace, root: Path, state_dir: Path, retention: RetentionPolicy | None) -> int:
    from ..service.daemon import WatchOptions, run_watch
    from ..service.queue import JobQueue

    stop = threading.Event()
    repo = open_repository(args, create=True, cancel=stop)
    queue = JobQueue(state_dir)  # its worker records the repository and the endpoint for `status`

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s: finishing up (nothing half-done is committed)", platform.signal_name(signum))
        stop.set()

    for sig in platform.stop_signals():
        signal.signal(sig, on_signal)
    opts = WatchOptions(
        root=root,
        patterns=tuple(args.pattern or DEFAULT_PATTERNS),
        settle=args.settle,
        rescan_every=args.rescan,
        once=args.once,
        keep=None,
        retention=retention,
        keep_scope=args.keep_scope,
        grace=args.grace,
        workers=args.workers,
        policy=ChunkPolicy.of_size(parse_size(args.chunk_size) if args.chunk_size else None),
    )
    served = None
    live = None
    try:
        if args.metrics_addr:
            from ..service.metrics import serve

            served = serve(settings.parse_address(args.metrics_addr), repo, queue)
        if sys.stderr.isatty() and not OUTPUT.quiet and args.log_format != "json":
            live = LiveLine(_in_flight_line(queue)).start()
        return run_watch(repo, queue, opts, stop, served.hooks if served else None)
    except Cancelled:  # SIGTERM while a storage call was being retried: nothing half-done was committed
        return 0
    finally:
        if live:
            live.stop()
        if served:
            served.close()
        queue.close()


def _in_flight_line(queue: JobQueue) -> Callable[[], tuple[str, int, int, float, int] | None]:
    """What the live line shows: the job in flight, its bytes so far (the worker's heartbeat) and the
    rate since this display first saw it."""
    first_seen: dict[int, tuple[float, int]] = {}

    def state() -> tuple[str, int, int, float, int] | None:
        jobs = queue.in_flight()
        if not jobs:
            return None
        job = jobs[0]
        started, base = first_seen.setdefault(job.id, (time.monotonic(), job.bytes_done))
        return f"uploading {job.name}", job.bytes_done, job.size, time.monotonic() - started, base

    return state
