"""``ckpt-sync keygen``: a new Fernet key, printed or written to a private file."""

from __future__ import annotations

import argparse

from ..errors import EXIT_OK
from ..format.keys import generate_key, write_key_file
from .common import add_quiet_option, say


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("keygen", help="print a new Fernet key (or write it with --out)")
    p.add_argument("--out", metavar="PATH", help="write the key to PATH with mode 0600")
    add_quiet_option(p)
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    key = generate_key()
    if args.out:
        path = write_key_file(args.out, key)
        say(f"wrote a new key to {path} (mode 0600); keep a copy somewhere safe: without it the backups are unreadable")
    else:
        print(key)
    return EXIT_OK
