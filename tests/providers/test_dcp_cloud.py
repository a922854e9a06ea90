"""ckpt_sync.dcp against S3 (moto server): 2 ranks, each on its own folder, commit one checkpoint
through the Writer and load it back through the Reader with ranged reads."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch.distributed.fsdp")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "distributed"))

from dcp_checks import check_pulled_folder_loads, check_ranged_reads
from launch import run

from ckpt_sync.api import open_repository


@pytest.mark.s3
def test_dcp_save_and_load_through_s3(cloud_factory, key, tmp_path, cli):
    s3 = cloud_factory("s3")
    url = s3.url(s3.new_bucket())
    spec = json.dumps({"repo": url, "reference": str(tmp_path / "reference.pt"), "width": 48, "steps": 2, "name": "s3"})
    saved = run("dcp_rank.py", ["save", spec], 2, tmp_path / "save")
    assert all(r["ok"] for r in saved)
    repo = open_repository(url)
    (m,) = list(repo.manifests())
    assert sorted(f.path for f in m.files) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert [c["name"] for c in json.loads(cli("ls", "--repo", url, "--json", check=True).stdout)] == ["s3"]

    loaded = run("dcp_rank.py", ["load", spec], 2, tmp_path / "load")
    assert loaded[0]["exact"] is True
    cli("pull", "--repo", url, "--latest", "--to", str(tmp_path / "pulled"), check=True)
    check_ranged_reads(loaded, m, tmp_path / "pulled" / "s3")
    check_pulled_folder_loads(tmp_path / "pulled" / "s3", tmp_path / "reference.pt", tmp_path)
