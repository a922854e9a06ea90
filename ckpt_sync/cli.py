"""The ``ckpt-sync`` command: each verb parses options, calls the library, renders the result.

Exit codes and error lines are decided here only: 0 ok, 1 an operation failed, 2 usage or
configuration; one line on stderr per error, a traceback only with ``--debug``.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from . import __version__, config, logs
from .api import open_repository as _open_repository
from .api import push_with_stats
from .chunking import ChunkPolicy
from .daemon import WatchOptions, default_state_dir, run_watch
from .errors import EXIT_FAILED, EXIT_OK, CkptSyncError, ConfigError, UsageError
from .keys import generate_key, write_key_file
from .manifest import Manifest
from .providers import RetryPolicy
from .prune import DEFAULT_GRACE, prune
from .push import total_size
from .queue import JobQueue
from .restore import pull
from .retention import fifo_with_tags
from .status import gather
from .units import format_bytes, parse_size
from .verify import verify
from .watcher import DEFAULT_PATTERNS

log = logging.getLogger("ckpt_sync")


# --- output helpers ------------------------------------------------------------------------------


def _err(msg: str) -> None:
    print(f"ckpt-sync: error: {msg}", file=sys.stderr)


def _warn(msg: str) -> None:
    print(f"ckpt-sync: warning: {msg}", file=sys.stderr)


@contextmanager
def _progress(total: int, desc: str, enabled: bool) -> Iterator[Callable[[int], None] | None]:
    """A tqdm bar on a terminal; nothing at all otherwise."""
    if not (enabled and sys.stderr.isatty()):
        yield None
        return
    from tqdm import tqdm

    try:  # some terminals (serial consoles, bare ptys) report a 0x0 size: tqdm would then draw nothing
        size = os.get_terminal_size(sys.stderr.fileno())
        columns, rows = size.columns or 100, size.lines or 24
    except OSError:
        columns, rows = 100, 24
    with tqdm(
        total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, leave=False, ncols=columns, nrows=rows
    ) as bar:
        yield bar.update


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _manifest_row(m: Manifest) -> dict[str, Any]:
    return {
        "id": m.id,
        "name": m.name,
        "session": m.session_id,
        "step": m.global_step,
        "epoch": m.epoch,
        "loss": m.loss,
        "files": len(m.files),
        "size": m.size,
        "created": datetime.fromtimestamp(m.created).astimezone().isoformat(timespec="seconds"),
        "host": m.host,
        "tags": list(m.tags),
    }


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


# --- verbs ---------------------------------------------------------------------------------------


def cmd_keygen(args: argparse.Namespace) -> int:
    key = generate_key()
    if args.out:
        path = write_key_file(args.out, key)
        print(
            f"wrote a new key to {path} (mode 0600); keep a copy somewhere safe: without it the backups are unreadable"
        )
    else:
        print(key)
    return EXIT_OK


def cmd_push(args: argparse.Namespace) -> int:
    repo = open_repository(args, create=True)
    chunk_size = parse_size(args.chunk_size) if args.chunk_size else None
    results = []
    for path in args.paths:
        with _progress(total_size(path), f"push {Path(path).name}", not args.json) as bar:
            m, stats = push_with_stats(
                path, repo, tags=args.tag, chunk_size=chunk_size, workers=args.workers, progress=bar
            )
        results.append({**_manifest_row(m), "stats": stats.to_json()})
        if not args.json:
            print(
                f"committed {m.name} as {m.id}: {len(m.files)} file(s), {format_bytes(m.size)} read, "
                f"{format_bytes(stats.bytes_new)} new, {format_bytes(stats.bytes_sent)} sent "
                f"in {stats.seconds:.1f}s ({format_bytes(stats.throughput())}/s)"
            )
    if args.json:
        print(json.dumps(results, indent=2))
    return EXIT_OK


def open_repository(args: argparse.Namespace, *, create: bool = False) -> Any:
    """The repository the verb's (resolved) settings name, with their retry budget, endpoint and bwlimit."""
    options: dict[str, Any] = {"endpoint_url": args.endpoint_url} if args.endpoint_url else {}
    if args.bwlimit:
        options["bwlimit"] = args.bwlimit
    retry = RetryPolicy(attempts=args.retry_attempts, max_seconds=args.retry_time)
    return _open_repository(args.repo, key_file=args.key_file, create=create, retry=retry, **options)


def _load_all(repo: Any) -> list[Manifest]:
    return list(repo.manifests(lambda mid, err: _warn(f"skipping unreadable checkpoint {mid}: {err}")))


def cmd_ls(args: argparse.Namespace) -> int:
    repo = open_repository(args)
    manifests = _load_all(repo)
    if args.json:
        print(json.dumps([_manifest_row(m) for m in manifests], indent=2))
        return EXIT_OK
    if not manifests:
        print(f"no checkpoints in {repo.url}")
        return EXIT_OK
    rows = [
        [
            m.id,
            m.name,
            m.session_id or "-",
            "-" if m.global_step is None else str(m.global_step),
            str(len(m.files)),
            format_bytes(m.size),
            _when(m.created),
            ",".join(m.tags) or "-",
        ]
        for m in manifests
    ]
    print(_table(rows, ["ID", "NAME", "SESSION", "STEP", "FILES", "SIZE", "CREATED", "TAGS"]))
    return EXIT_OK


def cmd_pull(args: argparse.Namespace) -> int:
    if args.latest == bool(args.checkpoint):
        raise UsageError("pull needs exactly one of --latest or a checkpoint ID_OR_NAME")
    if args.allow_empty and not args.latest:
        raise UsageError("--allow-empty goes with --latest")
    # With --allow-empty a first run (no repository, or one with no checkpoint yet) is not an error: the
    # repository is created as push/watch would. A wrong key, or checkpoints that exist but all fail to
    # verify, still fail: a job must not silently start from scratch over data it cannot read.
    repo = open_repository(args, create=args.allow_empty)
    if args.allow_empty and not repo.manifest_ids():
        print(f"nothing to restore: {repo.url} has no checkpoint yet (a first run starts fresh)")
        return EXIT_OK
    bar_ctx: dict[str, Any] = {}

    def on_start(m: Manifest) -> None:
        if "cm" in bar_ctx:
            bar_ctx["cm"].__exit__(None, None, None)
        bar_ctx["cm"] = _progress(m.size, f"pull {m.name}", True)
        bar_ctx["fn"] = bar_ctx["cm"].__enter__()

    def progress(n: int) -> None:
        if bar_ctx.get("fn"):
            bar_ctx["fn"](n)

    try:
        m, stats = pull(
            repo,
            args.to,
            selector=args.checkpoint,
            workers=args.workers,
            progress=progress,
            warn=_warn,
            on_start=on_start,
        )
    finally:
        if "cm" in bar_ctx:
            bar_ctx["cm"].__exit__(None, None, None)
    print(
        f"restored {m.name} ({m.id}) into {args.to}: {len(m.files)} file(s), {format_bytes(m.size)} "
        f"in {stats.seconds:.1f}s ({format_bytes(stats.throughput())}/s)"
    )
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    repo = open_repository(args)
    started = time.monotonic()
    results = verify(repo, read_data=args.read_data, workers=args.workers)
    bad = [r for r in results if not r.ok]
    if args.json:
        print(json.dumps([r.to_json() for r in results], indent=2))
    else:
        for r in bad:
            print(
                f"DAMAGED {r.name} ({r.id}): {'; '.join(r.problems[:3])}"
                + (f" (+{len(r.problems) - 3} more)" if len(r.problems) > 3 else "")
            )
        what = "data read and verified" if args.read_data else "structure and chunk presence checked"
        print(
            f"{len(results) - len(bad)} of {len(results)} checkpoint(s) sound ({what}, "
            f"{time.monotonic() - started:.1f}s)"
        )
    for r in bad:
        _err(f"checkpoint {r.name} ({r.id}) is damaged")
    return EXIT_FAILED if bad else EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    """Deep-check local training checkpoints (torch needed); ``--repair`` quarantines the bad ones."""
    try:
        from .training.verification import check_directory, repair
    except ImportError as err:
        raise UsageError(f"ckpt-sync check needs torch ({err}); install torch==2.13.0, then ckpt-sync[torch]") from None
    if args.repair:
        report = repair(args.dir)
        results = report.results
    else:
        results = check_directory(args.dir)
    bad = [r for r in results if not r.ok]
    if args.json:
        print(json.dumps([r.to_json() for r in results], indent=2))
    else:
        for r in bad:
            print(f"DAMAGED {r.path}: {'; '.join(r.problems)}")
        print(f"{len(results) - len(bad)} of {len(results)} checkpoint(s) in {args.dir} sound")
    if args.repair:
        for src, dst in report.quarantined:
            print(f"quarantined {src} -> {dst}")
        print(f"rebuilt {report.session_file}")
        return EXIT_OK
    for r in bad:
        _err(f"checkpoint {r.path} is damaged (run `ckpt-sync check --repair {args.dir}` to quarantine it)")
    return EXIT_FAILED if bad else EXIT_OK


# --- parser --------------------------------------------------------------------------------------


def add_repo_option(p: argparse.ArgumentParser, alias: str) -> None:
    """``--repo`` everywhere; ``--to`` where we write (push, watch), ``--from`` where we read."""
    p.add_argument(
        "--repo",
        alias,
        dest="repo",
        metavar="URL",
        help="repository URL (file:///path or a folder, s3://, az://, gs://); default $CKPT_SYNC_REPO, "
        "else the embedded local repository",
    )


def cmd_watch(args: argparse.Namespace) -> int:
    if not args.dir:
        raise UsageError("watch needs a folder: ckpt-sync watch DIR, or watch_dir in the config file")
    root = Path(args.dir)
    if not root.is_dir():
        raise UsageError(f"{root} is not a folder to watch")
    repo = open_repository(args, create=True)
    queue = JobQueue(args.state_dir or default_state_dir(root))
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s: finishing up (nothing half-done is committed)", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    opts = WatchOptions(
        root=root,
        patterns=tuple(args.pattern or DEFAULT_PATTERNS),
        settle=args.settle,
        rescan_every=args.rescan,
        once=args.once,
        keep=args.keep or None,
        grace=args.grace,
        workers=args.workers,
        policy=ChunkPolicy.of_size(parse_size(args.chunk_size) if args.chunk_size else None),
    )
    served = None
    try:
        if args.metrics_addr:
            from .metrics import serve

            served = serve(config.parse_address(args.metrics_addr), repo, queue)
        return run_watch(repo, queue, opts, stop, served.hooks if served else None)
    finally:
        if served:
            served.close()
        queue.close()


def cmd_prune(args: argparse.Namespace) -> int:
    repo = open_repository(args)
    report = prune(repo, fifo_with_tags(args.keep), grace=args.grace, dry_run=args.dry_run)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return EXIT_OK
    verb = "would remove" if args.dry_run else "removed"
    for mid, name in zip(report.removed, report.removed_names, strict=True):
        print(f"{verb} {name} ({mid})")
    print(
        f"kept {len(report.kept)} checkpoint(s); {verb} {len(report.removed)}; "
        f"{verb} {report.chunks_removed} unreferenced chunk(s) ({format_bytes(report.bytes_freed)})"
    )
    if report.gc_skipped:
        print(f"chunk clean-up skipped: {report.gc_skipped}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir) if args.state_dir else default_state_dir(Path(args.dir)) if args.dir else None
    if state_dir is None:
        raise UsageError("status needs the watched folder (ckpt-sync status DIR) or --state-dir")
    if not (state_dir / "queue.sqlite3").is_file():
        raise ConfigError(f"no ckpt-sync queue in {state_dir}: is `ckpt-sync watch` running on that folder?")
    queue = JobQueue(state_dir)
    repo, repo_error = None, None
    try:
        repo = open_repository(args)
    except CkptSyncError as err:
        repo_error = str(err)
    try:
        st = gather(queue, repo, repo_error)
    finally:
        queue.close()
    if args.json:
        print(json.dumps(st, indent=2))
        return EXIT_OK
    print(f"repository:  {st['repository'] or 'unavailable: ' + str(st['repository_error'])}")
    print(f"backlog:     {st['backlog']} job(s) ({st['jobs']['failed']} failed, {st['jobs']['done']} done)")
    for j in st["in_flight"]:
        pct = 100 * j["bytes_done"] / j["size"] if j["size"] else 100
        print(f"uploading:   {j['name']} {pct:.0f}% of {format_bytes(j['size'])}")
    if st["newest_committed"]:
        c = st["newest_committed"]
        print(f"committed:   {c['name']} (step {c['step']}) at {_when(c['created'])}")
    if st["newest_local"]:
        loc = st["newest_local"]
        print(f"local:       {loc['name']} (step {loc['step']}) at {_when(loc['modified'])}")
    if st["lag_seconds"] is not None:
        steps = f", {st['lag_steps']} step(s)" if st["lag_steps"] is not None else ""
        print(f"lag:         {st['lag_seconds']:.0f}s{steps}")
    if st["throughput_bytes_per_s"]:
        print(f"throughput:  {format_bytes(st['throughput_bytes_per_s'])}/s (recent uploads)")
    if st["last_error"]:
        e = st["last_error"]
        print(f"last error:  {_when(e['time'])} {e['job']}: {e['error']}")
    return EXIT_OK


def cmd_config_show(args: argparse.Namespace) -> int:
    """The effective settings and where each came from; key material is never shown."""
    effective: config.Effective = args.settings
    if args.json:
        print(json.dumps(effective.to_json(), indent=2))
        return EXIT_OK
    if effective.config_file:
        print(f"config file: {effective.config_file}")
    else:
        print(f"config file: none (no --config, ./{config.LOCAL_FILE} or {config.config_dir() / 'config.toml'})")
    print(_table([list(r) for r in effective.rows()], ["SETTING", "VALUE", "SOURCE"]))
    return EXIT_OK


def add_grace_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--grace",
        type=float,
        metavar="SECONDS",
        help=f"unreferenced chunks younger than this are kept (default {DEFAULT_GRACE:.0f})",
    )


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="PATH",
        help="TOML settings file (default $CKPT_SYNC_CONFIG, else ./ckpt-sync.toml, else "
        "~/.config/ckpt-sync/config.toml); flags beat the environment, which beats the file",
    )
    common.add_argument(
        "--key-file",
        metavar="PATH",
        help="Fernet key file (default $BACKUP_ENCRYPTION_KEY, else ~/.config/ckpt-sync/key)",
    )
    common.add_argument("--workers", type=int, metavar="N", help="parallel chunk workers")
    common.add_argument(
        "--endpoint-url",
        metavar="URL",
        help="object store endpoint (S3-compatible stores, emulators); default from the environment",
    )
    common.add_argument(
        "--retry-attempts",
        type=int,
        metavar="N",
        help=f"attempts per storage call on transient errors (default {RetryPolicy.attempts})",
    )
    common.add_argument(
        "--retry-time",
        type=float,
        metavar="SECONDS",
        help=f"give up retrying a storage call after this long (default {RetryPolicy.max_seconds:.0f})",
    )
    common.add_argument(
        "--bwlimit",
        metavar="RATE",
        help="bytes per second for all uploads and downloads of this process together, e.g. 50M (default: no limit)",
    )
    common.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")

    parser = argparse.ArgumentParser(
        prog="ckpt-sync",
        description="Keep PyTorch training checkpoints safe off-machine (encrypted).",
    )
    parser.add_argument("--version", action="version", version=f"ckpt-sync {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("keygen", help="print a new Fernet key (or write it with --out)")
    p.add_argument("--out", metavar="PATH", help="write the key to PATH with mode 0600")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("push", parents=[common], help="commit files or checkpoint folders to the repository")
    p.add_argument("paths", nargs="+", metavar="PATH", help="a checkpoint file, or a folder pushed as one checkpoint")
    p.add_argument("--tag", action="append", default=[], metavar="TAG", help="tag the checkpoint (e.g. best)")
    p.add_argument("--chunk-size", metavar="SIZE", help="chunk size, e.g. 8M (default 8M)")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_repo_option(p, "--to")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("ls", parents=[common], help="list committed checkpoints, newest first")
    p.add_argument("--json", action="store_true", help="print a JSON array")
    add_repo_option(p, "--from")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("pull", parents=[common], help="restore a checkpoint into a folder")
    p.add_argument("checkpoint", nargs="?", metavar="ID_OR_NAME", help="checkpoint id (or unique prefix) or name")
    p.add_argument("--latest", action="store_true", help="the newest checkpoint that fully verifies")
    p.add_argument(
        "--allow-empty",
        action="store_true",
        help="with --latest: exit 0 when the repository has no checkpoint yet (init containers, first runs)",
    )
    p.add_argument("--to", "--dest", dest="to", default=".", metavar="DIR", help="target folder (default .)")
    add_repo_option(p, "--from")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("verify", parents=[common], help="check that every checkpoint is restorable")
    p.add_argument("--read-data", action="store_true", help="download, authenticate and re-hash everything")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_repo_option(p, "--from")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("watch", parents=[common], help="sidecar daemon: upload every complete checkpoint in DIR")
    p.add_argument(
        "dir", nargs="?", metavar="DIR", help="the folder the training job saves checkpoints into (or watch_dir)"
    )
    p.add_argument("--state-dir", metavar="DIR", help="queue and held files (default DIR/.ckpt-sync)")
    p.add_argument(
        "--keep",
        type=int,
        metavar="N",
        help="remote FIFO: keep the N newest (plus the best and pinned); 0 keeps everything (default 5)",
    )
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
    add_grace_option(p)
    p.add_argument("--once", action="store_true", help="upload what is there, wait until committed, exit")
    p.add_argument("--chunk-size", metavar="SIZE", help="chunk size, e.g. 8M (default 8M)")
    p.add_argument("--log-format", choices=("text", "json"), help="log lines as text or JSON (default text)")
    p.add_argument(
        "--metrics-addr",
        metavar="HOST:PORT",
        help="serve Prometheus /metrics and /healthz, /livez probes here, e.g. 127.0.0.1:9109 (default off)",
    )
    add_repo_option(p, "--to")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("prune", parents=[common], help="apply remote retention now")
    p.add_argument("--keep", type=int, metavar="N", help="keep the N newest, plus best and pinned (default 5)")
    add_grace_option(p)
    p.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_repo_option(p, "--from")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("status", parents=[common], help="backlog, lag, throughput and last error of a watch")
    p.add_argument("dir", nargs="?", metavar="DIR", help="the watched folder (its state is in DIR/.ckpt-sync)")
    p.add_argument("--state-dir", metavar="DIR", help="the queue's state folder")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_repo_option(p, "--from")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("check", help="deep-check a local folder of training checkpoints (needs torch)")
    p.add_argument("dir", metavar="DIR", help="the CheckpointManager folder (holds training_session.json)")
    p.add_argument("--repair", action="store_true", help="move bad files to DIR/quarantine/, rebuild the session file")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("config", help="show the effective settings (flags > env > config file > defaults)")
    config_sub = p.add_subparsers(dest="config_verb", required=True, metavar="ACTION")
    p = config_sub.add_parser("show", parents=[common], help="each setting's value and source; keys redacted")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_repo_option(p, "--from")
    p.set_defaults(func=cmd_config_show)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        # The one place settings are resolved: flags > env > config file > defaults, onto ``args``.
        settings = config.apply(args) if hasattr(args, "config") else None
    except CkptSyncError as err:
        _err(str(err))
        return err.exit_code
    # Daemon verbs log each committed checkpoint (INFO); one-shot verbs only warnings and errors.
    quiet = logging.INFO if args.verb in ("watch", "prune") else logging.WARNING
    logs.configure(logging.DEBUG if args.debug else quiet, settings["log_format"] if settings else "text")
    try:
        return args.func(args)
    except CkptSyncError as err:
        if args.debug:
            log.exception("failed")
        _err(str(err))
        return err.exit_code
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except OSError as err:
        if args.debug:
            log.exception("failed")
        if err.errno == errno.ENOSPC:
            _err(f"no space left on device ({err.filename or 'disk'}): free some space and re-run")
        else:
            _err(f"{err.strerror or err}{f': {err.filename}' if err.filename else ''}")
        return EXIT_FAILED
    except Exception as err:  # a bug: still one line, unless --debug
        if args.debug:
            log.exception("unexpected error")
        _err(f"unexpected {type(err).__name__}: {err} (re-run with --debug for a traceback)")
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
