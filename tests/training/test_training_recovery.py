"""Recovery: walking back past a damaged checkpoint, repair into quarantine/, the session file, a fresh host."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from training_helpers import train

from ckpt_sync import SyncClient, api
from ckpt_sync.training import (
    CheckpointCorruptWarning,
    CheckpointManager,
    QueueHandoff,
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


@pytest.mark.parametrize("hold", ["hard-link", "copy"])
def test_rotation_never_loses_a_checkpoint_that_is_still_uploading(
    tmp_path: Path, tiny: Callable[..., tuple], key: str, repo_url: str, monkeypatch: pytest.MonkeyPatch, hold: str
) -> None:
    directory = tmp_path / "ckpt"
    state = directory / ".ckpt-sync"
    # No uploader yet (worker=False): every upload stays queued while rotation runs.
    client = SyncClient(repo_url, state_dir=state, worker=False)
    model, opt, sched = tiny()
    digests = {}
    with CheckpointManager(
        directory, model=model, optimizer=opt, scheduler=sched, interval_s=None, every_n_steps=1, max_keep=2,
        async_save=False, handoff=QueueHandoff(client), handle_signals=False,
    ) as mgr:  # fmt: skip
        with monkeypatch.context() as patched:
            if hold == "copy":  # a filesystem without hard links (nor reflinks): the queue holds a copy

                def no_link(src: Any, dst: Any, *a: Any, **kw: Any) -> None:
                    raise PermissionError(errno.EPERM, "Operation not permitted")

                patched.setattr(os, "link", no_link)
            for step in range(1, 6):
                train(model, opt, sched)
                path = mgr.maybe_save(step, 0)
                assert path is not None
                digests[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
        # rotation ran while no upload could happen: the originals are gone, the queue holds all five
        assert len(list(directory.glob("checkpoint_*.pt"))) == 2
        assert client.queue.unfinished() == 5
        uploader = SyncClient(repo_url, state_dir=state)  # an uploader shows up; leaving the block waits for it
    uploader.close()
    assert not any((state / "staging").iterdir())  # held copies dropped once committed

    repo = api.open_repository(repo_url)
    restored = tmp_path / "restored"
    for mid in repo.manifest_ids():
        m = api.pull(to=restored, repo=repo, checkpoint=mid)
        assert hashlib.sha256((restored / m.name).read_bytes()).hexdigest() == digests.pop(m.name)
    assert digests == {}


def test_uploads_a_crashed_run_left_queued_are_committed_by_the_next_run(
    tmp_path: Path, tiny: Callable[..., tuple], key: str, repo_url: str
) -> None:
    directory = tmp_path / "ckpt"
    model, opt, sched = tiny()
    crashed = SyncClient(repo_url, state_dir=directory / ".ckpt-sync", worker=False)  # dies before uploading
    mgr = CheckpointManager(
        directory, model=model, optimizer=opt, scheduler=sched, interval_s=None, every_n_steps=1, max_keep=1,
        async_save=False, handoff=QueueHandoff(crashed), handle_signals=False,
    )  # fmt: skip
    digests = {}
    for step in (1, 2):
        train(model, opt, sched)
        path = mgr.maybe_save(step, 0)
        assert path is not None
        digests[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    crashed.queue.close()  # the process is gone here: the manager never closed, nothing was uploaded
    assert [p.name[-5:] for p in directory.glob("checkpoint_*.pt")] == ["_2.pt"]  # step 1 rotated away locally

    with CheckpointManager(
        directory, model=model, optimizer=opt, scheduler=sched, interval_s=None, every_n_steps=1, max_keep=1,
        async_save=False, repo=repo_url, remote_keep=0, handle_signals=False,
    ) as again:  # fmt: skip
        assert again.recover()["start_step"] == 2  # type: ignore[index]
        train(model, opt, sched)
        again.maybe_save(3, 0)  # leaving the block waits for this upload, queued after the two left over

    repo = api.open_repository(repo_url)
    restored = tmp_path / "restored"
    steps = []
    for mid in repo.manifest_ids():
        m = api.pull(to=restored, repo=repo, checkpoint=mid)
        steps.append(m.global_step)
        if m.name in digests:
            assert hashlib.sha256((restored / m.name).read_bytes()).hexdigest() == digests.pop(m.name)
    assert sorted(steps) == [1, 2, 3] and digests == {}
    assert not any((directory / ".ckpt-sync" / "staging").iterdir())
