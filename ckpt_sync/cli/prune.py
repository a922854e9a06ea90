"""``ckpt-sync prune``: apply remote retention now (or say what it would remove)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from ..errors import EXIT_OK, UsageError
from ..units import format_bytes
from .common import (
    add_grace_option,
    add_json_option,
    add_repo_option,
    add_retention_options,
    open_repository,
    retention_policy,
    say,
    when,
)

if TYPE_CHECKING:
    from ..transfer.retention import RetentionPolicy


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("prune", parents=[common], help="apply remote retention now")
    add_retention_options(p)
    add_grace_option(p)
    p.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    p.add_argument(
        "--remove-damaged",
        action="store_true",
        help="also remove manifests that fail authentication, are malformed or belong to another repository "
        "(needs every key; try with --dry-run first)",
    )
    add_json_option(p)
    add_repo_option(p, "--from")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..transfer.prune import prune  # imported by the verb that needs it, not at every start-up

    policy = _policy(args)
    repo = open_repository(args)
    report = prune(repo, policy, grace=args.grace, dry_run=args.dry_run, remove_damaged=args.remove_damaged)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return EXIT_OK
    verb = "would remove" if args.dry_run else "removed"
    for mid in report.damaged_removed:
        say(f"{verb} damaged manifest {mid}")
    for fp in report.foreign_keys_removed:
        say(f"{verb} key entry {fp} (not authenticated by the repository's keys)")
    for mid, name in zip(report.removed, report.removed_names, strict=True):
        say(f"{verb} {name} ({mid})")
    if report.sessions:  # prune is repository-wide: say whose checkpoints it touches
        touched = ", ".join(
            f"{n} of {f'session {s}' if s else 'no session'}" for s, n in sorted(report.sessions.items())
        )
        say(f"{verb} checkpoints of {len(report.sessions)} session(s): {touched}")
    left = [mid for mid in report.damaged if mid not in report.damaged_removed]
    if left:
        say(
            f"left {len(left)} damaged or foreign manifest(s) alone (e.g. {left[0]}); see `ckpt-sync verify`, "
            "remove them with `ckpt-sync prune --remove-damaged --dry-run` first"
        )
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


def _policy(args: argparse.Namespace) -> RetentionPolicy:
    policy = retention_policy(args)
    if policy is None:
        raise UsageError("keep must be at least 1 (the newest checkpoint is never removed); to keep all, do not prune")
    return policy
