"""``ckpt-sync forget ID...``: remove checkpoints; a later prune frees their unique chunks."""

from __future__ import annotations

import argparse
import json

from ..errors import EXIT_OK
from ..units import format_bytes
from .common import add_json_option, add_repo_option, open_repository, say


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("forget", parents=[common], help="remove checkpoints (prune then frees their chunks)")
    p.add_argument("checkpoints", nargs="+", metavar="ID_OR_NAME", help="checkpoint ids (or unique prefixes) or names")
    p.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    p.add_argument("--force", action="store_true", help="also forget the newest resumable checkpoint")
    add_json_option(p)
    add_repo_option(p, "--from")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..transfer.forget import forget  # imported by the verb that needs it, not at every start-up

    repo = open_repository(args)
    report = forget(repo, args.checkpoints, force=args.force, dry_run=args.dry_run)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return EXIT_OK
    verb = "would forget" if args.dry_run else "forgot"
    for m in report.removed:
        say(f"{verb} {m.name} ({m.checkpoint_id})")
    say(
        f"{format_bytes(report.unique_bytes)} of chunks only they used "
        f"{'would be' if args.dry_run else 'are now'} unreferenced: `ckpt-sync prune` frees them after the grace period"
    )
    return EXIT_OK
