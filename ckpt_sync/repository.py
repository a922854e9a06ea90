"""The repository: layout, key check, chunks and manifests on top of one provider.

Layout (docs/FORMAT.md)::

    config                 plaintext JSON: format version, and the chunk-id key wrapped per key
    chunks/<id[:2]>/<id>   binary Fernet token of one chunk; id = HMAC-SHA256(id_key, plaintext)
    manifests/<mid>        binary Fernet token of one manifest's JSON; mid is time-sortable

A checkpoint exists iff its manifest exists; manifests are written last and never overwrite.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from cryptography.fernet import InvalidToken

from .crypto import KeyRing, token_size
from .errors import (
    CkptSyncError,
    ConfigError,
    IntegrityError,
    KeyMismatchError,
    MissingKeyError,
    NotFound,
    OperationFailed,
)
from .locations import cache_home
from .manifest import ChunkRef, Manifest
from .manifest_cache import ManifestCache
from .providers import Provider
from .providers.base import ObjectInfo, read_into

FORMAT_NAME = "ckpt-sync"
FORMAT_VERSION = 1
CONFIG_KEY = "config"
CHUNKS = "chunks/"
MANIFESTS = "manifests/"


def chunk_key(chunk_id: str) -> str:
    return f"{CHUNKS}{chunk_id[:2]}/{chunk_id}"


def manifest_key(manifest_id: str) -> str:
    return f"{MANIFESTS}{manifest_id}"


def new_manifest_id(now: float | None = None) -> str:
    """Milliseconds since the epoch (13 digits, sorts by time) and 64 random bits."""
    ms = int((time.time() if now is None else now) * 1000)
    return f"{ms:013d}-{secrets.token_hex(8)}"


class Repository:
    def __init__(self, provider: Provider, keys: KeyRing, id_key: bytes, config: dict) -> None:
        self.provider = provider
        self.keys = keys
        self.url = provider.url
        self.config = config
        self._id_key = id_key
        self._known: dict[str, int] | None = None
        self._lock = threading.Lock()
        self._listed: dict[str, ObjectInfo] = {}  # the latest manifest listing
        self._cache: ManifestCache | None = ManifestCache(cache_home() / self.id / "manifests")

    @property
    def id(self) -> str:
        """A public name for this repository (one-way from its secret id key; stable, never stored)."""
        return hmac.digest(self._id_key, b"ckpt-sync repository id v1", "sha256")[:8].hex()

    # --- opening ---------------------------------------------------------------------------------

    @classmethod
    def open(cls, provider: Provider, keys: KeyRing, *, create: bool = False) -> Repository:
        """Open (or with ``create``, initialise) the repository and check the key before touching data.

        Raises ConfigError when there is no repository and ``create`` is false, and
        KeyMismatchError when none of ``keys`` is one of the repository's keys.
        """
        try:
            raw = provider.get(CONFIG_KEY)
        except NotFound:
            if not create:
                raise ConfigError(
                    f"no ckpt-sync repository at {provider.url}: check the URL (nothing was pushed there yet)"
                ) from None
            provider.check()
            raw = cls._initialise(provider, keys)
        config = cls._parse_config(raw, provider.url)
        wrapped: dict[str, str] = config["keys"]
        for fp in keys.fingerprints():
            if fp in wrapped:
                id_key = cls._unwrap(keys, fp, wrapped[fp], provider.url)
                break
        else:
            raise KeyMismatchError(
                f"the key does not match the repository at {provider.url}: use the key it was created with "
                "(--key-file or BACKUP_ENCRYPTION_KEY)"
            )
        repo = cls(provider, keys, id_key, config)
        if create and keys.fingerprints()[0] not in wrapped:
            repo._add_primary_key()
        return repo

    @staticmethod
    def _initialise(provider: Provider, keys: KeyRing) -> bytes:
        id_key = os.urandom(32)
        config = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "created": time.time(),
            "chunk_id": "hmac-sha256",
            "keys": {keys.fingerprints()[0]: keys.fernet().encrypt(id_key).decode("ascii")},
        }
        raw = json.dumps(config, indent=1).encode()
        provider.put_if_absent(CONFIG_KEY, raw)
        # Read back even when we "won": on a store whose create-if-absent is not atomic two first
        # writers could both succeed, and only the config that stayed may be used.
        return provider.get(CONFIG_KEY)

    @staticmethod
    def _unwrap(keys: KeyRing, fp: str, token: str, url: str) -> bytes:
        try:
            return keys.fernet(fp).decrypt(token.encode())
        except InvalidToken:
            raise IntegrityError(f"the repository config at {url} is damaged (key entry fails to decrypt)") from None

    @staticmethod
    def _parse_config(raw: bytes, url: str) -> dict:
        try:
            config = json.loads(raw)
            assert isinstance(config, dict) and isinstance(config.get("keys"), dict)
        except (ValueError, AssertionError):
            raise ConfigError(f"{url} is not a ckpt-sync repository (its config object is not readable)") from None
        if config.get("format") != FORMAT_NAME:
            raise ConfigError(f"{url} is not a ckpt-sync repository (format {config.get('format')!r})")
        if not isinstance(config.get("version"), int) or config["version"] > FORMAT_VERSION:
            raise ConfigError(
                f"the repository at {url} uses format version {config.get('version')}, newer than this "
                f"ckpt-sync ({FORMAT_VERSION}): upgrade ckpt-sync"
            )
        return config

    def _add_primary_key(self) -> None:
        """Key rotation: the first key is new to the repository, an older one opened it; record the new one.

        Rewrites the small config object (stores have no compare-and-swap on overwrite for all
        providers); re-reading first keeps entries other writers added meanwhile.
        """
        latest = self._parse_config(self.provider.get(CONFIG_KEY), self.url)
        latest["keys"][self.keys.fingerprints()[0]] = self.keys.fernet().encrypt(self._id_key).decode("ascii")
        self.provider.put(CONFIG_KEY, json.dumps(latest, indent=1).encode())
        self.config = latest

    # --- chunks ----------------------------------------------------------------------------------

    def chunk_id(self, plaintext: bytes | bytearray | memoryview) -> str:
        return hmac.digest(self._id_key, plaintext, "sha256").hex()

    def list_chunks(self) -> dict[str, int]:
        """Stored chunk ids and their object sizes."""
        out: dict[str, int] = {}
        for info in self.provider.list(CHUNKS):
            cid = info.key.rsplit("/", 1)[-1]
            if len(cid) == 64:
                out[cid] = info.size
        return out

    def forget_known_chunks(self) -> None:
        """Drop the cached listing (call under a push lock: a prune may have removed chunks)."""
        with self._lock:
            self._known = None

    def known_chunks(self) -> dict[str, int]:
        """Stored chunk ids and object sizes, listed once per Repository and extended as we store more."""
        with self._lock:
            if self._known is None:
                self._known = self.list_chunks()
            return self._known

    def store_chunk(
        self, plaintext: bytes | bytearray | memoryview, *, scratch: bytearray | None = None
    ) -> tuple[ChunkRef, int]:
        """Encrypt and upload unless already stored. Returns the ref and the bytes sent (0 if deduplicated).

        A stored object counts only with exactly the expected size: one cut short (a power loss
        before the commit barrier, a truncating store) is replaced, never trusted. ``scratch`` is a
        reusable buffer for the token (see buffers.py).
        """
        cid = self.chunk_id(plaintext)
        ref = ChunkRef(cid, len(plaintext))
        expected = token_size(len(plaintext))
        known = self.known_chunks()
        with self._lock:
            if known.get(cid) == expected:
                return ref, 0
            known[cid] = expected  # claimed: a duplicate chunk in flight elsewhere in this push is skipped
        try:
            token = self.keys.encrypt(plaintext, out=scratch)
            self.provider.put(chunk_key(cid), token)
        except BaseException:
            with self._lock:
                known.pop(cid, None)
            raise
        return ref, len(token)

    def load_chunk(
        self, ref: ChunkRef, *, out: bytearray | None = None, scratch: bytearray | None = None
    ) -> bytearray | memoryview:
        """Fetch, authenticate, decrypt and check a chunk against its id and size (into ``out``, a
        reusable buffer, when given; the token is read into ``scratch``, another, when given)."""
        key = chunk_key(ref.id)
        token = self.provider.get(key) if scratch is None else read_into(self.provider, key, scratch)
        return self.open_token(ref, token, out=out)

    def open_token(
        self, ref: ChunkRef, token: bytes | bytearray | memoryview | None, *, out: bytearray | None = None
    ) -> bytearray | memoryview:
        """Check a chunk's stored token (its size, authentication, and its plaintext against the id)
        and return the plaintext; raises IntegrityError. ``load_chunk`` is fetch + this."""
        if token is None or len(token) != token_size(ref.size):
            raise IntegrityError(f"chunk {ref.id[:16]} has the wrong size (truncated or replaced)")
        try:
            plain = self.keys.decrypt(token, out=out)
        except IntegrityError as err:
            raise IntegrityError(f"chunk {ref.id[:16]} {self._unreadable_because(err)}") from None
        if len(plain) != ref.size or not hmac.compare_digest(self.chunk_id(plain), ref.id):
            raise IntegrityError(f"chunk {ref.id[:16]} does not match its id (swapped or substituted object)")
        return plain

    def _unreadable_because(self, err: IntegrityError) -> str:
        """Why a chunk fails to decrypt. The key already opened the repository, so when the ring holds
        every key the repository knows, "wrong key" is ruled out: the object was altered."""
        missing = set(self.config.get("keys", {})) - set(self.keys.fingerprints())
        if "authentication failed" not in str(err):
            return f"is damaged ({err})"
        if not missing:
            return "fails authentication: the stored object was altered or damaged (the key is right)"
        return (
            f"fails authentication: altered, or written with one of the repository's {len(missing)} key(s) "
            "missing from your key ring (an older key dropped after a rotation?)"
        )

    def missing_chunks(self, refs: Iterable[ChunkRef]) -> list[str]:
        """Ids among ``refs`` with no stored object of the right size (fresh listing)."""
        stored = self.list_chunks()
        return sorted({r.id for r in refs if stored.get(r.id) != token_size(r.size)})

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
        return sorted(listed, reverse=True)

    def read_manifests_from_store(self) -> None:
        """Stop using the host's manifest cache (``verify`` judges the store itself, object by object)."""
        self._cache = None

    def manifests(self, on_unreadable: Callable[[str, IntegrityError], None] | None = None) -> Iterator[Manifest]:
        """Committed manifests, newest first.

        One that cannot be read (damaged, or encrypted with a key not in this ring) is reported to
        ``on_unreadable`` and skipped; one removed since the listing (a concurrent prune) is skipped;
        one another readable manifest supersedes (a tag change, see ``supersede``) is hidden.
        """
        loaded: list[Manifest] = []
        for mid in self.manifest_ids():
            try:
                loaded.append(self.load_manifest(mid))
            except NotFound:
                continue
            except IntegrityError as err:
                if on_unreadable is not None:
                    on_unreadable(mid, err)
        hidden = {m.supersedes for m in loaded if m.supersedes}
        yield from (m for m in loaded if m.id not in hidden)

    def superseded_ids(self) -> list[str]:
        """Manifests left behind by a tag change that stopped before deleting them (hidden by readers)."""
        loaded = list(self._readable())
        ids = {m.id for m in loaded}
        return sorted({m.supersedes for m in loaded if m.supersedes and m.supersedes in ids})

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
        """Fingerprints the repository's config lists and this key ring lacks (re-read: another host
        may have added a key since this repository was opened)."""
        with contextlib.suppress(CkptSyncError, OSError):  # else the config as opened still says something
            self.config = self._parse_config(self.provider.get(CONFIG_KEY), self.url)
        return sorted(set(self.config.get("keys", {})) - set(self.keys.fingerprints()))

    def load_manifest(self, manifest_id: str) -> Manifest:
        """The manifest, authenticated and checked. When ``manifest_id`` is in the latest listing and
        the host has a copy of that very object (manifest_cache.py), the copy is read instead of the
        store; it is decrypted and checked exactly like a fetched one."""
        cache = self._cache
        info = self._listed.get(manifest_id) if cache is not None else None
        if cache is not None and info is not None and (token := cache.get(manifest_id, info)) is not None:
            try:
                return self._decode_manifest(manifest_id, token)
            except IntegrityError:
                cache.discard(manifest_id, info)  # a damaged copy: judge the stored object
        token = self.provider.get(manifest_key(manifest_id))
        manifest = self._decode_manifest(manifest_id, token)
        if cache is not None and info is not None:
            cache.put(manifest_id, info, token)
        return manifest

    def _decode_manifest(self, manifest_id: str, token: bytes) -> Manifest:
        try:
            data = json.loads(self.keys.decrypt(token))
        except IntegrityError as err:
            missing = self.missing_key_fingerprints() if "authentication failed" in str(err) else []
            if missing:
                raise MissingKeyError(
                    f"manifest {manifest_id} is encrypted with a key this host does not have "
                    f"(fingerprint {', '.join(missing)}): add that key to the key ring (after the current one)",
                    missing,
                ) from None
            raise IntegrityError(f"manifest {manifest_id} {self._unreadable_because(err)}") from None
        except ValueError:
            raise IntegrityError(f"manifest {manifest_id} is not valid JSON") from None
        try:
            return Manifest.from_json(data, expected_id=manifest_id)
        except (KeyError, TypeError, ValueError) as err:
            raise IntegrityError(f"manifest {manifest_id} is malformed ({err})") from None

    def commit(self, manifest: Manifest) -> Manifest:
        """The commit point: verify every chunk is stored, then write the manifest without overwriting.

        Idempotent: when this version (``Manifest.same_version``: name, tags, file hashes) is
        already committed — a retried job, a crash between commit and bookkeeping, a restored file
        pushed again — nothing is written and the existing checkpoint is returned.
        """
        for existing in self.manifests():
            if existing.same_version(manifest):
                return existing
        missing = self.missing_chunks(c for f in manifest.files for c in f.chunks)
        if missing:
            raise OperationFailed(
                f"not committing {manifest.name}: {len(missing)} chunk(s) are not in {self.url} "
                "(removed by a concurrent prune?); push again"
            )
        token = self.keys.encrypt(json.dumps(manifest.to_json(), separators=(",", ":")).encode())
        if not self.provider.put_if_absent(manifest_key(manifest.id), token):
            # Either a retry found our own earlier successful write, or a true id collision.
            try:
                if self.load_manifest(manifest.id) == manifest:
                    return manifest
            except IntegrityError:
                pass
            raise OperationFailed(f"manifest id {manifest.id} already exists in {self.url}; push again")
        return manifest

def hostname() -> str:
    return socket.gethostname()
