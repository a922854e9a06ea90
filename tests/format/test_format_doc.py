"""docs/FORMAT.md is enough to recover data: this test follows it with plain `cryptography` (plus
`zstandard` for compressed chunks and `blake3` for format-2 chunk ids) only, for every repository
format and chunk encoding a user can choose.

Deliberately imports nothing from ckpt_sync (the push runs as a separate process).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys

import blake3
import pytest
import torch
import zstandard
from cryptography.fernet import Fernet

HEADER = 25  # 0x80 | timestamp (8) | IV (16)


def _token_size(n: int) -> int:
    return 57 + 16 * (n // 16 + 1)


def _padme(n: int) -> int:
    """FORMAT.md's padme(n), written from its text."""
    m = max(n, 256)
    e = m.bit_length() - 1
    s = e.bit_length()
    step = 2 ** (e - s)
    return -(-m // step) * step


def _config_mac(id_key: bytes, config: dict) -> str:
    """FORMAT.md's config MAC, written from its text."""
    body = {k: v for k, v in config.items() if k != "mac"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    return hmac.new(hmac.digest(id_key, b"ckpt-sync config mac v1", "sha256"), canonical, "sha256").hexdigest()


def _checkpoint(path):
    """A real torch.save with a model (floats), a compressible buffer and an incompressible one, so a
    compressing repository stores both compressed and raw chunks."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(384, 384), torch.nn.ReLU(), torch.nn.Linear(384, 384))
    torch.save(
        {
            "model_state_dict": model.state_dict(),
            "mask": torch.zeros(300_000),
            "noise": torch.randint(0, 256, (400_000,), dtype=torch.uint8),
            "global_step": 5,
        },
        path,
    )
    return path


@pytest.mark.parametrize(
    "options",
    [["--format", "1"], [], ["--pad"], ["--compression", "zstd"], ["--pad", "--compression", "zstd", "--sha256"]],
    ids=["v1", "v2", "v2-pad", "v2-zstd", "v2-pad-zstd-sha256"],
)
def test_format_doc_alone_rebuilds_a_file_byte_for_byte(tmp_path, key, repo_dir, options):
    ckpt = _checkpoint(tmp_path / "checkpoint_abc_5.pt")
    push = [sys.executable, "-m", "ckpt_sync.cli", "push", "--repo", str(repo_dir), str(ckpt), "--chunk-size", "128K"]
    subprocess.run(
        [*push, *options],
        check=True,
        capture_output=True,
    )

    fernet = Fernet(key.encode())

    def read(name: str) -> bytes:
        return fernet.decrypt(base64.urlsafe_b64encode((repo_dir / name).read_bytes()))

    config = json.loads((repo_dir / "config").read_text())
    version = config["version"]
    assert config["format"] == "ckpt-sync" and version == (1 if "1" in options else 2)
    assert config["chunk_id"] == {1: "hmac-sha256", 2: "blake3-keyed"}[version]
    pad, compression = config.get("pad", 0), config.get("compression")
    assert pad == (1 if "--pad" in options else 0) and compression == ("zstd" if "zstd" in options else None)
    raw_key = base64.urlsafe_b64decode(key)
    fingerprint = hmac.digest(raw_key, b"ckpt-sync key fingerprint v1", "sha256")[:16].hex()
    id_key = fernet.decrypt(config["keys"][fingerprint].encode())
    assert _config_mac(id_key, config) == config["mac"]  # section "Authentication"

    names = sorted(p.name for p in (repo_dir / "manifests").iterdir())
    manifest = json.loads(read(f"manifests/{names[-1]}"))
    assert manifest["version"] == 1 and manifest["id"] == names[-1]
    assert manifest["repository"]["authenticated"] is True
    assert manifest["name"] == ckpt.name and manifest["global_step"] == 5
    (entry,) = manifest["files"]
    assert len(entry["chunks"]) > 3

    pieces, kinds = [], set()
    for cid, size in entry["chunks"]:
        obj = (repo_dir / "chunks" / cid[:2] / cid).read_bytes()
        stored_size = _padme(size) if pad else size
        stored = read(f"chunks/{cid[:2]}/{cid}")
        assert len(obj) == _token_size(len(stored)) <= _token_size(stored_size)
        if len(stored) == stored_size:
            plain = stored[:size]
            kinds.add("raw")
        else:
            assert compression == "zstd" and len(stored) < size
            plain = zstandard.ZstdDecompressor().decompress(stored, max_output_size=size)
            kinds.add("zstd")
        assert len(plain) == size
        if version == 1:
            assert hmac.digest(id_key, plain, "sha256").hex() == cid
        else:
            assert blake3.blake3(plain, key=id_key).hexdigest() == cid
            iv = hmac.digest(id_key, b"ckpt-sync chunk iv v2" + bytes.fromhex(cid), "sha256")[:16]
            assert obj[9:HEADER] == iv
        pieces.append(plain)
    data = b"".join(pieces)
    assert kinds == ({"raw", "zstd"} if compression else {"raw"})
    if version == 1 or "--sha256" in options:
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    else:
        assert "sha256" not in entry
    if version == 2:  # the chunk ids, checked above, are the file's hash: no whole-file pass recorded
        assert "blake3" not in entry
    assert data == ckpt.read_bytes()


def test_format_doc_alone_checks_a_key_entry_added_later(tmp_path, key, repo_dir):
    ckpt = _checkpoint(tmp_path / "checkpoint_abc_5.pt")
    cli = [sys.executable, "-m", "ckpt_sync.cli"]
    subprocess.run([*cli, "push", "--repo", str(repo_dir), str(ckpt)], check=True, capture_output=True)
    second = Fernet.generate_key()
    new_key = tmp_path / "new.key"
    new_key.write_bytes(second + b"\n")
    new_key.chmod(0o600)
    add = [*cli, "key", "add", "--repo", str(repo_dir), "--new-key-file", str(new_key)]
    subprocess.run(add, check=True, capture_output=True)

    config = json.loads((repo_dir / "config").read_text())
    fingerprint = hmac.digest(base64.urlsafe_b64decode(key), b"ckpt-sync key fingerprint v1", "sha256")[:16].hex()
    id_key = Fernet(key.encode()).decrypt(config["keys"][fingerprint].encode())
    new_fp = hmac.digest(base64.urlsafe_b64decode(second), b"ckpt-sync key fingerprint v1", "sha256")[:16].hex()
    entry = json.loads((repo_dir / "keys" / new_fp).read_text())
    k_k = hmac.digest(id_key, b"ckpt-sync key entry mac v1", "sha256")
    assert hmac.new(k_k, f"{new_fp}\n{entry['token']}".encode(), "sha256").hexdigest() == entry["mac"]
    assert Fernet(second).decrypt(entry["token"].encode()) == id_key  # the new key unwraps the same id key
