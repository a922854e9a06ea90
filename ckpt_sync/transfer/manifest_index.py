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

from ..errors import IntegrityError
from ..format.crypto import KeyRing
from ..format.manifest import RepositoryBinding
from ..format.summary import Summary
from ..fs.atomic import temp_path
from ..providers.base import ObjectInfo

log = logging.getLogger("ckpt_sync.index")

MAGIC = b"ckpt-sync manifest index 2 "


def index_name(keys: KeyRing) -> str:
    """One index per key ring: what a summary says exists depends on which manifests the ring
    opens (a host holding only an older key must not choose from checkpoints it cannot read)."""
    ring = ",".join(sorted(keys.fingerprints())).encode()
    return f"index-{hashlib.sha256(ring).hexdigest()[:16]}"


class ManifestIndex:
    """The index file: a MAC line; a line of the repository bindings the summaries name (each
    summary names one by its place there); then one line per manifest, ``id<TAB>size<TAB>mtime<TAB>
    summary JSON``. Lines are kept as read, so saving after one new commit writes the others
    unchanged instead of encoding every summary again, and all the summaries a listing asks for
    are parsed in one go."""

    def __init__(self, path: Path, key: bytes) -> None:
        self.path = path
        self._key = key
        self._lines: dict[str, str] | None = None  # id -> its line, as stored
        self._bindings: list[dict[str, Any] | None] = []  # as stored; a summary's "repository" is a place here
        self._resolved: list[RepositoryBinding | None] = []
        self._parsed: dict[str, Summary] = {}
        self._changed = False

    def _load(self) -> dict[str, str]:
        if self._lines is None:
            self._lines = self._read()
        return self._lines

    def _read(self) -> dict[str, str]:
        try:
            raw = self.path.read_bytes()
        except OSError:
            return {}
        head, _, body = raw.partition(b"\n")
        mac = head[len(MAGIC) :] if head.startswith(MAGIC) else b""
        if not hmac.compare_digest(mac, self._mac(body).encode()):
            if head.startswith(MAGIC):  # a file of an older release is simply rebuilt
                log.warning("ignoring this host's checkpoint index %s: it fails authentication (altered?)", self.path)
            return {}
        try:
            first, _, rest = body.decode().partition("\n")
            bindings = json.loads(first.split("\t", 1)[1])
            resolved = [None if b is None else RepositoryBinding.from_json(b) for b in bindings]
        except (UnicodeDecodeError, ValueError, IndexError, IntegrityError):
            return {}
        self._bindings, self._resolved = bindings, resolved
        return {line.split("\t", 1)[0]: line for line in rest.split("\n") if line}

    def _mac(self, body: bytes) -> str:
        return hmac.new(self._key, body, hashlib.sha256).hexdigest()

    def get_many(self, listed: dict[str, ObjectInfo]) -> dict[str, Summary]:
        """The summaries of the listed objects this host read, each only for that very object."""
        lines = self._load()
        wanted = [m for m, i in listed.items() if (line := lines.get(m)) is not None and _same_object(line, i)]
        unparsed = [m for m in wanted if m not in self._parsed]
        if unparsed:
            try:
                data = json.loads("[" + ",".join(lines[m].split("\t", 3)[3] for m in unparsed) + "]")
                for mid, d in zip(unparsed, data, strict=True):
                    ref = d["repository"]
                    self._parsed[mid] = Summary.from_json(d, None if ref is None else self._resolved[ref])
            except Exception:  # entries this version cannot rebuild: read those manifests again
                return {m: self._parsed[m] for m in wanted if m in self._parsed}
        return {m: self._parsed[m] for m in wanted}

    def every(self) -> list[Summary]:
        """Every summary the index holds, whatever the store holds now (what this host last saw)."""
        lines = self._load()
        return list(self.get_many({m: _info_of(line) for m, line in lines.items()}).values())

    def put(self, manifest_id: str, info: ObjectInfo, summary: Summary) -> None:
        """Keep the summary of the authenticated manifest read from the listed object ``info``."""
        d = summary.to_json()
        d["repository"] = self._binding_ref(d["repository"], summary.repository)
        data = json.dumps(d, separators=(",", ":"))
        self._load()[manifest_id] = f"{manifest_id}\t{info.size}\t{info.modified!r}\t{data}"
        self._parsed[manifest_id] = summary
        self._changed = True

    def _binding_ref(self, stored: dict[str, Any] | None, binding: RepositoryBinding | None) -> int | None:
        if stored is None:
            return None
        if stored not in self._bindings:
            self._bindings.append(stored)
            self._resolved.append(binding)
        return self._bindings.index(stored)

    def keep_only(self, listed: dict[str, ObjectInfo]) -> None:
        """Drop entries for ids not in the listing (deleted since) or read from another object."""
        lines = self._load()
        stale = [m for m, line in lines.items() if (i := listed.get(m)) is None or not _same_object(line, i)]
        for mid in stale:
            del lines[mid]
            self._parsed.pop(mid, None)
            self._changed = True

    def save(self) -> None:
        """Write the index when it changed (atomically; no fsync: an index lost in a crash is rebuilt)."""
        if not self._changed or self._lines is None:
            return
        bindings = "bindings\t" + json.dumps(self._bindings, separators=(",", ":"))
        body = "\n".join([bindings, *self._lines.values()]).encode()
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = temp_path(self.path)
            tmp.write_bytes(MAGIC + self._mac(body).encode() + b"\n" + body)
            os.replace(tmp, self.path)
            self._changed = False


def _same_object(line: str, info: ObjectInfo) -> bool:
    _mid, size, modified, _ = line.split("\t", 3)
    return size == str(info.size) and modified == repr(info.modified)


def _info_of(line: str) -> ObjectInfo:
    """The listed object a line was read from."""
    mid, size, modified, _ = line.split("\t", 3)
    return ObjectInfo(mid, int(size), float(modified))
