"""Inside a checkpoint: ``ls ID`` lists its files, ``pull --include/--exclude`` restores part of a
folder checkpoint (still verified, still staged), ``cat ID PATH`` streams one verified file; on the
local store and on S3."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from helpers import flip_chunk_byte, make_folder_checkpoint

import ckpt_sync
from ckpt_sync.api import open_repository

Cli = Callable[..., subprocess.CompletedProcess[str]]


def _push_folder(cli: Cli, url: str, tmp_path: Path) -> tuple[Path, str]:
    src = make_folder_checkpoint(tmp_path / "src" / "step_100")
    pushed = json.loads(cli("push", str(src), "--to", url, "--chunk-size", "64K", "--json", check=True).stdout)
    return src, pushed[0]["id"]


def _files(src: Path) -> dict[str, bytes]:
    return {p.relative_to(src).as_posix(): p.read_bytes() for p in sorted(src.rglob("*")) if p.is_file()}


def test_ls_of_a_checkpoint_lists_its_files_with_size_and_hash(any_repo_url, cli, key, tmp_path):
    """Format 2 records no whole-file hash (a file's chunk ids are its hash), and SHA-256 when the
    repository was created with --sha256; ls shows the columns recorded."""
    src, cid = _push_folder(cli, any_repo_url, tmp_path)
    for selector in (cid, cid[:16], "step_100", "latest"):
        listed = json.loads(cli("ls", selector, "--from", any_repo_url, "--json", check=True).stdout)
        expected = [{"path": p, "size": len(b), "sha256": None, "blake3": None} for p, b in _files(src).items()]
        assert listed == expected
    text = cli("ls", cid, "--from", any_repo_url, check=True).stdout
    assert text.splitlines()[0].split() == ["PATH", "SIZE"]
    assert "optim/state.pt" in text
    assert [f.path for f in ckpt_sync.checkpoint(cid, any_repo_url).files] == list(_files(src))


def test_pull_include_and_exclude_restore_part_of_a_folder_checkpoint(any_repo_url, cli, key, tmp_path):
    src, cid = _push_folder(cli, any_repo_url, tmp_path)
    out = tmp_path / "out"
    proc = cli(
        "pull", cid, "--from", any_repo_url, "--to", str(out), "--include", "*.pt", "--exclude", "optim/*", "--json",
        check=True,
    )
    report = json.loads(proc.stdout)
    assert report["restored"] and report["id"] == cid and report["paths"] == ["model.pt"]
    restored = _files(out / "step_100")
    assert restored == {"model.pt": (src / "model.pt").read_bytes()}
    # The library call does the same.
    ckpt_sync.pull(tmp_path / "lib", any_repo_url, checkpoint=cid, include=["optim/*", "*.json"])
    assert _files(tmp_path / "lib" / "step_100") == {k: v for k, v in _files(src).items() if k != "model.pt"}


def test_a_partial_pull_still_verifies_what_it_restores(any_repo_url, cli, key, tmp_path):
    src, cid = _push_folder(cli, any_repo_url, tmp_path)
    repo = open_repository(any_repo_url)
    entry = {f.path: f for f in ckpt_sync.checkpoint(cid, repo).files}["optim/state.pt"]
    model_chunks = {c.id for c in {f.path: f for f in repo.load_manifest(cid).files}["model.pt"].chunks}
    victim = next(c.id for c in entry.chunks if c.id not in model_chunks)
    flip_chunk_byte(any_repo_url, victim)

    # The damaged file is excluded: the rest restores.
    ok = cli("pull", cid, "--from", any_repo_url, "--to", str(tmp_path / "a"), "--include", "model.pt")
    assert ok.returncode == 0, ok.stderr
    assert _files(tmp_path / "a" / "step_100") == {"model.pt": (src / "model.pt").read_bytes()}
    # The damaged file is included: exit 1, one line, nothing under a final name.
    bad = cli("pull", cid, "--from", any_repo_url, "--to", str(tmp_path / "b"), "--include", "optim/*")
    assert bad.returncode == 1 and "ckpt-sync: error:" in bad.stderr, bad.stderr
    assert not [p for p in (tmp_path / "b").rglob("*") if p.is_file() and not p.name.startswith(".")]


def test_a_glob_matching_nothing_is_a_usage_error_naming_the_files(any_repo_url, cli, key, tmp_path):
    _, cid = _push_folder(cli, any_repo_url, tmp_path)
    proc = cli("pull", cid, "--from", any_repo_url, "--to", str(tmp_path / "o"), "--include", "*.safetensors")
    assert proc.returncode == 2 and "matches --include/--exclude" in proc.stderr and "model.pt" in proc.stderr
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("*.pt"))


def test_cat_streams_one_verified_file_and_fails_on_a_flipped_chunk(any_repo_url, cli, key, tmp_path):
    src, cid = _push_folder(cli, any_repo_url, tmp_path)
    proc = subprocess.run(
        [*cli_argv(), "cat", cid, "optim/state.pt", "--from", any_repo_url], capture_output=True, check=True
    )
    assert proc.stdout == (src / "optim" / "state.pt").read_bytes()
    missing = cli("cat", cid, "nope.pt", "--from", any_repo_url)
    assert missing.returncode == 2 and "has no file 'nope.pt'" in missing.stderr
    entry = {f.path: f for f in ckpt_sync.checkpoint(cid, any_repo_url).files}["meta.json"]
    flip_chunk_byte(any_repo_url, entry.chunks[0].id)
    bad = subprocess.run([*cli_argv(), "cat", cid, "meta.json", "--from", any_repo_url], capture_output=True)
    assert bad.returncode == 1 and bad.stdout == b"" and b"ckpt-sync: error:" in bad.stderr


def cli_argv() -> list[str]:
    import sys

    return [sys.executable, "-m", "ckpt_sync.cli"]
