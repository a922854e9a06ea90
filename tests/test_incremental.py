"""Incremental uploads users feel: fine-tuning a head on a frozen backbone sends only what changed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from incremental import make_pair  # the benchmark's scenario: both measure the same thing


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
