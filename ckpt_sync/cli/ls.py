"""``ckpt-sync ls``: the committed checkpoints, newest first by training position (session, step);
``ls ID_OR_NAME``: the files of one."""

from __future__ import annotations

import argparse
import json

from ..errors import EXIT_OK
from ..format.lookup import find_manifest
from ..format.manifest import Manifest
from ..format.selection import ANY, Selection, select
from ..units import format_bytes
from .common import (
    add_json_option,
    add_repo_option,
    add_selection_options,
    load_all,
    manifest_row,
    open_repository,
    selection_from,
    table,
    warn_if_rolled_back,
    when,
)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "ls", parents=[common], help="list committed checkpoints, newest first by session and step (or one's files)"
    )
    p.add_argument(
        "checkpoint",
        nargs="?",
        metavar="ID_OR_NAME",
        help="list this checkpoint's files (path, size, file hashes) instead; id, unique id prefix, name or latest",
    )
    add_json_option(p, "print a JSON array")
    add_selection_options(p, "any")
    add_repo_option(p, "--from")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    selection = selection_from(args)
    repo = open_repository(args)
    if args.checkpoint:
        return _files(find_manifest(repo, args.checkpoint), args.json)
    manifests = select(load_all(repo), selection)
    warn_if_rolled_back(repo)
    if args.json:
        print(json.dumps([manifest_row(m) for m in manifests], indent=2))
        return EXIT_OK
    if not manifests:
        print(f"no checkpoints in {repo.url}" + ("" if selection == Selection(ANY) else f" ({selection.describe()})"))
        return EXIT_OK
    rows = [
        [
            m.checkpoint_id,
            m.name,
            m.session_id or "-",
            "-" if m.global_step is None else str(m.global_step),
            str(len(m.files)),
            format_bytes(m.size),
            when(m.created),
            m.role,
            ",".join(m.tags) or "-",
        ]
        for m in manifests
    ]
    print(table(rows, ["ID", "NAME", "SESSION", "STEP", "FILES", "SIZE", "CREATED", "ROLE", "TAGS"]))
    return EXIT_OK


def _files(m: Manifest, as_json: bool) -> int:
    """A checkpoint's files with their whole-file hashes (SHA-256 in format 1, BLAKE3 in format 2,
    both when the repository records SHA-256 too)."""
    if as_json:
        rows = [{"path": f.path, "size": f.size, "sha256": f.sha256, "blake3": f.blake3} for f in m.files]
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    algos = [a for a in ("sha256", "blake3") if any(getattr(f, a) for f in m.files)]
    table_rows = [[f.path, str(f.size), *(getattr(f, a) or "-" for a in algos)] for f in m.files]
    print(table(table_rows, ["PATH", "SIZE", *(a.upper() for a in algos)]))
    return EXIT_OK
