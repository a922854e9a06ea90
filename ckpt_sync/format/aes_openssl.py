"""AES-128-CBC through the system's OpenSSL, called so that it drops the GIL.

``cryptography``'s AES holds the GIL for the whole call, so the encryption of one chunk stalls
every other worker thread; measured here (bench/threads_vs_processes.py), push workers then scale
to ~1.5x on 2 cores instead of ~2x. Decryption is fast (~1.5 ms per 8 MiB) but held the GIL too:
on pull, the thread writing the file waited that long each time it wanted the GIL back. ctypes
releases the GIL around foreign calls, so calling libcrypto's EVP interface directly lets both run
truly in parallel with the other threads.

Used only where it is safe and proven: a versioned libcrypto (3 or 1.1) found by
platform.load_libcrypto, and a known-answer check against ``cryptography`` at load. Anything else —
no system libcrypto (Windows, most Macs), one that fails the check, or
``CKPT_SYNC_AES=cryptography`` — falls back to ``cryptography``, never to an import error; so does a
read-only input to decrypt (no address to hand to C). The fallback costs push workers their
parallelism (the GIL), not correctness: the same bytes either way.
"""

from __future__ import annotations

import ctypes
import os

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .. import platform


def _load() -> ctypes.CDLL | None:
    if os.environ.get("CKPT_SYNC_AES", "").lower() == "cryptography":
        return None
    lib = platform.load_libcrypto()
    if lib is not None:
        try:
            lib.EVP_CIPHER_CTX_new.restype = ctypes.c_void_p
            lib.EVP_CIPHER_CTX_new.argtypes = []
            lib.EVP_CIPHER_CTX_free.restype = None
            lib.EVP_CIPHER_CTX_free.argtypes = [ctypes.c_void_p]
            lib.EVP_aes_128_cbc.restype = ctypes.c_void_p
            lib.EVP_aes_128_cbc.argtypes = []
            lib.EVP_CIPHER_CTX_set_padding.restype = ctypes.c_int
            lib.EVP_CIPHER_CTX_set_padding.argtypes = [ctypes.c_void_p, ctypes.c_int]
            for fn in (lib.EVP_EncryptInit_ex, lib.EVP_DecryptInit_ex):
                fn.restype = ctypes.c_int
                fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
            for fn in (lib.EVP_EncryptUpdate, lib.EVP_DecryptUpdate):
                fn.restype = ctypes.c_int
                fn.argtypes = [
                    ctypes.c_void_p,
                    ctypes.c_void_p,
                    ctypes.POINTER(ctypes.c_int),
                    ctypes.c_void_p,
                    ctypes.c_int,
                ]
        except AttributeError:
            return None
    return lib


_lib = _load()
_MAX_CALL = 1 << 30  # EVP_EncryptUpdate takes an int length


def _address(buf: bytes | bytearray | memoryview, offset: int) -> int:
    if isinstance(buf, bytes):
        base = ctypes.cast(ctypes.c_char_p(buf), ctypes.c_void_p).value
    else:
        base = ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))
    assert base is not None
    return base + offset


class CbcStream:
    """One AES-128-CBC pass over a token, fed in pieces: each ``update`` continues the chain where
    the last one stopped, so a caller can decrypt (or encrypt) a piece while it is still in the CPU's
    cache and hash it there, instead of streaming the whole chunk through memory once per step.

    Whole blocks only, no padding added or removed. Through libcrypto (no GIL) when it was loaded
    and proven and every input has an address (``openssl``); else ``cryptography``'s cipher."""

    __slots__ = ("_ctx", "_out_len", "_soft", "_update")

    def __init__(self, encrypt: bool, key: bytes, iv: bytes, *, openssl: bool = True) -> None:
        self._ctx = None
        self._soft = None
        if _lib is not None and openssl:
            ctx = _lib.EVP_CIPHER_CTX_new()
            if not ctx:
                raise MemoryError("EVP_CIPHER_CTX_new failed")
            init = _lib.EVP_EncryptInit_ex if encrypt else _lib.EVP_DecryptInit_ex
            if init(ctx, _lib.EVP_aes_128_cbc(), None, key, iv) != 1:
                _lib.EVP_CIPHER_CTX_free(ctx)
                raise RuntimeError("EVP_CipherInit_ex failed")
            _lib.EVP_CIPHER_CTX_set_padding(ctx, 0)  # whole blocks in, whole blocks out, nothing held back
            self._ctx = ctx
            self._update = _lib.EVP_EncryptUpdate if encrypt else _lib.EVP_DecryptUpdate
            self._out_len = ctypes.c_int()
        else:
            cipher = Cipher(algorithms.AES(key), modes.CBC(iv))
            self._soft = cipher.encryptor() if encrypt else cipher.decryptor()

    def update(
        self,
        src: bytes | bytearray | memoryview,
        src_offset: int,
        length: int,
        dst: bytearray | memoryview,
        dst_offset: int,
    ) -> None:
        """Process ``src[src_offset:src_offset + length]`` (whole blocks) into ``dst[dst_offset:]``."""
        if length % 16 or src_offset + length > len(src) or dst_offset + length > len(dst):
            raise ValueError("CBC input must be whole blocks and fit the output")
        if self._soft is not None:
            piece = memoryview(src)[src_offset : src_offset + length]
            out = memoryview(dst)[dst_offset : dst_offset + length + 16]  # update_into wants a block spare
            if len(out) >= length + 16:
                assert self._soft.update_into(piece, out) == length
            else:
                memoryview(dst)[dst_offset : dst_offset + length] = self._soft.update(piece)
            return
        assert _lib is not None
        done = 0
        while done < length:
            n = min(_MAX_CALL, length - done)
            ok = self._update(
                self._ctx,
                _address(dst, dst_offset + done),
                ctypes.byref(self._out_len),
                _address(src, src_offset + done),
                n,
            )
            if ok != 1 or self._out_len.value != n:
                raise RuntimeError("EVP_CipherUpdate failed")
            done += n

    def close(self) -> None:
        if self._ctx is not None:
            _lib.EVP_CIPHER_CTX_free(self._ctx)  # type: ignore[union-attr]
            self._ctx = None

    def __enter__(self) -> CbcStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def addressable(buf: bytes | bytearray | memoryview) -> bool:
    """Whether libcrypto can be handed ``buf`` (a read-only view has no address to give C)."""
    return not (isinstance(buf, memoryview) and buf.readonly)


def _known_answer() -> bool:
    """libcrypto through ctypes writes what ``cryptography`` writes, and reads it back."""
    key, iv = bytes(range(16)), bytes(range(16, 32))
    src = bytes(range(256)) * 64
    n = len(src) - 16

    def crypt(encrypt: bool, openssl: bool, data: bytes | bytearray) -> bytearray:
        out = bytearray(n + 16)
        with CbcStream(encrypt, key, iv, openssl=openssl) as stream:
            stream.update(data, 0, n, out, 0)
        return out

    expected = crypt(True, False, src)
    try:
        ours = crypt(True, True, src)
        back = crypt(False, True, ours)
    except Exception:
        return False
    return expected[:n] == ours[:n] and any(ours) and back[:n] == src[:n]


if _lib is not None and not _known_answer():
    _lib = None

BACKEND = "openssl-ctypes" if _lib is not None else "cryptography"
