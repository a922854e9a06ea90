"""``ckpt-sync check``: deep-check a local folder of training checkpoints; ``--repair`` quarantines bad ones."""

from __future__ import annotations

import argparse
import json

from ..errors import EXIT_FAILED, EXIT_OK, UsageError
from .common import add_json_option, add_quiet_option, err, say


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("check", help="deep-check a local folder of training checkpoints (needs torch)")
    p.add_argument("dir", metavar="DIR", help="the CheckpointManager folder (holds training_session.json)")
    p.add_argument("--repair", action="store_true", help="move bad files to DIR/quarantine/, rebuild the session file")
    add_json_option(p)
    add_quiet_option(p)
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:  # torch is needed here only: the rest of the CLI imports without it
        from ..training.verification import check_directory, repair
    except ImportError as e:
        raise UsageError(f"ckpt-sync check needs torch ({e}); install torch==2.13.0, then ckpt-sync[torch]") from None
    if args.repair:
        report = repair(args.dir)
        results = report.results
    else:
        results = check_directory(args.dir)
    bad = [r for r in results if not r.ok]
    if args.json:
        print(json.dumps([r.to_json() for r in results], indent=2))
    else:
        for r in bad:
            say(f"DAMAGED {r.path}: {'; '.join(r.problems)}")
        say(f"{len(results) - len(bad)} of {len(results)} checkpoint(s) in {args.dir} sound")
    if args.repair:
        for src, dst in report.quarantined:
            say(f"quarantined {src} -> {dst}")
        say(f"rebuilt {report.session_file}")
        return EXIT_OK
    for r in bad:
        err(f"checkpoint {r.path} is damaged (run `ckpt-sync check --repair {args.dir}` to quarantine it)")
    return EXIT_FAILED if bad else EXIT_OK
