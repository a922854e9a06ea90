"""A manifest (even one encrypted with the right key) can never make pull write outside its folder."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from ckpt_sync.api import open_repository
from ckpt_sync.format.layout import manifest_key, new_manifest_id


def _craft(repo_url, path_in_manifest: str) -> str:
    """Commit a copy of the newest manifest whose only file claims ``path_in_manifest``."""
    repo = open_repository(repo_url)
    good = repo.load_manifest(repo.manifest_ids()[0])
    evil = dataclasses.replace(
        good,
        id=new_manifest_id(),
        files=(dataclasses.replace(good.files[0], path=path_in_manifest),),
    )
    # Written as a buggy or hostile writer would: Repository.commit refuses to write such a manifest.
    raw = json.dumps(evil.to_json()).encode()
    assert repo.provider.put_if_absent(manifest_key(evil.id), repo.keys.encrypt(raw))
    return evil.id


@pytest.mark.parametrize(
    "evil_path",
    ["../escape.pt", "sub/../../escape.pt", "/tmp/ckpt-sync-absolute-escape.pt", "a/./b.pt", "C:\\\\x.pt", ""],
)
def test_crafted_manifest_paths_are_refused(tmp_path, key, repo_url, torch_checkpoint, cli, evil_path):
    src = torch_checkpoint(tmp_path / "good.pt")
    cli("push", "--repo", repo_url, str(src), check=True)
    evil_id = _craft(repo_url, evil_path)
    dest = tmp_path / "deep" / "dest"

    direct = cli("pull", evil_id, "--repo", repo_url, "--to", str(dest))
    assert direct.returncode == 1 and "unsafe path" in direct.stderr, direct.stderr
    assert not (tmp_path / "deep" / "escape.pt").exists() and not (tmp_path / "escape.pt").exists()
    assert not os.path.exists("/tmp/ckpt-sync-absolute-escape.pt")

    latest = cli("pull", "--latest", "--repo", repo_url, "--to", str(dest))
    assert latest.returncode == 0 and "unsafe path" in latest.stderr and "falling back" in latest.stderr
    assert [p.name for p in dest.iterdir()] == ["good.pt"]


def test_pull_refuses_to_write_through_a_symlinked_folder(tmp_path, key, repo_url, torch_checkpoint, cli):
    src = tmp_path / "ckpt"
    torch_checkpoint(src / "sub" / "shard.pt")
    cli("push", "--repo", repo_url, str(src), check=True)
    dest = tmp_path / "dest"
    outside = tmp_path / "outside"
    import shutil
    outside.mkdir()
    for link in (dest / "ckpt", dest / "ckpt" / "sub"):  # the checkpoint's folder, or one inside it
        if dest.exists():
            shutil.rmtree(dest)
        link.parent.mkdir(parents=True)
        link.symlink_to(outside)
        proc = cli("pull", "--latest", "--repo", repo_url, "--to", str(dest))
        assert proc.returncode == 1 and "symlink" in proc.stderr, proc.stderr
        assert list(outside.iterdir()) == []
