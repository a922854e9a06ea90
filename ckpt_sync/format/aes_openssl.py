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


def _crypt_openssl(
    encrypt: bool,
    key: bytes,
    iv: bytes,
    src: bytes | bytearray | memoryview,
    length: int,
    dst: bytearray | memoryview,
    dst_offset: int,
    src_offset: int = 0,
) -> None:
    assert _lib is not None
    if length % 16 or src_offset + length > len(src) or dst_offset + length > len(dst):
        raise ValueError("CBC input must be whole blocks and fit the output")
    init, update = (
        (_lib.EVP_EncryptInit_ex, _lib.EVP_EncryptUpdate)
        if encrypt
        else (_lib.EVP_DecryptInit_ex, _lib.EVP_DecryptUpdate)
    )
    ctx = _lib.EVP_CIPHER_CTX_new()
    if not ctx:
        raise MemoryError("EVP_CIPHER_CTX_new failed")
    try:
        if init(ctx, _lib.EVP_aes_128_cbc(), None, key, iv) != 1:
            raise RuntimeError("EVP_CipherInit_ex failed")
        _lib.EVP_CIPHER_CTX_set_padding(ctx, 0)  # whole blocks in, whole blocks out, nothing held back
        done = 0
        out_len = ctypes.c_int()
        while done < length:
            n = min(_MAX_CALL, length - done)
            ok = update(
                ctx, _address(dst, dst_offset + done), ctypes.byref(out_len), _address(src, src_offset + done), n
            )
            if ok != 1 or out_len.value != n:
                raise RuntimeError("EVP_CipherUpdate failed")
            done += n
    finally:
        _lib.EVP_CIPHER_CTX_free(ctx)


def _encrypt_cryptography(
    key: bytes, iv: bytes, src: bytes | bytearray | memoryview, length: int, dst: bytearray, dst_offset: int
) -> None:
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    view = memoryview(dst)
    pos = dst_offset
    for start in range(0, length, 1 << 20):  # slices, so other threads get the GIL in between
        piece = memoryview(src)[start : min(start + (1 << 20), length)]
        pos += enc.update_into(piece, view[pos : pos + len(piece) + 16])
    enc.finalize()


def _known_answer() -> bool:
    key, iv = bytes(range(16)), bytes(range(16, 32))
    src = bytes(range(256)) * 64
    a, b, c = bytearray(len(src) + 16), bytearray(len(src) + 16), bytearray(len(src))
    _encrypt_cryptography(key, iv, src, len(src) - 16, a, 0)
    try:
        _crypt_openssl(True, key, iv, src, len(src) - 16, b, 0)
        _crypt_openssl(False, key, iv, b, len(src) - 16, c, 0)
    except Exception:
        return False
    n = len(src) - 16
    return a[:n] == b[:n] and any(b) and c[:n] == src[:n]


if _lib is not None and not _known_answer():
    _lib = None

BACKEND = "openssl-ctypes" if _lib is not None else "cryptography"


def cbc_encrypt_into(
    key: bytes, iv: bytes, src: bytes | bytearray | memoryview, length: int, dst: bytearray, dst_offset: int
) -> None:
    """Encrypt the first ``length`` bytes of ``src`` (whole blocks) with AES-128-CBC into
    ``dst[dst_offset:]``; no padding is added."""
    if _lib is not None:
        _crypt_openssl(True, key, iv, src, length, dst, dst_offset)
    else:
        _encrypt_cryptography(key, iv, src, length, dst, dst_offset)


def cbc_decrypt_into(
    key: bytes, iv: bytes, src: bytes | bytearray | memoryview, offset: int, length: int, dst: bytearray | memoryview
) -> None:
    """Decrypt ``src[offset:offset + length]`` (whole blocks) with AES-128-CBC into the start of
    ``dst``; the padding is left for the caller to check. (An offset, not a slice: a slice of a
    ``bytes`` token, as the cloud stores return them, would be a read-only view with no address.)"""
    if _lib is not None and not (isinstance(src, memoryview) and src.readonly):
        _crypt_openssl(False, key, iv, src, length, dst, 0, offset)
        return
    dec = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    n = dec.update_into(memoryview(src)[offset : offset + length], dst)
    dec.finalize()
    assert n == length
