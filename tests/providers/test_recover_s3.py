"""CheckpointManager.recover() with replicated state on 4 fresh ranks, the repository on S3 (moto):
the group reads about one copy of the checkpoint from the store (rank 0 pulls it and sends it over
the process group), counted by a byte-counting proxy in front of the store, and every rank resumes
with exactly the state that was saved."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch.distributed")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "distributed"))

from faultproxy import FaultProxy
from launch import run

from ckpt_sync.api import open_repository

WORLD = 4


@pytest.mark.s3
def test_four_fresh_ranks_recover_replicated_state_from_s3_for_about_one_copy_of_its_stored_bytes(
    cloud_factory, key, tmp_path
):
    s3 = cloud_factory("s3")
    url = s3.url(s3.new_bucket())
    # Linear(8, W) + Linear(W, 1) with AdamW: ~16 MiB of weights, ~48 MiB with the optimizer's state.
    spec = {"mode": "ddp", "steps": 2, "every": 2, "session": "r", "repo": url, "width": 420_000, "async": False}
    saved = run("manager_rank.py", [json.dumps(spec)], WORLD, tmp_path / "train")
    repo = open_repository(url)
    (m,) = [m for m in repo.manifests() if m.name == "checkpoint_r_2.pt"]
    sizes = repo.list_chunks()
    stored = sum(sizes[cid] for cid in m.chunk_ids())
    assert stored > 40 << 20

    with FaultProxy(s3.server.port) as proxy:  # fresh folders: no rank has the checkpoint
        resumed = run(
            "manager_rank.py", [json.dumps(spec)], WORLD, tmp_path / "fresh", env={"AWS_ENDPOINT_URL": proxy.url}
        )
        read = proxy.bytes_down
    print(f"recover: {read / stored:.2f}x of {stored / 2**20:.1f} MiB")
    assert all(r["start"] == 3 for r in resumed)  # every rank resumed after step 2
    assert {r["digest"] for r in resumed} == {saved[0]["digest"]}  # exactly the saved state, everywhere
    assert read <= 1.3 * stored, f"{read / stored:.2f}x"
