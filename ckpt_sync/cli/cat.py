"""``ckpt-sync cat``: one verified file of a checkpoint to stdout (pipe it, or redirect it to a file)."""

from __future__ import annotations

import argparse
import sys

from ..errors import EXIT_OK
from ..format.lookup import find_manifest
from ..transfer.restore import stream_file
from .common import add_repo_option, open_repository


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("cat", parents=[common], help="write one verified file of a checkpoint to stdout")
    p.add_argument("checkpoint", metavar="ID_OR_NAME", help="checkpoint id (or unique prefix), name, or latest")
    p.add_argument(
        "path", nargs="?", metavar="PATH", help="the file inside it (`ls ID` shows them); optional for a one-file one"
    )
    add_repo_option(p, "--from")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    repo = open_repository(args)
    # Each chunk is authenticated before it is written; a final hash mismatch exits 1 (discard the output).
    stream_file(repo, find_manifest(repo, args.checkpoint), args.path, sys.stdout.buffer, workers=args.workers)
    return EXIT_OK
