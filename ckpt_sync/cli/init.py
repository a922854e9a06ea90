"""``ckpt-sync init``: create the repository (and with ``--create-bucket`` its bucket or container)."""

from __future__ import annotations

import argparse
import json

from ..errors import EXIT_OK
from ..transfer.opening import init_at
from .common import (
    add_json_option,
    add_repo_option,
    add_repository_settings_options,
    repository_settings,
    say,
    store_of,
)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "init",
        parents=[common],
        help="create the repository (makes a key first if none is configured); push and watch also create it",
    )
    p.add_argument(
        "--create-bucket",
        action="store_true",
        help="first create the S3/GCS bucket or Azure container, where the credentials allow it",
    )
    add_repository_settings_options(p)
    add_json_option(p)
    add_repo_option(p, "--to")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    store = store_of(args)
    done = init_at(
        store.url,
        store.key_file,
        create_bucket=args.create_bucket,
        settings=repository_settings(args),
        **store.provider_options(),
    )
    repo = done.repository
    try:
        fingerprint = repo.keys.fingerprints()[0]
        if args.json:
            print(
                json.dumps(
                    {
                        "repository": repo.url,
                        "id": repo.id,
                        "key_fingerprint": fingerprint,
                        "format": repo.settings.version,
                        "pad": repo.settings.pad,
                        "compression": repo.settings.compression,
                        "sha256": repo.settings.sha256,
                        "created": done.created,
                        "bucket_created": done.bucket_created,
                        "key_file_created": str(done.key_file_created) if done.key_file_created else None,
                    },
                    indent=2,
                )
            )
            return EXIT_OK
        if done.key_file_created:
            say(
                f"made a new key in {done.key_file_created} (mode 0600): keep a copy somewhere safe, "
                "without it the backups are unreadable"
            )
        if done.bucket_created:
            scheme, _, rest = repo.url.partition("://")
            noun = {"az": "container", "file": "folder"}.get(scheme, "bucket")
            say(f"created the {noun} {rest if scheme == 'file' else rest.split('/', 1)[0]}")
        what = "initialised" if done.created else "already initialised (nothing changed):"
        say(f"{what} repository {repo.url}: id {repo.id}, {repo.settings.describe()}, key fingerprint {fingerprint}")
    finally:
        repo.provider.close()
    return EXIT_OK
