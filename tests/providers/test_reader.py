"""Loading without a local copy: ``ckpt_sync.open`` is a seekable file object whose chunks are
fetched and verified on demand, and ``ckptsync://`` URLs read the same bytes through fsspec; on the
local store and on S3."""

from __future__ import annotations

import dataclasses
import io
import json
import random
import subprocess
import sys

import fsspec
import pytest
import torch
from helpers import flip_chunk_byte, make_folder_checkpoint

import ckpt_sync
from ckpt_sync.api import open_repository
from ckpt_sync.errors import IntegrityError
from ckpt_sync.format.layout import new_manifest_id
from ckpt_sync.format.manifest import FileEntry


def _push(cli, url, path, chunk="64K", *options):
    return json.loads(
        cli("push", str(path), "--to", url, "--chunk-size", chunk, "--json", *options, check=True).stdout
    )[0]


def test_torch_load_straight_from_the_repository(any_repo_url, cli, key, tmp_path, torch_checkpoint):
    local = torch_checkpoint(tmp_path / "checkpoint_s1_300.pt", seed=3, step=300, hidden=192)
    _push(cli, any_repo_url, local)
    with ckpt_sync.open(any_repo_url, "latest", cache_bytes=256 << 10) as f:
        loaded = torch.load(f, weights_only=True, map_location="cpu")
    expected = torch.load(local, weights_only=True, map_location="cpu")
    assert loaded["global_step"] == 300
    for name, tensor in expected["model_state_dict"].items():
        assert torch.equal(loaded["model_state_dict"][name], tensor)


def test_open_is_seekable_and_reads_exactly_the_files_bytes(any_repo_url, cli, key, tmp_path):
    src = make_folder_checkpoint(tmp_path / "step_100")
    pushed = _push(cli, any_repo_url, src)
    data = (src / "optim" / "state.pt").read_bytes()
    rng = random.Random(1)
    with ckpt_sync.open(any_repo_url, pushed["id"], "optim/state.pt", cache_bytes=64 << 10) as f:
        assert f.seekable() and f.readable() and not f.writable() and f.size == len(data)
        for _ in range(40):
            start = rng.randrange(len(data) + 10)
            length = rng.randrange(1, 100_000)
            f.seek(start)
            assert f.read(length) == data[start : start + length]
            assert f.tell() == min(len(data), start + length) or start > len(data)
        f.seek(-5, io.SEEK_END)
        assert f.read() == data[-5:]
        f.seek(0)
        assert f.read() == data and f.verified  # read to the end in order: the whole-file hash checked
    with pytest.raises(ValueError):
        f.read(1)
    with pytest.raises(ckpt_sync.CkptSyncError, match="holds 3 files"):
        ckpt_sync.open(any_repo_url, pushed["id"])


def test_a_flipped_chunk_is_detected_while_streaming(any_repo_url, cli, key, tmp_path, torch_checkpoint, caplog):
    local = torch_checkpoint(tmp_path / "checkpoint_s1_300.pt", seed=3, step=300, hidden=192)
    pushed = _push(cli, any_repo_url, local)
    chunks = ckpt_sync.checkpoint(pushed["id"], any_repo_url).files[0].chunks
    victim = chunks[len(chunks) // 2].id
    flip_chunk_byte(any_repo_url, victim)
    with ckpt_sync.open(any_repo_url) as f, pytest.raises(Exception):  # noqa: B017 - torch replaces our error
        torch.load(f, weights_only=True, map_location="cpu")
    # torch's C++ reader swallows the IntegrityError raised inside it: the file keeps it, and logs it.
    assert isinstance(f.error, IntegrityError) and "authentication" in str(f.error)
    assert any(victim[:16] in r.getMessage() for r in caplog.records if r.name == "ckpt_sync.reader")
    with ckpt_sync.open(any_repo_url) as f:
        f.read(chunks[0].size)  # the sound chunks before it read fine
        with pytest.raises(IntegrityError):
            f.read()


def test_a_whole_file_hash_mismatch_fails_the_read_that_completes_it(any_repo_url, cli, key, tmp_path):
    blob = tmp_path / "blob.bin"
    blob.write_bytes(random.Random(2).randbytes(300_000))
    pushed = _push(cli, any_repo_url, blob, "64K", "--sha256")  # format 2 records one only when asked
    # An authentic manifest whose recorded hash is wrong (a writer's bug): only the whole-file hash sees it.
    repo = open_repository(any_repo_url)
    m = repo.load_manifest(pushed["id"])
    wrong = dataclasses.replace(m.files[0], **{m.files[0].digest[0]: "0" * 64})
    assert isinstance(wrong, FileEntry)
    repo.commit(dataclasses.replace(m, id=new_manifest_id(), files=(wrong,)))
    with ckpt_sync.open(repo, "latest") as f:
        assert f.read(100_000) == blob.read_bytes()[:100_000]
        with pytest.raises(IntegrityError, match="whole-file hash mismatch"):
            f.read()


def test_fsspec_ckptsync_urls_read_the_same_bytes(any_repo_url, cli, key, tmp_path):
    src = make_folder_checkpoint(tmp_path / "step_100")
    pushed = _push(cli, any_repo_url, src)
    model = (src / "model.pt").read_bytes()
    with fsspec.open("ckptsync://latest/model.pt", "rb", repo=any_repo_url) as f:
        assert f.read() == model
    fs = fsspec.filesystem("ckptsync", repo=any_repo_url)
    assert [e["name"] for e in fs.ls("")] == [pushed["id"]]
    assert fs.ls("ckptsync://step_100", detail=False) == ["step_100/meta.json", "step_100/model.pt", "step_100/optim"]
    assert fs.ls("latest/optim", detail=False) == ["latest/optim/state.pt"]
    assert fs.info("latest/model.pt")["size"] == len(model) and fs.isdir("latest/optim")
    assert fs.cat(f"ckptsync://{pushed['id']}/meta.json") == (src / "meta.json").read_bytes()
    assert fs.cat_file("latest/model.pt", start=10, end=50) == model[10:50]
    assert not fs.exists("latest/nope.pt")
    with pytest.raises(PermissionError):
        fs.open("latest/model.pt", "wb")
    with fsspec.open("ckptsync://latest/model.pt", "rb", repo=any_repo_url) as f:
        assert torch.load(f, weights_only=True, map_location="cpu")["global_step"] == 0


def test_the_core_imports_without_fsspec_or_torch():
    code = (
        "import sys; sys.modules['fsspec'] = None; sys.modules['torch'] = None\n"
        "import ckpt_sync, ckpt_sync.cli, ckpt_sync.transfer.reader\n"
        "assert callable(ckpt_sync.open)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
