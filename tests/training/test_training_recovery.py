"""Recovery: walking back past a damaged checkpoint, repair into quarantine/, the session file, a fresh host."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from training_helpers import train

from ckpt_sync import api
from ckpt_sync.training import (
    BackgroundPush,
    CheckpointCorruptWarning,
    CheckpointManager,
    check_directory,
    repair,
    validate_checkpoint_integrity,
    verify_checkpoint,
)


def _three_checkpoints(directory: Path, tiny: Callable[..., tuple]) -> dict[int, dict[str, torch.Tensor]]:
    """Checkpoints at steps 2, 4, 6; returns the model state saved at each."""
    model, opt, sched = tiny()
    states = {}
    with CheckpointManager(
        directory, model=model, optimizer=opt, scheduler=sched, interval_s=None, every_n_steps=2, handle_signals=False
    ) as mgr:
        for step in range(1, 7):
            train(model, opt, sched)
            mgr.maybe_save(step, 0)
            if step % 2 == 0:
                states[step] = {k: v.clone() for k, v in model.state_dict().items()}
    return states


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    else:
        path.write_bytes(bytes(data[: len(data) * 6 // 10]))


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_recover_warns_and_falls_back_past_a_damaged_newest_checkpoint(
    tmp_path: Path, tiny: Callable[..., tuple], how: str
) -> None:
    states = _three_checkpoints(tmp_path, tiny)
    newest = tmp_path / next(p.name for p in tmp_path.glob("checkpoint_*_6.pt"))
    _damage(newest, how)
    assert not verify_checkpoint(newest)
    assert validate_checkpoint_integrity(newest)["file_exists"]

    model, opt, sched = tiny(seed=99)
    mgr = CheckpointManager(tmp_path, model=model, optimizer=opt, scheduler=sched, handle_signals=False)
    with mgr, pytest.warns(CheckpointCorruptWarning, match="_6.pt is damaged"):
        info = mgr.recover()
    assert info is not None and info["start_step"] == 4
    for k, v in model.state_dict().items():
        assert torch.equal(v, states[4][k])

    report = repair(tmp_path)
    assert [(s.name, d.parent.name) for s, d in report.quarantined] == [(newest.name, "quarantine")]
    assert not newest.exists() and (tmp_path / "quarantine" / newest.name).exists()
    assert (tmp_path / "quarantine" / f"{newest.name}.reason.txt").read_text().strip()
    session = json.loads((tmp_path / "training_session.json").read_text())
    assert [Path(p).name for p in session["checkpoints"]] == [
        p.name for p in sorted(tmp_path.glob("checkpoint_*.pt"), key=lambda p: p.stat().st_mtime_ns)
    ]
    assert session["current_step"] == 4 and session["current_epoch"] == 0
    assert all(r.ok for r in check_directory(tmp_path))


def test_check_cli_reports_and_repairs(tmp_path: Path, tiny: Callable[..., tuple], cli: Callable[..., Any]) -> None:
    _three_checkpoints(tmp_path, tiny)
    bad = next(tmp_path.glob("checkpoint_*_4.pt"))
    _damage(bad, "flip")

    out = cli("check", str(tmp_path))
    assert out.returncode == 1
    assert f"DAMAGED {bad}" in out.stdout and "2 of 3 checkpoint(s)" in out.stdout
    assert "--repair" in out.stderr

    fixed = cli("check", "--repair", str(tmp_path))
    assert fixed.returncode == 0, fixed.stderr
    assert "quarantined" in fixed.stdout
    assert (tmp_path / "quarantine" / bad.name).exists()
    assert cli("check", "--json", str(tmp_path), check=True).stdout.count('"ok": true') == 2


def test_session_file_is_rebuilt_when_missing_or_stale(tmp_path: Path, tiny: Callable[..., tuple]) -> None:
    _three_checkpoints(tmp_path, tiny)
    session_file = tmp_path / "training_session.json"
    original = json.loads(session_file.read_text())
    assert set(original) == {
        "session_id",
        "start_time",
        "current_epoch",
        "current_step",
        "total_steps",
        "best_loss",
        "checkpoints",
        "last_checkpoint",
    }

    session_file.unlink()
    model, opt, sched = tiny(seed=5)
    with CheckpointManager(tmp_path, model=model, optimizer=opt, scheduler=sched, handle_signals=False) as mgr:
        assert mgr.recover()["start_step"] == 6  # type: ignore[index]
    rebuilt = json.loads(session_file.read_text())
    assert rebuilt["checkpoints"] == original["checkpoints"]
    assert rebuilt["session_id"] == original["session_id"]

    # Stale: lists a file that is gone (newest deleted by hand) -> rebuilt, recovery uses the one before.
    next(tmp_path.glob("checkpoint_*_6.pt")).unlink()
    with CheckpointManager(tmp_path, model=model, optimizer=opt, scheduler=sched, handle_signals=False) as mgr:
        assert mgr.recover()["start_step"] == 4  # type: ignore[index]
    assert [Path(p).name[-5:] for p in json.loads(session_file.read_text())["checkpoints"]] == ["_2.pt", "_4.pt"]


def test_fresh_host_recover_pulls_the_newest_committed_checkpoint(
    tmp_path: Path, tiny: Callable[..., tuple], key: str, repo_url: str
) -> None:
    local = tmp_path / "host-a" / "checkpoints"
    model, opt, sched = tiny()
    with CheckpointManager(
        local, model=model, optimizer=opt, scheduler=sched, interval_s=None, every_n_steps=2, max_keep=2,
        repo=repo_url, handle_signals=False,
    ) as mgr:  # fmt: skip
        for step in range(1, 7):
            loss = train(model, opt, sched)
            mgr.maybe_save(step, step // 4, loss=loss, val_loss=1.0 if step == 3 else None)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    saved_opt = opt.state_dict()
    shutil.rmtree(local)  # the machine is gone

    repo = api.open_repository(repo_url)
    manifests = [repo.load_manifest(i) for i in repo.manifest_ids()]
    assert 6 in {m.global_step for m in manifests if "best" not in m.tags}
    [best] = [m for m in manifests if "best" in m.tags]
    assert best.name == "best_model" and best.global_step == 3

    fresh = tmp_path / "host-b" / "checkpoints"
    model2, opt2, sched2 = tiny(seed=123)
    with CheckpointManager(
        fresh, model=model2, optimizer=opt2, scheduler=sched2, repo=repo_url, handle_signals=False
    ) as mgr2:
        info = mgr2.recover()
    assert info is not None and info["start_step"] == 6 and info["start_epoch"] == 1 and info["best_loss"] == 1.0
    for k, v in model2.state_dict().items():
        assert torch.equal(v, saved[k])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], saved_opt["state"][0]["exp_avg"])
    assert json.loads((fresh / "best_model" / "best_metadata.json").read_text())["step"] == 3


@pytest.mark.parametrize("hold", ["hard-link", "no-links-here"])
def test_rotation_never_loses_a_checkpoint_that_is_still_uploading(
    tmp_path: Path, tiny: Callable[..., tuple], key: str, repo_url: str, monkeypatch: pytest.MonkeyPatch, hold: str
) -> None:
    if hold == "no-links-here":  # a filesystem without hard links: rotation must skip held files instead

        def no_link(src: Any, dst: Any) -> None:
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr("ckpt_sync.training.handoff._link_tree", no_link)
    gate = threading.Event()

    def slow_push(path: Path, **kw: Any) -> str:
        gate.wait(timeout=300)
        return api.push(path, **kw)

    directory = tmp_path / "ckpt"
    handoff = BackgroundPush(repo_url, staging_dir=directory / ".ckpt-sync-staging", push=slow_push)
    model, opt, sched = tiny()
    digests = {}
    with CheckpointManager(
        directory, model=model, optimizer=opt, scheduler=sched, interval_s=None, every_n_steps=1, max_keep=2,
        async_save=False, handoff=handoff, handle_signals=False,
    ) as mgr:  # fmt: skip
        for step in range(1, 6):
            train(model, opt, sched)
            path = mgr.maybe_save(step, 0)
            assert path is not None
            digests[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
        # rotation ran while every upload was blocked: originals go (links hold them) or stay (held in place)
        assert len(list(directory.glob("checkpoint_*.pt"))) == (2 if hold == "hard-link" else 5)
        assert handoff.pending() == 5
        gate.set()
    assert handoff.pending() == 0
    assert not any((directory / ".ckpt-sync-staging").iterdir())  # links dropped once committed

    repo = api.open_repository(repo_url)
    restored = tmp_path / "restored"
    for mid in repo.manifest_ids():
        m = api.pull(to=restored, repo=repo, checkpoint=mid)
        assert hashlib.sha256((restored / m.name).read_bytes()).hexdigest() == digests.pop(m.name)
    assert digests == {}


def test_uploads_that_failed_are_retried_by_the_next_run(tmp_path: Path, key: str, repo_url: str) -> None:
    from ckpt_sync.training import HandoffError

    ckpt = tmp_path / "checkpoint_s_1.pt"
    torch.save({"w": torch.ones(3)}, ckpt)
    staging = tmp_path / ".ckpt-sync-staging"

    def offline(path: Path, **kw: Any) -> str:
        raise OSError("network unreachable")

    first = BackgroundPush(repo_url, staging_dir=staging, push=offline)
    first.enqueue(ckpt, {"global_step": 1, "epoch": 0}, ())
    with pytest.raises(HandoffError, match="network unreachable"):
        first.close()
    ckpt.unlink()  # rotated away locally meanwhile: the staged link still has it

    second = BackgroundPush(repo_url, staging_dir=staging)  # the next run on this folder
    second.close()
    [mid] = api.open_repository(repo_url).manifest_ids()
    m = api.pull(to=tmp_path / "out", repo=repo_url, checkpoint=mid)
    assert (m.name, m.global_step) == ("checkpoint_s_1.pt", 1)
    assert torch.equal(torch.load(tmp_path / "out" / m.name, weights_only=True)["w"], torch.ones(3))
    assert not any(staging.iterdir())
