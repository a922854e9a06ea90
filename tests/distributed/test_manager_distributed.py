"""CheckpointManager in a real gloo process group, each rank in its own folder (no shared disk)."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest
from helpers import manifest_ids, wait_until
from launch import run, start

from ckpt_sync.api import open_repository
from ckpt_sync.dcp import is_dcp_manifest

SCRIPT = "manager_rank.py"


def losses(folder: Path) -> dict[int, str]:
    out: dict[int, str] = {}
    for line in (folder / "losses.txt").read_text().splitlines():
        step, value = line.split()
        out[int(step)] = value
    return out


def train(root: Path, world: int, **spec) -> list[Path]:
    run(SCRIPT, [json.dumps(spec)], world, root)
    return [root / f"rank{r}" for r in range(world)]


def test_ddp_two_ranks_save_one_set_of_files_and_upload_each_checkpoint_once(key, repo_url, repo_dir, tmp_path):
    folders = train(tmp_path / "run", 2, mode="ddp", steps=6, every=2, repo=repo_url, session="s1")
    names = ["checkpoint_s1_2.pt", "checkpoint_s1_4.pt", "checkpoint_s1_6.pt"]
    assert sorted(p.name for p in (folders[0] / "ckpt").glob("checkpoint_*")) == names
    assert list((folders[1] / "ckpt").glob("checkpoint_*")) == []  # rank 1 writes nothing
    assert not (folders[1] / "ckpt" / "training_session.json").exists()
    repo = open_repository(repo_url)
    assert sorted(m.name for m in repo.manifests()) == names  # one upload per checkpoint
    assert len(manifest_ids(repo_dir)) == 3


def test_sigterm_to_one_rank_of_4_saves_the_same_step_everywhere_and_resumes_bit_exactly(key, tmp_path):
    reference = train(tmp_path / "ref", 4, mode="replicated", steps=8, session="s")
    spec = {"mode": "replicated", "steps": 8, "session": "s", "sleep": 0.2}
    group = start(SCRIPT, [json.dumps(spec)], 4, tmp_path / "run")
    progress = group.folders[2] / "progress"
    wait_until(lambda: progress.exists() and int(progress.read_text() or 0) >= 2, "rank 2 to train a few steps")
    os.kill(group.procs[2].pid, signal.SIGTERM)
    assert group.wait() == [0, 0, 0, 0], group.logs()
    seen = int((group.folders[2] / "signal_seen_at").read_text())
    saved = []
    for folder in group.folders:
        found = re.findall(r"emergency checkpoint \S+ written at step (\d+)", (folder / "log.txt").read_text())
        assert found, group.logs()
        saved.append(int(found[-1]))
    assert saved == [seen] * 4  # every rank stopped at the step where the signal was seen
    assert not (group.folders[0] / "result.json").exists()  # they exited there, not at the end
    assert (group.folders[0] / "ckpt" / f"checkpoint_s_{seen}.pt").is_file()
    assert seen < 8

    train(tmp_path / "run", 4, mode="replicated", steps=8, session="s")  # same folders: only rank 0 has it
    for r in range(4):
        resumed = losses(group.folders[r])
        assert resumed == losses(reference[r]), f"rank {r} diverged after resuming from step {seen}"
        assert max(k for k in resumed if k <= seen) == seen


@pytest.mark.parametrize("where", ["direct", "shared_folder"])
def test_fsdp_sharded_state_saves_through_dcp_and_resumes_bit_exactly(where, key, repo_url, tmp_path):
    spec = {"mode": "fsdp", "session": "f", "every": 3}
    if where == "direct":
        spec.update(repo=repo_url, direct=True)
    else:
        spec.update(directory=str(tmp_path / "shared"))
    reference = train(tmp_path / "ref", 2, mode="fsdp", steps=6, session="f")
    first = train(tmp_path / "run", 2, steps=3, **spec)
    if where == "direct":
        (m,) = list(open_repository(repo_url).manifests())
        assert is_dcp_manifest(m) and m.name == "checkpoint_f_3.dcp" and m.global_step == 3
        assert sorted(f.path for f in m.files) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
        assert not any(p.suffix == ".distcp" for f in first for p in f.rglob("*"))  # nothing on local disks
    else:
        assert sorted(p.name for p in (tmp_path / "shared" / "checkpoint_f_3.dcp").iterdir()) == [
            ".metadata",
            "__0_0.distcp",
            "__1_0.distcp",
        ]
    train(tmp_path / "run", 2, steps=6, **spec)
    for r in range(2):
        assert losses(first[r]) == losses(reference[r])


def test_sigterm_to_one_rank_with_sharded_state_commits_that_step_for_all_and_resumes_bit_exactly(
    key, repo_url, tmp_path
):
    reference = train(tmp_path / "ref", 2, mode="fsdp", steps=6, session="g")
    spec = {"mode": "fsdp", "steps": 6, "session": "g", "sleep": 0.2, "repo": repo_url, "direct": True}
    group = start(SCRIPT, [json.dumps(spec)], 2, tmp_path / "run")
    progress = group.folders[1] / "progress"
    wait_until(lambda: progress.exists() and int(progress.read_text() or 0) >= 2, "rank 1 to train a few steps")
    os.kill(group.procs[1].pid, signal.SIGTERM)
    assert group.wait() == [0, 0], group.logs()
    seen = int((group.folders[1] / "signal_seen_at").read_text())
    (m,) = list(open_repository(repo_url).manifests())  # one DCP checkpoint: the emergency one, all ranks
    assert m.name == f"checkpoint_g_{seen}.dcp" and sorted(f.path for f in m.files)[1:] == [
        "__0_0.distcp",
        "__1_0.distcp",
    ]
    train(tmp_path / "run", 2, **spec)
    for r in range(2):
        assert losses(group.folders[r]) == losses(reference[r])


def test_two_ranks_train_and_resume_while_the_store_is_down_and_agree_on_the_step(monkeypatch, key, tmp_path):
    """Rank 0 decides from its local folder; nothing waits on the unreachable store; saves stay queued."""
    import sqlite3

    from servers import free_port

    for name, value in {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",  # a closed port: every connection refused
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    spec = {"mode": "ddp", "every": 2, "session": "s9", "async": False}
    train(tmp_path / "run", 2, steps=4, **spec)  # a first run, saving locally
    folders = train(tmp_path / "run", 2, steps=8, repo="s3://down-bucket/run", **spec)  # now syncing: store down
    starts = [json.loads((f / "result.json").read_text())["start"] for f in folders]
    assert starts == [5, 5]
    queue = next((folders[0] / "ckpt").rglob("queue.sqlite3"))
    with sqlite3.connect(queue) as db:
        pending = sorted(r[0] for r in db.execute("SELECT name FROM jobs WHERE status='pending'"))
    assert pending == ["checkpoint_s9_6.pt", "checkpoint_s9_8.pt"]  # held for the next start
