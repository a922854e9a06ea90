"""``ckpt-sync repair LOCAL_PATH...``: heal missing or damaged chunks from good local copies of the
files (repair.py); exit 0 only when every checkpoint using them then verifies."""

from __future__ import annotations

import argparse
import json

from ..errors import EXIT_FAILED, EXIT_OK, OperationFailed
from ..units import format_bytes
from .common import add_json_option, add_repo_option, err, open_repository, say, warn


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "repair", parents=[common], help="heal missing or damaged chunks from good local copies of the files"
    )
    p.add_argument(
        "paths", nargs="+", metavar="LOCAL_PATH", help="files or folders holding the same bytes as committed ones"
    )
    add_json_option(p)
    add_repo_option(p, "--to")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..transfer.repair import repair  # imported by the verb that needs it, not at every start-up

    repo = open_repository(args)
    report = repair(repo, args.paths, workers=args.workers)
    if not report.checked:
        raise OperationFailed(
            f"no committed checkpoint in {repo.url} holds any of the given files: nothing to repair from them"
        )
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return EXIT_OK if report.sound else EXIT_FAILED
    for path in report.unmatched:
        warn(f"{path}: no committed checkpoint holds this file; nothing to heal from it")
    for cid in report.healed:
        say(f"healed chunk {cid[:16]}")
    say(
        f"healed {len(report.healed)} of {report.checked} chunk(s) the given files hold "
        f"({format_bytes(report.bytes_sent)} sent)"
    )
    bad = [r for r in report.results if not r.ok]
    say(f"{len(report.results) - len(bad)} of {len(report.results)} checkpoint(s) using them verify (data read)")
    for r in bad:
        err(f"checkpoint {r.name} ({r.id}) is still damaged: {r.problems[0]}")
    return EXIT_FAILED if bad else EXIT_OK
