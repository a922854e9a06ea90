"""A damaged repository is healed from a good local copy: ``repair LOCAL_PATH`` stores again every
chunk of the file that the store lost or damaged (never touching a good one), and a push of a file
whose chunk ``verify --read-data`` found damaged uploads it again instead of committing over it.
On the local store and on S3 (moto)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ckpt_sync.providers import open_provider
from helpers import flip_chunk_byte, make_torch_checkpoint

from ckpt_sync.api import open_repository
from ckpt_sync.format.layout import chunk_key


def _push(cli, url: str, path: Path) -> dict:
    return json.loads(cli("push", str(path), "--repo", url, "--chunk-size", "64K", "--json", check=True).stdout)[0]


def _two_checkpoints_sharing_chunks(cli, url: str, tmp_path: Path) -> tuple[Path, list[str]]:
    src = make_torch_checkpoint(tmp_path / "run" / "checkpoint_20261203_101500_40.pt", hidden=320, seed=4)
    again = tmp_path / "copy" / "weights_for_eval.pt"
    again.parent.mkdir()
    shutil.copy(src, again)  # the same bytes under another name: a second checkpoint on the same chunks
    first, second = _push(cli, url, src), _push(cli, url, again)
    assert second["stats"]["bytes_sent"] < 4096  # its chunks were all there already
    repo = open_repository(url)
    chunks = sorted(repo.load_manifest(first["id"]).files[0].chunks, key=lambda c: -c.size)
    assert chunks == sorted(repo.load_manifest(second["id"]).files[0].chunks, key=lambda c: -c.size)
    return src, [c.id for c in chunks]


def test_one_repair_heals_a_flipped_byte_and_a_lost_object_used_by_two_checkpoints(any_repo_url, cli, key, tmp_path):
    url = any_repo_url
    src, chunks = _two_checkpoints_sharing_chunks(cli, url, tmp_path)
    flip_chunk_byte(url, chunks[0])
    store = open_provider(url, retry=None)
    store.delete(chunk_key(chunks[1]))
    untouched = {c: store.get(chunk_key(c)) for c in chunks[2:]}
    damaged = cli("verify", "--read-data", "--repo", url)
    assert damaged.returncode == 1 and damaged.stdout.count("DAMAGED") == 2, damaged.stdout

    repair = cli("repair", str(src), "--repo", url)
    assert repair.returncode == 0, repair.stdout + repair.stderr
    assert f"healed chunk {chunks[0][:16]}" in repair.stdout and f"healed chunk {chunks[1][:16]}" in repair.stdout
    assert f"healed 2 of {len(chunks)} chunk(s)" in repair.stdout and "2 of 2 checkpoint(s)" in repair.stdout
    assert all(store.get(chunk_key(c)) == b for c, b in untouched.items())  # good objects never rewritten
    assert "2 of 2 checkpoint(s) sound" in cli("verify", "--read-data", "--repo", url, check=True).stdout

    again = json.loads(cli("repair", str(src.parent), "--repo", url, "--json", check=True).stdout)
    assert again["healed"] == [] and again["bytes_sent"] == 0 and again["sound"] is True


def test_repair_of_a_file_no_checkpoint_holds_says_so(any_repo_url, cli, key, tmp_path):
    url = any_repo_url
    _two_checkpoints_sharing_chunks(cli, url, tmp_path)
    other = make_torch_checkpoint(tmp_path / "elsewhere" / "unrelated.pt", hidden=64, seed=9)
    proc = cli("repair", str(other), "--repo", url)
    assert proc.returncode == 1 and "no committed checkpoint" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_push_after_verify_found_a_chunk_damaged_uploads_it_again(any_repo_url, cli, key, tmp_path):
    url = any_repo_url
    src = make_torch_checkpoint(tmp_path / "run" / "checkpoint_20261203_101500_60.pt", hidden=320, seed=6)
    first = _push(cli, url, src)
    victim = max(open_repository(url).load_manifest(first["id"]).files[0].chunks, key=lambda c: c.size)
    flip_chunk_byte(url, victim.id)
    assert cli("verify", "--read-data", "--repo", url).returncode == 1  # ... and this host remembers the chunk

    renamed = tmp_path / "copy" / "model_for_serving.pt"
    renamed.parent.mkdir()
    shutil.copy(src, renamed)
    second = _push(cli, url, renamed)
    assert second["stats"]["bytes_sent"] >= victim.size  # the damaged chunk went up again, not reused
    assert "2 of 2 checkpoint(s) sound" in cli("verify", "--read-data", "--repo", url, check=True).stdout
    assert _push(cli, url, renamed)["stats"]["bytes_sent"] == 0  # healed: pushed again, nothing is sent
