"""How one chunk's plaintext becomes a stored object, and back: the one home of chunk encoding.

A repository's config fixes, at creation, everything this module decides (docs/FORMAT.md):

- **format version** — v1: the chunk id is HMAC-SHA256 under the repository's id key and the Fernet
  IV is random. v2: the id is keyed BLAKE3 (about 3x cheaper) and the IV is derived from the id
  under the id key, so a stored object that is not the chunk it is named after fails the IV check
  after Fernet authentication. In both a reader re-hashes every plaintext to its id; in v2 that
  pass is also the file's check (a file records no whole-file hash unless asked, see file_digest.py).
  Tokens stay standard Fernet tokens in both.
- **pad** — 0: none; 1: plaintexts are zero-padded to the Padmé bucket of their length (at most
  ~11% larger, and a length then leaks O(log log n) bits), so object sizes stop fingerprinting the
  tensors they hold.
- **compression** — None, or ``"zstd"``: each chunk is compressed before padding and encryption,
  and stored as is when compression would not make the stored object smaller. Ids are of the
  uncompressed plaintext, so deduplication is unchanged.

A reader tells a compressed chunk from a raw one by length alone: a raw chunk's encoding is exactly
``padded(size)`` bytes; a compressed one's is shorter (a zstd frame, then the padding's zeros).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Protocol

import blake3

from ..errors import IntegrityError
from .crypto import BLOCK, HEADER, MAC, KeyRing, token_size

VERSIONS = (1, 2)
PAD_SCHEMES = (0, 1)  # 0: none, 1: Padmé
COMPRESSIONS = (None, "zstd")
MIN_PADDED = 256  # with padding on, no stored plaintext is shorter than this
ZSTD_LEVEL = 1  # measured in bench/: level 1 keeps most of the gain at a fraction of level 3's CPU
_IV_CONTEXT = b"ckpt-sync chunk iv v2"


class _Hash(Protocol):
    def update(self, data: memoryview, /) -> object: ...

    def hexdigest(self) -> str: ...


class _IdHasher:
    """Feeds only the first ``limit`` bytes to the id hash (see ``ChunkFormat.id_hasher``)."""

    __slots__ = ("_inner", "_left")

    def __init__(self, inner: _Hash, limit: int) -> None:
        self._inner = inner
        self._left = limit

    def update(self, data: memoryview) -> None:
        if self._left > 0:
            take = data[: self._left]
            self._inner.update(take)
            self._left -= len(take)

    def hexdigest(self) -> str:
        return self._inner.hexdigest()


class ChunkMismatch(IntegrityError):
    """A stored object that authenticates (or was never opened) but is not the chunk it should be."""


def padme(n: int) -> int:
    """The Padmé bucket of a length ``n`` (Nikitin et al., PETS 2019): ``n`` rounded up so that only
    its top ~log2(log2(n)) + 1 bits are free; overhead at most ~11%, none below ``MIN_PADDED``."""
    n = max(n, MIN_PADDED)
    e = n.bit_length() - 1
    s = e.bit_length()
    mask = (1 << (e - s)) - 1
    return (n + mask) & ~mask


def _valid_token_size(n: int) -> bool:
    return n >= HEADER + BLOCK + MAC and (n - HEADER - MAC) % BLOCK == 0


@dataclass(frozen=True)
class ChunkFormat:
    """A repository's chunk encoding (see the module docstring); ``id_key`` is the secret id key."""

    version: int
    id_key: bytes = field(repr=False)
    pad: int = 0
    compression: str | None = None

    def __post_init__(self) -> None:
        if self.version not in VERSIONS or self.pad not in PAD_SCHEMES or self.compression not in COMPRESSIONS:
            raise ValueError(f"unsupported chunk format {self.version}/{self.pad}/{self.compression}")

    # --- names -----------------------------------------------------------------------------------

    def chunk_id(self, plaintext: bytes | bytearray | memoryview) -> str:
        if self.version == 1:
            return hmac.digest(self.id_key, plaintext, "sha256").hex()
        return blake3.blake3(plaintext, key=self.id_key).hexdigest()

    def id_hasher(self, limit: int) -> _IdHasher:
        """A hash of the first ``limit`` bytes fed to it whose ``hexdigest`` is their ``chunk_id``
        (a reader feeds it the plaintext piece by piece as it decrypts, padding after ``limit`` ignored)."""
        inner = hmac.new(self.id_key, digestmod="sha256") if self.version == 1 else blake3.blake3(key=self.id_key)
        return _IdHasher(inner, limit)

    def iv(self, chunk_id: str) -> bytes | None:
        """The Fernet IV a chunk's token carries: derived from its id in v2, random (None) in v1."""
        if self.version == 1:
            return None
        return hmac.digest(self.id_key, _IV_CONTEXT + bytes.fromhex(chunk_id), "sha256")[:16]

    def reusable_from(self, other: ChunkFormat) -> bool:
        """Whether a token ``other`` stored can be stored here as it is, under the id this format
        gives its plaintext (same encoding; in v2 the IV ties it to the id key too)."""
        same = (self.version, self.pad, self.compression) == (other.version, other.pad, other.compression)
        return same and (self.version == 1 or self.id_key == other.id_key)

    # --- sizes -----------------------------------------------------------------------------------

    def padded(self, n: int) -> int:
        return padme(n) if self.pad else n

    def max_token_size(self, plain_size: int) -> int:
        """The largest stored object a chunk of ``plain_size`` bytes may be (what a read is bounded by)."""
        return token_size(self.padded(plain_size))

    def size_ok(self, plain_size: int, stored: int | None) -> bool:
        """Whether a stored object of ``stored`` bytes can be this chunk. Without compression the size
        is exact, so an object cut short (a power loss before the commit, a truncating store) is
        never trusted; a compressed chunk may be any whole token up to the bound. (A whole token is
        57 + 16k bytes, an odd number: a file cut at a page or block boundary, or emptied, never is
        one; any other cut fails authentication when read, and ``verify`` names it.)"""
        if stored is None:
            return False
        bound = self.max_token_size(plain_size)
        if self.compression is None:
            return stored == bound
        return stored <= bound and _valid_token_size(stored)

    # --- sealing and opening ---------------------------------------------------------------------

    def seal(
        self,
        keys: KeyRing,
        plaintext: bytes | bytearray | memoryview,
        chunk_id: str,
        *,
        out: bytearray | None = None,
    ) -> bytearray | memoryview:
        """The stored object for ``plaintext`` (whose id is ``chunk_id``), in ``out`` when given."""
        body = self._compressed(plaintext)
        if body is None:
            body = plaintext
        return keys.primary.encrypt(body, iv=self.iv(chunk_id), zeros=self.padded(len(body)) - len(body), out=out)

    def _compressed(self, plaintext: bytes | bytearray | memoryview) -> bytes | None:
        """The zstd frame to store, when the repository compresses and it makes the object smaller."""
        if self.compression != "zstd":
            return None
        import zstandard  # only repositories that compress pay for the import

        packed = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True).compress(plaintext)
        return packed if self.padded(len(packed)) < self.padded(len(plaintext)) else None

    def open(
        self,
        keys: KeyRing,
        chunk_id: str,
        plain_size: int,
        token: bytes | bytearray | memoryview,
        *,
        out: bytearray | None = None,
    ) -> bytearray | memoryview:
        """Authenticate and decode a stored chunk; raises IntegrityError (the message says what, the
        caller says which chunk). ``out`` is a reusable buffer of at least the token's size."""
        if not self.size_ok(plain_size, len(token)):
            raise ChunkMismatch("has the wrong size (truncated or replaced)")
        target = self.padded(plain_size)
        if len(token) == token_size(target):  # stored raw: its id is hashed as it is decrypted
            body, hasher = keys.decrypt_and_check(token, lambda: self.id_hasher(plain_size), out=out)
        else:
            body, hasher = keys.decrypt(token, out=out), None
        iv = self.iv(chunk_id)
        if iv is not None and not hmac.compare_digest(bytes(memoryview(token)[9:HEADER]), iv):
            raise ChunkMismatch("is not the chunk it is named after (swapped or substituted object)")
        if len(body) == target:
            plain = memoryview(body)[:plain_size] if target != plain_size else body
        elif self.compression == "zstd" and len(body) < target:
            plain = self._decompress(body, plain_size)
        else:
            raise ChunkMismatch("has the wrong size inside (damaged or written by a buggy writer)")
        seen = hasher.hexdigest() if hasher is not None and len(body) == target else self.chunk_id(plain)
        if not hmac.compare_digest(seen, chunk_id):
            raise ChunkMismatch("does not match its id (swapped or substituted object, or a buggy writer)")
        return plain

    @staticmethod
    def _decompress(body: bytes | bytearray | memoryview, plain_size: int) -> bytes:
        import zstandard

        try:  # the frame names its size; checked first, so a frame never decompresses past the chunk
            if zstandard.frame_content_size(body) != plain_size:
                raise ChunkMismatch("decompresses to the wrong size (damaged or written by a buggy writer)")
            plain = zstandard.ZstdDecompressor().decompress(body, max_output_size=plain_size)
        except zstandard.ZstdError as err:
            raise ChunkMismatch(f"does not decompress ({err})") from None
        if len(plain) != plain_size:
            raise ChunkMismatch("decompresses to the wrong size (damaged or written by a buggy writer)")
        return plain
