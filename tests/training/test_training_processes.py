"""Acceptance tests that need real processes: exact resume after SIGKILL, SIGKILL mid-save, SIGTERM."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from training_helpers import HANG_GUARD_S, read_losses, read_until, run_script, start_script, wait_for

from ckpt_sync.training import CheckpointManager, check_directory, repair
from ckpt_sync.training.loading import load_checkpoint

STEPS, EVERY = 20, 5


@pytest.fixture(scope="module")
def reference_losses(tmp_path_factory: pytest.TempPathFactory) -> dict[int, str]:
    """The uninterrupted run's losses (saving does not change them: shared by the sync and async cases)."""
    d = tmp_path_factory.mktemp("reference")
    proc = run_script("--dir", str(d / "ckpt"), "--steps", str(STEPS), "--every", str(EVERY), "--losses", str(d / "l"))
    assert proc.returncode == 0, proc.stderr
    losses = read_losses(d / "l")
    assert sorted(losses) == list(range(1, STEPS + 1))
    return losses


def _session_lists(directory: Path, step: int) -> bool:
    try:
        session = json.loads((directory / "training_session.json").read_text())
    except (OSError, ValueError):
        return False
    return any(e.endswith(f"_{step}.pt") for e in session["checkpoints"])


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_resume_after_sigkill_is_bit_exact(tmp_path: Path, reference_losses: dict[int, str], async_save: bool) -> None:
    ckpt = tmp_path / "checkpoints" / "training"
    common = ["--dir", str(ckpt), "--steps", str(STEPS), "--every", str(EVERY)]
    if async_save:
        common.append("--async-save")

    # Second run: killed with SIGKILL after step 13 (the step-10 checkpoint is the newest on disk).
    proc = start_script(*common, "--pause-at", "13", "--losses", str(tmp_path / "killed"), stdin=-1)
    read_until(proc, "paused 13")
    wait_for(lambda: _session_lists(ckpt, 10), "the step-10 checkpoint to be committed to the session file")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert [p.name for p in sorted(ckpt.glob("checkpoint_*.pt"))] == ["checkpoint_run1_10.pt", "checkpoint_run1_5.pt"]
    started = json.loads((ckpt / "training_session.json").read_text())["start_time"]

    # Third run: recover() and continue to step 20.
    done = run_script(*common, "--recover", "--losses", str(tmp_path / "resumed"))
    assert done.returncode == 0, done.stderr
    assert "resumed from 10" in done.stdout
    resumed = read_losses(tmp_path / "resumed")
    assert sorted(resumed) == list(range(11, STEPS + 1))
    for step in range(11, STEPS + 1):
        assert resumed[step] == reference_losses[step], f"step {step} differs after resume"
    session = json.loads((ckpt / "training_session.json").read_text())
    assert session["start_time"] == started and session["current_step"] == STEPS  # one session, resumed


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_sigkill_during_a_save_leaves_earlier_checkpoints_loadable(tmp_path: Path, async_save: bool) -> None:
    ckpt = tmp_path / "ckpt"
    args = ["--dir", str(ckpt), "--steps", str(STEPS), "--every", str(EVERY), "--kill-during-save-at", "15"]
    proc = run_script(*args, *(["--async-save"] if async_save else []))
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "dying mid-save" in proc.stdout

    names = sorted(p.name for p in ckpt.glob("checkpoint_*"))
    assert names == ["checkpoint_run1_10.pt", "checkpoint_run1_5.pt"]  # no half file under a final name
    partial = [p for p in ckpt.iterdir() if p.name.startswith(".checkpoint_run1_15.pt.")]
    assert len(partial) == 1 and partial[0].stat().st_size > 0  # the torn bytes exist, but only as a temp file
    assert all(r.ok for r in check_directory(ckpt))
    session = json.loads((ckpt / "training_session.json").read_text())
    assert [Path(e).name for e in session["checkpoints"]] == ["checkpoint_run1_5.pt", "checkpoint_run1_10.pt"]

    torch.set_num_threads(1)
    from train_script import build

    model, opt, sched, _, _ = build()
    with CheckpointManager(ckpt, model=model, optimizer=opt, scheduler=sched, handle_signals=False) as mgr:
        info = mgr.recover()
    assert info is not None and info["start_step"] == 10

    report = repair(ckpt, temp_grace_s=0)
    assert [src.name for src, _ in report.quarantined] == [partial[0].name]
    assert (ckpt / "quarantine" / partial[0].name).exists()


def _assert_consistent_with_reference(checkpoint: dict, steps: int) -> None:
    """Model and optimizer in ``checkpoint`` are exactly the uninterrupted run's after ``steps`` steps."""
    from train_script import run_reference

    torch.set_num_threads(1)
    model, opt, _ = run_reference(steps)
    for k, v in model.state_dict().items():
        assert torch.equal(checkpoint["model_state_dict"][k], v), f"model tensor {k} is not from step {steps}"
    ref_opt = opt.state_dict()
    saved_opt = checkpoint["optimizer_state_dict"]
    for pid, state in ref_opt["state"].items():
        assert float(saved_opt["state"][pid]["step"]) == steps, "optimizer state is from another step"
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(saved_opt["state"][pid][name], state[name]), f"optimizer {name} not from step {steps}"


def test_sigterm_mid_step_writes_a_consistent_emergency_checkpoint(tmp_path: Path) -> None:
    """SIGTERM lands between backward() and optimizer.step(); the checkpoint is of the completed step 7."""
    ckpt = tmp_path / "ckpt"
    proc = run_script("--dir", str(ckpt), "--steps", "20", "--every", "100", "--sigterm-mid-step", "7")
    assert proc.returncode == 3, proc.stderr
    assert "[EMERGENCY] SIGTERM received" in proc.stderr
    assert "interrupted 7" in proc.stdout
    path = ckpt / "checkpoint_run1_7.pt"
    content = load_checkpoint(path)
    assert content["emergency"] == {"signal": signal.SIGTERM}
    assert content["global_step"] == 7
    _assert_consistent_with_reference(content, 7)


def test_external_sigterm_mid_epoch_exits_with_a_recoverable_checkpoint(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    proc = start_script("--dir", str(ckpt), "--steps", "100000", "--every", "100000", "--on-signal", "exit")
    read_until(proc, "step 3 ")
    pid_file = ckpt / "training.pid"
    assert int(pid_file.read_text()) == proc.pid  # what an external power-event hook would read
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert not pid_file.exists()

    [path] = list(ckpt.glob("checkpoint_run1_*.pt"))
    from train_script import build

    model, opt, sched, _, _ = build()
    with CheckpointManager(ckpt, model=model, optimizer=opt, scheduler=sched, handle_signals=False) as mgr:
        info = mgr.recover()
    assert info is not None and info["checkpoint"] == path
    assert info["emergency"] == {"signal": signal.SIGTERM}
    step = info["start_step"]
    assert step >= 3 and info["start_epoch"] == (step - 1) // 10
    _assert_consistent_with_reference(load_checkpoint(path), step)


@pytest.mark.parametrize("on_signal", ["raise", "exit"])
def test_a_second_ctrl_c_during_the_emergency_save_finishes_it_and_exits_cleanly(tmp_path: Path, on_signal: str):
    """Ctrl-C, then Ctrl-C again while the emergency checkpoint is being written: one line says it is
    finishing, the save completes, the process exits 130 with no traceback; one line per event."""
    ckpt = tmp_path / "ckpt"
    proc = start_script(
        "--dir", str(ckpt), "--steps", "100000", "--every", "100000", "--on-signal", on_signal, "--slow-save", "2"
    )  # fmt: skip
    read_until(proc, "step 3 ")
    proc.send_signal(signal.SIGINT)
    read_until(proc, "saving")  # inside the emergency torch.save
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    lines = [x for x in err.splitlines() if x.strip()]
    assert [x.split(" ", 2)[:2] for x in lines] == [
        ["[EMERGENCY]", "SIGINT"],  # received; saving at the next safe point
        ["[EMERGENCY]", "SIGINT"],  # again: finishing the emergency checkpoint, then exiting
        ["[EXIT]", "SIGINT"],  # the checkpoint written, the exit status
    ], err
    assert "finishing the emergency checkpoint" in lines[1]
    saved = sorted(ckpt.glob("checkpoint_run1_*.pt"))
    assert len(saved) == 1 and load_checkpoint(saved[0])["emergency"] == {"signal": signal.SIGINT}
