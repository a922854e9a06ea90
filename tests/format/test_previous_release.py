"""A repository written by the previous release (tests/data/legacy-0.1, made by ckpt-sync at bc0f554:
no config MAC, a bare-token key entry) opens and works unchanged, and gains its MACs on the first
write by a key holder; from then on, a key entry without a MAC is ignored."""

from __future__ import annotations

import base64
import hmac
import json
import shutil
from pathlib import Path

from cryptography.fernet import Fernet

DATA = Path(__file__).resolve().parents[1] / "data" / "legacy-0.1"


def _fingerprint(raw: bytes) -> str:
    return hmac.digest(base64.urlsafe_b64decode(raw), b"ckpt-sync key fingerprint v1", "sha256")[:16].hex()


def _legacy(tmp_path: Path) -> tuple[Path, list[str]]:
    repo = tmp_path / "repo"
    shutil.copytree(DATA / "repo", repo)
    keys = tmp_path / "keys"
    shutil.copy(DATA / "keys-both", keys)
    keys.chmod(0o600)
    return repo, ["--key-file", str(keys), "--repo", str(repo)]


def _state(repo: Path) -> dict[str, bytes]:
    return {str(p.relative_to(repo)): p.read_bytes() for p in sorted(repo.rglob("*")) if p.is_file()}


def test_a_previous_release_repository_reads_unchanged_and_is_not_written_by_readers(tmp_path, cli):
    repo, opts = _legacy(tmp_path)
    before = _state(repo)
    listed = json.loads(cli("ls", "--json", *opts, check=True).stdout)
    assert [m["name"] for m in listed] == ["checkpoint_20261101_090000_200.pt", "checkpoint_20261101_090000_100.pt"]
    dest = tmp_path / "dest"
    cli("pull", "--latest", "--to", str(dest), *opts, check=True)
    name = "checkpoint_20261101_090000_200.pt"
    assert (dest / name).read_bytes() == (DATA / "src" / name).read_bytes()
    assert "2 of 2 checkpoint(s) sound" in cli("verify", "--read-data", *opts, check=True).stdout
    keys = json.loads(cli("key", "list", "--json", *opts, check=True).stdout)
    assert len(keys["keys"]) == 2 and keys["foreign_key_entries"] == []
    assert _state(repo) == before  # reading never rewrites anything


def test_a_previous_release_repository_gains_its_macs_on_the_first_write_and_then_ignores_planted_keys(
    tmp_path, cli, torch_checkpoint
):
    repo, opts = _legacy(tmp_path)
    new, old = (line.encode() for line in (DATA / "keys-both").read_text().split())
    legacy_entry = (repo / "keys" / _fingerprint(new)).read_text()
    assert not legacy_entry.startswith("{") and "mac" not in json.loads((repo / "config").read_text())

    third = torch_checkpoint(tmp_path / "checkpoint_20261101_090000_300.pt", hidden=24, layers=2, seed=3)
    cli("push", str(third), *opts, check=True)

    # docs/FORMAT.md, "Authentication", with plain cryptography: both MACs are there and right.
    config = json.loads((repo / "config").read_text())
    id_key = Fernet(old).decrypt(config["keys"][_fingerprint(old)].encode())
    body = json.dumps({k: v for k, v in config.items() if k != "mac"}, sort_keys=True, separators=(",", ":"))
    k_c = hmac.digest(id_key, b"ckpt-sync config mac v1", "sha256")
    assert hmac.new(k_c, body.encode(), "sha256").hexdigest() == config["mac"]
    entry = json.loads((repo / "keys" / _fingerprint(new)).read_text())
    assert entry["token"] == legacy_entry.strip()  # sealed as found
    k_k = hmac.digest(id_key, b"ckpt-sync key entry mac v1", "sha256")
    assert hmac.new(k_k, f"{_fingerprint(new)}\n{entry['token']}".encode(), "sha256").hexdigest() == entry["mac"]

    assert "3 of 3 checkpoint(s) sound" in cli("verify", "--read-data", *opts, check=True).stdout
    dest = tmp_path / "dest"
    cli("pull", "checkpoint_20261101_090000_100.pt", "--to", str(dest), *opts, check=True)
    first = "checkpoint_20261101_090000_100.pt"
    assert (dest / first).read_bytes() == (DATA / "src" / first).read_bytes()

    # Authenticated now: an entry in the old form (a bare token) is no longer trusted.
    planted = Fernet.generate_key()
    (repo / "keys" / _fingerprint(planted)).write_text(Fernet(planted).encrypt(b"x" * 32).decode())
    keys = json.loads(cli("key", "list", "--json", *opts, check=True).stdout)
    assert keys["foreign_key_entries"] == [_fingerprint(planted)] and len(keys["keys"]) == 2
    cli("pull", "--latest", "--to", str(tmp_path / "again"), *opts, check=True)
