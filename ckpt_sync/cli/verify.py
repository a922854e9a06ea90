"""``ckpt-sync verify [ID...]``: is every checkpoint (or each named one) restorable? Exit 1 naming each
damaged one."""

from __future__ import annotations

import argparse
import json
import time

from ..errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from .common import (
    add_json_option,
    add_repo_option,
    err,
    open_repository,
    say,
    warn_foreign_key_entries,
    warn_if_rolled_back,
)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("verify", parents=[common], help="check that every checkpoint is restorable")
    p.add_argument(
        "checkpoints", nargs="*", metavar="ID_OR_NAME", help="only these checkpoints (id, id prefix, name, latest)"
    )
    depth = p.add_mutually_exclusive_group()
    depth.add_argument("--read-data", action="store_true", help="download, authenticate and re-hash everything")
    depth.add_argument(
        "--read-data-subset",
        metavar="SHARE",
        help="download and check a random share of the distinct chunks, e.g. 10%% or 1/10 (a cheap spot check)",
    )
    add_json_option(p)
    add_repo_option(p, "--from")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..transfer.verify import (  # imported by the verb that needs it, not at every start-up
        UNREADABLE,
        parse_subset,
        verify,
    )

    subset = parse_subset(args.read_data_subset) if args.read_data_subset else None
    repo = open_repository(args)
    warn_if_rolled_back(repo)
    warn_foreign_key_entries(repo.url, repo.foreign_key_entries())
    started = time.monotonic()
    results = verify(
        repo, checkpoints=args.checkpoints, read_data=args.read_data, read_data_subset=subset, workers=args.workers
    )
    bad = [r for r in results if not r.ok and not r.missing_key]
    locked = [r for r in results if r.missing_key]
    if args.json:
        print(json.dumps([r.to_json() for r in results], indent=2))
    else:
        for r in locked:
            say(f"NO KEY {r.id}: {r.problems[0]}")
        for r in bad:
            say(
                f"DAMAGED {r.name} ({r.id}): {'; '.join(r.problems[:3])}"
                + (f" (+{len(r.problems) - 3} more)" if len(r.problems) > 3 else "")
            )
        what = (
            "data read and verified"
            if args.read_data
            else f"{args.read_data_subset} of the chunks read and verified"
            if subset
            else "structure and chunk presence checked"
        )
        say(
            f"{len(results) - len(bad) - len(locked)} of {len(results)} checkpoint(s) sound ({what}, "
            f"{time.monotonic() - started:.1f}s)" + (f"; {len(locked)} not readable with these keys" if locked else "")
        )
    for r in bad:
        err(f"checkpoint {r.name} ({r.id}) is damaged")
    if any(r.name == UNREADABLE for r in bad):
        err(
            "a manifest that is damaged or another repository's can be removed with `ckpt-sync prune "
            "--remove-damaged` (see what it would do with --dry-run first)"
        )
    if locked and not bad:
        err(f"{len(locked)} checkpoint(s) are encrypted with a key this host does not have: {locked[0].problems[0]}")
        return EXIT_USAGE
    return EXIT_FAILED if bad else EXIT_OK
