"""Saving straight into a repository (``ckpt_sync.save``, ``ckpt_sync.open(repo, "wb")``): a
``torch.save`` with no local file, committed only when complete, deduplicated tensor by tensor."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import chunk_files, manifest_ids, wait_until

import ckpt_sync
from ckpt_sync.api import open_repository
from ckpt_sync.errors import UsageError
from ckpt_sync.format.chunking import ChunkPolicy, StreamCuts, plan_chunks
from ckpt_sync.transfer.push import push_path

TESTS = Path(__file__).resolve().parents[1]


def _state(seed: int, *, layers: int = 10, step: int = 100) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "model": {f"layer{i}.weight": torch.randn(256, 1024, generator=g) for i in range(layers)},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.01, "params": list(range(layers))}]},
        "global_step": step,
        "loss_history": [float(i) for i in range(step)],
    }


def test_a_state_saved_straight_into_the_repository_loads_back_exactly(key, repo_url):
    state = _state(0)
    m = ckpt_sync.save(state, repo_url, name="checkpoint_20260101_000000_100.pt", metadata={"epoch": 3})
    assert (m.role, m.global_step, m.session_id, m.epoch) == ("resumable", 100, "20260101_000000", 3)
    assert m.extra["role_from"] == "content"
    with ckpt_sync.open(repo_url, "latest") as f:
        back = torch.load(f, weights_only=True)
    assert back.keys() == state.keys() and all(torch.equal(back["model"][k], v) for k, v in state["model"].items())
    assert back["loss_history"] == state["loss_history"]


def test_weights_alone_are_model_only_and_never_latest(key, repo_url):
    ckpt_sync.save(_state(1), repo_url, name="checkpoint_20260101_000000_100.pt")
    weights = ckpt_sync.save({"w": torch.ones(4)}, repo_url, name="final_model.pt")
    assert weights.role == "model-only"
    assert ckpt_sync.checkpoint("latest", repo_url).name == "checkpoint_20260101_000000_100.pt"


def test_a_second_save_with_most_tensors_unchanged_sends_about_the_changed_bytes(key, repo_url):
    state = _state(2, layers=10)
    ckpt_sync.save(state, repo_url, name="checkpoint_s_100.pt")
    state["model"]["layer3.weight"] += 1.0  # one tensor of ten changes
    state["global_step"], state["loss_history"] = 200, [0.5] * 200
    with ckpt_sync.open(repo_url, "wb", name="checkpoint_s_200.pt") as stream:
        torch.save(state, stream)
    changed = state["model"]["layer3.weight"].numel() * 4
    assert changed <= stream.stats.bytes_new <= 1.2 * changed, stream.stats
    assert stream.manifest is not None and stream.manifest.global_step == 200


@pytest.mark.parametrize("seed", range(12))
def test_stream_cuts_are_the_cuts_of_the_finished_file(seed):
    """The same bytes saved straight into a repository and pushed from disk share their chunks."""
    rng = random.Random(seed)
    policy = ChunkPolicy(chunk_size=64 << 10, min_size=rng.choice([8 << 10, 16 << 10, 64 << 10]))
    sizes = [1, 100, 2000, 4000, 16384, 20000, 50000, 70000]
    state = {f"t{i}": torch.randn(rng.choice(sizes)) for i in range(rng.randrange(1, 12))}
    state["history"] = list(range(rng.randrange(50000)))

    class Recorder(io.RawIOBase):
        def __init__(self) -> None:
            self.cuts, self.data, self.stream = [], bytearray(), StreamCuts(policy)

        def writable(self) -> bool:
            return True

        def write(self, b) -> int:
            view = memoryview(b).cast("B")
            self.data += view
            self.cuts += self.stream.feed(view)
            return len(view)

    rec = Recorder()
    torch.save(state, rec)
    rec.cuts += rec.stream.finish()
    planned = plan_chunks(io.BytesIO(bytes(rec.data)), len(rec.data), policy)
    assert rec.cuts == [off + length for off, length in planned]


def test_nothing_is_committed_when_the_save_raises_or_stops_part_way(key, repo_url, repo_dir):
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle this")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        ckpt_sync.save({"w": torch.randn(1000), "bad": Unpicklable()}, repo_url, name="a.pt")
    stream = ckpt_sync.open(repo_url, "wb", name="b.pt")
    stream.write(b"PK\x03\x04" + os.urandom(5000))  # a zip that never ends
    with pytest.raises(UsageError, match="ends before its zip does"):
        stream.close()
    dropped = ckpt_sync.open(repo_url, "wb", name="c.pt")
    dropped.write(os.urandom(1000))
    del dropped  # never closed: the garbage collector aborts it, never commits
    assert manifest_ids(repo_dir) == []
    with pytest.raises(UsageError, match="give its name"):
        ckpt_sync.open(repo_url, "wb")
    with pytest.raises(UsageError, match="cannot save as"):
        ckpt_sync.save({}, repo_url, name="../escape.pt")


_CHILD = """
import json, sys, torch
sys.path.insert(0, {tests!r})
import slow_cli  # every chunk upload slowed: the parent kills this process part way
import ckpt_sync
g = torch.Generator().manual_seed(7)
state = {{f"w{{i}}": torch.randn(64 << 10, generator=g) for i in range(48)}}
m = ckpt_sync.save(state, {url!r}, name="checkpoint_k_5.pt", chunk_size=64 << 10)
print(json.dumps({{"id": m.id}}))
"""


def test_a_save_killed_part_way_commits_nothing_and_the_next_one_reuses_its_chunks(key, repo_url, repo_dir):
    code = _CHILD.format(tests=str(TESTS), url=repo_url)
    env = {**os.environ, "CKPT_TEST_PUT_DELAY": "0.05"}
    killed = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: len(chunk_files(repo_dir)) >= 10 or killed.poll() is not None, "chunks to be uploaded")
    assert killed.poll() is None, killed.communicate()
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert manifest_ids(repo_dir) == []  # nothing visible
    stored = len(chunk_files(repo_dir))
    again = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    committed = json.loads(again.stdout)["id"]
    repo = open_repository(repo_url)
    m = repo.load_manifest(committed)
    assert len(m.chunk_ids()) > stored  # the first save was stopped before its end ...
    assert len(chunk_files(repo_dir)) == len(m.chunk_ids())  # ... and what it stored was reused


def test_saving_straight_in_and_pushing_the_same_file_share_their_tensor_chunks(key, repo_url, tmp_path):
    state = _state(3)
    direct = ckpt_sync.save(state, repo_url, name="checkpoint_s_100.pt")
    path = tmp_path / "checkpoint_s_100.pt"
    torch.save(state, path)
    _, stats = push_path(open_repository(repo_url), path, name="from_disk.pt")
    assert stats.bytes_new < 64 << 10 < direct.size, stats  # the tensors' chunks were there; only headers differ
