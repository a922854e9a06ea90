"""``ckpt-sync repair-config``: rebuild a repository's missing or damaged ``config`` object from the
encrypted backup every manifest carries (the key is needed; nothing else is touched)."""

from __future__ import annotations

import argparse

from ..errors import EXIT_OK
from ..transfer.opening import repair_config_at
from .common import add_repo_option, store_of


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "repair-config", parents=[common], help="rebuild a missing or damaged repository config (needs the key)"
    )
    add_repo_option(p, "--to")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    store = store_of(args)
    binding, count = repair_config_at(store.url, store.keys(), **store.provider_options())
    print(
        f"rebuilt the config of {store.url} from the backup in {count} checkpoint(s) "
        f"(repository {binding.id}); its checkpoints open again with this key"
    )
    return EXIT_OK
