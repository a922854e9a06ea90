"""Whole-file hashes: which a push records and which a reader checks (docs/FORMAT.md).

Format-1 repositories record the SHA-256 of every file. Format 2 records none unless asked (``push
--sha256``, for users who compare with ``sha256sum``): a file's bytes are fixed by its chunk ids, in
order, and a reader re-hashes every chunk's plaintext to its id anyway (chunk_format.py), so a
whole-file pass on push and another on pull would add CPU and no check. (The first format-2
writers recorded BLAKE3-256 of each file; readers check it where present.) Readers check BLAKE3
when a file has it, else SHA-256, else nothing beyond the chunks. The hash sits inside the
encrypted manifest, so it needs no key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import blake3

from .chunk_format import ChunkFormat
from .manifest import FileEntry

ALGORITHMS = ("blake3", "sha256")
_READ = 1 << 20


def _new(name: str) -> Any:
    return blake3.blake3(max_threads=1) if name == "blake3" else hashlib.sha256()


class FileHasher:
    """Hashes one file's bytes, fed in order, with each of ``algorithms`` (none: it only counts as
    fed, for a file whose chunks are its check)."""

    def __init__(self, algorithms: Iterable[str]) -> None:
        self._hashes = {name: _new(name) for name in algorithms}
        if set(self._hashes) - set(ALGORITHMS):
            raise ValueError(f"file hashes are some of {', '.join(ALGORITHMS)}")

    @classmethod
    def checking(cls, entry: FileEntry) -> FileHasher:
        """A hasher for the one whole-file hash a reader checks of ``entry`` (none when it records none)."""
        return cls(() if entry.digest is None else (entry.digest[0],))

    def update(self, data: bytes | bytearray | memoryview) -> None:
        for h in self._hashes.values():
            h.update(data)

    def entry_hashes(self) -> dict[str, str | None]:
        """``sha256`` and ``blake3`` of the bytes fed so far, as FileEntry takes them (None: not computed)."""
        return {name: (h.hexdigest() if (h := self._hashes.get(name)) else None) for name in ALGORITHMS}

    def matches(self, entry: FileEntry) -> bool:
        """Whether the bytes fed so far are ``entry``'s file by the hash ``checking`` chose (True
        when it records none: its chunks were each checked against their ids instead)."""
        if entry.digest is None:
            return True
        name, expected = entry.digest
        return self._hashes[name].hexdigest() == expected


def file_matches(path: Path, entry: FileEntry, fmt: ChunkFormat) -> bool:
    """Whether the file at ``path`` holds exactly ``entry``'s bytes: its size, then its whole-file
    hash, or, where it records none, the id of each of its chunks (``fmt`` names them)."""
    if path.stat().st_size != entry.size:
        return False
    with open(path, "rb") as f:  # buffered: read(n) returns n bytes unless the file ends first
        if entry.digest is None:
            return all(hmac.compare_digest(fmt.chunk_id(f.read(ref.size)), ref.id) for ref in entry.chunks)
        hasher = FileHasher.checking(entry)
        buf = bytearray(_READ)
        view = memoryview(buf)
        while n := f.readinto(buf):
            hasher.update(view[:n])
    return hasher.matches(entry)
