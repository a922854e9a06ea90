"""Every reader's "latest" is the same rule (lookup.py): the newest resumable checkpoint whose chunks
are all stored, by training position. Each reader gets a repository of its own kind of checkpoint
laid out the same way — step 100 sound, step 200 with a chunk gone, step 300 tagged best, and a
weights-only file pushed after them all — and every one of them must resume from step 100:
``pull --latest``, ``CheckpointManager.recover()``, ``ckpt_sync.open("latest")``,
``ckptsync://latest``, ``dcp.Reader("latest")``, Lightning's ``latest_path`` and Hugging Face's
``restore_latest``. Each choice is also checked against ``lookup.latest`` itself."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import ckpt_sync  # noqa: E402
from ckpt_sync.api import open_repository  # noqa: E402
from ckpt_sync.format.layout import chunk_key  # noqa: E402
from ckpt_sync.format.lookup import latest  # noqa: E402

STEPS = (100, 200, 300)


def _model(step: int) -> torch.nn.Module:
    torch.manual_seed(step)
    return torch.nn.Sequential(torch.nn.Linear(40, 40), torch.nn.ReLU(), torch.nn.Linear(40, 4))


def _optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(2, 40)).sum().backward()
    opt.step()
    return opt


def _push(cli, url: str, path: Path, *extra: str) -> str:
    return json.loads(
        cli("push", str(path), "--repo", url, "--chunk-size", "64K", "--json", *extra, check=True).stdout
    )[0]["id"]


def _lay_out(cli, url: str, tmp_path: Path, make: Callable[[Path, int], Path]) -> None:
    """Step 100 sound, 200 damaged, 300 tagged best, then a weights-only file: pushed in that order."""
    ids = {}
    for step in STEPS:
        ids[step] = _push(cli, url, make(tmp_path / f"src-{step}", step), *(("--tag", "best") if step == 300 else ()))
    torch.save(_model(999).state_dict(), tmp_path / "exported.pt")
    _push(cli, url, tmp_path / "exported.pt")
    repo = open_repository(url)
    manifests = {m.id: m for m in repo.manifests()}
    others = set().union(*(m.chunk_ids() for mid, m in manifests.items() if mid != ids[200]))
    victim = next(c for c in sorted(manifests[ids[200]].chunk_ids()) if c not in others)
    repo.provider.delete(chunk_key(victim))


def _step_of(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


# --- the seed's files: pull --latest, recover(), open, fsspec ---------------------------------------


def _seed_file(folder: Path, step: int) -> Path:
    folder.mkdir(parents=True)
    model = _model(step)
    path = folder / f"checkpoint_20261201_080000_{step}.pt"
    torch.save(
        {
            "model_state_dict": model.state_dict(),
            "optimizer_state_dict": _optimizer(model).state_dict(),
            "epoch": 1,
            "global_step": step,
        },
        path,
    )
    return path


def test_pull_recover_open_and_fsspec_all_resume_from_the_same_checkpoint(cli, key, repo_url, tmp_path):
    import fsspec

    from ckpt_sync.training import CheckpointManager

    _lay_out(cli, repo_url, tmp_path, _seed_file)
    want = "checkpoint_20261201_080000_100.pt"
    assert latest(open_repository(repo_url)).name == want

    pulled = tmp_path / "pulled"
    cli("pull", "--latest", "--repo", repo_url, "--to", str(pulled), check=True)
    assert [p.name for p in pulled.iterdir()] == [want] and _step_of(pulled / want) == 100

    with ckpt_sync.open(repo_url, "latest") as f:
        assert f.manifest.name == want
        assert int(torch.load(f, map_location="cpu", weights_only=True)["global_step"]) == 100

    fs = fsspec.filesystem("ckptsync", repo=repo_url)
    assert [e["name"].rsplit("/", 1)[-1] for e in fs.ls("latest")] == [want]

    model = _model(0)
    fresh = tmp_path / "fresh-host"
    with CheckpointManager(fresh, model=model, optimizer=_optimizer(model), repo=repo_url) as mgr:
        info = mgr.recover()
    assert info is not None and info["start_step"] == 100


# --- torch.distributed.checkpoint: dcp.Reader("latest") --------------------------------------------


def test_the_dcp_reader_resumes_from_the_same_checkpoint(cli, key, repo_url, tmp_path):
    import torch.distributed.checkpoint as dcp

    from ckpt_sync.dcp import Reader, Writer

    def state(step: int) -> dict:
        model = _model(step)
        return {"model": model.state_dict(), "optim": _optimizer(model).state_dict(), "step": step}

    for step in STEPS:
        tags = ["best"] if step == 300 else []
        dcp.save(
            state(step), storage_writer=Writer(repo_url, name=f"dcp_{step}", tags=tags, metadata={"global_step": step})
        )
    torch.save(_model(999).state_dict(), tmp_path / "exported.pt")
    _push(cli, repo_url, tmp_path / "exported.pt")
    repo = open_repository(repo_url)
    manifests = {m.name: m for m in repo.manifests()}
    others = set().union(*(m.chunk_ids() for name, m in manifests.items() if name != "dcp_200"))
    repo.provider.delete(chunk_key(next(c for c in sorted(manifests["dcp_200"].chunk_ids()) if c not in others)))

    from ckpt_sync.dcp import is_dcp_manifest

    assert latest(repo, accept=is_dcp_manifest).name == "dcp_100"
    got = {"model": _model(0).state_dict(), "step": -1}
    dcp.load(got, storage_reader=Reader(repo_url))
    assert got["step"] == 100
    assert all(torch.equal(got["model"][k], v) for k, v in state(100)["model"].items())


# --- Lightning's latest_path -----------------------------------------------------------------------


def _lightning_file(folder: Path, step: int) -> Path:
    folder.mkdir(parents=True)
    model = _model(step)
    path = folder / f"epoch=0-step={step}.ckpt"
    torch.save(
        {
            "epoch": 0,
            "global_step": step,
            "state_dict": model.state_dict(),
            "optimizer_states": [_optimizer(model).state_dict()],
        },
        path,
    )
    return path


def test_lightning_latest_path_resumes_from_the_same_checkpoint(cli, key, repo_url, tmp_path):
    from ckpt_sync.lightning import latest_path

    _lay_out(cli, repo_url, tmp_path, _lightning_file)
    assert latest(open_repository(repo_url)).name == "epoch=0-step=100.ckpt"
    fresh = tmp_path / "fresh-host"
    path = latest_path(repo_url, fresh)
    assert path is not None and Path(path).name == "epoch=0-step=100.ckpt" and _step_of(Path(path)) == 100


# --- Hugging Face's restore_latest -----------------------------------------------------------------


def _hf_folder(folder: Path, step: int) -> Path:
    from safetensors.torch import save_file

    ckpt = folder / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    model = _model(step)
    save_file(model.state_dict(), str(ckpt / "model.safetensors"))
    torch.save(_optimizer(model).state_dict(), ckpt / "optimizer.pt")
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step, "epoch": 1.0}))
    return ckpt


def test_hugging_face_restore_latest_resumes_from_the_same_checkpoint(cli, key, repo_url, tmp_path):
    from ckpt_sync.hf import restore_latest

    _lay_out(cli, repo_url, tmp_path, _hf_folder)
    assert latest(open_repository(repo_url)).name == "checkpoint-100"
    restored = restore_latest(repo_url, tmp_path / "out")
    assert restored == tmp_path / "out" / "checkpoint-100"
    assert json.loads((restored / "trainer_state.json").read_text())["global_step"] == 100
