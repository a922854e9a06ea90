"""``verify ID`` checks one checkpoint, ``verify --read-data-subset`` reads a random share of the
chunks, ``pull --json`` reports what was restored; on the local store and on S3."""

from __future__ import annotations

import json
import math
import random

from helpers import flip_chunk_byte

import ckpt_sync
from ckpt_sync.api import open_repository
from ckpt_sync.transfer.verify import verify


def _two_checkpoints(cli, url, tmp_path, torch_checkpoint):
    older = torch_checkpoint(tmp_path / "c" / "checkpoint_s1_100.pt", seed=1, step=100)
    newer = torch_checkpoint(tmp_path / "c" / "checkpoint_s1_200.pt", seed=2, step=200)
    ids = [
        json.loads(cli("push", str(p), "--to", url, "--chunk-size", "64K", "--json", check=True).stdout)[0]["id"]
        for p in (older, newer)
    ]
    repo = open_repository(url)
    old_m, new_m = (repo.load_manifest(i) for i in ids)
    victim = sorted(old_m.chunk_ids() - new_m.chunk_ids())[0]
    return ids, victim


def test_verify_id_checks_only_the_named_checkpoint(any_repo_url, cli, key, tmp_path, torch_checkpoint):
    (old_id, new_id), victim = _two_checkpoints(cli, any_repo_url, tmp_path, torch_checkpoint)
    flip_chunk_byte(any_repo_url, victim)
    good = cli("verify", new_id, "--read-data", "--from", any_repo_url)
    assert good.returncode == 0 and "1 of 1 checkpoint(s) sound" in good.stdout, good.stdout + good.stderr
    bad = cli("verify", old_id[:18], "--read-data", "--from", any_repo_url, "--json")
    assert bad.returncode == 1
    assert [(r["id"], r["ok"]) for r in json.loads(bad.stdout)] == [(old_id, False)]
    assert cli("verify", "no-such-checkpoint", "--from", any_repo_url).returncode == 1


def test_read_data_subset_reads_that_share_of_the_distinct_chunks(any_repo_url, cli, key, tmp_path, torch_checkpoint):
    (old_id, new_id), victim = _two_checkpoints(cli, any_repo_url, tmp_path, torch_checkpoint)
    repo = open_repository(any_repo_url)
    distinct = repo.load_manifest(old_id).chunk_ids() | repo.load_manifest(new_id).chunk_ids()
    read: list[int] = []
    results = verify(repo, read_data_subset=0.1, progress=read.append, rng=random.Random(7))
    assert len(read) == math.ceil(0.1 * len(distinct)) and all(r.ok for r in results)

    flip_chunk_byte(any_repo_url, victim)
    assert cli("verify", "--from", any_repo_url).returncode == 0  # structure only: the flip is not seen
    full = cli("verify", "--read-data-subset", "100%", "--from", any_repo_url)
    assert full.returncode == 1 and "DAMAGED checkpoint_s1_100.pt" in full.stdout
    assert "DAMAGED checkpoint_s1_200.pt" not in full.stdout
    # A small share finds it only when it samples the damaged chunk: some seed does, some does not.
    found = {not all(r.ok for r in verify(repo, read_data_subset=0.5, rng=random.Random(s))) for s in range(24)}
    assert found == {True, False}


def test_read_data_subset_rejects_a_share_that_is_not_one(any_repo_url, cli, key, tmp_path, torch_checkpoint):
    for bad in ("0%", "150%", "ten", "1/0"):
        proc = cli("verify", "--read-data-subset", bad, "--from", any_repo_url)
        assert proc.returncode == 2, (bad, proc.stderr)
        assert proc.stderr.startswith("ckpt-sync: error: --read-data-subset "), proc.stderr


def test_pull_json_reports_the_checkpoint_and_its_counts(any_repo_url, cli, key, tmp_path, torch_checkpoint):
    (_, new_id), _ = _two_checkpoints(cli, any_repo_url, tmp_path, torch_checkpoint)
    proc = cli("pull", "--latest", "--from", any_repo_url, "--to", str(tmp_path / "o"), "--json", check=True)
    report = json.loads(proc.stdout)
    assert report["id"] == new_id and report["name"] == "checkpoint_s1_200.pt" and report["step"] == 200
    assert report["stats"]["files"] == 1 and report["stats"]["bytes_read"] == report["size"]
    assert report["paths"] == ["checkpoint_s1_200.pt"] and proc.stderr == ""
    assert ckpt_sync.checkpoint("latest", any_repo_url).id == new_id
