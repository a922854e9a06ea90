"""CheckpointManager in-process: the seed's naming and content, triggers, async snapshots, rotation, best model,
selective and compressed saves, config files, pid file, atomic writes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from training_helpers import train

from ckpt_sync.errors import ConfigError
from ckpt_sync.fs.atomic import atomic_write
from ckpt_sync.training import (
    CheckpointConfig,
    CheckpointManager,
    CheckpointSaveError,
    TrainingInterrupted,
    check_checkpoint,
    load_checkpoint,
    load_checkpoint_config,
    recovery_drill,
)
from ckpt_sync.training.best import heal_best_dir


def manager(directory: Path, model: Any, opt: Any = None, sched: Any = None, **kw: Any) -> CheckpointManager:
    kw.setdefault("interval_s", None)
    kw.setdefault("handle_signals", False)
    return CheckpointManager(directory, model=model, optimizer=opt, scheduler=sched, **kw)


def test_sync_core_imports_without_torch() -> None:
    code = "import sys, ckpt_sync, ckpt_sync.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_files_are_named_and_filled_as_the_seed_says(tmp_path: Path, tiny: Callable[..., tuple]) -> None:
    model, opt, sched = tiny()
    swa = torch.optim.swa_utils.AveragedModel(model)
    with manager(tmp_path, model, opt, sched, swa_model=swa, total_steps=100) as mgr:
        assert re.fullmatch(r"\d{8}_\d{6}", mgr.session_id)
        loss = train(model, opt, sched)
        swa.update_parameters(model)
        path = mgr.save(7, 1, loss=loss)
    assert path.name == f"checkpoint_{mgr.session_id}_7.pt"
    ckpt = torch.load(path, map_location="cpu", weights_only=True)  # loads without trusting pickles
    assert {
        "model_state_dict",
        "optimizer_state_dict",
        "scheduler_state_dict",
        "epoch",
        "global_step",
        "best_loss",
        "session_id",
        "timestamp",
        "training_stats",
        "swa_state",
        "random_state",
        "metadata",
    } <= set(ckpt)
    assert (ckpt["epoch"], ckpt["global_step"], ckpt["session_id"]) == (1, 7, mgr.session_id)
    assert set(ckpt["training_stats"]) >= {"loss_history", "learning_rates", "gpu_memory"}
    assert set(ckpt["random_state"]) == {"python", "numpy", "torch", "torch_cuda"}
    assert set(ckpt["metadata"]) >= {"hostname", "gpu_name", "cuda_version", "pytorch_version"}
    assert ckpt["swa_state"]["swa_n"] == 1 and ckpt["swa_state"]["swa_active"] is True
    session = json.loads((tmp_path / "training_session.json").read_text())
    assert session["total_steps"] == 100 and session["current_step"] == 7
    assert session["checkpoints"] == [str(tmp_path / path.name)]


def test_async_save_snapshots_the_state_before_the_next_optimizer_step(
    tmp_path: Path, tiny: Callable[..., tuple], monkeypatch: pytest.MonkeyPatch
) -> None:
    gate, writing = threading.Event(), threading.Event()
    real_save = torch.save

    def gated_save(obj: Any, f: Any, *a: Any, **kw: Any) -> None:
        writing.set()
        gate.wait(timeout=300)
        real_save(obj, f, *a, **kw)

    model, opt, sched = tiny()
    with manager(tmp_path, model, opt, sched, async_save=True) as mgr:
        train(model, opt, sched)
        at_save = {k: v.clone() for k, v in model.state_dict().items()}
        monkeypatch.setattr(torch, "save", gated_save)
        path = mgr.save(1, 0)
        writing.wait(timeout=300)  # the write is in flight, blocked
        train(model, opt, sched, steps=3)  # in-place updates of the live parameters
        gate.set()
        mgr.wait()
    saved = load_checkpoint(path)["model_state_dict"]
    for k, v in at_save.items():
        assert torch.equal(saved[k], v), f"{k}: a later optimizer step leaked into the checkpoint"
    assert not torch.equal(saved["0.weight"], model.state_dict()["0.weight"])


def test_background_write_errors_are_raised_on_the_next_call(
    tmp_path: Path, tiny: Callable[..., tuple], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_save(*a: Any, **kw: Any) -> None:
        raise OSError(28, "No space left on device")

    model, opt, sched = tiny()
    mgr = manager(tmp_path, model, opt, sched, async_save=True, every_n_steps=1)
    monkeypatch.setattr(torch, "save", broken_save)
    mgr.maybe_save(1, 0)
    with pytest.raises(CheckpointSaveError, match="no space left"):
        mgr.wait()
    mgr.maybe_save(2, 0)
    with pytest.raises(CheckpointSaveError):
        mgr.close()
    assert not list(tmp_path.glob("checkpoint_*")) and not list(tmp_path.glob(".checkpoint_*"))


@pytest.mark.parametrize("if_busy", ["skip", "wait"])
def test_a_save_requested_while_one_is_in_flight_waits_or_is_skipped(
    tmp_path: Path, tiny: Callable[..., tuple], monkeypatch: pytest.MonkeyPatch, if_busy: str
) -> None:
    gate, writing = threading.Event(), threading.Event()
    real_save = torch.save

    def gated_save(obj: Any, f: Any, *a: Any, **kw: Any) -> None:
        writing.set()
        gate.wait(timeout=300)
        real_save(obj, f, *a, **kw)

    model, opt, sched = tiny()
    monkeypatch.setattr(torch, "save", gated_save)
    with manager(tmp_path, model, opt, sched, async_save=True, every_n_steps=1, if_busy=if_busy) as mgr:
        assert mgr.maybe_save(1, 0) is not None
        writing.wait(timeout=300)
        if if_busy == "skip":
            assert mgr.maybe_save(2, 0) is None  # still writing step 1: skipped, the loop is not blocked
            gate.set()
        else:
            threading.Timer(0.05, gate.set).start()  # releases the writer while maybe_save waits for it
            assert mgr.maybe_save(2, 0) is not None
    steps = sorted(int(p.stem.rsplit("_", 1)[1]) for p in tmp_path.glob("checkpoint_*.pt"))
    assert steps == ([1] if if_busy == "skip" else [1, 2])


def test_time_trigger_fires_every_interval_of_the_managers_clock(tmp_path: Path, tiny: Callable[..., tuple]) -> None:
    now = [1000.0]
    model, opt, sched = tiny()
    saved = []
    with manager(tmp_path, model, opt, sched, interval_s=180, async_save=False, clock=lambda: now[0]) as mgr:
        for step in range(1, 11):
            now[0] += 60  # one step takes a minute
            if mgr.maybe_save(step, 0) is not None:
                saved.append(step)
    assert saved == [3, 6, 9]


def test_fifo_rotation_keeps_max_keep_and_never_the_best_model(tmp_path: Path, tiny: Callable[..., tuple]) -> None:
    model, opt, sched = tiny()
    with manager(tmp_path, model, opt, sched, every_n_steps=1, max_keep=3, async_save=False) as mgr:
        for step in range(1, 9):
            train(model, opt, sched)
            mgr.maybe_save(step, 0, val_loss=0.5 if step == 1 else 0.9)
    steps = sorted(int(p.stem.rsplit("_", 1)[1]) for p in tmp_path.glob("checkpoint_*.pt"))
    assert steps == [6, 7, 8]
    meta = json.loads((tmp_path / "best_model" / "best_metadata.json").read_text())
    assert meta["step"] == 1 and meta["best_loss"] == 0.5 and meta["timestamp"]
    assert set(torch.load(tmp_path / "best_model" / "model_state_dict.pt", weights_only=True)) == set(
        model.state_dict()
    )


def test_selective_saves_hold_optimizer_state_every_kth_save_and_recovery_uses_it(
    tmp_path: Path, tiny: Callable[..., tuple]
) -> None:
    class Recorder:
        def __init__(self) -> None:
            self.enqueued: list[str] = []

        def enqueue(self, path: Path, metadata: dict, tags: tuple[str, ...] = ()) -> None:
            self.enqueued.append(Path(path).name)

        def wait(self) -> None: ...

        def close(self) -> None: ...

    sync = Recorder()
    model, opt, sched = tiny()
    with manager(
        tmp_path, model, opt, sched, every_n_steps=1, max_keep=2, full_every=3, async_save=False, handoff=sync
    ) as mgr:
        for step in range(1, 6):
            train(model, opt, sched)
            mgr.maybe_save(step, 0)
    assert [n.rsplit("_", 1)[1] for n in sync.enqueued] == ["1.pt", "4.pt"]  # only resumable ones go remote
    kinds = {int(p.stem.rsplit("_", 1)[1]): load_checkpoint(p)["checkpoint_kind"] for p in tmp_path.glob("*.pt")}
    # saves 1 and 4 are full; rotation keeps the 2 newest (4, 5) and never drops the newest full one
    assert kinds == {4: "full", 5: "model_only"}
    assert "optimizer_state_dict" not in load_checkpoint(next(tmp_path.glob("*_5.pt")))
    assert check_checkpoint(next(tmp_path.glob("*_5.pt"))).ok  # model-only files are valid, not "corrupt"

    model2, opt2, sched2 = tiny(seed=3)
    with manager(tmp_path, model2, opt2, sched2) as mgr2:
        assert mgr2.recover()["start_step"] == 4  # type: ignore[index]


def test_best_model_uses_save_pretrained_when_the_model_has_it(tmp_path: Path) -> None:
    class PretrainedNet(torch.nn.Linear):
        def save_pretrained(self, path: Path, state_dict: dict | None = None) -> None:
            torch.save(state_dict if state_dict is not None else self.state_dict(), Path(path) / "weights.pt")
            (Path(path) / "config.json").write_text('{"in": 2}')

    class Tokenizer:
        def save_pretrained(self, path: Path) -> None:
            (Path(path) / "tokenizer.json").write_text("{}")

    model = PretrainedNet(2, 2)
    with manager(tmp_path, model, tokenizer=Tokenizer(), async_save=True) as mgr:
        mgr.maybe_save(1, 0, val_loss=0.3)
        mgr.maybe_save(2, 0, val_loss=0.4)  # not better: best_model stays from step 1
    files = sorted(p.name for p in (tmp_path / "best_model").iterdir())
    assert files == ["best_metadata.json", "config.json", "tokenizer.json", "weights.pt"]
    assert json.loads((tmp_path / "best_model" / "best_metadata.json").read_text())["step"] == 1
    assert not list(tmp_path.glob(".best_model*"))


def test_an_interrupted_best_model_swap_is_undone_on_the_next_start(tmp_path: Path) -> None:
    old = tmp_path / ".best_model.1234abcd.old"
    old.mkdir()
    (old / "best_metadata.json").write_text('{"step": 3}')
    (tmp_path / ".best_model.feedbeef.tmp").mkdir()  # a half-written new one
    heal_best_dir(tmp_path / "best_model")
    assert json.loads((tmp_path / "best_model" / "best_metadata.json").read_text()) == {"step": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_model"]


def test_compressed_checkpoints_verify_and_recover(tmp_path: Path, tiny: Callable[..., tuple]) -> None:
    model, opt, sched = tiny()
    with manager(tmp_path, model, opt, sched, compression="zip", async_save=True) as mgr:
        train(model, opt, sched)
        path = mgr.save(4, 0)
    assert path.name == f"checkpoint_{mgr.session_id}_4.zip"  # the seed's zip naming
    import zipfile

    assert zipfile.ZipFile(path).namelist() == [f"checkpoint_{mgr.session_id}_4.pt"]
    assert check_checkpoint(path).ok
    model2, opt2, sched2 = tiny(seed=1)
    with manager(tmp_path, model2, opt2, sched2) as mgr2:
        assert mgr2.recover()["start_step"] == 4  # type: ignore[index]
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters(), strict=True))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp left


def test_zstd_compression_when_installed(tmp_path: Path, tiny: Callable[..., tuple]) -> None:
    pytest.importorskip("zstandard")
    model, opt, sched = tiny()
    with manager(tmp_path, model, opt, sched, compression=True) as mgr:
        path = mgr.save(2, 0)
    assert path.name.endswith("_2.pt.zst") and check_checkpoint(path).ok


def test_extra_state_round_trips_and_unsafe_values_are_refused_at_save_time(
    tmp_path: Path, tiny: Callable[..., tuple]
) -> None:
    model, opt, sched = tiny()
    with manager(tmp_path, model, opt, sched, async_save=False) as mgr:
        mgr.save(3, 0, data_cursor=1234, ema=torch.ones(2))
        with pytest.raises(TypeError, match=r"extra\['oops'\] is a object"):
            mgr.save(4, 0, oops=object())
    with manager(tmp_path, model, opt, sched) as mgr2:
        info = mgr2.recover()
    assert info is not None and info["data_cursor"] == 1234 and torch.equal(info["ema"], torch.ones(2))


def test_checkpoint_config_loads_from_yaml_and_toml(tmp_path: Path, tiny: Callable[..., tuple]) -> None:
    toml = tmp_path / "ckpt.toml"
    toml.write_text(
        '[checkpoint_config]\ninterval = 60\nmax_keep = 2\nrotation = "FIFO"\ncompression = false\nasync_save = false\n'
    )
    assert load_checkpoint_config(toml) == CheckpointConfig(60, 2, "FIFO", False, False)
    bad = tmp_path / "bad.toml"
    bad.write_text("[checkpoint_config]\nmax_kept = 2\n")
    with pytest.raises(ConfigError, match="max_kept"):
        load_checkpoint_config(bad)
    model, opt, _ = tiny()
    with CheckpointManager.from_config(
        toml, tmp_path / "c", model=model, optimizer=opt, every_n_steps=1, handle_signals=False
    ) as mgr:
        for step in range(1, 5):
            mgr.maybe_save(step, 0)
    assert len(list((tmp_path / "c").glob("checkpoint_*.pt"))) == 2

    pytest.importorskip("yaml")
    yml = tmp_path / "ckpt.yaml"
    yml.write_text(
        "checkpoint_config:\n  interval: 180\n  max_keep: 5\n  rotation: FIFO\n"
        "  compression: false\n  async_save: true\n"
    )
    assert load_checkpoint_config(yml) == CheckpointConfig()


def test_signal_handlers_and_pid_file_live_only_while_the_manager_is_open(
    tmp_path: Path, tiny: Callable[..., tuple]
) -> None:
    before = signal.getsignal(signal.SIGTERM)
    model, _, _ = tiny()
    pid_file = tmp_path / "logs" / "training.pid"
    mgr = CheckpointManager(tmp_path, model=model, handle_signals=True, pid_file=pid_file)
    assert pid_file.read_text().strip() == str(os.getpid())
    assert signal.getsignal(signal.SIGTERM) is not before
    signal.raise_signal(signal.SIGTERM)  # only flags: nothing is saved from inside the handler
    assert mgr.emergency_requested and not list(tmp_path.glob("checkpoint_*"))
    with pytest.raises(TrainingInterrupted) as caught:
        mgr.maybe_save(5, 0)
    assert caught.value.checkpoint.exists() and load_checkpoint(caught.value.checkpoint)["emergency"]
    mgr.close()
    assert signal.getsignal(signal.SIGTERM) is before
    assert not pid_file.exists()


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def half_then_fail(f: Any) -> None:
        f.write(b"new but incomp")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_local_backup_copies_each_checkpoint_and_rotates(tmp_path: Path, tiny: Callable[..., tuple]) -> None:
    model, opt, sched = tiny()
    backup = tmp_path / "backup"
    with manager(tmp_path / "c", model, opt, sched, every_n_steps=1, max_keep=2, backup_dir=backup) as mgr:
        for step in range(1, 4):
            mgr.maybe_save(step, 0)
    assert sorted(p.name for p in backup.iterdir()) == sorted(p.name for p in (tmp_path / "c").glob("*.pt"))
    assert len(list(backup.iterdir())) == 2


def test_recovery_drill_loads_the_newest_into_a_fresh_model(tmp_path: Path, tiny: Callable[..., tuple]) -> None:
    model, opt, sched = tiny()
    with manager(tmp_path, model, opt, sched) as mgr:
        mgr.save(1, 0)
    assert recovery_drill(tmp_path, lambda: tiny(seed=9)[0], torch.randn(1, 4))
    assert not recovery_drill(tmp_path, lambda: torch.nn.Linear(3, 3), torch.randn(1, 3))


def test_async_saves_reuse_snapshot_buffers_without_mixing_up_checkpoints(
    tmp_path: Path, tiny: Callable[..., tuple]
) -> None:
    from ckpt_sync.training.state import Snapshotter

    snap = Snapshotter()
    first = snap({"w": torch.ones(3)})
    second = snap({"w": torch.zeros(3)})
    assert second["w"] is first["w"]  # refilled in place: no fresh allocation (and page faults) per save

    model, opt, sched = tiny()
    expected = {}
    with manager(tmp_path, model, opt, sched, async_save=True, every_n_steps=1) as mgr:
        for step in (1, 2, 3):
            train(model, opt, sched)
            expected[step] = {k: v.clone() for k, v in model.state_dict().items()}
            mgr.maybe_save(step, 0)
    for step, state in expected.items():
        saved = load_checkpoint(next(tmp_path.glob(f"checkpoint_*_{step}.pt")))["model_state_dict"]
        assert all(torch.equal(saved[k], v) for k, v in state.items()), f"checkpoint {step} holds another step"
