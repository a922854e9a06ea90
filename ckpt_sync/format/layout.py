"""Where a repository keeps what: the object names under its prefix (docs/FORMAT.md, "Objects"),
and reading an object with a bound on its size (the store is not trusted to return what we expect).

    config                 plaintext JSON: format version, chunk encoding, the chunk-id key wrapped per key, a MAC
    keys/<fingerprint>     the chunk-id key wrapped for a key added later (rotation; put-if-absent), a MAC
    chunks/<id[:2]>/<id>   binary Fernet token of one chunk; id = keyed hash of its plaintext
    manifests/<mid>        binary Fernet token of one manifest's JSON; mid is time-sortable
    locks/...              coordination objects (locks.py)
"""

from __future__ import annotations

import secrets
import time

from ..providers import Provider

CONFIG_KEY = "config"
KEYS = "keys/"
CHUNKS = "chunks/"
MANIFESTS = "manifests/"
MAX_CONFIG_BYTES = 1 << 20
MAX_KEY_ENTRY_BYTES = 4096


def chunk_key(chunk_id: str) -> str:
    return f"{CHUNKS}{chunk_id[:2]}/{chunk_id}"


def manifest_key(manifest_id: str) -> str:
    return f"{MANIFESTS}{manifest_id}"


def new_manifest_id(now: float | None = None) -> str:
    """Milliseconds since the epoch (13 digits, sorts by time) and 64 random bits."""
    ms = int((time.time() if now is None else now) * 1000)
    return f"{ms:013d}-{secrets.token_hex(8)}"


def read_bounded(provider: Provider, key: str, limit: int) -> bytes | None:
    """The object, or None when it is larger than ``limit`` bytes: a ranged read of at most
    ``limit + 1`` bytes, so memory never depends on what the store holds. Raises NotFound."""
    data = provider.get(key, 0, limit + 1)
    return None if len(data) > limit else data


def holds_data(provider: Provider) -> bool:
    """Whether the prefix holds any chunk or manifest (then it is never initialised anew)."""
    return any(next(iter(provider.list(prefix)), None) is not None for prefix in (MANIFESTS, CHUNKS))
