"""Opening a repository as this host does: the provider built with its retries, the key checked
first, and this host's state handed in (its copies of manifests, its record of the newest checkpoint
seen: manifest_cache.py, seen.py). The URL, keys and store options arrive resolved
(service/settings.py resolves them for the command line and the library alike); the format layer
never reaches for the host's folders itself.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..format.crypto import KeyRing
from ..format.keys import generate_key, key_configured, load_keyring, write_key_file
from ..format.layout import CONFIG_KEY
from ..format.manifest import RepositoryBinding
from ..format.repo_config import RepositorySettings
from ..format.repository import Repository
from ..format.repository import repair_config as _repair_config
from ..locations import cache_home, default_key_file
from ..providers import RetryPolicy, open_provider
from . import seen
from .manifest_cache import ManifestCache
from .manifest_index import ManifestIndex, index_name


def with_host_state(repo: Repository) -> Repository:
    """``repo`` using this host's manifest copies, its index of them and its record of the newest
    checkpoint seen."""
    folder = cache_home() / repo.id
    repo.use_host_state(
        ManifestCache(folder / "manifests"),
        lambda manifest: seen.remember(repo.id, manifest),
        ManifestIndex(folder / index_name(repo.keys), repo.host_key("manifest index")),
    )
    return repo


def open_at(
    url: str,
    keys: KeyRing,
    *,
    create: bool = False,
    settings: RepositorySettings | None = None,
    retry: RetryPolicy | None = RetryPolicy(),
    cancel: threading.Event | None = None,
    **provider_options: Any,
) -> Repository:
    """Build the provider for ``url`` and open the repository (checking the key first).
    ``settings`` (format version, padding, compression; repo_config.RepositorySettings) apply when it is
    created, and are refused for an existing one that differs. ``cancel`` ends the waits between
    retries (raising Cancelled)."""
    provider = open_provider(url, retry=retry, cancel=cancel, **provider_options)
    try:
        return with_host_state(Repository.open(provider, keys, create=create, settings=settings))
    except BaseException:
        provider.close()
        raise


@dataclass(frozen=True)
class Initialised:
    """What ``init_at`` did: the open repository, and what it had to create."""

    repository: Repository
    created: bool  # False: it already was a repository (opened with the key, nothing changed)
    bucket_created: bool | None  # None: not asked to
    key_file_created: Path | None  # a new default key file, made because no key was configured


def init_at(
    url: str,
    key_file: str | os.PathLike[str] | None,
    *,
    create_bucket: bool = False,
    settings: RepositorySettings | None = None,
    retry: RetryPolicy | None = RetryPolicy(),
    **provider_options: Any,
) -> Initialised:
    """Create the repository (with ``create_bucket``, first its bucket or container). With no key
    configured anywhere, and only for a repository that does not exist yet, a new default key file
    is made: a new key suits a new repository, and can never read an existing one."""
    provider = open_provider(url, retry=retry, **provider_options)
    try:
        bucket = provider.create_container() if create_bucket else None
        existed = provider.size(CONFIG_KEY) is not None
        made_key = None
        if not existed and not key_configured(key_file):
            made_key = write_key_file(default_key_file(), generate_key())
        ring = load_keyring(key_file)
        repository = with_host_state(Repository.open(provider, ring, create=True, settings=settings))
        return Initialised(repository, not existed, bucket, made_key)
    except BaseException:
        provider.close()
        raise


def repair_config_at(
    url: str, keys: KeyRing, *, retry: RetryPolicy | None = RetryPolicy(), **provider_options: Any
) -> tuple[RepositoryBinding, int]:
    """Rebuild the repository's missing or damaged config from the backup its manifests carry."""
    provider = open_provider(url, retry=retry, **provider_options)
    try:
        return _repair_config(provider, keys)
    finally:
        provider.close()
