"""ckpt_sync.dcp in one process (no process group): the same Writer and Reader, fast checks of what a
DCP checkpoint shares with every other one: dedup, retention, verified reads."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
dcp = pytest.importorskip("torch.distributed.checkpoint")

from ckpt_sync.api import push  # noqa: E402
from ckpt_sync.dcp import Reader, Writer  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def state(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "frozen": torch.randn(256, 1024, generator=torch.Generator().manual_seed(0)),  # 1 MiB, never changes
        "head": torch.randn(64, 64, generator=g),
        "meta": {"step": seed, "note": "x"},
    }


def blank() -> dict:
    return {"frozen": torch.zeros(256, 1024), "head": torch.zeros(64, 64), "meta": {"step": -1, "note": ""}}


def test_second_save_uploads_only_what_changed_and_retention_keeps_the_newest(key, repo_url, cli):
    first = Writer(repo_url, name="step_1", metadata={"global_step": 1})
    dcp.save(state(1), storage_writer=first)
    second = Writer(repo_url, name="step_2", metadata={"global_step": 2})
    dcp.save(state(2), storage_writer=second)
    assert second.stats.chunks_new < second.stats.chunks  # the frozen tensor's chunks were stored already
    assert second.stats.bytes_new < (1 << 20)

    cli("prune", "--repo", repo_url, "--keep", "1", "--grace", "0", check=True)
    assert [c["name"] for c in json.loads(cli("ls", "--repo", repo_url, "--json", check=True).stdout)] == ["step_2"]
    cli("verify", "--repo", repo_url, "--read-data", check=True)
    got = blank()
    dcp.load(got, storage_reader=Reader(repo_url))
    want = state(2)
    assert torch.equal(got["frozen"], want["frozen"]) and torch.equal(got["head"], want["head"])
    assert got["meta"] == want["meta"]


def test_reader_refuses_a_chunk_that_was_altered_in_the_store(key, repo_url, repo_dir):
    writer = Writer(repo_url, name="s", metadata={"global_step": 1})  # a training save (a position): resumable
    dcp.save(state(1), storage_writer=writer)
    assert writer.manifest is not None
    data = next(f for f in writer.manifest.files if f.path.endswith(".distcp"))
    victim = repo_dir / "chunks" / data.chunks[-1].id[:2] / data.chunks[-1].id
    raw = bytearray(victim.read_bytes())
    raw[60] ^= 1
    victim.write_bytes(bytes(raw))
    # DCP wraps the rank's error in its CheckpointException (a BaseException)
    with pytest.raises(BaseException, match="fails authentication"):
        dcp.load(blank(), storage_reader=Reader(repo_url))


def test_a_dcp_reader_names_the_problem_when_the_repository_has_no_dcp_checkpoint(key, repo_url, tmp_path):
    (tmp_path / "f.pt").write_bytes(b"not a dcp checkpoint")
    push(tmp_path / "f.pt", repo_url)
    with pytest.raises(BaseException, match="no resumable DCP checkpoint"):
        dcp.load(blank(), storage_reader=Reader(repo_url))


def test_a_weights_only_save_is_model_only_and_loads_by_role(key, repo_url):
    dcp.save(state(3), storage_writer=Writer(repo_url, name="weights"))  # no optimizer state, no step
    with pytest.raises(BaseException, match="no resumable DCP checkpoint"):
        dcp.load(blank(), storage_reader=Reader(repo_url))  # "latest" is a training state to resume from
    got = blank()
    dcp.load(got, storage_reader=Reader(repo_url, role="model-only"))
    assert torch.equal(got["head"], state(3)["head"]) and got["meta"] == state(3)["meta"]
