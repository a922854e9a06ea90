"""Every wrong key, URL, path or full disk: one clear line on stderr, the right exit code, no data lost."""

from __future__ import annotations

import os
import subprocess

import pytest
from cryptography.fernet import Fernet
from helpers import one_error_line as _one_line


def _snapshot(folder):
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_wrong_key_exits_2_with_one_line_and_writes_nothing(tmp_path, key, repo_url, repo_dir, torch_checkpoint, cli):
    ckpt = torch_checkpoint(tmp_path / "c.pt")
    cli("push", "--repo", repo_url, str(ckpt), check=True)
    before = _snapshot(repo_dir)
    other = Fernet.generate_key().decode()
    for args in (["push", str(ckpt)], ["ls"], ["pull", "--latest", "--to", str(tmp_path / "o")], ["verify"]):
        proc = cli(*args, "--repo", repo_url, env={"BACKUP_ENCRYPTION_KEY": other})
        line = _one_line(proc, 2, "key does not match")
        assert other not in line and key not in line
    assert _snapshot(repo_dir) == before
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_key_rotation_first_key_encrypts_all_keys_decrypt(tmp_path, key, repo_url, torch_checkpoint, cli):
    old_ckpt = torch_checkpoint(tmp_path / "old.pt", seed=1)
    cli("push", "--repo", repo_url, str(old_ckpt), check=True)
    new = Fernet.generate_key().decode()
    ring = tmp_path / "keys"
    ring.write_text(f"{new}\n{key}\n")
    new_ckpt = torch_checkpoint(tmp_path / "new.pt", seed=2)
    cli("push", "--repo", repo_url, "--key-file", str(ring), str(new_ckpt), check=True)

    # The ring reads both; the new key alone opens the repository and reads what it encrypted.
    for name, src in (("old.pt", old_ckpt), ("new.pt", new_ckpt)):
        cli("pull", name, "--repo", repo_url, "--key-file", str(ring), "--to", str(tmp_path / "ring"), check=True)
        assert (tmp_path / "ring" / name).read_bytes() == src.read_bytes()
    cli(
        "pull",
        "new.pt",
        "--repo",
        repo_url,
        "--to",
        str(tmp_path / "n"),
        env={"BACKUP_ENCRYPTION_KEY": new},
        check=True,
    )
    assert (tmp_path / "n" / "new.pt").read_bytes() == new_ckpt.read_bytes()
    # Data written before the rotation still needs the old key: retiring it is not silent.
    old_only = cli(
        "pull", "old.pt", "--repo", repo_url, "--to", str(tmp_path / "x"), env={"BACKUP_ENCRYPTION_KEY": new}
    )
    _one_line(old_only, 1, "could not be decrypted with the given key")


@pytest.mark.parametrize(
    ("env_key", "needle"),
    [(None, "no encryption key"), ("not-a-key", "is not a Fernet key"), ("", "no encryption key")],
)
def test_missing_or_malformed_key(tmp_path, repo_url, cli, env_key, needle):
    env = {} if env_key is None else {"BACKUP_ENCRYPTION_KEY": env_key}
    proc = cli("ls", "--repo", repo_url, env=env)
    line = _one_line(proc, 2, needle)
    if env_key:
        assert env_key not in line


def test_missing_key_file(tmp_path, repo_url, cli):
    proc = cli("ls", "--repo", repo_url, "--key-file", str(tmp_path / "nope"))
    _one_line(proc, 2, "does not exist", "suits only a new")


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("ftp://host/x", "unknown repository URL scheme ftp://"),
        ("s3:/bucket/x", "malformed repository URL"),
        ("file://remotehost/x", "not a local folder URL"),
    ],
)
def test_bad_repository_urls(key, cli, url, needle):
    _one_line(cli("ls", "--repo", url), 2, needle)


def test_reading_a_folder_that_is_not_a_repository(tmp_path, key, cli):
    _one_line(cli("ls", "--repo", str(tmp_path)), 2, "no ckpt-sync repository", str(tmp_path))


def test_push_of_a_missing_path(tmp_path, key, repo_url, cli):
    _one_line(cli("push", "--repo", repo_url, str(tmp_path / "missing.pt")), 2, "does not exist")


def test_pull_needs_latest_or_a_name(tmp_path, key, repo_url, cli):
    _one_line(cli("pull", "--repo", repo_url), 2, "--latest")


def test_pull_from_an_empty_repository_exits_1(tmp_path, key, repo_url, torch_checkpoint, cli):
    import ckpt_sync

    ckpt_sync.open_repository(repo_url, create=True)
    _one_line(cli("pull", "--latest", "--repo", repo_url, "--to", str(tmp_path / "o")), 1, "no checkpoints")


@pytest.fixture
def tiny_disk(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", str(mnt)]).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_on_push_commits_nothing(tmp_path, key, tiny_disk, cli):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(6 << 20))
    repo = tiny_disk / "repo"
    _one_line(cli("push", "--repo", str(repo), str(big), "--chunk-size", "512K"), 1, "no space left on device")
    assert not (repo / "manifests").exists() or not list((repo / "manifests").iterdir())
    assert big.stat().st_size == 6 << 20


def test_full_disk_on_pull_leaves_no_partial_file(tmp_path, key, repo_url, tiny_disk, cli):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(6 << 20))
    cli("push", "--repo", repo_url, str(big), check=True)
    _one_line(cli("pull", "--latest", "--repo", repo_url, "--to", str(tiny_disk)), 1, "space")
    assert list(tiny_disk.iterdir()) == []


def test_unexpected_errors_are_one_line_unless_debug(tmp_path, key, repo_url, cli):
    target = tmp_path / "file-not-folder"
    target.write_text("x")
    proc = cli("push", "--repo", str(target), str(target))
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1
    debug = cli("push", "--repo", str(target), str(target), "--debug")
    assert "Traceback" in debug.stderr


@pytest.mark.parametrize("size", ["16K", "1G"])
def test_a_chunk_size_out_of_range_is_one_usage_line(cli, key, repo_url, tmp_path, size):
    src = tmp_path / "a.bin"
    src.write_bytes(b"x" * 1000)
    proc = cli("push", str(src), "--to", repo_url, "--chunk-size", size)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "chunk size" in lines[0] and "64K to 256M" in lines[0], proc.stderr
    assert "unexpected" not in proc.stderr
