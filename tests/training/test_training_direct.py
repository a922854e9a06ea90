"""CheckpointManager(direct=True) without a process group: full checkpoints go straight into the
repository (no local copy), async saves block only for the snapshot, remote retention applies to
the run, a fresh host resumes exactly, and a store that cannot take a save gets it locally."""

from __future__ import annotations

from pathlib import Path

import torch
from training_helpers import train

from ckpt_sync.api import open_repository
from ckpt_sync.errors import UsageError
from ckpt_sync.training import CheckpointManager


def _manager(directory: Path, parts: tuple, **kw) -> CheckpointManager:
    model, opt, sched = parts
    kw.setdefault("interval_s", None)
    kw.setdefault("handle_signals", False)
    return CheckpointManager(directory, model=model, optimizer=opt, scheduler=sched, **kw)


def _local_checkpoints(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("checkpoint_*.pt*"))


def test_direct_saves_land_only_in_the_repository_and_resume_exactly(key, repo_url, tmp_path, tiny):
    parts = tiny(seed=1)
    model, opt, sched = parts
    with _manager(tmp_path / "a", parts, repo=repo_url, direct=True, async_save=True, remote_keep=2) as mgr:
        for step in range(1, 6):
            train(model, opt, sched)
            mgr.save(step * 10, 0, loss=0.5)
        mgr.wait()
        session = mgr.session_id
    assert _local_checkpoints(tmp_path / "a") == []  # nothing written locally
    repo = open_repository(repo_url)
    steps = sorted(m.global_step for m in repo.manifests())
    assert steps == [40, 50]  # remote_keep=2 over this run
    fresh = tiny(seed=99)
    with _manager(tmp_path / "b", fresh, repo=repo_url) as again:
        state = again.recover()
    assert state is not None and state["start_step"] == 50 and again.session_id == session, state
    for a, b in zip(model.state_dict().values(), fresh[0].state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert fresh[1].state_dict()["state"].keys() == opt.state_dict()["state"].keys()
    for k, v in opt.state_dict()["state"].items():
        assert torch.equal(v["exp_avg"], fresh[1].state_dict()["state"][k]["exp_avg"])


def test_a_store_that_refuses_a_direct_save_gets_it_locally(key, tmp_path, tiny, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the repository's parent folder should be")
    url = (blocker / "repo").as_uri()
    parts = tiny(seed=2)
    with _manager(tmp_path / "run", parts, repo=url, direct=True) as mgr:
        train(*parts)
        path = mgr.save(10, 0, loss=1.0)
    assert path is not None and path.exists()
    assert _local_checkpoints(tmp_path / "run") == [path.name]
    assert f"cannot save {path.name} straight into {url}" in caplog.text


def test_direct_needs_a_repository(tmp_path, tiny):
    try:
        _manager(tmp_path, tiny(), direct=True)
    except UsageError as err:
        assert "straight into repo=" in str(err)
    else:
        raise AssertionError("direct=True without repo= was accepted")


def test_every_second_save_model_only_stays_local_and_full_ones_go_direct(key, repo_url, tmp_path, tiny):
    parts = tiny(seed=3)
    with _manager(tmp_path / "c", parts, repo=repo_url, direct=True, full_every=2, remote_keep=0) as mgr:
        for step in (1, 2, 3, 4):
            train(*parts)
            mgr.save(step, 0, loss=0.1)
    local = _local_checkpoints(tmp_path / "c")
    remote = sorted(m.global_step for m in open_repository(repo_url).manifests())
    assert remote == [1, 3] and len(local) == 2  # full saves straight in; model-only ones on disk
