"""ckpt_sync.dcp: real gloo process groups (2 and 4 ranks, each in its own folder, no shared disk)
save an FSDP2-sharded model through the Writer and load it back through the Reader."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from dcp_checks import check_pulled_folder_loads, check_ranged_reads
from helpers import manifest_ids, wait_until
from launch import run, start

from ckpt_sync.api import open_repository

SCRIPT = "dcp_rank.py"


def spec(repo: str, tmp: Path, **kw) -> str:
    base = {"repo": repo, "reference": str(tmp / "reference.pt"), "width": 48, "steps": 3, "name": "step_3"}
    return json.dumps({**base, **kw})


def save(repo: str, tmp: Path, world: int, **kw) -> list[dict]:
    return run(SCRIPT, ["save", spec(repo, tmp, **kw)], world, tmp / f"save{world}")


def load(repo: str, tmp: Path, world: int, **kw) -> list[dict]:
    return run(SCRIPT, ["load", spec(repo, tmp, **kw)], world, tmp / f"load{world}")


@pytest.mark.parametrize("world", [2, 4])
def test_dcp_save_commits_one_checkpoint_that_every_rank_loads_exactly(world, key, repo_url, repo_dir, tmp_path, cli):
    saved = save(repo_url, tmp_path, world)
    assert all(r["ok"] for r in saved)
    assert len(manifest_ids(repo_dir)) == 1  # one commit for all ranks
    listing = json.loads(cli("ls", "--repo", repo_url, "--json", check=True).stdout)
    assert [c["name"] for c in listing] == ["step_3"]
    m = open_repository(repo_url).load_manifest(manifest_ids(repo_dir)[0])
    assert sorted(f.path for f in m.files) == [".metadata"] + [f"__{r}_0.distcp" for r in range(world)]
    assert m.global_step == 3 and saved[0]["manifest"] == m.id
    assert all(r["puts"] for r in saved)  # every rank uploaded its own items

    loaded = load(repo_url, tmp_path, world)
    assert loaded[0]["exact"] is True
    assert all(r["extra"] == {"steps": 3} and r["manifest"] == m.id for r in loaded)

    cli("verify", "--repo", repo_url, "--read-data", check=True)
    cli("pull", "--repo", repo_url, "--latest", "--to", str(tmp_path / "pulled"), check=True)
    folder = tmp_path / "pulled" / "step_3"
    check_ranged_reads(loaded, m, folder)
    check_pulled_folder_loads(folder, tmp_path / "reference.pt", tmp_path)


def test_dcp_reshards_2_to_1_and_1_to_2(key, tmp_path):
    two, one = (tmp_path / "repo2").as_uri(), (tmp_path / "repo1").as_uri()
    save(two, tmp_path / "a", 2)
    assert load(two, tmp_path / "a", 1)[0]["exact"] is True
    save(one, tmp_path / "b", 1)
    assert load(one, tmp_path / "b", 2)[0]["exact"] is True


def test_dcp_kill_9_of_one_rank_mid_write_commits_nothing_and_next_save_sends_only_missing_chunks(
    key, repo_url, repo_dir, tmp_path
):
    group = start(SCRIPT, ["save", spec(repo_url, tmp_path, pause_after_puts={"1": 3})], 2, tmp_path / "killed")
    paused = group.folders[1] / "paused"
    wait_until(paused.exists, "rank 1 to stop inside write_data", timeout=300)
    os.kill(int(paused.read_text()), signal.SIGKILL)
    codes = group.wait()
    assert codes[1] == -signal.SIGKILL
    survivor = json.loads((group.folders[0] / "result.json").read_text())
    assert survivor["ok"] is False and survivor["manifest"] is None  # DCP reported the dead peer, no hang
    assert manifest_ids(repo_dir) == []  # nothing committed

    repo = open_repository(repo_url)
    before = set(repo.list_chunks())
    assert before  # the dead rank's first chunks (and the survivor's) are stored

    saved = save(repo_url, tmp_path, 2)
    assert all(r["ok"] for r in saved) and len(manifest_ids(repo_dir)) == 1
    m = repo.load_manifest(manifest_ids(repo_dir)[0])
    sent = {k.rsplit("/", 1)[-1] for r in saved for k in r["puts"]}
    assert sent == m.chunk_ids() - before  # only what was missing went over the wire
    assert before & m.chunk_ids()  # and what the killed attempt stored is part of the checkpoint
