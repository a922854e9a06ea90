"""``ckpt-sync stats``: checkpoints, logical size and dedup ratio, what the checkpoints use in the store
apart from what the grace period still holds and what a prune would collect, and what forgetting each
checkpoint would free."""

from __future__ import annotations

import argparse
import json

from ..defaults import DEFAULT_GRACE
from ..errors import EXIT_OK
from ..units import format_bytes
from .common import add_grace_option, add_json_option, add_repo_option, open_repository, table, warn


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("stats", parents=[common], help="sizes, dedup ratio, and what forgetting each checkpoint frees")
    add_grace_option(p)
    add_json_option(p)
    add_repo_option(p, "--from")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..transfer.stats import repository_stats  # imported by the verb that needs it, not at every start-up

    repo = open_repository(args)
    st = repository_stats(repo, grace=DEFAULT_GRACE if args.grace is None else args.grace)
    for mid in st.unreadable:
        warn(f"checkpoint {mid} is unreadable with these keys: unique and unreferenced bytes ignore it")
    if args.json:
        print(json.dumps({"repository": repo.url, **st.to_json()}, indent=2))
        return EXIT_OK
    # What the checkpoints use first, with the ratio that explains it; what a prune will still free
    # apart; their sum last: a forget not yet pruned never reads as "stored above logical".
    print(f"repository:          {repo.url}")
    print(f"checkpoints:         {st.checkpoints}")
    print(f"logical size:        {format_bytes(st.logical_bytes)} (what restoring every checkpoint writes)")
    print(f"dedup ratio:         {st.dedup_ratio:.2f}x (logical size over the distinct data it holds)")
    print(
        f"used by checkpoints: {format_bytes(st.checkpoints_stored_bytes)} stored "
        f"({st.referenced_chunk_objects} chunk object(s) and their manifests)"
    )
    print(f"held by grace:       {format_bytes(st.grace_bytes)} unreferenced, kept while younger than the grace period")
    print(f"collectable:         {format_bytes(st.collectable_bytes)} unreferenced, removed by the next prune")
    print(
        f"stored in all:       {format_bytes(st.stored_bytes)} in {st.chunk_objects} chunk object(s) and manifests "
        "(used + held by grace + collectable)"
    )
    if st.missing_chunks:
        print(f"missing chunks:      {st.missing_chunks} (run `ckpt-sync verify`)")
    if st.per_checkpoint:
        rows = [[c.id, c.name, format_bytes(c.logical_bytes), format_bytes(c.unique_bytes)] for c in st.per_checkpoint]
        print()
        print(table(rows, ["ID", "NAME", "SIZE", "UNIQUE (freed by forget + prune)"]))
    return EXIT_OK
