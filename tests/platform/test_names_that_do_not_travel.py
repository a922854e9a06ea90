"""A checkpoint saved on Linux may hold names another host cannot: a pull there refuses it in one
line naming the file, exits non-zero, and leaves the target folder as it was (simulated hosts:
simulate.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers import make_torch_checkpoint, one_error_line

from ckpt_sync.platform import case_insensitive

SIMULATE = Path(__file__).with_name("simulate.py")


def pull_on(profile: str, *args: str, case_insensitive: bool = False) -> subprocess.CompletedProcess[str]:
    extra = ["--case-insensitive"] if case_insensitive else []
    cmd = [sys.executable, str(SIMULATE), profile, *extra, "cli", "pull", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=os.environ)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every entry under ``folder`` with its size and mtime (the folder's own mtime aside)."""
    return {p.relative_to(folder).as_posix(): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in folder.rglob("*")}


def _target(tmp_path: Path) -> Path:
    target = tmp_path / "target"
    (target / "earlier").mkdir(parents=True)
    (target / "earlier" / "keep.pt").write_bytes(b"the user's own file")
    return target


def test_a_name_windows_reserves_is_refused_there_before_anything_is_written(tmp_path, key, repo_url, cli):
    older = make_torch_checkpoint(tmp_path / "src" / "older.pt", seed=1)
    cli("push", str(older), "--repo", repo_url, "--step", "100", check=True)
    export = tmp_path / "src" / "export"
    make_torch_checkpoint(export / "model.pt", seed=2)
    (export / "aux.json").write_text("{}")
    cli("push", str(export), "--repo", repo_url, "--step", "200", check=True)
    target = _target(tmp_path)
    before = snapshot(target)

    proc = pull_on("windows-like", "--latest", "--from", repo_url, "--to", str(target))
    one_error_line(proc, 1, "'export/aux.json'", "AUX is a device name on Windows")
    assert snapshot(target) == before  # nothing written, and the older checkpoint not restored instead

    missing = tmp_path / "not-yet"
    one_error_line(pull_on("windows-like", "export", "--from", repo_url, "--to", str(missing)), 1, "aux.json")
    assert not missing.exists()

    cli("pull", "export", "--from", repo_url, "--to", str(tmp_path / "linux"), check=True)  # Linux holds it
    assert (tmp_path / "linux" / "export" / "aux.json").read_text() == "{}"


def test_paths_that_differ_only_in_case_are_refused_where_the_file_system_folds_case(tmp_path, key, repo_url, cli):
    cased = tmp_path / "src" / "cased"
    make_torch_checkpoint(cased / "Model.pt", seed=3)
    make_torch_checkpoint(cased / "model.pt", seed=4)
    cli("push", str(cased), "--repo", repo_url, check=True)
    target = _target(tmp_path)
    before = snapshot(target)

    proc = pull_on("macos-like", "--latest", "--from", repo_url, "--to", str(target), case_insensitive=True)
    one_error_line(proc, 1, "'cased/model.pt'", "'cased/Model.pt'", "only in case")
    assert snapshot(target) == before

    proc = pull_on("macos-like", "--latest", "--from", repo_url, "--to", str(tmp_path / "sensitive"))
    assert proc.returncode == 0, proc.stderr  # a file system that tells them apart holds both
    restored = tmp_path / "sensitive" / "cased"
    assert (restored / "Model.pt").read_bytes() == (cased / "Model.pt").read_bytes()
    assert (restored / "model.pt").read_bytes() == (cased / "model.pt").read_bytes()


def test_the_case_probe_tells_this_file_system_apart_and_leaves_nothing(tmp_path):
    probe = tmp_path / ".case-probe.tmp"
    assert case_insensitive(probe) is False  # Linux's file systems here tell case apart
    assert list(tmp_path.iterdir()) == []
