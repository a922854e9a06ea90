"""Round trips of real torch checkpoints through the CLI and the library."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ckpt_sync
from ckpt_sync.api import open_repository


def test_single_file_round_trip_is_byte_identical_and_loads(tmp_path, key, repo_url, torch_checkpoint, cli):
    import torch

    ckpt = torch_checkpoint(tmp_path / "src" / "checkpoint_20251106_120000_37500.pt", hidden=512, step=37500)
    pushed = cli("push", "--repo", repo_url, str(ckpt), "--chunk-size", "256K", check=True)
    assert "committed checkpoint_20251106_120000_37500.pt" in pushed.stdout

    listed = json.loads(cli("ls", "--repo", repo_url, "--json", check=True).stdout)
    assert len(listed) == 1
    row = listed[0]
    assert {"id", "name", "step", "created", "size", "files", "tags"} <= set(row)
    assert (row["name"], row["step"], row["session"], row["files"]) == (ckpt.name, 37500, "20251106_120000", 1)
    assert row["size"] == ckpt.stat().st_size

    out = tmp_path / "fresh"
    cli("pull", "--latest", "--from", repo_url, "--to", str(out), check=True)
    restored = out / ckpt.name
    assert restored.read_bytes() == ckpt.read_bytes()
    state = torch.load(restored, weights_only=True)
    assert state["global_step"] == 37500
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "no temp files left behind"


def test_directory_checkpoint_round_trip(tmp_path, key, repo_url, torch_checkpoint, cli):
    src = tmp_path / "step_100"
    for rank in range(3):
        torch_checkpoint(src / f"__{rank}_0.distcp", seed=rank)
    (src / ".metadata").write_bytes(b"metadata bytes")
    (src / "nested" / "deeper").mkdir(parents=True)
    (src / "nested" / "deeper" / "extra.json").write_text("{}")
    (src / "empty.bin").write_bytes(b"")

    cli("push", "--repo", repo_url, str(src), "--tag", "sharded", check=True)
    row = json.loads(cli("ls", "--repo", repo_url, "--json", check=True).stdout)[0]
    assert row["files"] == 6 and row["tags"] == ["sharded"]

    out = tmp_path / "out"
    cli("pull", row["id"][:15], "--from", repo_url, "--to", str(out), check=True)
    for f in src.rglob("*"):
        if f.is_file():
            assert (out / src.name / f.relative_to(src)).read_bytes() == f.read_bytes(), f


def test_pull_by_name_takes_the_newest_with_that_name(tmp_path, key, repo_url, torch_checkpoint):
    ckpt = torch_checkpoint(tmp_path / "model.pt", seed=1)
    first = ckpt_sync.push(ckpt, repo=repo_url)
    first_bytes = ckpt.read_bytes()
    torch_checkpoint(ckpt, seed=2)
    second = ckpt_sync.push(ckpt, repo=repo_url)
    assert first != second
    m = ckpt_sync.pull(tmp_path / "a", repo=repo_url, checkpoint="model.pt")
    assert m.id == second and (tmp_path / "a" / "model.pt").read_bytes() == ckpt.read_bytes()
    ckpt_sync.pull(tmp_path / "b", repo=repo_url, checkpoint=first)
    assert (tmp_path / "b" / "model.pt").read_bytes() == first_bytes


def test_library_push_returns_the_committed_id_with_metadata(tmp_path, key, repo_url, torch_checkpoint):
    ckpt = torch_checkpoint(tmp_path / "checkpoint_s1_7.pt")
    cid = ckpt_sync.push(ckpt, repo=repo_url, tags=["best"], metadata={"epoch": 3, "loss": 0.5, "lr": 0.1})
    repo = open_repository(repo_url)
    m = repo.load_manifest(cid)
    extra = dict(m.extra)
    assert extra.pop("source_mtime_ns") == ckpt.stat().st_mtime_ns  # recorded by every push path
    assert extra.pop("role_from") == "inferred"  # tagged best: not what the file's content says
    assert (m.session_id, m.global_step, m.epoch, m.loss, m.tags, extra) == ("s1", 7, 3, 0.5, ("best",), {"lr": 0.1})


def test_core_imports_without_torch():
    code = "import sys, ckpt_sync, ckpt_sync.cli, ckpt_sync.providers.local; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_keygen_writes_a_private_key_file_and_refuses_to_overwrite(tmp_path, cli):
    target = tmp_path / "keys" / "k"
    cli("keygen", "--out", str(target), check=True)
    assert target.stat().st_mode & 0o777 == 0o600
    key_text = target.read_text()
    again = cli("keygen", "--out", str(target))
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
    assert target.read_text() == key_text
    printed = cli("keygen", check=True).stdout.strip()
    assert len(printed) == 44 and printed not in key_text


def test_default_key_file_and_default_repository_are_used(tmp_path, torch_checkpoint, cli, isolated_home: Path):
    cli("keygen", "--out", str(isolated_home / ".config" / "ckpt-sync" / "key"), check=True)
    ckpt = torch_checkpoint(tmp_path / "c.pt")
    cli("push", str(ckpt), check=True)
    assert (isolated_home / ".local" / "share" / "ckpt-sync" / "repo" / "config").is_file()
    assert json.loads(cli("ls", "--json", check=True).stdout)[0]["name"] == "c.pt"
