"""What is inside one checkpoint: its files, a chosen part of them, one file of it, and which
chunks of a file hold a byte range (``ChunkMap``: the on-demand reader and DCP's ranged reads).

Selection is by glob on the file's path inside the checkpoint (``fnmatch``: ``*`` also crosses
``/``), so ``--include '*.safetensors'`` or ``--exclude 'optimizer/*'`` pick files of a folder
checkpoint. A selection is a smaller manifest of the same checkpoint: restoring it is the same
verified, staged restore as a whole one.
"""

from __future__ import annotations

import dataclasses
import itertools
from bisect import bisect_right
from collections.abc import Sequence
from fnmatch import fnmatchcase

from ..errors import UsageError
from .manifest import ChunkRef, FileEntry, Manifest


def select_files(manifest: Manifest, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> Manifest:
    """The checkpoint with only the files matching any of ``include`` (all when empty) and none of
    ``exclude``. Raises UsageError when nothing is left, naming what the checkpoint holds."""
    if not include and not exclude:
        return manifest
    kept = tuple(
        f
        for f in manifest.files
        if (not include or any(fnmatchcase(f.path, g) for g in include))
        and not any(fnmatchcase(f.path, g) for g in exclude)
    )
    if not kept:
        sample = ", ".join(f.path for f in manifest.files[:5]) + (" ..." if len(manifest.files) > 5 else "")
        raise UsageError(
            f"no file of {manifest.name} ({manifest.id}) matches --include/--exclude; it holds: {sample} "
            f"(see `ckpt-sync ls {manifest.id}`)"
        )
    return dataclasses.replace(manifest, files=kept)


def file_entry(manifest: Manifest, path: str | None) -> FileEntry:
    """One file of the checkpoint: ``path`` inside it, or None for a checkpoint of exactly one file."""
    if path is None:
        if len(manifest.files) == 1:
            return manifest.files[0]
        raise UsageError(
            f"{manifest.name} ({manifest.id}) holds {len(manifest.files)} files: name one "
            f"(see `ckpt-sync ls {manifest.id}`)"
        )
    for f in manifest.files:
        if f.path == path:
            return f
    raise UsageError(f"{manifest.name} ({manifest.id}) has no file {path!r} (see `ckpt-sync ls {manifest.id}`)")


class ChunkMap:
    """Where each chunk of one file lies in it: ``offsets[i]`` is where chunk ``i`` starts (the last
    entry is the file's size; a parsed manifest guarantees the chunk sizes add up to it)."""

    def __init__(self, entry: FileEntry) -> None:
        self.entry = entry
        self.offsets = list(itertools.accumulate((c.size for c in entry.chunks), initial=0))

    def covering(self, start: int, length: int) -> range:
        """Indices, in file order, of the chunks overlapping [start, start + length): empty when
        ``length`` <= 0; ValueError when the range reaches outside the file."""
        if length <= 0:
            return range(0)
        if start < 0 or start + length > self.entry.size:
            raise ValueError(f"{self.entry.path}: bytes [{start}, {start + length}) are outside its {self.entry.size}")
        first = bisect_right(self.offsets, start) - 1
        return range(first, bisect_right(self.offsets, start + length - 1, lo=first))

    def chunk(self, i: int) -> ChunkRef:
        return self.entry.chunks[i]

    def copy_overlap(
        self, i: int, plain: bytes | bytearray | memoryview, out: memoryview | bytearray, start: int
    ) -> None:
        """Copy the part of chunk ``i`` (its plaintext ``plain``) that lies in [start, start + len(out))
        to its place in ``out``, which holds those bytes of the file."""
        lo = max(start, self.offsets[i])
        hi = min(start + len(out), self.offsets[i + 1])
        out[lo - start : hi - start] = memoryview(plain)[lo - self.offsets[i] : hi - self.offsets[i]]
