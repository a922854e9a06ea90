"""docs/FORMAT.md is enough to recover data: this test follows it with plain `cryptography` only.

Deliberately imports nothing from ckpt_sync (the push runs as a separate process).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys

from cryptography.fernet import Fernet


def test_format_doc_alone_rebuilds_a_file_byte_for_byte(tmp_path, key, repo_dir, torch_checkpoint):
    ckpt = torch_checkpoint(tmp_path / "checkpoint_abc_5.pt", hidden=384)
    subprocess.run(
        [sys.executable, "-m", "ckpt_sync.cli", "push", "--repo", str(repo_dir), str(ckpt), "--chunk-size", "128K"],
        check=True,
        capture_output=True,
    )

    fernet = Fernet(key.encode())

    def read(name: str) -> bytes:
        return fernet.decrypt(base64.urlsafe_b64encode((repo_dir / name).read_bytes()))

    config = json.loads((repo_dir / "config").read_text())
    assert config["format"] == "ckpt-sync" and config["version"] == 1
    raw_key = base64.urlsafe_b64decode(key)
    fingerprint = hmac.digest(raw_key, b"ckpt-sync key fingerprint v1", "sha256")[:16].hex()
    id_key = fernet.decrypt(config["keys"][fingerprint].encode())

    names = sorted(p.name for p in (repo_dir / "manifests").iterdir())
    manifest = json.loads(read(f"manifests/{names[-1]}"))
    assert manifest["version"] == 1 and manifest["id"] == names[-1]
    assert manifest["name"] == ckpt.name and manifest["global_step"] == 5
    (entry,) = manifest["files"]
    assert len(entry["chunks"]) > 1

    pieces = []
    for cid, size in entry["chunks"]:
        obj = (repo_dir / "chunks" / cid[:2] / cid).read_bytes()
        assert len(obj) == 57 + 16 * (size // 16 + 1)
        plain = read(f"chunks/{cid[:2]}/{cid}")
        assert len(plain) == size
        assert hmac.digest(id_key, plain, "sha256").hex() == cid
        pieces.append(plain)
    data = b"".join(pieces)
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert data == ckpt.read_bytes()
