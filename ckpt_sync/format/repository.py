"""The repository: the key check, chunks and manifests on top of one provider (object names in
layout.py, the config in repo_config.py).

A checkpoint exists iff its manifest exists; manifests are written last and never overwrite.

The store is not trusted: every object is read with a bound on its size (a ranged read of at most
what it may be); the config and the key entries are authenticated under the repository's key
material (repo_auth.py) and the config must agree with what its checkpoints record; a manifest
names the repository it belongs to (one copied in from another repository under the same key is
not this repository's checkpoint), but every manifest the keys open protects its chunks.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import hmac
import json
import os
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

from cryptography.fernet import InvalidToken

from ..buffers import BufferPool
from ..errors import (
    ChunkDamaged,
    CkptSyncError,
    ConfigError,
    IntegrityError,
    KeyMismatchError,
    MissingKeyError,
    NotFound,
    OperationFailed,
    UsageError,
)
from ..providers import Provider
from ..providers.base import ObjectInfo, read_into, wants_aligned_buffers
from .chunk_format import ChunkFormat, ChunkMismatch
from .crypto import KeyRing
from .file_digest import FileHasher
from .layout import (
    CHUNKS,
    CONFIG_KEY,
    KEYS,
    MANIFESTS,
    MAX_CONFIG_BYTES,
    MAX_KEY_ENTRY_BYTES,
    chunk_key,
    holds_data,
    manifest_key,
    read_bounded,
)
from .manifest import MAX_MANIFEST_BYTES, ChunkRef, Manifest, RepositoryBinding, parse_manifest
from .repo_auth import MAC_FIELD, KeyEntry, config_mac_ok, with_config_mac
from .repo_config import (
    FORMAT_VERSION,
    RepositorySettings,
    binding_difference,
    config_altered_error,
    config_missing_error,
    new_config,
    parse_config,
    repository_id,
    settings_of,
)
from .summary import Summary, summarize, version_key

_FINGERPRINT = re.compile(r"^[0-9a-f]{32}$")
_CHUNK_ID = re.compile(rb"[0-9a-f]{64}")
T = TypeVar("T", Manifest, Summary)
PROBE_LIMIT = 1000  # chunks asked of the store one by one at most: a listing page's worth


class ManifestCopies(Protocol):
    """This host's copies of manifest objects (transfer/manifest_cache.py): read instead of the store
    only for an object the latest listing shows unchanged, and decrypted and checked as if fetched."""

    def get(self, manifest_id: str, info: ObjectInfo) -> bytes | None: ...

    def put(self, manifest_id: str, info: ObjectInfo, token: bytes) -> None: ...

    def discard(self, manifest_id: str, info: ObjectInfo) -> None: ...

    def keep_only(self, listed: dict[str, ObjectInfo]) -> None: ...


class SummaryIndex(Protocol):
    """This host's summaries of manifests it has read (transfer/manifest_index.py), under the same
    rule as ``ManifestCopies``: used only for an object the latest listing shows unchanged."""

    def get_many(self, listed: dict[str, ObjectInfo]) -> dict[str, Summary]: ...

    def every(self) -> list[Summary]: ...

    def put(self, manifest_id: str, info: ObjectInfo, summary: Summary) -> None: ...

    def keep_only(self, listed: dict[str, ObjectInfo]) -> None: ...

    def save(self) -> None: ...


class Repository:
    """Chunks and manifests in one store. It touches only the store: what this host keeps (copies of
    manifests, the record of the newest checkpoint seen) is handed in (``use_host_state``)."""

    def __init__(self, provider: Provider, keys: KeyRing, id_key: bytes, config: dict) -> None:
        self.provider = provider
        self.keys = keys
        self.url = provider.url
        self.config = config
        self._id_key = id_key
        self._public_id = repository_id(id_key)
        self.settings = RepositorySettings.of_config(config)  # fixed at creation
        self.format = self.settings.chunk_format(id_key)
        # Chunks known to be stored, and their object sizes: put or checked by this object since
        # ``forget_known_chunks``, or (``known_chunks``) a whole listing.
        self._known: dict[str, int] = {}
        self._listed_chunks = False
        self._distrusted: set[str] = set()
        self._lock = threading.Lock()
        self._listed: dict[str, ObjectInfo] = {}  # the latest manifest listing
        self._cache: ManifestCopies | None = None
        self._index: SummaryIndex | None = None
        self._seen: Callable[[Manifest], None] | None = None
        self._agreed = False  # the config was checked against the checkpoints (_check_agreement)
        self._agreeing = threading.Lock()
        self._summarising = threading.RLock()

    def use_host_state(
        self,
        cache: ManifestCopies | None = None,
        seen: Callable[[Manifest], None] | None = None,
        index: SummaryIndex | None = None,
    ) -> None:
        """This host's state: ``cache`` of manifest objects, ``seen`` told of every commit this
        repository makes or finds already made (rollback detection, transfer/seen.py), and an
        ``index`` of manifest summaries (transfer/manifest_index.py)."""
        self._cache = cache
        self._seen = seen
        self._index = index

    def host_key(self, purpose: str) -> bytes:
        """A secret for authenticating what this host keeps about the repository (its index), derived
        from the id key: only holders of the repository's key can forge it."""
        return hmac.new(self._id_key, b"ckpt-sync host state: " + purpose.encode(), hashlib.sha256).digest()

    @property
    def id(self) -> str:
        """A public name for this repository (one-way from its secret id key; stable, never stored)."""
        return self._public_id

    @property
    def authenticated(self) -> bool:
        """Whether the config carries its MAC (every repository but one written before authentication
        and not yet written to since: ``authenticate_state``)."""
        return MAC_FIELD in self.config

    # --- opening ---------------------------------------------------------------------------------

    @classmethod
    def open(
        cls, provider: Provider, keys: KeyRing, *, create: bool = False, settings: RepositorySettings | None = None
    ) -> Repository:
        """Open (or with ``create``, initialise) the repository and check the key before touching data.

        ``settings`` are used when this call creates the repository; given for one that exists and
        differing from its own, they raise UsageError (they are fixed at creation).

        Raises ConfigError when there is no repository and ``create`` is false, when the config is
        missing from a prefix that holds data (it is never re-initialised: a new id key would orphan
        every checkpoint), damaged, or fails authentication (edited, or another repository's), and
        KeyMismatchError when none of ``keys`` is one of the repository's keys.
        """
        try:
            raw = cls._read_config(provider)
        except NotFound:
            if holds_data(provider):
                raise config_missing_error(provider.url) from None
            if not create:
                raise ConfigError(
                    f"no ckpt-sync repository at {provider.url}: check the URL (nothing was pushed there yet)"
                ) from None
            provider.check()
            raw = cls._initialise(provider, keys, (settings or RepositorySettings()).resolved())
        config = parse_config(raw, provider.url)
        id_key = cls._find_id_key(provider, keys, config)
        repo = cls(provider, keys, id_key, config)
        differ = settings.conflicts(repo.settings) if settings is not None else []
        if differ:
            raise UsageError(
                f"the repository at {provider.url} already exists with {repo.settings.describe(differ)}: "
                f"{settings.describe(differ)} can only be chosen when a repository is created (use a new one)"
            )
        if create and keys.fingerprints()[0] not in repo.key_entries():
            repo._add_primary_key()
        return repo

    @staticmethod
    def _read_config(provider: Provider) -> bytes:
        raw = read_bounded(provider, CONFIG_KEY, MAX_CONFIG_BYTES)
        if raw is None:
            raise ConfigError(
                f"the repository config at {provider.url} is larger than {MAX_CONFIG_BYTES >> 20} MiB (replaced "
                f"or foreign object): rebuild it with `ckpt-sync repair-config --repo {provider.url}` and the key"
            )
        return raw

    @classmethod
    def _find_id_key(cls, provider: Provider, keys: KeyRing, config: dict) -> bytes:
        """The id key, unwrapped with the first of ``keys`` the repository has an entry for, and the
        config checked against it. An entry for one of our own keys needs no MAC to be trusted (only
        a holder of that key could have made its token); the config's MAC then ties the config to
        that id key, so a config edited or copied from another repository is refused here."""
        entries = dict(config["keys"])
        if not any(fp in entries for fp in keys.fingerprints()):
            entries.update({fp: e.token for fp, e in cls._key_objects(provider).items()})  # keys added by rotation
        if not entries:
            raise ConfigError(
                f"the repository config at {provider.url} is damaged (it holds no key entry): rebuild it with "
                f"`ckpt-sync repair-config --repo {provider.url}` and the key"
            )
        for fp in keys.fingerprints():
            if fp in entries:
                id_key = cls._unwrap(keys, fp, entries[fp], provider.url)
                if MAC_FIELD in config and not config_mac_ok(id_key, config):
                    raise config_altered_error(provider.url, "fails authentication (its MAC does not match)")
                return id_key
        raise KeyMismatchError(
            f"the key does not match the repository at {provider.url}: use the key it was created with "
            "(--key-file or BACKUP_ENCRYPTION_KEY)"
        )

    @staticmethod
    def _key_objects(provider: Provider) -> dict[str, KeyEntry]:
        """Key entries written as separate objects (``keys/<fingerprint>``), authentic or not;
        malformed ones are left out."""
        out: dict[str, KeyEntry] = {}
        for info in provider.list(KEYS):
            fp = info.key[len(KEYS) :]
            if not _FINGERPRINT.match(fp) or info.size > MAX_KEY_ENTRY_BYTES:
                continue
            try:
                raw = read_bounded(provider, info.key, MAX_KEY_ENTRY_BYTES)
            except NotFound:
                continue
            entry = KeyEntry.parse(fp, raw) if raw is not None else None
            if entry is not None:
                out[fp] = entry
        return out

    def _accepts(self, entry: KeyEntry) -> bool:
        """A ``keys/`` entry counts when its MAC is right; an entry without one (written before
        authentication) only while the config has none either."""
        return entry.authentic(self._id_key) or (entry.mac is None and not self.authenticated)

    def key_entries(self) -> dict[str, str]:
        """Every key entry the repository vouches for (fingerprint -> wrapped id key): the config's
        and the authentic ``keys/`` objects rotation added. Unauthenticated ones are not among them."""
        objects = {fp: e.token for fp, e in self._key_objects(self.provider).items() if self._accepts(e)}
        return {**objects, **self.config["keys"]}

    def foreign_key_entries(self) -> list[str]:
        """Fingerprints of ``keys/`` objects the repository does not vouch for (no valid MAC in an
        authenticated repository, or not an entry at all): planted or damaged. They are ignored;
        ``prune --remove-damaged`` deletes them."""
        entries = self._key_objects(self.provider)
        listed = {i.key[len(KEYS) :] for i in self.provider.list(KEYS)}
        vouched = {fp for fp, e in entries.items() if self._accepts(e)} | set(self.config["keys"])
        return sorted(listed - vouched)

    def has_all_keys(self) -> bool:
        """Whether the ring holds every key the repository vouches for: then an object none of them
        authenticates is damaged, not merely encrypted with a key we were not given."""
        return set(self.key_entries()) <= set(self.keys.fingerprints())

    def authenticate_state(self) -> None:
        """Give a repository written before authentication its MACs (every write by a key holder
        calls this; nothing happens once the config has one): once the config is found to agree
        with its checkpoints, each ``keys/`` entry without a MAC is sealed as it stands, then the
        config. The entries are trusted as found, the one moment they are (docs/FORMAT.md,
        "Authentication")."""
        if self.authenticated:
            return
        self.check_agreement()  # never seal a config its checkpoints disagree with
        for fp, entry in self._key_objects(self.provider).items():
            if entry.mac is None:
                self.provider.put(f"{KEYS}{fp}", KeyEntry.sealed(self._id_key, fp, entry.token).render())
        sealed = with_config_mac(self._id_key, self.config)
        self.provider.put(CONFIG_KEY, json.dumps(sealed, indent=1).encode())
        self.config = sealed

    @staticmethod
    def _initialise(provider: Provider, keys: KeyRing, settings: RepositorySettings) -> bytes:
        id_key = os.urandom(32)
        raw = json.dumps(new_config(keys, id_key, time.time(), settings), indent=1).encode()
        provider.put_if_absent(CONFIG_KEY, raw)
        # Read back even when we "won": on a store whose create-if-absent is not atomic two first
        # writers could both succeed, and only the config that stayed may be used.
        return Repository._read_config(provider)

    @staticmethod
    def _unwrap(keys: KeyRing, fp: str, token: str, url: str) -> bytes:
        try:
            id_key = keys.fernet(fp).decrypt(token.encode())
        except (InvalidToken, ValueError):
            id_key = b""
        if len(id_key) != 32:
            raise ConfigError(
                f"the repository config at {url} is damaged (its key entry fails to decrypt): rebuild it with "
                f"`ckpt-sync repair-config --repo {url}` and the key"
            )
        return id_key

    def _add_primary_key(self) -> None:
        """Key rotation: the first key is new to the repository, an older one opened it; record the new one.

        Each key's entry is its own object, written put-if-absent: two hosts rotating at once each add
        theirs, and nothing rewrites the config (a blind overwrite would drop the other's entry).
        """
        self.authenticate_state()
        fp = self.keys.fingerprints()[0]
        token = self.keys.fernet().encrypt(self._id_key).decode("ascii")
        self.provider.put_if_absent(f"{KEYS}{fp}", KeyEntry.sealed(self._id_key, fp, token).render())

    def binding(self) -> RepositoryBinding:
        """What every manifest this repository commits carries: its id, the config's backup, and
        whether the config was authenticated (then a config without a MAC is an altered one)."""
        s = self.settings
        return RepositoryBinding(
            self.id,
            base64.urlsafe_b64encode(self._id_key).decode("ascii"),
            float(self.config.get("created", 0.0)),
            s.pad or 0,
            s.version or FORMAT_VERSION,
            None if s.compression == "none" else s.compression,
            bool(s.sha256) and s.version != 1,
            self.authenticated,
        )

    def file_hasher(self) -> FileHasher:
        """What a push hashes each file with (file_digest.py): SHA-256 in format 1, and in format 2
        when the repository was created with ``sha256``; in format 2 otherwise nothing (its chunk
        ids are its hash)."""
        s = self.settings
        return FileHasher(("sha256",) if s.version == 1 or s.sha256 else ())

    # --- chunks ----------------------------------------------------------------------------------

    def chunk_id(self, plaintext: bytes | bytearray | memoryview) -> str:
        return self.format.chunk_id(plaintext)

    def list_chunks(self) -> dict[str, int]:
        """Stored chunk ids and their object sizes."""
        out: dict[str, int] = {}
        for info in self.provider.list(CHUNKS):
            cid = info.key.rsplit("/", 1)[-1]
            if len(cid) == 64:
                out[cid] = info.size
        return out

    def forget_known_chunks(self) -> None:
        """Forget which chunks are stored (call under a push lock: a prune may have removed some)."""
        with self._lock:
            self._known = {}
            self._listed_chunks = False
            self._distrusted = set()

    def distrust(self, chunk_ids: Iterable[str]) -> None:
        """Treat these chunks as not stored (this host found them damaged: damage_record.py), so the
        next ``store_chunk`` of one uploads it again, replacing the bad object, instead of reusing it."""
        with self._lock:
            for cid in chunk_ids:
                self._known.pop(cid, None)
                self._distrusted.add(cid)

    def known_chunks(self) -> dict[str, int]:
        """Stored chunk ids and object sizes: one listing per Repository (after ``forget_known_chunks``),
        extended as we store more. A push does not list: ``store_chunk`` asks about each chunk."""
        with self._lock:
            if not self._listed_chunks:
                listed = self.list_chunks()
                for cid in self._distrusted:
                    listed.pop(cid, None)
                self._known.update(listed)
                self._listed_chunks = True
            return self._known

    def _reusable(self, ref: ChunkRef) -> bool:
        """Whether the store already holds this chunk: an object of a size its token can have, that
        this host has not found damaged. Asked of the store chunk by chunk (one request each; after a
        whole listing, ``known_chunks``, the listing answers), so a push costs what its checkpoint
        holds, never a listing of the repository, and still reuses what an interrupted push or
        another rank stored. No prune removes the object while we hold the push lock, and
        ``commit_checked`` looks again if the lock was broken."""
        if ref.id in self._distrusted or self._listed_chunks:
            return False
        size = self.provider.size(chunk_key(ref.id))
        if size is None or not self.format.size_ok(ref.size, size):
            return False
        with self._lock:
            self._known[ref.id] = size
        return True

    def token_buffers(self, count: int, plain_size: int) -> BufferPool:
        """Reusable buffers for ``count`` tokens of chunks up to ``plain_size`` bytes, laid out the way
        this repository's store moves them best (providers.base.wants_aligned_buffers)."""
        return BufferPool(count, self.format.max_token_size(plain_size), aligned=wants_aligned_buffers(self.provider))

    def store_chunk(
        self, plaintext: bytes | bytearray | memoryview, *, scratch: bytearray | None = None
    ) -> tuple[ChunkRef, int]:
        """Encrypt and upload unless already stored. Returns the ref and the bytes sent (0 if deduplicated).

        A stored object counts only with a size it can have (``ChunkFormat.size_ok``: exact, unless
        the repository compresses): one cut short (a power loss before the commit barrier, a
        truncating store) is replaced, never trusted. ``scratch`` is a reusable buffer for the token
        (see buffers.py).
        """
        cid = self.chunk_id(plaintext)
        ref = ChunkRef(cid, len(plaintext))
        known = self._known
        with self._lock:
            if self.format.size_ok(ref.size, known.get(cid)):
                return ref, 0
        if self._reusable(ref):
            return ref, 0
        self.check_agreement()  # nothing is written under a config its checkpoints disagree with
        with self._lock:
            if self.format.size_ok(ref.size, known.get(cid)):
                return ref, 0
            # claimed: a duplicate chunk in flight elsewhere in this push is skipped
            known[cid] = self.format.max_token_size(ref.size)
        try:
            token = self.format.seal(self.keys, plaintext, cid, out=scratch)
            self.provider.put(chunk_key(cid), token)
        except BaseException:
            with self._lock:
                known.pop(cid, None)
            raise
        with self._lock:
            known[cid] = len(token)
        return ref, len(token)

    def load_chunk(
        self, ref: ChunkRef, *, out: bytearray | None = None, scratch: bytearray | None = None
    ) -> bytearray | memoryview:
        """Fetch, authenticate, decrypt and check a chunk against its id and size (into ``out``, a
        reusable buffer, when given; the token is read into ``scratch``, another, when given).

        The read is bounded by the expected token size (the store is not trusted): an oversized
        object is refused without ever being held in memory."""
        return self.open_token(ref, self.read_token(ref, scratch), out=out)

    def read_token(self, ref: ChunkRef, scratch: bytearray | None = None) -> bytes | memoryview | None:
        """A chunk's stored object as the store returns it, unchecked (into ``scratch`` when given),
        read no further than the largest token the chunk can be (None: larger than ``scratch``)."""
        key = chunk_key(ref.id)
        if scratch is None:
            return self.provider.get(key, 0, self.format.max_token_size(ref.size) + 1)
        return read_into(self.provider, key, scratch)

    def open_token(
        self, ref: ChunkRef, token: bytes | bytearray | memoryview | None, *, out: bytearray | None = None
    ) -> bytearray | memoryview:
        """Check a chunk's stored token (its size, authentication, that it is the chunk its id names)
        and return the plaintext (chunk_format.py); raises IntegrityError. ``load_chunk`` is fetch + this."""
        try:
            return self.format.open(self.keys, ref.id, ref.size, token if token is not None else b"", out=out)
        except ChunkMismatch as err:
            raise ChunkDamaged(f"chunk {ref.id[:16]} {err}", ref.id) from None
        except IntegrityError as err:
            raise ChunkDamaged(f"chunk {ref.id[:16]} {self._unreadable_because(err)}", ref.id) from None

    def _unreadable_because(self, err: IntegrityError) -> str:
        """Why a chunk fails to decrypt. The key already opened the repository, so when the ring holds
        every key the repository knows, "wrong key" is ruled out: the object was altered."""
        if "authentication failed" not in str(err):
            return f"is damaged ({err})"
        missing = set(self.key_entries()) - set(self.keys.fingerprints())
        if not missing:
            return "fails authentication: the stored object was altered or damaged (the key is right)"
        return (
            f"fails authentication: altered, or written with one of the repository's {len(missing)} key(s) "
            "missing from your key ring (an older key dropped after a rotation?)"
        )

    def missing_chunks(self, refs: Iterable[ChunkRef], *, fresh: bool = False) -> list[str]:
        """Ids among ``refs`` with no stored object of the right size. Chunks this object stored or
        checked since ``forget_known_chunks`` count as stored unless ``fresh``; the others are asked
        of the store (``stored_sizes``)."""
        wanted: dict[str, int] = {}
        for r in refs:
            wanted.setdefault(r.id, r.size)
        if not fresh:
            with self._lock:
                wanted = {cid: n for cid, n in wanted.items() if not self.format.size_ok(n, self._known.get(cid))}
        sizes = self.stored_sizes(wanted)
        return sorted(cid for cid, n in wanted.items() if not self.format.size_ok(n, sizes[cid]))

    def stored_sizes(self, chunk_ids: Iterable[str]) -> dict[str, int | None]:
        """The stored object size of each chunk (None: not stored), asked now. Up to a listing page's
        worth are asked one by one (in parallel), so the cost follows the checkpoint, not the
        repository; more than that, one listing is fewer requests."""
        ids = list(dict.fromkeys(chunk_ids))
        if len(ids) > PROBE_LIMIT:
            stored = self.list_chunks()
            return {cid: stored.get(cid) for cid in ids}
        if len(ids) <= 4:
            return {cid: self.provider.size(chunk_key(cid)) for cid in ids}
        with ThreadPoolExecutor(min(8, len(ids)), thread_name_prefix="ckpt-probe") as pool:
            return dict(zip(ids, pool.map(lambda cid: self.provider.size(chunk_key(cid)), ids), strict=True))

    # --- manifests -------------------------------------------------------------------------------

    def manifest_ids(self) -> list[str]:
        """Committed manifest ids, newest first (a fresh listing: the cache never answers this)."""
        listed = {}
        for info in self.provider.list(MANIFESTS):
            mid = info.key[len(MANIFESTS) :]
            if mid and "/" not in mid:
                listed[mid] = info
        self._listed = listed
        if self._cache is not None:
            self._cache.keep_only(listed)
        if self._index is not None:
            self._index.keep_only(listed)
        return sorted(listed, reverse=True)

    def listed_ids(self) -> list[str]:
        """The manifest ids of this object's latest listing, newest first (listing now if it has none)."""
        return sorted(self._listed, reverse=True) if self._listed else self.manifest_ids()

    def read_manifests_from_store(self) -> None:
        """Stop using the host's manifest cache (``verify`` judges the store itself, object by object)."""
        self._cache = None

    def manifests(self, on_unreadable: Callable[[str, IntegrityError], None] | None = None) -> Iterator[Manifest]:
        """This repository's readable manifests, newest first.

        One that cannot be read (damaged, malformed, oversized, another repository's, or encrypted
        with a key not in this ring) is reported to ``on_unreadable`` and skipped; one removed since
        the listing (a concurrent prune) is skipped; one another readable manifest supersedes (a tag
        change, see ``supersede``) is hidden.

        Raises ConfigError, before yielding anything, when the config disagrees with what the
        readable manifests record (``_check_agreement``): a config edited or replaced by another
        repository's must never make this repository's checkpoints look foreign.
        """
        loaded: list[Manifest] = []
        foreign: list[Manifest] = []
        for mid in self.manifest_ids():
            try:
                m = self._open_manifest(mid)
            except NotFound:
                continue
            except IntegrityError as err:
                if on_unreadable is not None:
                    on_unreadable(mid, err)
                continue
            (foreign if self._is_foreign(m) else loaded).append(m)
        yield from self._visible(loaded, foreign, on_unreadable)

    def _visible(
        self, own: list[T], foreign: list[T], on_unreadable: Callable[[str, IntegrityError], None] | None
    ) -> list[T]:
        """``own`` (this repository's manifests or their summaries) less those another supersedes,
        once the config is checked against them and ``foreign`` (``_check_agreement``); each foreign
        one is reported to ``on_unreadable``."""
        self._check_agreement(own, foreign)
        self._agreed = True
        for m in foreign:
            if on_unreadable is not None:
                on_unreadable(m.id, _foreign_error(m.id))
        hidden = {m.supersedes for m in own if m.supersedes}
        return [m for m in own if m.id not in hidden]

    def summaries(self, on_unreadable: Callable[[str, IntegrityError], None] | None = None) -> list[Summary]:
        """What ``manifests`` yields, as summaries (summary.py), newest first: from a listing of the
        manifest names and this host's index, reading only the manifests it has not read before
        (each exactly as ``manifests`` would). Raises ConfigError as ``manifests`` does."""
        listed = self._listed_summaries(on_unreadable)
        own = [s for s in listed if not self._is_foreign(s)]
        return self._visible(own, [s for s in listed if self._is_foreign(s)], on_unreadable)

    def _listed_summaries(
        self, on_unreadable: Callable[[str, IntegrityError], None] | None, skip: Iterable[str] = ()
    ) -> list[Summary]:
        """A summary of every listed manifest a key opens (another repository's and superseded ones
        too), newest first, but those in ``skip``: from this host's index where it holds that very
        object, else read (``_read_summary``); one listing, one save of the index."""
        with self._summarising:
            ids = [mid for mid in self.manifest_ids() if mid not in skip]
            known = self._index.get_many(self._listed) if self._index is not None else {}
            out = [s for mid in ids if (s := known.get(mid) or self._read_summary(mid, on_unreadable)) is not None]
            if self._index is not None:
                self._index.save()
        return out

    def _read_summary(self, mid: str, on_unreadable: Callable[[str, IntegrityError], None] | None) -> Summary | None:
        """The summary of a listed manifest read from its object, kept in the index (None: gone, or
        unreadable)."""
        info = self._listed.get(mid)
        try:
            s = summarize(self._open_manifest(mid))
        except NotFound:
            return None
        except IntegrityError as err:
            if on_unreadable is not None:
                on_unreadable(mid, err)
            return None
        if self._index is not None and info is not None:
            self._index.put(mid, info, s)
        return s

    def referenced_chunks(
        self,
        on_unreadable: Callable[[str, IntegrityError], None] | None = None,
        *,
        leave_out: set[str] | frozenset[str] = frozenset(),
    ) -> set[str]:
        """Every chunk id a manifest the keys open refers to, whatever repository it names, hidden
        or not, well formed or not (then every 64-hex string in it): what chunk collection must
        never delete. A manifest no key opens is reported to ``on_unreadable``; the manifests
        ``leave_out`` names are not counted (what a dry run of retention would drop)."""
        errors: dict[str, IntegrityError] = {}
        refs = {cid for s in self._listed_summaries(errors.__setitem__, leave_out) for cid in s.chunk_ids()}
        for mid, err in errors.items():
            plain = self._plaintext(mid)
            if plain is not None:
                refs |= {cid.decode("ascii") for cid in _CHUNK_ID.findall(plain)}
            elif on_unreadable is not None:
                on_unreadable(mid, err)
        return refs

    def _plaintext(self, manifest_id: str) -> bytes | None:
        """The decrypted bytes of a stored manifest, or None when no key opens it (or it is gone)."""
        try:
            token = read_bounded(self.provider, manifest_key(manifest_id), MAX_MANIFEST_BYTES)
            return None if token is None else self.keys.decrypt(token)
        except (NotFound, IntegrityError):
            return None

    def _is_foreign(self, m: Manifest | Summary) -> bool:
        return m.repository is not None and m.repository.id != self.id

    def check_agreement(self) -> None:
        """Raise ConfigError unless the config agrees with the checkpoints (``_check_agreement``);
        judged once per Repository, before the first chunk is written: against every checkpoint
        this host's index holds (authenticated summaries of manifests read before; no request),
        else against every manifest (a listing). A commit judges it again against a fresh listing."""
        with self._agreeing:
            if self._agreed:
                return
            known = self._index.every() if self._index is not None else []
            if not known:
                self.summaries()
                return
            own = [s for s in known if not self._is_foreign(s)]
            self._check_agreement(own, [s for s in known if self._is_foreign(s)])
            self._agreed = True

    def _check_agreement(self, own: Sequence[Manifest | Summary], foreign: Sequence[Manifest | Summary]) -> None:
        """The config must be the one the readable manifests were committed under: this
        repository's id (unless another repository's manifests outnumber its own: then it is the
        config that was replaced), the settings each recorded, and a MAC when they were committed
        under an authenticated config. Raises ConfigError naming the difference."""
        bound = [m.repository for m in own if m.repository is not None]
        if foreign:
            other, count = Counter(m.repository.id for m in foreign if m.repository).most_common(1)[0]
            if count > len(bound):
                raise config_altered_error(
                    self.url,
                    f"is not the config of the checkpoints it holds ({count} of them belong to repository {other}, "
                    f"{len(bound)} to this config's {self.id})",
                )
        mine = self.binding()
        for b in set(bound):
            if b.settings() != mine.settings():
                raise config_altered_error(self.url, f"disagrees with its checkpoints ({binding_difference(b, mine)})")
            if b.authenticated and not self.authenticated:
                raise config_altered_error(self.url, "has lost its MAC (its checkpoints were committed under one)")

    def superseded_ids(self) -> list[str]:
        """Manifests left behind by a tag change that stopped before deleting them (hidden by readers)."""
        own = [s for s in self._listed_summaries(None) if not self._is_foreign(s)]
        ids = {s.id for s in own}
        return sorted({s.supersedes for s in own if s.supersedes and s.supersedes in ids})

    def versions_of(self, manifest: Manifest) -> list[str]:
        """``manifest`` and every stored manifest it supersedes, directly or through others (a tag
        change interrupted between its two writes leaves the old one): all that ``forget`` removes."""
        by_id = {m.id: m for m in self._readable()}
        chain, seen = [manifest.id], {manifest.id}
        current: Manifest | None = manifest
        while current is not None and current.supersedes and current.supersedes not in seen:
            seen.add(current.supersedes)
            current = by_id.get(current.supersedes)
            if current is not None:
                chain.append(current.id)
        return chain

    def _readable(self) -> Iterator[Manifest]:
        for mid in self.manifest_ids():
            try:
                yield self.load_manifest(mid)
            except (NotFound, IntegrityError):
                continue

    def supersede(self, old: Manifest, new: Manifest) -> Manifest:
        """Replace ``old`` by ``new`` (same chunks, new metadata): commit ``new`` (which names
        ``old`` in ``supersedes``) without overwriting, then delete ``old``. Every reader sees one
        of them at any moment, and a crash in between leaves ``old`` hidden (``manifests``).

        Call under a push lock (locks.acquire_push_lock): a prune then never judges chunks while
        the checkpoint is between its two manifests.
        """
        if new.supersedes != old.id:
            raise ValueError("the new manifest must name the one it supersedes")
        committed = self.commit(new)
        self.provider.delete(manifest_key(old.id))
        return committed

    def missing_key_fingerprints(self) -> list[str]:
        """Fingerprints of keys the repository vouches for and this key ring lacks (the config is
        re-read: another host may have added a key since this repository was opened; a re-read
        config is used only when it authenticates as this one did)."""
        with contextlib.suppress(CkptSyncError, OSError):  # else the config as opened still says something
            config = parse_config(self._read_config(self.provider), self.url)
            if config_mac_ok(self._id_key, config) or (MAC_FIELD not in config and not self.authenticated):
                self.config = config
        return sorted(set(self.key_entries()) - set(self.keys.fingerprints()))

    def load_manifest(self, manifest_id: str) -> Manifest:
        """The manifest, read size-bounded, authenticated, checked strictly (manifest.parse_manifest)
        and checked to be this repository's (version-1 manifests from before repository ids carry
        none and stay readable); IntegrityError otherwise."""
        m = self._open_manifest(manifest_id)
        if self._is_foreign(m):
            raise _foreign_error(manifest_id)
        return m

    def _open_manifest(self, manifest_id: str) -> Manifest:
        """A stored manifest, whichever repository it names. When ``manifest_id`` is in the latest
        listing and the host has a copy of that very object (manifest_cache.py), the copy is read
        instead of the store; it is decrypted and checked exactly like a fetched one."""
        cache = self._cache
        info = self._listed.get(manifest_id) if cache is not None else None
        if cache is not None and info is not None and (token := cache.get(manifest_id, info)) is not None:
            try:
                return self._decode_manifest(manifest_id, token)
            except IntegrityError:
                cache.discard(manifest_id, info)  # a damaged copy: judge the stored object
        token = read_bounded(self.provider, manifest_key(manifest_id), MAX_MANIFEST_BYTES)
        if token is None:
            raise IntegrityError(
                f"manifest {manifest_id} is larger than {MAX_MANIFEST_BYTES >> 20} MiB (replaced or foreign object)"
            )
        manifest = self._decode_manifest(manifest_id, token)
        if cache is not None and info is not None:
            cache.put(manifest_id, info, token)
        return manifest

    def _decode_manifest(self, manifest_id: str, token: bytes) -> Manifest:
        try:
            plain = self.keys.decrypt(token)
        except IntegrityError as err:
            missing = self.missing_key_fingerprints() if "authentication failed" in str(err) else []
            if missing:
                raise MissingKeyError(
                    f"manifest {manifest_id} is encrypted with a key this host does not have "
                    f"(fingerprint {', '.join(missing)}): add that key to the key ring (after the current one)",
                    missing,
                ) from None
            raise IntegrityError(f"manifest {manifest_id} {self._unreadable_because(err)}") from None
        return parse_manifest(plain, expected_id=manifest_id)

    def commit(self, manifest: Manifest) -> Manifest:
        """The commit point: verify every chunk is stored, then write the manifest without overwriting.

        Idempotent: when this version (``Manifest.same_version``: name, tags, file hashes) is
        already committed — a retried job, a crash between commit and bookkeeping, a restored file
        pushed again — nothing is written and the existing checkpoint is returned. Otherwise returns
        the manifest as committed (stamped with this repository's binding).
        """
        version = version_key(manifest)
        for summary in self.summaries():
            if summary.version == version:
                with contextlib.suppress(NotFound, IntegrityError):
                    existing = self.load_manifest(summary.id)
                    if existing.same_version(manifest):
                        self._remember(existing)
                        return existing
        self.authenticate_state()  # a repository of the previous release gains its MACs on its first write
        manifest = dataclasses.replace(manifest, repository=self.binding())
        missing = self.missing_chunks(c for f in manifest.files for c in f.chunks)
        if missing:
            raise OperationFailed(
                f"not committing {manifest.name}: {len(missing)} chunk(s) are not in {self.url} "
                "(removed by a concurrent prune?); push again"
            )
        raw = json.dumps(manifest.to_json(), separators=(",", ":")).encode()
        try:  # never write what a reader would refuse (the one schema check: manifest.parse_manifest)
            parse_manifest(raw, expected_id=manifest.id)
        except IntegrityError as err:
            raise OperationFailed(f"not committing {manifest.name}: {err}; nothing was committed") from None
        token = self.keys.encrypt(raw)
        if len(token) > MAX_MANIFEST_BYTES:
            raise OperationFailed(
                f"not committing {manifest.name}: its manifest would exceed {MAX_MANIFEST_BYTES >> 20} MiB "
                "(too many files or chunks); push it with a larger --chunk-size"
            )
        if not self.provider.put_if_absent(manifest_key(manifest.id), token):
            # Either a retry found our own earlier successful write, or a true id collision.
            try:
                if self.load_manifest(manifest.id) == manifest:
                    self._remember(manifest)
                    return manifest
            except IntegrityError:
                pass
            raise OperationFailed(f"manifest id {manifest.id} already exists in {self.url}; push again")
        self._remember(manifest)  # this host has seen it: a later rollback past it is noticed
        return manifest

    def _remember(self, manifest: Manifest) -> None:
        if self._seen is not None:
            self._seen(manifest)


def _foreign_error(manifest_id: str) -> IntegrityError:
    return IntegrityError(f"manifest {manifest_id} belongs to another repository (copied in from elsewhere?)")


def repair_config(provider: Provider, keys: KeyRing) -> tuple[RepositoryBinding, int]:
    """Rebuild a missing, damaged or altered ``config`` from the backup every manifest carries.

    Returns the binding used and how many manifests carried it. The id key is checked against a
    stored chunk before anything is written. Raises OperationFailed when no readable manifest
    carries a backup (manifests written before ckpt-sync recorded one), and ConfigError when the
    config is sound: it authenticates and agrees with the checkpoints (nothing to repair).
    """
    mismatch: KeyMismatchError | None = None
    try:
        config = parse_config(Repository._read_config(provider), provider.url)
        id_key = Repository._find_id_key(provider, keys, config)
        for _ in Repository(provider, keys, id_key, config).manifests():  # the agreement check
            break
    except NotFound:
        present = False
    except KeyMismatchError as err:  # replaced by a config of another key? the manifests will tell
        present, mismatch = True, err
    except ConfigError:
        present = True
    else:
        raise ConfigError(
            f"the repository config at {provider.url} is sound and opens with this key: nothing to repair"
        )
    found: Counter[RepositoryBinding] = Counter()
    sample: dict[RepositoryBinding, ChunkRef] = {}
    for info in provider.list(MANIFESTS):
        mid = info.key[len(MANIFESTS) :]
        try:
            token = read_bounded(provider, info.key, MAX_MANIFEST_BYTES)
            if token is None:
                continue
            m = parse_manifest(keys.decrypt(token), expected_id=mid)
        except (IntegrityError, NotFound):
            continue
        if m.repository is not None:
            binding = dataclasses.replace(m.repository, authenticated=False)  # one repository, before or after
            found[binding] += 1
            chunk = next((c for f in m.files for c in f.chunks), None)
            if chunk is not None:
                sample.setdefault(binding, chunk)
    for binding, count in found.most_common():
        id_key = base64.urlsafe_b64decode(binding.id_key)
        if len(id_key) != 32 or repository_id(id_key) != binding.id:
            continue
        ref = sample.get(binding)
        fmt = settings_of(binding).chunk_format(id_key)
        if ref is not None and not _chunk_matches(provider, keys, fmt, ref):
            continue
        rebuilt = new_config(keys, id_key, binding.created, settings_of(binding), every_key=True)
        new = json.dumps(rebuilt, indent=1).encode()
        if present:
            provider.put(CONFIG_KEY, new)
        elif not provider.put_if_absent(CONFIG_KEY, new):
            raise OperationFailed(f"another writer created a config at {provider.url} meanwhile; run this again")
        return binding, count
    if mismatch is not None:
        raise mismatch
    raise OperationFailed(
        f"no readable checkpoint in {provider.url} carries a config backup (written by an older ckpt-sync, "
        "or encrypted with another key): the config cannot be rebuilt"
    )


def _chunk_matches(provider: Provider, keys: KeyRing, fmt: ChunkFormat, ref: ChunkRef) -> bool:
    """Whether a stored chunk opens with ``fmt`` (a candidate id key): ``open`` checks that its
    plaintext hashes to its id under that key."""
    try:
        token = provider.get(chunk_key(ref.id), 0, fmt.max_token_size(ref.size) + 1)
        fmt.open(keys, ref.id, ref.size, token)
    except (IntegrityError, NotFound):
        return False
    return True


def hostname() -> str:
    return socket.gethostname()
