"""Storage back-ends, chosen by the repository URL's scheme.

Built in: ``file`` (and plain paths), ``s3``, ``az``, ``gs``. Third parties register a class under
the entry-point group ``ckpt_sync.providers`` with the scheme as the entry's name; the class needs a
``from_url(url, **options)`` classmethod returning a Provider (see docs/PROVIDERS.md).
"""

from __future__ import annotations

import importlib
import re
import threading
from typing import Any

from ckpt_sync.errors import ConfigError, UsageError, install_hint

from .base import ObjectInfo, Provider
from .bwlimit import BandwidthLimitedProvider, shared_bucket
from .retry import RetryingProvider, RetryPolicy

ENTRY_POINT_GROUP = "ckpt_sync.providers"

# scheme -> ("module:Class", pip extra that brings its SDK)
BUILTIN: dict[str, tuple[str, str | None]] = {
    "file": ("ckpt_sync.providers.local:LocalProvider", None),
    "s3": ("ckpt_sync.providers.s3:S3Provider", "s3"),
    "az": ("ckpt_sync.providers.azure:AzureBlobProvider", "azure"),
    "gs": ("ckpt_sync.providers.gcs:GCSProvider", "gcs"),
}

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def scheme_of(url: str) -> str:
    if not url or not url.strip():
        raise UsageError("empty repository URL")
    m = _SCHEME.match(url)
    if m:
        return m.group(1).lower()
    # "s3:/bucket", "s3:bucket": a scheme without "//" (one letter is a Windows drive, not a scheme).
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]+:", url):
        raise UsageError(
            f"malformed repository URL {url!r}: expected SCHEME://... "
            "(s3://bucket/prefix, file:///path) or a folder path"
        )
    # "s3//bucket/x": a known scheme that lost its colon would otherwise become a new local folder.
    m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)/{2,}(.*)", url)
    if m and m.group(1).lower() in known_schemes():
        raise UsageError(
            f"malformed repository URL {url!r}: did you mean {m.group(1).lower()}://{m.group(2)}? "
            "(for a local folder of that name write ./" + url + ")"
        )
    return "file"


def _plugins() -> list[Any]:
    """Third-party providers' entry points. importlib.metadata is imported here, not at start-up:
    it costs more than a local-repository verb (it scans every installed distribution)."""
    from importlib.metadata import entry_points

    return list(entry_points(group=ENTRY_POINT_GROUP))


def known_schemes() -> set[str]:
    """The built-in schemes and those third-party providers register."""
    return {*BUILTIN, *(ep.name for ep in _plugins())}


def _load_class(scheme: str) -> Any:
    if scheme in BUILTIN:
        target, extra = BUILTIN[scheme]
        module, _, cls = target.partition(":")
        try:
            return getattr(importlib.import_module(module), cls)
        except ImportError as err:
            hint = install_hint(extra) if extra else "reinstall ckpt-sync (scripts/quickstart.sh)"
            raise ConfigError(f"{scheme}:// needs a library that is not installed ({err.name}): {hint}") from None
    for ep in _plugins():
        if ep.name == scheme:
            return ep.load()
    known = ", ".join(sorted(known_schemes()))
    raise UsageError(f"unknown repository URL scheme {scheme}:// (known: {known})")


DEFAULT_RETRY = RetryPolicy()


def open_provider(
    url: str,
    *,
    retry: RetryPolicy | None = DEFAULT_RETRY,
    bwlimit: int | None = None,
    cancel: threading.Event | None = None,
    **options: Any,
) -> Provider:
    """Build the provider for ``url``: paced by the process's shared ``bwlimit`` bytes/s bucket when
    given, then wrapped in retries unless ``retry`` is None (so every attempt pays for its bytes)."""
    provider = _load_class(scheme_of(url)).from_url(url, **options)
    if bwlimit:
        provider = BandwidthLimitedProvider(provider, shared_bucket(bwlimit))
    return RetryingProvider(provider, retry, cancel=cancel) if retry is not None else provider


__all__ = ["ENTRY_POINT_GROUP", "ObjectInfo", "Provider", "RetryPolicy", "RetryingProvider", "open_provider"]
