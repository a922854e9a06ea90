"""``ckpt-sync key list`` / ``key add``: the repository's keys, when each was added, how many
checkpoints each opens; rotation keeps old checkpoints readable; on the local store and on S3."""

from __future__ import annotations

import json
import time

from cryptography.fernet import Fernet

from ckpt_sync.format.crypto import fingerprint
from ckpt_sync.format.keys import parse_keys


def _fp(key: str) -> str:
    return fingerprint(parse_keys(key, "test")[0])


def test_key_add_then_list_counts_what_each_key_opens(any_repo_url, cli, key, tmp_path, torch_checkpoint):
    started = time.time() - 5
    for step in (100, 200):
        p = torch_checkpoint(tmp_path / f"checkpoint_s1_{step}.pt", seed=step, step=step)
        cli("push", str(p), "--to", any_repo_url, check=True)
    listed = json.loads(cli("key", "list", "--from", any_repo_url, "--json", check=True).stdout)
    assert listed["keys"] == [{"fingerprint": _fp(key), "added": listed["keys"][0]["added"], "held": True, "opens": 2}]
    assert listed["keys"][0]["added"] >= started

    new = Fernet.generate_key().decode()
    new_file = tmp_path / "new.key"
    new_file.write_text(new + "\n")
    added = cli("key", "add", "--new-key-file", str(new_file), "--to", any_repo_url, check=True)
    assert _fp(new) in added.stdout and "FIRST" in added.stdout
    again = cli("key", "add", "--new-key-file", str(new_file), "--to", any_repo_url)
    assert again.returncode == 2 and "already has the key" in again.stderr

    # Rotated: the new key first encrypts, the old one still decrypts.
    both = {"BACKUP_ENCRYPTION_KEY": f"{new},{key}"}
    p = torch_checkpoint(tmp_path / "checkpoint_s1_300.pt", seed=3, step=300)
    cli("push", str(p), "--to", any_repo_url, env=both, check=True)
    listed = json.loads(cli("key", "list", "--from", any_repo_url, "--json", env=both, check=True).stdout)
    assert [(k["fingerprint"], k["held"], k["opens"]) for k in listed["keys"]] == [
        (_fp(key), True, 2),
        (_fp(new), True, 1),
    ]
    assert listed["checkpoints_no_key_of_yours_opens"] == 0
    # With the old key only: the new key is known but not held, and one checkpoint is out of reach.
    old_only = cli("key", "list", "--from", any_repo_url, "--json", check=True)
    data = json.loads(old_only.stdout)
    assert [(k["held"], k["opens"]) for k in data["keys"]] == [(True, 2), (False, None)]
    assert data["checkpoints_no_key_of_yours_opens"] == 1
    text = cli("key", "list", "--from", any_repo_url)
    assert "FINGERPRINT" in text.stdout and "1 checkpoint(s) are encrypted with a key not in your ring" in text.stderr
    assert cli("verify", "--read-data", "--from", any_repo_url, env=both).returncode == 0
