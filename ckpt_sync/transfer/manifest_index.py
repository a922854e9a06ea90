"""This host's index of the repository's checkpoints: one summary per manifest it has read
(format/summary.py), so that a commit, ``pull --latest`` and a watch's retention pass decide from
the index and a listing of the manifest names, reading only the manifests committed since.

It lives beside the manifest copies (``$XDG_CACHE_HOME/ckpt-sync/<repository id>/index-<key ring>``,
one per key ring: ``index_name``) and obeys
the same rules (manifest_cache.py): the store is listed first and only a listed id is looked up; an
entry counts only while the listing shows the very object it was read from (same size and
modification time); entries for ids no longer listed are dropped.

A summary steers deletion (retention, chunk collection), so the index is authenticated: the file
carries an HMAC-SHA256 over its entries under a key derived from the repository's secret id key
(``Repository.host_key``). A file another process or user altered, truncated or copied from another
repository fails the check and is ignored as a whole (every manifest is then read again, once).
Anything going wrong with the folder only costs the reads it would have saved.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
from pathlib import Path
from typing import Any

from ..format.crypto import KeyRing
from ..format.manifest import RepositoryBinding
from ..format.summary import Summary
from ..fs.atomic import temp_path
from ..providers.base import ObjectInfo

log = logging.getLogger("ckpt_sync.index")

MAGIC = b"ckpt-sync manifest index 1 "


def index_name(keys: KeyRing) -> str:
    """One index per key ring: what a summary says exists depends on which manifests the ring
    opens (a host holding only an older key must not choose from checkpoints it cannot read)."""
    ring = ",".join(sorted(keys.fingerprints())).encode()
    return f"index-{hashlib.sha256(ring).hexdigest()[:16]}"


class ManifestIndex:
    def __init__(self, path: Path, key: bytes) -> None:
        self.path = path
        self._key = key
        self._entries: dict[str, list[Any]] | None = None  # id -> [size, modified, summary JSON]
        self._parsed: dict[str, Summary] = {}
        self._bindings: dict[tuple, RepositoryBinding] = {}
        self._changed = False

    def _load(self) -> dict[str, list[Any]]:
        if self._entries is None:
            self._entries = self._read()
        return self._entries

    def _read(self) -> dict[str, list[Any]]:
        try:
            raw = self.path.read_bytes()
        except OSError:
            return {}
        head, _, body = raw.partition(b"\n")
        mac = head[len(MAGIC) :] if head.startswith(MAGIC) else b""
        if not hmac.compare_digest(mac, self._mac(body).encode()):
            log.warning("ignoring this host's checkpoint index %s: it fails authentication (altered?)", self.path)
            return {}
        try:
            entries = json.loads(body)
        except ValueError:
            return {}
        return entries if isinstance(entries, dict) else {}

    def _mac(self, body: bytes) -> str:
        return hmac.new(self._key, body, hashlib.sha256).hexdigest()

    def get(self, manifest_id: str, info: ObjectInfo) -> Summary | None:
        """The summary of the listed object ``info``, when this host read that very object."""
        entry = self._load().get(manifest_id)
        if entry is None or entry[0] != info.size or entry[1] != info.modified:
            return None
        summary = self._parsed.get(manifest_id)
        if summary is None:
            try:
                summary = self._parsed[manifest_id] = Summary.from_json(entry[2], self._bindings)
            except Exception:  # an entry this version cannot rebuild (written by another release)
                return None
        return summary

    def put(self, manifest_id: str, info: ObjectInfo, summary: Summary) -> None:
        """Keep the summary of the authenticated manifest read from the listed object ``info``."""
        self._load()[manifest_id] = [info.size, info.modified, summary.to_json()]
        self._parsed[manifest_id] = summary
        self._changed = True

    def keep_only(self, listed: dict[str, ObjectInfo]) -> None:
        """Drop entries for ids not in the listing (deleted since) or read from another object."""
        entries = self._load()
        stale = [m for m, e in entries.items() if (i := listed.get(m)) is None or i.size != e[0] or i.modified != e[1]]
        for mid in stale:
            del entries[mid]
            self._parsed.pop(mid, None)
            self._changed = True

    def save(self) -> None:
        """Write the index when it changed (atomically; no fsync: an index lost in a crash is rebuilt)."""
        if not self._changed or self._entries is None:
            return
        body = json.dumps(self._entries, separators=(",", ":")).encode()
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = temp_path(self.path)
            tmp.write_bytes(MAGIC + self._mac(body).encode() + b"\n" + body)
            os.replace(tmp, self.path)
            self._changed = False
