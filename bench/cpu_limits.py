"""The CPU's own limits, for reference: one core's Fernet-token encryption and plain file reading."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

from cryptography.fernet import Fernet

from ckpt_sync.format.crypto import FernetKey


def encryption_rate(chunk: int = 8 << 20, rounds: int = 16) -> tuple[float, float]:
    """(our binary token, cryptography's Fernet.encrypt) in bytes/s on one core."""
    data = os.urandom(chunk)
    key = Fernet.generate_key()
    ours = FernetKey(base64.urlsafe_b64decode(key))
    start = time.perf_counter()
    for _ in range(rounds):
        ours.encrypt(data)
    binary = chunk * rounds / (time.perf_counter() - start)
    f = Fernet(key)
    start = time.perf_counter()
    for _ in range(max(2, rounds // 4)):
        f.encrypt(data)
    standard = chunk * max(2, rounds // 4) / (time.perf_counter() - start)
    return binary, standard


def read_rate(path: Path, block: int = 8 << 20) -> float:
    """Sequential read of ``path`` in bytes/s (whatever the page cache holds of it, as our push sees it)."""
    start = time.perf_counter()
    n = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(block):
            n += len(chunk)
    return n / (time.perf_counter() - start)
