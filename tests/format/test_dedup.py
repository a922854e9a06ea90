"""Content addressing: nothing is stored twice, and a changed checkpoint sends only what changed."""

from __future__ import annotations

import hashlib
import json

from ckpt_sync.format.chunking import ChunkPolicy, plan_chunks


def _chunk_objects(repo_dir):
    return {p.name for p in (repo_dir / "chunks").rglob("*") if p.is_file()}


def _push_json(cli, repo_url, path, *extra):
    out = cli("push", "--repo", repo_url, str(path), "--json", *extra, check=True).stdout
    return json.loads(out)[0]["stats"]


def test_pushing_the_same_file_twice_stores_no_new_chunks(tmp_path, key, repo_url, repo_dir, torch_checkpoint, cli):
    ckpt = torch_checkpoint(tmp_path / "checkpoint_s_1.pt", hidden=512)
    first = _push_json(cli, repo_url, ckpt, "--chunk-size", "128K")
    stored = _chunk_objects(repo_dir)
    assert first["chunks_new"] == len(stored) > 1
    second = _push_json(cli, repo_url, ckpt, "--chunk-size", "128K", "--tag", "best")
    assert (second["chunks_new"], second["bytes_sent"], second["bytes_new"]) == (0, 0, 0)
    assert _chunk_objects(repo_dir) == stored
    assert len(list((repo_dir / "manifests").iterdir())) == 2


def test_a_checkpoint_sharing_most_tensors_sends_only_the_new_chunks(
    tmp_path, key, repo_url, repo_dir, torch_checkpoint, cli
):
    import torch

    base = torch_checkpoint(tmp_path / "a" / "checkpoint_s_1.pt", hidden=512, layers=6, history=10)
    state = torch.load(base, weights_only=True)
    # Fine-tune only the last layer and grow the loss history (the pickle changes length).
    last = sorted(k for k in state["model_state_dict"] if k.endswith("weight"))[-1]
    state["model_state_dict"][last] = state["model_state_dict"][last] + 1.0
    state["training_stats"]["loss_history"] += [0.01] * 500
    state["global_step"] = 2
    changed = tmp_path / "b" / "checkpoint_s_2.pt"
    changed.parent.mkdir()
    torch.save(state, changed)

    policy = ChunkPolicy(chunk_size=128 * 1024, min_size=128 * 1024)

    def digests(path):
        with open(path, "rb") as f:
            spans = plan_chunks(f, path.stat().st_size, policy)
            return [hashlib.sha256(f.read(n) if f.seek(o) is not None else b"").hexdigest() for o, n in spans]

    old, new = set(digests(base)), digests(changed)
    expected_new = len({d for d in new if d not in old})

    _push_json(cli, repo_url, base, "--chunk-size", "128K")
    before = _chunk_objects(repo_dir)
    stats = _push_json(cli, repo_url, changed, "--chunk-size", "128K")
    added = _chunk_objects(repo_dir) - before
    assert stats["chunks_new"] == len(added) == expected_new
    assert 0 < stats["chunks_new"] < stats["chunks"] * 0.3, stats
    assert stats["bytes_new"] < changed.stat().st_size * 0.3, stats
