"""Where a file is cut into chunks.

``torch.save`` files are zip archives with one member per tensor storage; safetensors files are a
JSON header followed by tensor data. Cutting exactly at each tensor's data start and end keeps an
unchanged tensor's bytes in the same chunks even when something before it changes length (a
growing loss history in the pickle shifts every later offset, and with it the zip headers' alignment
padding). Tensor data of at least ``min_size`` stands alone, cut at ``chunk_size`` inside; the small
pieces in between (headers, small tensors, the pickle) are grouped up to ``chunk_size``. Anything
unparseable (another format, a truncated or malformed archive) falls back to fixed-size cuts: the
plan only changes how well chunks deduplicate, never what is stored.
"""

from __future__ import annotations

import json
import struct
import zipfile
from dataclasses import dataclass
from typing import BinaryIO

from ..errors import UsageError

MiB = 1 << 20
MAX_CHUNK_SIZE = 256 * MiB  # no writer cuts larger; a manifest claiming more is malformed


@dataclass(frozen=True)
class ChunkPolicy:
    chunk_size: int = 8 * MiB
    min_size: int = 1 * MiB

    @classmethod
    def of_size(cls, chunk_size: int | None) -> ChunkPolicy:
        """The default policy, or one cutting at ``chunk_size`` (small sizes lower the minimum too)."""
        if not chunk_size:
            return cls()
        if not 64 * 1024 <= chunk_size <= MAX_CHUNK_SIZE:
            raise UsageError(f"chunk size {chunk_size} bytes is out of range: give 64K to 256M (e.g. --chunk-size 8M)")
        return cls(chunk_size=chunk_size, min_size=min(chunk_size, cls().min_size))

    def __post_init__(self) -> None:
        if not 64 * 1024 <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError("chunk size must be between 64 KiB and 256 MiB")
        if not 0 < self.min_size <= self.chunk_size:
            raise ValueError("min chunk size must be positive and at most the chunk size")


Span = tuple[int, int]  # (offset, length)


def plan_chunks(f: BinaryIO, size: int, policy: ChunkPolicy = ChunkPolicy()) -> list[Span]:
    """Return contiguous spans covering ``[0, size)`` in order."""
    if size == 0:
        return []
    data_ranges = _tensor_ranges(f, size)
    return _pack(data_ranges, size, policy)


def _tensor_ranges(f: BinaryIO, size: int) -> list[Span]:
    for parser in (_zip_member_ranges, _safetensors_ranges):
        try:
            ranges = parser(f, size)
        except Exception:  # a malformed file only loses format-aware cuts
            ranges = None
        if ranges:
            ranges.sort()
            end = 0
            ok = True
            for off, length in ranges:
                if off < end or length < 0 or off + length > size:
                    ok = False
                    break
                end = off + length
            if ok:
                return ranges
    return []


def _zip_member_ranges(f: BinaryIO, size: int) -> list[Span] | None:
    f.seek(0)
    if f.read(4) != b"PK\x03\x04":
        return None
    ranges: list[Span] = []
    with zipfile.ZipFile(f) as zf:
        for info in zf.infolist():
            f.seek(info.header_offset)
            header = f.read(30)
            if len(header) != 30 or header[:4] != b"PK\x03\x04":
                return None
            name_len, extra_len = struct.unpack_from("<HH", header, 26)
            start = info.header_offset + 30 + name_len + extra_len
            ranges.append((start, info.compress_size))
    return ranges


def _safetensors_ranges(f: BinaryIO, size: int) -> list[Span] | None:
    f.seek(0)
    head = f.read(8)
    if len(head) != 8:
        return None
    (n,) = struct.unpack("<Q", head)
    if n == 0 or n > 100 * MiB or 8 + n > size:
        return None
    header = json.loads(f.read(n))
    base = 8 + n
    ranges: list[Span] = []
    for key, meta in header.items():
        if key == "__metadata__":
            continue
        b, e = meta["data_offsets"]
        ranges.append((base + int(b), int(e) - int(b)))
    return ranges


def _pack(data_ranges: list[Span], size: int, policy: ChunkPolicy) -> list[Span]:
    """Large tensors stand alone (cut at chunk_size inside); everything between them is grouped.

    The pieces between two large tensors are often tiny (one zip header): they stay separate objects
    rather than being glued to a tensor, so a header whose alignment padding changed never drags an
    unchanged tensor's bytes into a new chunk.
    """
    spans: list[Span] = []

    def cut(start: int, end: int) -> None:
        while start < end:
            length = min(policy.chunk_size, end - start)
            spans.append((start, length))
            start += length

    pos = 0
    for off, length in data_ranges:
        if length < policy.min_size:
            continue  # small tensors ride along in the surrounding group
        cut(pos, off)
        cut(off, off + length)
        pos = off + length
    cut(pos, size)
    return spans
