"""``ckpt-sync repair-config``: rebuild a repository's missing or damaged ``config`` object from the
encrypted backup every manifest carries (the key is needed; nothing else is touched)."""

from __future__ import annotations

import argparse
from typing import Any

from ..api import repair_config
from ..errors import EXIT_OK
from ..providers import RetryPolicy
from .common import add_repo_option


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "repair-config", parents=[common], help="rebuild a missing or damaged repository config (needs the key)"
    )
    add_repo_option(p, "--to")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    options: dict[str, Any] = {"endpoint_url": args.endpoint_url} if args.endpoint_url else {}
    retry = RetryPolicy(attempts=args.retry_attempts, max_seconds=args.retry_time)
    binding, count = repair_config(args.repo, key_file=args.key_file, retry=retry, **options)
    print(
        f"rebuilt the config of {args.repo} from the backup in {count} checkpoint(s) "
        f"(repository {binding.id}); its checkpoints open again with this key"
    )
    return EXIT_OK
