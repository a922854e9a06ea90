"""Incremental uploads users feel: fine-tuning a head on a frozen backbone sends only what changed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from incremental import changed_bytes, derived_pairs, make_pair  # the benchmark's own cases


def test_fine_tuning_with_a_frozen_backbone_sends_under_15_percent(tmp_path, key, repo_url, cli):
    pair = make_pair(tmp_path / "ft", hidden=512, backbone_layers=12, head_out=240, steps=(2, 20))
    assert pair["backbone_share"] >= 0.85
    cli("push", "--repo", repo_url, str(pair["first"]), check=True)
    out = json.loads(cli("push", "--repo", repo_url, str(pair["second"]), "--json", check=True).stdout)[0]
    size = pair["second"].stat().st_size
    assert out["stats"]["bytes_read"] == size
    assert 0 < out["stats"]["bytes_sent"] < 0.15 * size, out["stats"]
    cli("pull", out["id"], "--repo", repo_url, "--to", str(tmp_path / "o"), check=True)
    assert (tmp_path / "o" / pair["second"].name).read_bytes() == pair["second"].read_bytes()


def test_a_longer_loss_history_and_a_re_save_send_only_the_pickles_pieces_and_a_full_fine_tune_all(
    tmp_path, key, repo_url, torch_checkpoint, cli
):
    # bench/incremental.py's other three cases, small: 1 MiB weights, so each stands alone as in a real model.
    base = torch_checkpoint(tmp_path / "checkpoint_step_1.pt", hidden=512, layers=4, history=100)
    pairs = derived_pairs(base, tmp_path / "p")
    assert {p["second"].name for p in pairs.values()} == {"checkpoint_step_2.pt"}
    sent = {}
    for name, pair in pairs.items():
        url = f"{repo_url}-{name.replace(' ', '-')}"
        cli("push", "--repo", url, str(pair["first"]), check=True)
        out = json.loads(cli("push", "--repo", url, str(pair["second"]), "--json", check=True).stdout)[0]
        size = pair["second"].stat().st_size
        sent[name] = out["stats"]["bytes_sent"] / size
        assert changed_bytes(pair["first"], pair["second"]) <= out["stats"]["bytes_sent"] <= size * 1.01
        cli("pull", out["id"], "--repo", url, "--to", str(tmp_path / name), check=True)
        assert (tmp_path / name / pair["second"].name).read_bytes() == pair["second"].read_bytes()
    assert sent["changed loss history"] < 0.05 and sent["unchanged re-save"] < 0.05, sent
    assert sent["full fine-tune"] > 0.95, sent
