"""Fan-out restore through ckpt_sync.dcp on S3 (moto): 4 fresh gloo ranks, each in its own folder,
load mostly replicated state for about one copy of store traffic, counted by a byte-counting proxy
in front of the store; every tensor comes back exactly, and a peer that sends a corrupted chunk (or
cannot fetch its share) costs the others a read from the store, never wrong data."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch.distributed.fsdp")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "distributed"))

from faultproxy import FaultProxy
from launch import run

from ckpt_sync.api import open_repository

SCRIPT = "fanout_rank.py"
WORLD = 4
FLIP = "CKPT_SYNC_TEST_FLIP_SENT_CHUNK_ON_RANK"
FAIL = "CKPT_SYNC_TEST_FAIL_SHARE_GETS_ON_RANK"


def stored_bytes(url: str) -> int:
    """What the checkpoint occupies in the store: its chunks' objects."""
    repo = open_repository(url)
    (m,) = list(repo.manifests())
    sizes = repo.list_chunks()
    return sum(sizes[cid] for cid in m.chunk_ids())


def load_through_proxy(port: int, spec: dict, root: Path, **env: str) -> tuple[list[dict], int]:
    """Load on WORLD fresh ranks with the store behind a byte-counting proxy: results, bytes read."""
    with FaultProxy(port) as proxy:
        results = run(SCRIPT, ["load", json.dumps(spec)], WORLD, root, env={"AWS_ENDPOINT_URL": proxy.url, **env})
        return results, proxy.bytes_down


@pytest.mark.s3
def test_four_ranks_load_replicated_state_from_s3_for_about_one_copy_of_its_stored_bytes(cloud_factory, key, tmp_path):
    s3 = cloud_factory("s3")
    url = s3.url(s3.new_bucket())
    # ~48 MiB replicated (12 tensors of 4 MiB) plus a DTensor sharded over the ranks (256 KiB each).
    spec = {"repo": url, "tensors": 12, "tensor_mib": 4, "shard_kib": 256, "name": "fan", "budget": 16 << 20}
    run(SCRIPT, ["save", json.dumps(spec)], WORLD, tmp_path / "save")
    stored = stored_bytes(url)
    assert stored > 48 << 20

    fanned, fan_bytes = load_through_proxy(s3.server.port, {**spec, "fan_out": True}, tmp_path / "fan")
    today, today_bytes = load_through_proxy(s3.server.port, {**spec, "fan_out": False}, tmp_path / "today")
    figures = f"fan-out {fan_bytes / stored:.2f}x, without {today_bytes / stored:.2f}x of {stored / 2**20:.1f} MiB"
    print(figures)
    assert all(r["exact"] for r in fanned + today)
    assert fan_bytes <= 1.3 * stored, figures
    assert today_bytes >= 3.5 * stored, figures  # the meter sees what fan-out saves: every rank read it all
    shared = fanned[0]["fan_out"]["shared_chunks"]
    assert shared >= 12 and sum(r["fan_out"]["owned"] for r in fanned) == shared  # each fetched by one rank
    assert all(r["fan_out"]["received"] == shared - r["fan_out"]["owned"] for r in fanned)  # the rest came from peers
    assert all(r["fan_out"]["rejected"] == 0 and r["fan_out"]["rounds"] >= 3 for r in fanned)
    assert all(r["fan_out"]["shared_chunks"] == 0 for r in today)


@pytest.mark.s3
def test_a_rank_whose_peer_sends_a_corrupted_chunk_reads_it_from_the_store_and_loads_exactly(
    cloud_factory, key, tmp_path
):
    s3 = cloud_factory("s3")
    url = s3.url(s3.new_bucket())
    spec = {"repo": url, "tensors": 8, "tensor_mib": 1, "shard_kib": 64, "name": "fan", "budget": 4 << 20}
    run(SCRIPT, ["save", json.dumps(spec)], WORLD, tmp_path / "save")

    # Rank 1 flips a byte of the first chunk of everything it sends; rank 2's store refuses every
    # read of its share.
    results, _ = load_through_proxy(s3.server.port, spec, tmp_path / "faulty", **{FLIP: "1", FAIL: "2"})
    assert all(r["exact"] for r in results)  # nothing a peer sent got into the state
    stats = [r["fan_out"] for r in results]
    assert stats[1]["owned"] > 0 and stats[2]["owned"] > 0
    assert stats[2]["owner_failed"] == stats[2]["owned"] and results[2]["refused"] >= stats[2]["owned"]
    for rank, s in enumerate(stats):
        if rank != 1:
            assert s["rejected_from"].get("1", 0) >= 1, s  # detected rank 1's corrupted chunks
        # Replicated state: every rank needs every shared chunk, and read from the store each one it
        # rejected (corrupted by rank 1, or marked failed by rank 2) or could not fetch as an owner.
        assert s["refetched"] == s["rejected"] + s["owner_failed"], s
        if rank != 2:
            assert s["rejected"] - s["rejected_from"].get("1", 0) == stats[2]["owned"], s
