"""``ckpt-sync tag ID --add T --remove T``: change a checkpoint's tags (a new manifest supersedes the old;
the checkpoint keeps the id users know it by)."""

from __future__ import annotations

import argparse
import json

from ..errors import EXIT_OK, UsageError
from ..transfer.tags import retag
from .common import add_json_option, add_repo_option, manifest_row, open_repository, say


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("tag", parents=[common], help="add or remove tags (pinned: never removed by retention)")
    p.add_argument("checkpoint", metavar="ID_OR_NAME", help="checkpoint id (or unique prefix), name, or latest")
    p.add_argument("--add", action="append", default=[], metavar="TAG", help="add this tag (repeatable)")
    p.add_argument("--remove", action="append", default=[], metavar="TAG", help="remove this tag (repeatable)")
    add_json_option(p)
    add_repo_option(p, "--from")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.add and not args.remove:
        raise UsageError("tag needs --add TAG or --remove TAG")
    repo = open_repository(args)
    m = retag(repo, args.checkpoint, add=args.add, remove=args.remove)
    if args.json:
        print(json.dumps(manifest_row(m), indent=2))
        return EXIT_OK
    say(f"{m.name} ({m.checkpoint_id}) now has tags: {', '.join(m.tags) or '(none)'}")
    return EXIT_OK
