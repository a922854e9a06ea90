"""``contents.ChunkMap``, the one answer to "which chunks of a file hold these bytes" (the on-demand
reader and DCP's ranged reads both use it): every range maps to exactly the chunks it touches, and
copying those chunks' overlaps rebuilds exactly those bytes."""

from __future__ import annotations

import hashlib

import pytest

from ckpt_sync.format.contents import ChunkMap
from ckpt_sync.format.manifest import ChunkRef, FileEntry

SIZES = [5, 1, 7, 3]
DATA = bytes(range(sum(SIZES)))


def _map() -> tuple[ChunkMap, list[bytes]]:
    pieces, at = [], 0
    for n in SIZES:
        pieces.append(DATA[at : at + n])
        at += n
    refs = tuple(ChunkRef(hashlib.sha256(p).hexdigest(), len(p)) for p in pieces)
    return ChunkMap(FileEntry("f.bin", len(DATA), hashlib.sha256(DATA).hexdigest(), refs)), pieces


def test_every_range_maps_to_exactly_the_chunks_it_touches_and_rebuilds_its_bytes():
    cmap, pieces = _map()
    for start in range(len(DATA)):
        for length in range(1, len(DATA) - start + 1):
            covering = cmap.covering(start, length)
            touched = [i for i, lo in enumerate(cmap.offsets[:-1]) if lo < start + length and lo + SIZES[i] > start]
            assert list(covering) == touched
            out = bytearray(length)
            for i in covering:
                cmap.copy_overlap(i, pieces[i], out, start)
            assert bytes(out) == DATA[start : start + length]


def test_an_empty_range_needs_no_chunk_and_one_outside_the_file_is_refused():
    cmap, _ = _map()
    assert list(cmap.covering(3, 0)) == [] and list(cmap.covering(len(DATA), 0)) == []
    for start, length in ((-1, 2), (len(DATA) - 1, 2), (len(DATA), 1)):
        with pytest.raises(ValueError, match="outside"):
            cmap.covering(start, length)
