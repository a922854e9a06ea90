"""Binary Fernet tokens: standard Fernet reads them, whichever AES backend wrote them."""

from __future__ import annotations

import base64
import os
import subprocess
import sys

import blake3
import pytest
from cryptography.fernet import Fernet

from ckpt_sync.errors import IntegrityError
from ckpt_sync.format.crypto import HEADER, PIECE, FernetKey, KeyRing, token_size

# across the sizes a token is encrypted, MACed and decrypted in (PIECE at a time)
SIZES = [0, 1, 15, 16, 17, 4095, 4096, PIECE - 1, PIECE, PIECE + 1, 3 * PIECE + 17, (1 << 20) + 3]


@pytest.mark.parametrize("size", SIZES)
def test_tokens_are_standard_fernet_both_ways(size):
    key = Fernet.generate_key()
    ours = FernetKey(base64.urlsafe_b64decode(key))
    data = os.urandom(size)
    token = ours.encrypt(data)
    assert len(token) == token_size(size)
    assert Fernet(key).decrypt(base64.urlsafe_b64encode(bytes(token))) == data
    assert ours.decrypt(base64.urlsafe_b64decode(Fernet(key).encrypt(data))) == data


@pytest.mark.parametrize("size", [1000, 3 * PIECE + 5])
def test_any_altered_byte_fails_authentication(size):
    ours = FernetKey(os.urandom(32))
    token = ours.encrypt(os.urandom(size))
    places = (0, 5, HEADER, HEADER + PIECE - 1, HEADER + PIECE, len(token) // 2, len(token) - 33, len(token) - 1)
    for pos in [p for p in places if p < len(token)]:
        bad = bytearray(token)
        bad[pos] ^= 0x01
        with pytest.raises(IntegrityError):
            ours.decrypt(bad)
    with pytest.raises(IntegrityError):
        ours.decrypt(token[:-16])


def test_a_read_only_token_view_decrypts_the_same():
    ours = FernetKey(os.urandom(32))
    data = os.urandom(2 * PIECE + 100)
    token = bytes(ours.encrypt(data))
    assert bytes(ours.decrypt(memoryview(token))) == data  # read-only: no address for libcrypto
    assert bytes(ours.decrypt(bytearray(token), out=bytearray(len(token)))) == data


class Seen:
    def __init__(self) -> None:
        self.hash = blake3.blake3()
        self.fed = 0

    def update(self, piece: memoryview) -> None:
        self.hash.update(piece)
        self.fed += len(piece)


def test_the_check_sees_the_plaintext_of_the_key_that_authenticated_it():
    """After a rotation the ring decrypts with whichever key is right, and the plaintext check is the
    one fed by that key's pass (a wrong key's garbage is never what the caller checks)."""
    old, new = os.urandom(32), os.urandom(32)
    data = os.urandom(3 * PIECE + 7)
    token = FernetKey(old).encrypt(data)
    ring = KeyRing([new, old])
    for _ in range(2):  # the second time the right key is tried first
        plain, seen = ring.decrypt_and_check(token, Seen)
        assert bytes(plain) == data
        pad = 16 - len(data) % 16  # the check is fed every decrypted byte, PKCS7 padding included
        assert seen is not None and seen.hash.digest() == blake3.blake3(data + bytes([pad]) * pad).digest()
    with pytest.raises(IntegrityError):
        KeyRing([new]).decrypt_and_check(token, Seen)


BACKEND_CIPHERTEXT = """
import os, sys
from ckpt_sync.format import aes_openssl
from ckpt_sync.format.crypto import FernetKey, HEADER, MAC
data = bytes(range(256)) * 4099 + b"tail"
token = FernetKey(bytes(range(32))).encrypt(data, iv=bytes(16))
assert FernetKey(bytes(range(32))).decrypt(token) == data
print(aes_openssl.BACKEND, token[HEADER:-MAC].hex()[:4096], token[HEADER:-MAC].hex()[-4096:])
"""


def test_both_aes_backends_write_the_same_ciphertext():
    outputs = {}
    for choice in ("", "cryptography"):
        env = {**os.environ, "CKPT_SYNC_AES": choice}
        out = subprocess.run(
            [sys.executable, "-c", BACKEND_CIPHERTEXT], env=env, capture_output=True, text=True, check=True
        ).stdout.split()
        outputs[out[0]] = out[1:]
    assert "cryptography" in outputs
    if len(outputs) == 1:
        pytest.skip("no system libcrypto here: only the cryptography backend exists")
    assert outputs["openssl-ctypes"] == outputs["cryptography"]
