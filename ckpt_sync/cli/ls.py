"""``ckpt-sync ls``: the committed checkpoints, newest first."""

from __future__ import annotations

import argparse
import json

from ..errors import EXIT_OK
from ..units import format_bytes
from .common import add_json_option, add_repo_option, load_all, manifest_row, open_repository, table, when


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("ls", parents=[common], help="list committed checkpoints, newest first")
    add_json_option(p, "print a JSON array")
    add_repo_option(p, "--from")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    repo = open_repository(args)
    manifests = load_all(repo)
    if args.json:
        print(json.dumps([manifest_row(m) for m in manifests], indent=2))
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
            when(m.created),
            ",".join(m.tags) or "-",
        ]
        for m in manifests
    ]
    print(table(rows, ["ID", "NAME", "SESSION", "STEP", "FILES", "SIZE", "CREATED", "TAGS"]))
    return EXIT_OK
