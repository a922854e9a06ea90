"""Binary Fernet tokens.

A stored object is a standard Fernet token in binary form (the base64url-decoded token):

    0x80 | timestamp (8, big-endian) | IV (16) | AES-128-CBC(PKCS7(plaintext)) | HMAC-SHA256 (32)

so ``Fernet(key).decrypt(base64.urlsafe_b64encode(obj))`` returns the plaintext. Building the token
ourselves skips base64 on the hot path (Fernet.encrypt is ~10x slower on 8 MiB here) and lets the
ciphertext be written straight into the output buffer.
"""

from __future__ import annotations

import base64
import hmac
import os
import struct
import time
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from cryptography.fernet import Fernet

from ..errors import IntegrityError
from .aes_openssl import CbcStream, addressable

VERSION = 0x80
HEADER = 1 + 8 + 16
MAC = 32
BLOCK = 16
# Encryption, MAC and the reader's id hash each take a piece of this size in turn: small enough to
# stay in a core's cache (2 MiB of L2 here) between the steps, where a whole chunk does not and each
# step read it from memory again; large enough that the GIL changes hands rarely (each step is a C
# call that lets it go, and with a dozen threads each hand-over can cost a futex call). Measured, 1 GiB,
# whole process, 128 KiB / 512 KiB / one piece per token: push 2.43-2.55 / 2.40-2.47 / 2.63-2.70 CPU s
# (wall 1.90-1.95 / 1.72-1.77 / 1.73-1.78 s); a pull from the page cache 1.39-1.49 / 1.32-1.33 /
# 1.31-1.36 s wall at the same CPU.
PIECE = 512 << 10


class PlainCheck(Protocol):
    """What a decryption feeds the plaintext to as it is produced (a hash of it, say)."""

    def update(self, data: memoryview, /) -> object: ...


C = TypeVar("C", bound=PlainCheck)


def token_size(plain_size: int) -> int:
    """Size of the binary token for a plaintext of ``plain_size`` bytes."""
    return HEADER + (plain_size // BLOCK + 1) * BLOCK + MAC


class FernetKey:
    """One 32-byte Fernet key split into its signing and encryption halves."""

    __slots__ = ("encryption", "signing")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != 32:
            raise ValueError("a Fernet key is 32 bytes")
        self.signing = raw[:16]
        self.encryption = raw[16:]

    def encrypt(
        self,
        plaintext: bytes | bytearray | memoryview,
        *,
        iv: bytes | None = None,
        zeros: int = 0,
        out: bytearray | None = None,
    ) -> bytearray | memoryview:
        """The binary token of ``plaintext`` followed by ``zeros`` zero bytes (padding, without a
        copy of the plaintext); written into ``out`` (a reusable buffer of at least ``token_size``)
        when given, and then returned as a view of it. The MAC is computed a piece at a time right
        after each piece is encrypted, while it is still in the CPU's cache (see ``PIECE``)."""
        # bytes, bytearray and writable views are encrypted in place; a read-only view is copied once.
        data = plaintext if addressable(plaintext) else bytes(plaintext)
        n = len(data) + zeros
        full = len(data) - len(data) % BLOCK
        total = token_size(n)
        buf = bytearray(total) if out is None else out
        if len(buf) < total:
            raise ValueError("output buffer too small for the token")
        iv = iv or os.urandom(16)
        buf[0] = VERSION
        struct.pack_into(">Q", buf, 1, int(time.time()))
        buf[9:HEADER] = iv
        view = memoryview(buf)
        mac = hmac.new(self.signing, view[:HEADER], "sha256")
        # The rest (a partial block, the zeros, PKCS7) continues the CBC chain after the whole blocks.
        pad = BLOCK - n % BLOCK
        tail = bytes(data[full:]) + bytes(zeros) + bytes([pad]) * pad
        with CbcStream(True, self.encryption, iv) as cbc:
            for start in range(0, full, PIECE):  # the whole blocks straight from the caller's buffer
                size = min(PIECE, full - start)
                cbc.update(data, start, size, buf, HEADER + start)
                mac.update(view[HEADER + start : HEADER + start + size])
            cbc.update(tail, 0, len(tail), buf, HEADER + full)
        pos = HEADER + full + len(tail)
        mac.update(view[HEADER + full : pos])
        buf[pos : pos + MAC] = mac.digest()
        return buf if out is None else view[:total]

    def decrypt(
        self, token: bytes | bytearray | memoryview, *, out: bytearray | None = None, check: PlainCheck | None = None
    ) -> bytearray | memoryview:
        """Authenticate and decrypt; raises IntegrityError on any mismatch. With ``out`` (a reusable
        buffer at least the token's size) the plaintext is written there and a view of it returned.

        One pass a piece at a time (see ``PIECE``): MAC the ciphertext, decrypt it, and feed the
        plaintext to ``check`` (the caller's hash of it) while both are in the CPU's cache. Nothing
        decrypted is returned, or trusted by ``check``'s caller, unless the MAC over the whole token
        matched."""
        view = memoryview(token).cast("B")
        if len(view) < HEADER + BLOCK + MAC or view[0] != VERSION or (len(view) - HEADER - MAC) % BLOCK:
            raise IntegrityError("not a Fernet token (truncated or foreign object)")
        n = len(view) - HEADER - MAC
        buf = bytearray(n + BLOCK) if out is None else out
        if len(buf) < n + BLOCK:
            raise ValueError("output buffer too small for the plaintext")
        src = token if isinstance(token, bytes) else view  # a bytes token has an address; a slice of it not
        plain = memoryview(buf)
        mac = hmac.new(self.signing, view[:HEADER], "sha256")
        with CbcStream(False, self.encryption, bytes(view[9:HEADER]), openssl=addressable(src)) as cbc:
            for start in range(0, n, PIECE):
                size = min(PIECE, n - start)
                mac.update(view[HEADER + start : HEADER + start + size])
                cbc.update(src, HEADER + start, size, buf, start)
                if check is not None:
                    check.update(plain[start : start + size])
        if not hmac.compare_digest(mac.digest(), view[-MAC:]):
            raise IntegrityError("authentication failed (wrong key, or the object was altered)")
        pad = buf[n - 1]
        if not 1 <= pad <= BLOCK or buf[n - pad : n] != bytes([pad]) * pad:
            raise IntegrityError("bad padding after authentication (corrupt token)")
        if out is None:
            plain.release()  # a bytearray with a view of it cannot shrink
            del buf[n - pad :]
            return buf
        return plain[: n - pad]


class KeyRing:
    """Keys in priority order: the first encrypts, all decrypt (MultiFernet semantics)."""

    def __init__(self, raw_keys: Sequence[bytes]) -> None:
        if not raw_keys:
            raise ValueError("a key ring needs at least one key")
        self._raw = list(raw_keys)
        self._keys = [FernetKey(k) for k in raw_keys]
        self._last_good = 0  # an index, read and written whole: safe to share between threads

    @property
    def primary(self) -> FernetKey:
        return self._keys[0]

    def fingerprints(self) -> list[str]:
        return [fingerprint(k) for k in self._raw]

    def encrypt(
        self, plaintext: bytes | bytearray | memoryview, *, out: bytearray | None = None
    ) -> bytearray | memoryview:
        return self.primary.encrypt(plaintext, out=out)

    def decrypt(self, token: bytes | bytearray | memoryview, *, out: bytearray | None = None) -> bytearray | memoryview:
        return self.decrypt_and_check(token, None, out=out)[0]

    def decrypt_and_check(
        self,
        token: bytes | bytearray | memoryview,
        new_check: Callable[[], C] | None,
        *,
        out: bytearray | None = None,
    ) -> tuple[bytearray | memoryview, C | None]:
        """Decrypt with whichever key authenticates the token, feeding the plaintext to a fresh
        ``new_check()`` per attempt; returns the plaintext and the check that saw it. The key that
        last succeeded is tried first, so after a rotation old chunks do not cost a failed attempt each."""
        last: IntegrityError | None = None
        first = self._last_good
        for i in (first, *(j for j in range(len(self._keys)) if j != first)):
            check = new_check() if new_check is not None else None
            try:
                plain = self._keys[i].decrypt(token, out=out, check=check)
            except IntegrityError as err:
                last = err
                continue
            self._last_good = i
            return plain, check
        assert last is not None
        raise last

    def raw_keys(self) -> list[bytes]:
        """The raw keys, in order (handle with care: never log them)."""
        return list(self._raw)

    def only(self, fp: str) -> KeyRing:
        """A ring of just the key with fingerprint ``fp`` (which checkpoints does this one key open?)."""
        for raw in self._raw:
            if fingerprint(raw) == fp:
                return KeyRing([raw])
        raise KeyError(fp)

    def with_primary(self, raw_key: bytes) -> KeyRing:
        """This ring with ``raw_key`` first (it then encrypts; the others still decrypt)."""
        return KeyRing([raw_key, *(k for k in self._raw if k != raw_key)])

    def fernet(self, fp: str | None = None) -> Fernet:
        """A standard ``Fernet`` for the key with fingerprint ``fp`` (default: the primary key)."""
        for raw in self._raw:
            if fp is None or fingerprint(raw) == fp:
                return Fernet(base64.urlsafe_b64encode(raw))
        raise KeyError(fp)


def fingerprint(raw_key: bytes) -> str:
    """A public, one-way name for a key (HMAC of a constant under the key)."""
    return hmac.digest(raw_key, b"ckpt-sync key fingerprint v1", "sha256")[:16].hex()
