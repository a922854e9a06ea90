"""``ckpt-sync config show``: each effective setting, its value and where it came from (keys redacted)."""

from __future__ import annotations

import argparse
import json

from ..errors import EXIT_OK
from ..service import settings
from .common import add_json_option, add_repo_option, table


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("config", help="show the effective settings (flags > env > config file > defaults)")
    config_sub = p.add_subparsers(dest="config_verb", required=True, metavar="ACTION")
    p = config_sub.add_parser("show", parents=[common], help="each setting's value and source; keys redacted")
    add_json_option(p)
    add_repo_option(p, "--from")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """The effective settings and where each came from; key material is never shown."""
    effective: settings.Effective = args.settings
    if args.json:
        print(json.dumps(effective.to_json(), indent=2))
        return EXIT_OK
    if effective.config_file:
        print(f"config file: {effective.config_file}")
    else:
        print(f"config file: none (no --config, ./{settings.LOCAL_FILE} or {settings.config_dir() / 'config.toml'})")
    print(table([list(r) for r in effective.rows()], ["SETTING", "VALUE", "SOURCE"]))
    return EXIT_OK
