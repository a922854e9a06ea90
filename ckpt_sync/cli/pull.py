"""``ckpt-sync pull``: restore one checkpoint (by id or name, or the newest that verifies) into a folder."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..errors import EXIT_OK, UsageError
from ..format.manifest import Manifest
from ..format.selection import Selection
from ..transfer.chunk_cache import DEFAULT_MAX_BYTES, ChunkCache
from ..transfer.restore import pull
from ..units import format_bytes, parse_size
from .common import (
    add_json_option,
    add_repo_option,
    add_selection_options,
    manifest_row,
    open_repository,
    progress_bar,
    say,
    selection_from,
    warn,
    warn_if_rolled_back,
)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("pull", parents=[common], help="restore a checkpoint into a folder")
    p.add_argument("checkpoint", nargs="?", metavar="ID_OR_NAME", help="checkpoint id (or unique prefix) or name")
    p.add_argument(
        "--latest",
        action="store_true",
        help="the newest resumable checkpoint (by session and step) that fully verifies; see the filters below",
    )
    p.add_argument(
        "--allow-empty",
        action="store_true",
        help="with --latest: exit 0 when the repository has no checkpoint yet (init containers, first runs)",
    )
    p.add_argument(
        "--allow-older",
        action="store_true",
        help="with --latest: when newer checkpoints are encrypted with a key this host lacks, restore the "
        "newest readable one (with a warning) instead of failing with exit 2",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace files at the target that differ from the checkpoint (identical ones are always skipped)",
    )
    p.add_argument("--to", "--dest", dest="to", default=".", metavar="DIR", help="target folder (default .)")
    p.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="GLOB",
        help="restore only files whose path inside the checkpoint matches (repeatable; `ls ID` shows the paths)",
    )
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB", help="skip matching files (repeatable)")
    p.add_argument(
        "--chunk-cache",
        metavar="DIR",
        help="a chunk cache folder shared by the processes of this host that pull the same checkpoints: each "
        "chunk is read from the store once, kept encrypted and checked again on every use",
    )
    p.add_argument(
        "--chunk-cache-size",
        type=parse_size,
        default=DEFAULT_MAX_BYTES,
        metavar="SIZE",
        help="with --chunk-cache: the most it holds; the least recently used chunks go first (default 16GiB)",
    )
    add_json_option(p, "print the restored checkpoint and transfer counts as JSON")
    add_repo_option(p, "--from")
    add_selection_options(p, None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.latest == bool(args.checkpoint):
        raise UsageError("pull needs exactly one of --latest or a checkpoint ID_OR_NAME")
    if (args.allow_empty or args.allow_older) and not args.latest:
        raise UsageError("--allow-empty and --allow-older go with --latest")
    selection = selection_from(args)
    filtered = selection != Selection()
    if filtered and not args.latest:
        raise UsageError("--role, --tag, --session, --host, --name, --step and --before-step go with --latest")
    # With --allow-empty a first run (no repository, or one with no checkpoint yet) is not an error: the
    # repository is created as push/watch would. A wrong key, or checkpoints that exist but all fail to
    # verify, still fail: a job must not silently start from scratch over data it cannot read.
    cache = ChunkCache(args.chunk_cache, args.chunk_cache_size) if args.chunk_cache else None
    repo = open_repository(args, create=args.allow_empty)
    if args.allow_empty and not repo.manifest_ids():
        if args.json:
            print(json.dumps({"restored": False, "repository": repo.url}, indent=2))
            return EXIT_OK
        say(f"nothing to restore: {repo.url} has no checkpoint yet (a first run starts fresh)")
        return EXIT_OK
    bar_ctx: dict[str, Any] = {}

    def on_start(m: Manifest) -> None:
        if "cm" in bar_ctx:
            bar_ctx["cm"].__exit__(None, None, None)
        bar_ctx["cm"] = progress_bar(m.size, f"pull {m.name}", not args.json)
        bar_ctx["fn"] = bar_ctx["cm"].__enter__()

    def progress(n: int) -> None:
        if bar_ctx.get("fn"):
            bar_ctx["fn"](n)

    try:
        m, stats = pull(
            repo,
            args.to,
            selector=args.checkpoint,
            selection=selection,
            allow_older=args.allow_older,
            any_role_if_none=args.role is None,
            overwrite=args.overwrite,
            workers=args.workers,
            progress=progress,
            warn=warn,
            on_start=on_start,
            include=args.include,
            exclude=args.exclude,
            chunk_cache=cache,
        )
    finally:
        if "cm" in bar_ctx:
            bar_ctx["cm"].__exit__(None, None, None)
        if args.latest:
            warn_if_rolled_back(repo)  # judged from the listing the choice was made on
    if args.json:
        paths = [f.path for f in m.files]
        out = {"restored": True, **manifest_row(m), "to": args.to, "paths": paths, "stats": stats.to_json()}
        if cache is not None:
            out["chunk_cache"] = cache.stats.to_json()
        print(json.dumps(out, indent=2))
        return EXIT_OK
    step = f", step {m.global_step}" if m.global_step is not None else ""
    if stats.files_skipped:
        say(f"{stats.files_skipped} file(s) already there and identical: skipped")
    say(
        f"restored {m.name} ({m.role}{step}, {m.checkpoint_id}) into {args.to}: {len(m.files)} file(s), "
        f"{format_bytes(m.size)} "
        f"in {stats.seconds:.1f}s ({format_bytes(stats.throughput())}/s)"
    )
    return EXIT_OK
