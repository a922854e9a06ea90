"""Craft repository objects as an adversary (or a buggy writer) with the key would: plain
``cryptography`` and docs/FORMAT.md only, nothing of ckpt_sync."""

from __future__ import annotations

import base64
import json
import secrets
import time
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet


def seal(key: str, plaintext: bytes) -> bytes:
    """A binary Fernet token (FORMAT.md): the base64url-decoded standard token."""
    return base64.urlsafe_b64decode(Fernet(key.encode()).encrypt(plaintext))


def unseal(key: str, obj: bytes) -> bytes:
    return Fernet(key.encode()).decrypt(base64.urlsafe_b64encode(obj))


def manifest_names(repo_dir: Path) -> list[str]:
    return sorted(p.name for p in (repo_dir / "manifests").iterdir() if not p.name.startswith("."))


def read_manifest(repo_dir: Path, key: str, mid: str) -> dict[str, Any]:
    return json.loads(unseal(key, (repo_dir / "manifests" / mid).read_bytes()))


def newer_id(offset_ms: int = 1000) -> str:
    """A manifest id that sorts after every one committed so far."""
    return f"{int(time.time() * 1000) + offset_ms:013d}-{secrets.token_hex(8)}"


def write_manifest(repo_dir: Path, key: str, mid: str, content: Any) -> Path:
    """Store ``content`` (a dict/list/str made JSON, or raw bytes) as manifest ``mid``, authentically encrypted."""
    raw = content if isinstance(content, bytes) else json.dumps(content).encode()
    path = repo_dir / "manifests" / mid
    path.write_bytes(seal(key, raw))
    return path


def sparse_file(path: Path, size: int) -> Path:
    """A ``size``-byte object that costs no disk (a store returning a huge object)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
    return path
