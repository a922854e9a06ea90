"""``ckpt-sync key list`` and ``ckpt-sync key add --new-key-file F``: the repository's keys (rotation)."""

from __future__ import annotations

import argparse
import json

from ..errors import EXIT_OK
from ..format.keys import load_keyring
from .common import (
    add_json_option,
    add_repo_option,
    open_repository,
    say,
    table,
    warn,
    warn_foreign_key_entries,
    when,
)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("key", help="list the repository's keys, or add one (rotation)")
    key_sub = p.add_subparsers(dest="key_verb", required=True, metavar="ACTION")
    lst = key_sub.add_parser("list", parents=[common], help="fingerprints, when added, checkpoints each opens")
    add_json_option(lst)
    add_repo_option(lst, "--from")
    lst.set_defaults(func=run_list)
    add = key_sub.add_parser("add", parents=[common], help="add a key; new objects are then encrypted with it")
    add.add_argument("--new-key-file", required=True, metavar="PATH", help="the new key (from `ckpt-sync keygen`)")
    add_json_option(add)
    add_repo_option(add, "--to")
    add.set_defaults(func=run_add)


def run_list(args: argparse.Namespace) -> int:
    from ..format.repo_keys import list_keys  # imported by the verb that needs it, not at every start-up

    repo = open_repository(args)
    keys, unopened = list_keys(repo)
    foreign = repo.foreign_key_entries()
    if args.json:
        out = {
            "keys": [k.to_json() for k in keys],
            "checkpoints_no_key_of_yours_opens": unopened,
            "foreign_key_entries": foreign,
        }
        print(json.dumps(out, indent=2))
        return EXIT_OK
    rows = [
        [
            k.fingerprint,
            when(k.added) if k.added else "-",
            "yes" if k.held else "no",
            "-" if k.opens is None else str(k.opens),
        ]
        for k in keys
    ]
    print(table(rows, ["FINGERPRINT", "ADDED", "IN YOUR RING", "OPENS CHECKPOINTS"]))
    if unopened:
        warn(f"{unopened} checkpoint(s) are encrypted with a key not in your ring")
    warn_foreign_key_entries(repo.url, foreign)
    return EXIT_OK


def run_add(args: argparse.Namespace) -> int:
    from ..format.repo_keys import add_key  # imported by the verb that needs it, not at every start-up

    repo = open_repository(args)
    new_key = load_keyring(args.new_key_file)
    rotated = add_key(repo, new_key.raw_keys()[0])
    fp = rotated.keys.fingerprints()[0]
    if args.json:
        print(json.dumps({"added": fp, "repository": repo.url}, indent=2))
        return EXIT_OK
    say(
        f"added key {fp} to {repo.url}; put it FIRST in your key file (or BACKUP_ENCRYPTION_KEY) and keep the old "
        "key(s) after it: checkpoints written before still need them"
    )
    return EXIT_OK
