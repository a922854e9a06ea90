"""``ckpt-sync init``: creates the repository (and with --create-bucket the bucket or container), prints
its id and key fingerprint, makes a key only when none is configured and the repository is new."""

from __future__ import annotations

import json
import uuid

from conftest import Cloud


def test_init_on_each_cloud_creates_the_bucket_and_the_repository(cloud: Cloud, key, cli, tmp_path):
    bucket = f"t-{uuid.uuid4().hex[:16]}"
    cloud.buckets.append(bucket)  # dropped after the test
    url = cloud.url(bucket, "runs/run42")
    # Without --create-bucket a missing bucket is refused (nothing is created by surprise).
    missing = cli("init", "--repo", url)
    assert missing.returncode == 2 and "does not exist" in missing.stderr, missing.stderr
    made = cli("init", "--repo", url, "--create-bucket", check=True).stdout
    assert f"initialised repository {url}: id " in made and "key fingerprint " in made
    assert "created the " in made
    assert any(k.endswith("runs/run42/config") for k in cloud.keys(bucket))
    again = json.loads(cli("init", "--repo", url, "--create-bucket", "--json", check=True).stdout)
    assert again["created"] is False and again["bucket_created"] is False
    assert again["id"] in made and again["key_fingerprint"] in made
    # And it is the repository every other verb uses.
    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(b"x" * 1000)
    cli("push", str(ckpt), "--to", url, check=True)
    assert [m["name"] for m in json.loads(cli("ls", "--from", url, "--json", check=True).stdout)] == ["c.pt"]


def test_init_makes_a_key_only_for_a_new_repository(isolated_home, cli, tmp_path):
    url = (tmp_path / "repo").as_uri()
    out = cli("init", "--repo", url, check=True).stdout
    key_file = isolated_home / ".config" / "ckpt-sync" / "key"
    assert f"made a new key in {key_file}" in out and key_file.stat().st_mode & 0o777 == 0o600
    fingerprint = out.strip().rsplit("key fingerprint ", 1)[1]
    assert json.loads(cli("init", "--repo", url, "--json", check=True).stdout)["key_fingerprint"] == fingerprint
    # An existing repository and no key: never a new key that could not read it.
    key_file.unlink()
    refused = cli("init", "--repo", url)
    assert refused.returncode == 2 and "no encryption key" in refused.stderr and not key_file.exists()


def test_init_with_the_wrong_key_is_refused(key, cli, tmp_path, monkeypatch):
    url = (tmp_path / "repo").as_uri()
    cli("init", "--repo", url, check=True)
    from cryptography.fernet import Fernet

    other = cli("init", "--repo", url, env={"BACKUP_ENCRYPTION_KEY": Fernet.generate_key().decode()})
    assert other.returncode == 2 and "the key does not match" in other.stderr


def test_init_has_help(cli):
    assert "--create-bucket" in cli("init", "--help", check=True).stdout
