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


_LOCAL_HEADER = b"PK\x03\x04"
_DESCRIPTOR = b"PK\x07\x08"


class StreamCuts:
    """``plan_chunks`` for bytes that arrive in order and cannot be read back: a ``torch.save``
    written straight into a repository. Fed each ``write`` call, it says where chunks end.

    ``torch.save`` streams a zip whose local headers do not carry the sizes: each member's data is
    followed by a data descriptor that does. So a member's data start is known from its header, and
    its end from the descriptor, which torch writes as a call of its own (it is taken only when the
    size it records matches the bytes seen, so tensor bytes that look like one are not). Whether a
    member is large enough to stand alone is decided once ``min_size`` of its data has arrived, or
    when it ends short of that; until then a cut the group rule would make inside it waits. The cuts
    are the ones ``plan_chunks`` makes for the finished file, so a checkpoint saved straight into a
    repository and the same bytes pushed from disk deduplicate against each other. Anything
    unexpected leaves only the group rule (cuts every ``chunk_size`` from the last large tensor's
    end): the cuts change how well chunks deduplicate, never what is stored.
    """

    def __init__(self, policy: ChunkPolicy = ChunkPolicy()) -> None:
        self.policy = policy
        self.pos = 0  # bytes fed
        self._cut = 0  # the last cut made
        self._group = 0  # where the bytes between large tensors began
        self._state = "header"  # header: a member's local header is due; data: inside one; tail: no more
        self._head = bytearray()  # a local header being read
        self._data_start = 0
        self._large: bool | None = None  # the current member: undecided (None), large or small

    @property
    def holding(self) -> int:
        """Bytes fed and not yet cut into a chunk: what the writer must keep."""
        return self.pos - self._cut

    def feed(self, data: bytes | bytearray | memoryview, *, continued: bool = False) -> list[int]:
        """Take one write call's bytes (``continued``: the next part of the same call); return the
        positions where chunks now end, in order."""
        view = memoryview(data).cast("B")
        cuts: list[int] = []
        if self._state == "data" and not continued and (skip := self._descriptor_length(view)):
            self._member_ended(cuts)
            self.pos += skip
            view = view[skip:]
        while len(view) and self._state == "header":
            view = self._read_header(view)
        self.pos += len(view)
        self._step_cuts(cuts)
        if self._state == "data" and self._large is None and self.pos - self._data_start >= self.policy.min_size:
            self._large = True
            self._emit(cuts, self._data_start)
        self._step_cuts(cuts)
        return cuts

    def finish(self) -> list[int]:
        """The last cuts, once every byte was fed."""
        cuts: list[int] = []
        if self._state == "data" and self._large is None:
            self._state = "tail"  # the stream ended inside a short member: it rides in the group
        self._step_cuts(cuts)
        self._emit(cuts, self.pos)
        return cuts

    def _read_header(self, view: memoryview) -> memoryview:
        need = 30
        if len(self._head) >= 30:
            name_len, extra_len = struct.unpack_from("<HH", self._head, 26)
            need = 30 + name_len + extra_len
        take = min(need - len(self._head), len(view))
        self._head += view[:take]
        self.pos += take
        view = view[take:]
        if len(self._head) >= 4 and self._head[:4] != _LOCAL_HEADER:
            self._state = "tail"  # the central directory (or not a torch zip): groups to the end
        elif len(self._head) == 30 and struct.unpack_from("<H", self._head, 26)[0] == 0:
            self._state = "tail"  # a member without a name is not torch's
        elif len(self._head) == need and need > 30:
            self._state, self._head = "data", bytearray()
            self._data_start, self._large = self.pos, None
        return view

    def _descriptor_length(self, view: memoryview) -> int:
        """16 or 24 when ``view`` opens with the data descriptor of the member being read, else 0."""
        if len(view) < 16 or bytes(view[:4]) != _DESCRIPTOR:
            return 0
        seen = self.pos - self._data_start
        if len(view) >= 24 and struct.unpack_from("<Q", view, 8)[0] == seen:
            return 24  # zip64
        return 16 if struct.unpack_from("<I", view, 8)[0] == seen else 0

    def _member_ended(self, cuts: list[int]) -> None:
        self._step_cuts(cuts)
        if self._large is None and self.pos - self._data_start >= self.policy.min_size:
            self._large = True
            self._emit(cuts, self._data_start)
        if self._large:
            self._step_cuts(cuts)
            self._emit(cuts, self.pos)
            self._group = self.pos
        self._state, self._large = "header", None

    def _step_cuts(self, cuts: list[int]) -> None:
        """Cuts every ``chunk_size`` from where the current run began, as far as the bytes reach and
        no undecided member is in the way."""
        if self._state == "data" and self._large:
            start, limit = self._data_start, self.pos
        elif self._state == "data" and self._large is None:
            start, limit = self._group, self._data_start  # a step inside an undecided member waits
        else:
            start, limit = self._group, self.pos
        size = self.policy.chunk_size
        while (step := start + ((self._cut - start) // size + 1) * size) <= limit:
            self._emit(cuts, step)

    def _emit(self, cuts: list[int], at: int) -> None:
        if at > self._cut:
            cuts.append(at)
            self._cut = at
