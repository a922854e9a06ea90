"""``ckpt-sync push``: commit files or folders, each as one checkpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import EXIT_OK, UsageError
from ..format.chunking import ChunkPolicy
from ..format.manifest import ROLES
from ..transfer.push import collect_files, push_path, total_size
from ..units import format_bytes, parse_size
from .common import (
    add_json_option,
    add_repo_option,
    add_repository_settings_options,
    manifest_row,
    open_repository,
    progress_bar,
    say,
)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("push", parents=[common], help="commit files or checkpoint folders to the repository")
    p.add_argument("paths", nargs="+", metavar="PATH", help="a checkpoint file, or a folder pushed as one checkpoint")
    p.add_argument("--tag", action="append", default=[], metavar="TAG", help="tag the checkpoint (e.g. best)")
    p.add_argument(
        "--role",
        choices=ROLES,
        help="what the checkpoint is for (default: best for --tag best or a folder with best_metadata.json, "
        "else what the file holds: optimizer state or a step -> resumable, weights only -> model-only); "
        "pull --latest restores the newest resumable one",
    )
    p.add_argument("--step", type=int, metavar="N", help="its global step (default: from what it holds, or its name)")
    p.add_argument("--session", metavar="ID", help="its training session id (default: from its name)")
    p.add_argument("--epoch", type=float, metavar="E", help="its epoch")
    p.add_argument("--chunk-size", metavar="SIZE", help="chunk size, e.g. 8M (default 8M)")
    add_repository_settings_options(p)
    add_json_option(p)
    add_repo_option(p, "--to")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Every path first: `push a b` with b missing must not commit a and then fail.
    for path in args.paths:
        try:
            collect_files(Path(path))
        except UsageError as e:
            raise UsageError(f"{e}; nothing was pushed" if len(args.paths) > 1 else str(e)) from None
    if args.step is not None and args.step < 0:
        raise UsageError(f"--step must be 0 or more, not {args.step}")
    if args.epoch is not None and not args.epoch >= 0:
        raise UsageError(f"--epoch must be 0 or more, not {args.epoch}")
    position: dict[str, object] = {}
    if args.step is not None:
        position["global_step"] = args.step
    if args.session:
        position["session_id"] = args.session
    if args.epoch is not None:
        position["epoch"] = int(args.epoch) if args.epoch.is_integer() else args.epoch
    repo = open_repository(args, create=True)
    policy = ChunkPolicy.of_size(parse_size(args.chunk_size) if args.chunk_size else None)
    results = []
    for path in args.paths:
        with progress_bar(total_size(path), f"push {Path(path).name}", not args.json) as bar:
            m, stats = push_path(
                repo,
                path,
                tags=args.tag,
                policy=policy,
                workers=args.workers,
                progress=bar,
                role=args.role,
                metadata=dict(position),
            )
        results.append({**manifest_row(m), "stats": stats.to_json()})
        if not args.json:
            say(
                f"committed {m.name} as {m.checkpoint_id} to {repo.url}: {len(m.files)} file(s), "
                f"{format_bytes(m.size)} read, "
                f"{format_bytes(stats.bytes_new)} new, {format_bytes(stats.bytes_sent)} sent "
                f"in {stats.seconds:.1f}s ({format_bytes(stats.throughput())}/s)"
            )
    if args.json:
        print(json.dumps(results, indent=2))
    return EXIT_OK
