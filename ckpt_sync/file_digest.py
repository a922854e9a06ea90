"""Whole-file hashes: which a push records and which a reader checks (docs/FORMAT.md).

Format-1 repositories record the SHA-256 of every file. Format 2 records BLAKE3-256 (about a third
of SHA-256's CPU here), and SHA-256 as well only when asked (``push --sha256``: for users who compare
with ``sha256sum``). Readers check BLAKE3 when a file has it, else SHA-256. The hash sits inside the
encrypted manifest, so it needs no key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import blake3

from .manifest import FileEntry

ALGORITHMS = ("blake3", "sha256")
_READ = 1 << 20


def _new(name: str) -> Any:
    return blake3.blake3(max_threads=1) if name == "blake3" else hashlib.sha256()


class FileHasher:
    """Hashes one file's bytes, fed in order, with each of ``algorithms``."""

    def __init__(self, algorithms: Iterable[str]) -> None:
        self._hashes = {name: _new(name) for name in algorithms}
        if not self._hashes or set(self._hashes) - set(ALGORITHMS):
            raise ValueError(f"file hashes are some of {', '.join(ALGORITHMS)}")

    @classmethod
    def checking(cls, entry: FileEntry) -> FileHasher:
        """A hasher for the one hash a reader checks of ``entry``."""
        return cls((entry.digest[0],))

    def update(self, data: bytes | bytearray | memoryview) -> None:
        for h in self._hashes.values():
            h.update(data)

    def entry_hashes(self) -> dict[str, str | None]:
        """``sha256`` and ``blake3`` of the bytes fed so far, as FileEntry takes them (None: not computed)."""
        return {name: (h.hexdigest() if (h := self._hashes.get(name)) else None) for name in ALGORITHMS}

    def matches(self, entry: FileEntry) -> bool:
        """Whether the bytes fed so far are ``entry``'s file (by the hash ``checking`` chose)."""
        name, expected = entry.digest
        return self._hashes[name].hexdigest() == expected


def file_matches(path: Path, entry: FileEntry) -> bool:
    """Whether the file at ``path`` holds exactly ``entry``'s bytes (size, then the whole-file hash)."""
    if path.stat().st_size != entry.size:
        return False
    hasher = FileHasher.checking(entry)
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(_READ)
        view = memoryview(buf)
        while n := f.readinto(buf):
            hasher.update(view[:n])
    return hasher.matches(entry)
