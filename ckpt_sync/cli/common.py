"""What every verb shares: error and warning lines, progress bars, table and row rendering, the
repository a verb's settings name, and the options several verbs take."""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..api import open_store
from ..defaults import DEFAULT_GRACE
from ..errors import ConfigError, UsageError
from ..format.manifest import RESUMABLE, ROLES, Manifest
from ..format.repo_config import RepositorySettings
from ..format.selection import ANY, Selection
from ..locations import default_repo_url
from ..providers import RetryPolicy
from ..redact import redact
from ..service.settings import StoreAccess, store_access
from ..transfer.seen import rollback_warning
from .progress import ProgressLine

if TYPE_CHECKING:
    from ..service.queue import JobQueue

ProgressFn = Callable[[int], None]


class _Output:
    """``--quiet``: no progress, no informational lines or warnings; errors only. Set once by app.main."""

    quiet = False


OUTPUT = _Output()


def err(msg: str) -> None:
    """The one error line; secrets redacted (redact.py), whoever built the message."""
    print(f"ckpt-sync: error: {redact(msg)}", file=sys.stderr)


def warn(msg: str) -> None:
    if not OUTPUT.quiet:
        print(f"ckpt-sync: warning: {redact(msg)}", file=sys.stderr)


def say(msg: str) -> None:
    """An informational result line (``committed ...``, ``restored ...``): silent with --quiet."""
    if not OUTPUT.quiet:
        print(msg)


@contextmanager
def progress_bar(total: int, desc: str, enabled: bool) -> Iterator[ProgressFn | None]:
    """A one-line bar on a terminal (cli/progress.py); nothing at all otherwise or with --quiet."""
    if not (enabled and not OUTPUT.quiet and sys.stderr.isatty()):
        yield None
        return
    line = ProgressLine(total, desc)
    try:
        yield line.update
    finally:
        line.close()


def when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def manifest_row(m: Manifest) -> dict[str, Any]:
    return {
        "id": m.checkpoint_id,  # the id it was first committed under: a tag change keeps it
        "manifest_id": m.id,  # the manifest object holding it now: a tag change replaces it
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
        "role": m.role,
    }


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def store_of(args: argparse.Namespace) -> StoreAccess:
    """The store the verb's resolved settings name (settings.store_access, as a library call
    resolves it); a verb may have pointed ``args.repo``, ``args.key_file`` or ``args.endpoint_url``
    elsewhere since (copy's destination; the repository and endpoint a watch recorded)."""
    redirected = {"url": args.repo or default_repo_url(), "key_file": args.key_file, "endpoint_url": args.endpoint_url}
    return replace(store_access(args.settings), **redirected)


def open_repository(args: argparse.Namespace, *, create: bool = False, cancel: threading.Event | None = None) -> Any:
    """The repository the verb's (resolved) settings name, with their retry budget, endpoint and bwlimit;
    ``cancel`` (SIGTERM) ends its retry waits. Verbs that create one pass the repository settings
    the user chose (``add_repository_settings_options``)."""
    return open_store(store_of(args), create=create, settings=repository_settings(args), cancel=cancel)


def add_repository_settings_options(p: argparse.ArgumentParser) -> None:
    """What a new repository fixes at creation (docs/FORMAT.md); given for one that exists, each must
    match it (a clear error otherwise)."""
    g = p.add_argument_group("new repository settings (chosen once, when the repository is created)")
    g.add_argument(
        "--format",
        dest="repo_format",
        type=int,
        choices=(1, 2),
        help="repository format: 2 (the default: BLAKE3 chunk ids, IVs bound to chunk ids) or 1 (readable by "
        "older ckpt-sync)",
    )
    g.add_argument(
        "--pad",
        dest="repo_pad",
        action="store_const",
        const=1,
        help="pad chunks to size buckets so stored object sizes stop hinting at tensor sizes (~11%% more at most)",
    )
    g.add_argument(
        "--compression",
        dest="repo_compression",
        choices=("none", "zstd"),
        help="compress each chunk with zstd before encryption (chunks that do not shrink are stored as they are); "
        "default none",
    )
    g.add_argument(
        "--sha256",
        dest="repo_sha256",
        action="store_const",
        const=True,
        help="format 2: record each file's SHA-256 too (to compare with sha256sum); format 1 always does",
    )


def repository_settings(args: argparse.Namespace) -> RepositorySettings | None:
    """The repository settings chosen on the command line, or None when none was."""
    chosen = {k: getattr(args, f"repo_{k}", None) for k in ("format", "pad", "compression", "sha256")}
    if all(v is None for v in chosen.values()):
        return None
    if chosen["format"] == 1 and chosen["sha256"]:
        chosen["sha256"] = None  # format 1 always records it
    return RepositorySettings(chosen["format"], chosen["pad"], chosen["compression"], chosen["sha256"])


def warn_if_rolled_back(repo: Any) -> None:
    """One line when the repository's newest checkpoint is older than the newest this host saw."""
    ids = repo.listed_ids()
    line = rollback_warning(repo.id, ids[0] if ids else None)
    if line:
        warn(line)


def warn_foreign_key_entries(url: str, fingerprints: list[str]) -> None:
    """One line naming the ``keys/`` entries the repository does not vouch for (they are ignored)."""
    if fingerprints:
        warn(
            f"{len(fingerprints)} key entr{'y' if len(fingerprints) == 1 else 'ies'} in {url} "
            f"({', '.join(fingerprints[:3])}{', ...' if len(fingerprints) > 3 else ''}) "
            "not authenticated by the repository's keys (planted or damaged): ignored; "
            "`ckpt-sync prune --remove-damaged` removes them"
        )


def load_all(repo: Any) -> list[Manifest]:
    """Every readable checkpoint; each unreadable one is named in a warning line."""
    return list(repo.manifests(lambda mid, e: warn(f"skipping unreadable checkpoint {mid}: {e}")))


def open_queue(args: argparse.Namespace, verb: str) -> JobQueue:
    """The queue of the watch on ``args.dir`` (or ``--state-dir``); one usage line when there is none."""
    from ..service.daemon import default_state_dir  # the daemon and sqlite3 only for the verbs that read a queue
    from ..service.queue import JobQueue

    if args.state_dir:
        state_dir = Path(args.state_dir)
    elif args.dir:
        state_dir = default_state_dir(Path(args.dir))
    else:
        raise UsageError(f"{verb} needs the watched folder (ckpt-sync {verb} DIR) or --state-dir")
    if not (state_dir / "queue.sqlite3").is_file():
        raise ConfigError(f"no ckpt-sync queue in {state_dir}: is `ckpt-sync watch` running on that folder?")
    return JobQueue(state_dir)


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


def add_grace_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--grace",
        type=float,
        metavar="SECONDS",
        help=f"unreferenced chunks younger than this are kept (default {DEFAULT_GRACE:.0f})",
    )


def add_retention_options(p: argparse.ArgumentParser, *, zero: str = "") -> None:
    """The remote retention options ``prune`` and ``watch`` share (``retention_policy`` reads them)."""
    g = p.add_argument_group("what to keep (what any --keep-* keeps stays; so do the newest best and every pinned)")
    g.add_argument(
        "--keep-last",
        "--keep",
        dest="keep",
        type=int,
        metavar="N",
        help="keep the N newest resumable checkpoints (by session and step)"
        + (f"; {zero}" if zero else "")
        + " (default 5 unless another --keep-* is given)",
    )
    g.add_argument("--keep-within", metavar="DURATION", help="keep all made within e.g. 2d (36h, 90m) of the newest")
    g.add_argument(
        "--keep-every-steps", type=int, metavar="N", help="keep the first checkpoint at or past every N steps"
    )
    g.add_argument("--keep-tag", action="append", default=[], metavar="TAG", help="keep every checkpoint with TAG")
    g.add_argument("--per-session", action="store_true", help="apply the --keep-* counts to each session on its own")


def retention_policy(args: argparse.Namespace) -> Any:
    """The retention.RetentionPolicy the --keep-* options name: the union of those given, with the
    newest best and every pinned (retention.build_policy); --keep-last alone (the ``keep`` setting,
    default 5) when no other is given. None when the count is 0 and nothing else is asked: keep
    everything. UsageError for a value no policy takes."""
    from ..transfer.retention import build_policy
    from ..units import parse_duration

    others = args.keep_within is not None or args.keep_every_steps is not None
    settings = getattr(args, "settings", None)
    keep_given = settings is not None and settings.values["keep"].source != "default"
    keep_last = args.keep if keep_given or not others else None
    if keep_last == 0:
        keep_last = None
        if not others:
            return None
    try:
        return build_policy(
            keep_last=keep_last,
            keep_within=parse_duration(args.keep_within) if args.keep_within is not None else None,
            keep_every_steps=args.keep_every_steps,
            keep_tags=args.keep_tag,
            per_session=args.per_session,
        )
    except ValueError as err:
        raise UsageError(f"{err}") from None


def add_selection_options(p: argparse.ArgumentParser, default_role: str | None) -> None:
    """The filters ``ls`` and ``pull --latest`` share; the result is always newest first by training
    position. ``default_role`` None: resumable, or every role when the repository holds no resumable
    checkpoint at all (``args.role`` stays None so the verb can tell)."""
    g = p.add_argument_group("which checkpoints (newest first by session and step)")
    default = default_role or "resumable, or any when there is no resumable checkpoint"
    g.add_argument(
        "--role",
        choices=(*ROLES, ANY),
        default=default_role,
        help=f"only checkpoints with this role (default {default}; 'any' for every role)",
    )
    g.add_argument("--tag", metavar="TAG", help="only checkpoints with this tag")
    g.add_argument("--session", metavar="ID", help="only this training session")
    g.add_argument("--host", metavar="HOST", help="only checkpoints pushed from this host")
    g.add_argument("--name", metavar="GLOB", help="only checkpoints whose name matches, e.g. 'checkpoint_*_3??.pt'")
    steps = g.add_mutually_exclusive_group()
    steps.add_argument("--step", type=int, metavar="N", help="only global step N")
    steps.add_argument("--before-step", type=int, metavar="N", help="only global steps below N")


def selection_from(args: argparse.Namespace) -> Selection:
    role = args.role or RESUMABLE
    return Selection(role, args.tag, args.session, args.host, args.name, args.step, args.before_step)


def add_json_option(p: argparse.ArgumentParser, what: str = "print JSON") -> None:
    p.add_argument("--json", action="store_true", help=what)


def common_options() -> argparse.ArgumentParser:
    """The options every repository verb takes (a parent parser)."""
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
        help="bytes per second for all uploads and downloads of this process together, e.g. 50M or 50MiB "
        "(2^20 bytes), 50MB (10^6 bytes) (default: no limit)",
    )
    add_quiet_option(common)
    common.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    return common


def add_quiet_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-q", "--quiet", action="store_true", help="no progress, no informational lines or warnings: errors only"
    )
