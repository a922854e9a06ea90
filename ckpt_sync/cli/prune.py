"""``ckpt-sync prune``: apply remote retention now (or say what it would remove)."""

from __future__ import annotations

import argparse
import json

from ..errors import EXIT_OK
from ..prune import prune
from ..retention import fifo_with_tags
from ..units import format_bytes
from .common import add_grace_option, add_json_option, add_repo_option, open_repository, say, when


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("prune", parents=[common], help="apply remote retention now")
    p.add_argument(
        "--keep",
        type=int,
        metavar="N",
        help="keep the N newest resumable checkpoints (by session and step), plus the newest best and every "
        "pinned (default 5)",
    )
    add_grace_option(p)
    p.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    add_json_option(p)
    add_repo_option(p, "--from")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    repo = open_repository(args)
    report = prune(repo, fifo_with_tags(args.keep), grace=args.grace, dry_run=args.dry_run)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return EXIT_OK
    verb = "would remove" if args.dry_run else "removed"
    for mid, name in zip(report.removed, report.removed_names, strict=True):
        say(f"{verb} {name} ({mid})")
    say(
        f"kept {len(report.kept)} checkpoint(s); {verb} {len(report.removed)}; "
        f"{verb} {report.chunks_removed} unreferenced chunk(s) ({format_bytes(report.bytes_freed)})"
    )
    if report.chunks_in_grace:
        first, last = report.grace_first_removable, report.grace_all_removable
        assert first is not None and last is not None
        span = f"removable from {when(first)}" + (f", all by {when(last)}" if last - first >= 1 else "")
        say(
            f"the grace period ({args.grace:g}s) keeps {report.chunks_in_grace} unreferenced chunk(s) "
            f"({format_bytes(report.bytes_in_grace)}) for now: {span} (a later prune removes them; --grace 0 now)"
        )
    if report.gc_skipped:
        say(f"chunk clean-up skipped: {report.gc_skipped}")
    return EXIT_OK
