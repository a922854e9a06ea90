"""The repository ``config`` object is checked strictly (one clear line, exit 2, never "unexpected"),
key rotation never loses an entry when two hosts rotate at once, and ``status`` fails on a wrong key."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import threading

import pytest
from ckpt_sync.providers.local import LocalProvider
from ckpt_sync.providers.wrapper import WrappingProvider
from cryptography.fernet import Fernet

from ckpt_sync.errors import KeyMismatchError
from ckpt_sync.format.crypto import KeyRing
from ckpt_sync.format.repository import Repository


@pytest.fixture
def config_path(tmp_path, key, repo_url, repo_dir, cli):
    src = tmp_path / "a.pt"
    src.write_bytes(os.urandom(1000))
    cli("push", "--repo", repo_url, str(src), check=True)
    return repo_dir / "config"


def _variants(good: dict) -> dict[str, tuple[bytes, str]]:
    (fp, entry), = good["keys"].items()

    def with_(**kw):
        return json.dumps({**good, **kw}).encode()

    other_key_token = Fernet(Fernet.generate_key()).encrypt(os.urandom(32)).decode()
    return {
        "version is a string": (with_(version="1"), "version '1' is not an integer"),
        "version 0": (with_(version=0), "there is no format version 0"),
        "version -3": (with_(version=-3), "there is no format version -3"),
        "no key entry": (with_(keys={}), "holds no key entry"),
        "entry is a number": (with_(keys={fp: 5}), "a key entry is not"),
        "keys is a list": (with_(keys=[entry]), "keys is not an object"),
        "deep nesting": (b'{"format": "ckpt-sync", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "too deeply"),
        "entry fails to decrypt": (with_(keys={fp: other_key_token}), "key entry fails to decrypt"),
        "created is NaN": (with_(created=float("nan")), "is damaged"),
        "not an object": (b"[1, 2]", "is not a ckpt-sync repository"),
    }


def test_every_malformed_config_is_one_clear_line_exit_2(config_path, repo_url, cli):
    good = json.loads(config_path.read_text())
    for i, (what, (raw, needle)) in enumerate(_variants(good).items()):
        config_path.write_bytes(raw)
        for verb in (["ls"], ["verify"], ["prune", "--dry-run"])[: 3 if i < 2 else 1]:
            proc = cli(*verb, "--repo", repo_url)
            lines = proc.stderr.strip().splitlines()
            assert proc.returncode == 2 and len(lines) == 1, (what, proc.stderr)
            assert needle in lines[0] and "unexpected" not in lines[0], (what, lines[0])
            assert "does not match" not in lines[0], (what, lines[0])


def test_status_with_a_wrong_key_exits_non_zero(tmp_path, key, repo_url, cli):
    watched = tmp_path / "watched"
    watched.mkdir()
    (watched / "checkpoint_s_1.pt").write_bytes(os.urandom(1000))
    cli("watch", str(watched), "--once", "--settle", "0", "--repo", repo_url, check=True)
    cli("status", str(watched), "--repo", repo_url, check=True)
    other = {"BACKUP_ENCRYPTION_KEY": Fernet.generate_key().decode()}
    wrong = cli("status", str(watched), "--repo", repo_url, env=other)
    assert wrong.returncode == 2 and "does not match" in wrong.stderr, wrong.stderr


class _HostsReadTogether(WrappingProvider):
    """Every host reads ``config`` before any writes: the race between two rotations, made certain."""

    def __init__(self, inner, barrier: threading.Barrier) -> None:
        super().__init__(inner)
        self.barrier = barrier

    def get(self, key, start=0, length=None):
        data = super().get(key, start, length)
        if key == "config":
            with contextlib.suppress(threading.BrokenBarrierError):
                self.barrier.wait(timeout=5)
        return data


def test_two_concurrent_key_rotations_both_keep_their_key(tmp_path):
    old = Fernet.generate_key()
    root = tmp_path / "repo"
    Repository.open(LocalProvider(root), KeyRing([base64.urlsafe_b64decode(old)]), create=True)
    new = [base64.urlsafe_b64decode(Fernet.generate_key()) for _ in range(2)]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def rotate(new_key: bytes) -> None:
        try:
            ring = KeyRing([new_key, base64.urlsafe_b64decode(old)])  # the new key first: it is recorded
            Repository.open(_HostsReadTogether(LocalProvider(root), barrier), ring, create=True)
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=rotate, args=(k,)) for k in new]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for k in new:  # each new key alone opens the repository: neither entry was lost
        try:
            Repository.open(LocalProvider(root), KeyRing([k]))
        except KeyMismatchError as e:
            pytest.fail(f"a rotated key was lost: {e}")
