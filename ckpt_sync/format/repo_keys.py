"""The repository's keys: which it knows, when each was added, how many checkpoints each of yours
opens; and adding one (rotation).

A repository knows a key by its fingerprint and a copy of the chunk-id key wrapped under it
(docs/FORMAT.md). Adding a key needs a key the repository already knows (to unwrap the id key);
afterwards new objects are encrypted with the new key and every known key still decrypts. Old
objects are never re-encrypted in place: chunks are shared by later checkpoints (dedup), so a key
stays needed as long as any stored object was written with it — see README "Key management" for
what retiring one takes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import IntegrityError, NotFound, UsageError
from .crypto import fingerprint
from .layout import CONFIG_KEY, KEYS, manifest_key, read_bounded
from .manifest import MAX_MANIFEST_BYTES
from .repository import Repository


@dataclass(frozen=True)
class KeyInfo:
    fingerprint: str
    added: float | None  # unix seconds; None when the store does not tell
    held: bool  # in the key ring you opened the repository with
    opens: int | None  # checkpoints (manifests) this key decrypts; None for a key you do not hold

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def _entries(repo: Repository) -> dict[str, float | None]:
    """Every key entry the repository has (Repository.key_entries: the config's, then the ``keys/``
    objects rotation adds put-if-absent) and when it was added, as well as the store tells."""
    config_time = next((i.modified for i in repo.provider.list(CONFIG_KEY) if i.key == CONFIG_KEY), None)
    object_times = {i.key[len(KEYS) :]: i.modified for i in repo.provider.list(KEYS)}
    created = repo.config.get("created")
    in_config = list(repo.config.get("keys", {}))
    out: dict[str, float | None] = {}
    for fp in repo.key_entries():
        if fp in object_times:
            out[fp] = object_times[fp]
        elif in_config and fp == in_config[0] and isinstance(created, int | float):
            out[fp] = float(created)  # the creating key
        else:
            out[fp] = config_time  # added by an older ckpt-sync, which rewrote the config
    return out


def list_keys(repo: Repository) -> tuple[list[KeyInfo], int]:
    """The keys the repository vouches for, oldest first, and how many checkpoints none of your keys
    opens (``Repository.foreign_key_entries`` lists the entries it does not vouch for)."""
    held = set(repo.keys.fingerprints())
    tokens = []
    for mid in repo.manifest_ids():
        try:
            token = read_bounded(repo.provider, manifest_key(mid), MAX_MANIFEST_BYTES)
        except NotFound:
            continue  # pruned meanwhile
        tokens.append(token if token is not None else b"")  # oversized: opened by no key
    opens: dict[str, int] = {}
    opened_by_any = [False] * len(tokens)
    for fp in held:
        ring = repo.keys.only(fp)
        count = 0
        for i, token in enumerate(tokens):
            try:
                ring.decrypt(token)
            except IntegrityError:
                continue
            count += 1
            opened_by_any[i] = True
        opens[fp] = count
    entries = _entries(repo)
    infos = [KeyInfo(fp, added, fp in held, opens.get(fp)) for fp, added in entries.items()]
    infos.sort(key=lambda k: (k.added is None, k.added or 0))
    return infos, opened_by_any.count(False)


def add_key(repo: Repository, new_key: bytes) -> Repository:
    """Make ``new_key`` one of the repository's keys and the one new objects are encrypted with.

    Returns the repository opened with the new key first in the ring (the old ones still decrypt).
    Raises UsageError when the repository already knows the key.
    """
    fp = fingerprint(new_key)
    if fp in _entries(repo):
        raise UsageError(f"the repository at {repo.url} already has the key {fp}")
    return Repository.open(repo.provider, repo.keys.with_primary(new_key), create=True)
