"""Binary Fernet tokens: standard Fernet reads them, whichever AES backend wrote them."""

from __future__ import annotations

import base64
import os
import subprocess
import sys

import pytest
from cryptography.fernet import Fernet

from ckpt_sync.errors import IntegrityError
from ckpt_sync.format.crypto import HEADER, FernetKey, token_size

SIZES = [0, 1, 15, 16, 17, 4095, 4096, (1 << 20) + 3]


@pytest.mark.parametrize("size", SIZES)
def test_tokens_are_standard_fernet_both_ways(size):
    key = Fernet.generate_key()
    ours = FernetKey(base64.urlsafe_b64decode(key))
    data = os.urandom(size)
    token = ours.encrypt(data)
    assert len(token) == token_size(size)
    assert Fernet(key).decrypt(base64.urlsafe_b64encode(bytes(token))) == data
    assert ours.decrypt(base64.urlsafe_b64decode(Fernet(key).encrypt(data))) == data


def test_any_altered_byte_fails_authentication():
    ours = FernetKey(os.urandom(32))
    token = ours.encrypt(os.urandom(1000))
    for pos in (0, 5, HEADER, len(token) // 2, len(token) - 1):
        bad = bytearray(token)
        bad[pos] ^= 0x01
        with pytest.raises(IntegrityError):
            ours.decrypt(bad)
    with pytest.raises(IntegrityError):
        ours.decrypt(token[:-16])


BACKEND_CIPHERTEXT = """
import os, sys
from ckpt_sync.format import aes_openssl
from ckpt_sync.format.crypto import FernetKey, HEADER, MAC
data = bytes(range(256)) * 4099 + b"tail"
token = FernetKey(bytes(range(32))).encrypt(data, iv=bytes(16))
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
