"""Local copies of manifests already read, so a host does not fetch again what it has seen.

A manifest is immutable once committed, so its token can be kept on the host (in
``$XDG_CACHE_HOME/ckpt-sync/<repository id>/manifests/``) and read from there instead of the store.
The copy is the token exactly as stored, still encrypted, and is decrypted and checked exactly as
one fetched from the store would be. Rules that keep the cache from changing any answer:

- the store is always listed first, and only an id in that listing is looked up here, so a
  manifest deleted from the store never counts as present;
- an entry is used only while the listing shows the same object it was copied from (same size and
  modification time): a manifest rewritten or damaged in the store is fetched and judged afresh;
- entries for ids no longer listed are dropped, so the cache stays the size of the repository.

Anything going wrong with the cache folder (read-only home, full disk) only costs the requests it
would have saved.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .. import platform
from ..fs.atomic import abandoned, is_temp_name, temp_path
from ..providers.base import ObjectInfo


class ManifestCache:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @staticmethod
    def _name(manifest_id: str, info: ObjectInfo) -> str:
        return f"{manifest_id}@{info.size}@{info.modified!r}"

    def get(self, manifest_id: str, info: ObjectInfo) -> bytes | None:
        """The token copied from the listed object ``info``, or None."""
        try:
            data = (self.folder / self._name(manifest_id, info)).read_bytes()
        except OSError:
            return None
        return data if len(data) == info.size else None

    def put(self, manifest_id: str, info: ObjectInfo, token: bytes | bytearray | memoryview) -> None:
        """Keep ``token``, read (and authenticated) from the listed object ``info``."""
        if len(token) != info.size:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            final = self.folder / self._name(manifest_id, info)
            tmp = temp_path(final)  # no fsync: a copy lost in a crash is fetched again
            tmp.write_bytes(token)
            platform.replace(tmp, final)
        except OSError:
            return

    def discard(self, manifest_id: str, info: ObjectInfo) -> None:
        with contextlib.suppress(OSError):
            (self.folder / self._name(manifest_id, info)).unlink()

    def keep_only(self, listed: dict[str, ObjectInfo]) -> None:
        """Drop entries for ids not in the listing, or copied from another version of the object."""
        try:
            names = os.listdir(self.folder)
        except OSError:
            return
        current = {self._name(mid, info) for mid, info in listed.items()}
        for name in names:
            if name in current:
                continue
            path = self.folder / name
            if is_temp_name(name):  # another process's write in progress, unless abandoned
                if abandoned(path, 600.0):
                    with contextlib.suppress(OSError):
                        path.unlink()
                continue
            mid = name.split("@", 1)[0]
            info = listed.get(mid)
            if info is None or name != self._name(mid, info):
                with contextlib.suppress(OSError):
                    path.unlink()
