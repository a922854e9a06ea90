"""The Lightning CheckpointIO plugin with a real Trainer and ModelCheckpoint(save_top_k=2, save_last=True)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest

pl = pytest.importorskip("lightning.pytorch")
torch = pytest.importorskip("torch")

import lightning_job  # noqa: E402 - needs lightning, checked above

from ckpt_sync.api import open_repository  # noqa: E402

JOB = Path(lightning_job.__file__)


def _manifests(repo_url):
    repo = open_repository(repo_url)
    try:
        return [repo.load_manifest(i) for i in repo.manifest_ids()]
    finally:
        repo.provider.close()


class Capture(pl.Callback):
    """What the resumed trainer starts from: its global step and its optimizer's state."""

    def on_train_start(self, trainer, pl_module):
        self.step = trainer.global_step
        self.optimizer = copy.deepcopy(trainer.optimizers[0].state_dict())  # training updates it in place


def _same_state(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_state(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def test_two_epochs_with_top_k_rotation_keep_every_checkpoint_remotely_and_resume_on_a_fresh_folder(
    tmp_path, key, repo_url
):
    from ckpt_sync.lightning import latest_path

    ck = tmp_path / "checkpoints"
    torch.manual_seed(0)
    t = lightning_job.trainer(ck, repo_url, max_epochs=2)
    t.fit(lightning_job.TinyRegression(), lightning_job.data())  # teardown waits for the uploads
    assert t.global_step == 8
    local = sorted(p.name for p in ck.glob("*.ckpt"))
    assert local == ["epoch=1-step=6.ckpt", "epoch=1-step=8.ckpt", "last.ckpt"]  # save_top_k removed the rest
    got = _manifests(repo_url)
    remote = {(m.name, m.global_step) for m in got}
    # Lightning's top-k deletions did not reach the repository: every save is there, with its step.
    assert {("epoch=0-step=2.ckpt", 2), ("epoch=0-step=4.ckpt", 4), ("epoch=1-step=6.ckpt", 6)} <= remote
    assert {("epoch=1-step=8.ckpt", 8), ("last.ckpt", 8)} <= remote
    assert all(m.role == "resumable" and m.epoch in (0, 1) for m in got)

    fresh = tmp_path / "fresh-host"
    path = latest_path(repo_url, fresh)
    assert path is not None and Path(path).parent == fresh
    saved = torch.load(path, weights_only=False)
    assert saved["global_step"] == 8
    assert Path(path).read_bytes() == (ck / Path(path).name).read_bytes()
    capture = Capture()
    resumed = lightning_job.trainer(fresh, repo_url, [capture], max_epochs=3)
    resumed.fit(lightning_job.TinyRegression(), lightning_job.data(), ckpt_path=path)
    assert capture.step == 8
    assert _same_state(capture.optimizer, saved["optimizer_states"][0])
    assert resumed.global_step == 12


def test_a_missing_local_checkpoint_is_pulled_from_the_repository_on_load(tmp_path, key, repo_url):
    ck = tmp_path / "checkpoints"
    lightning_job.trainer(ck, repo_url, max_steps=4).fit(lightning_job.TinyRegression(), lightning_job.data())
    original = (ck / "epoch=0-step=4.ckpt").read_bytes()
    fresh = tmp_path / "fresh-host"
    capture = Capture()
    t = lightning_job.trainer(fresh, repo_url, [capture], max_steps=6)
    t.fit(lightning_job.TinyRegression(), lightning_job.data(), ckpt_path=str(fresh / "epoch=0-step=4.ckpt"))
    assert capture.step == 4
    assert (fresh / "epoch=0-step=4.ckpt").read_bytes() == original


def test_latest_path_on_an_empty_repository_starts_fresh(tmp_path, key, repo_url):
    from ckpt_sync.lightning import latest_path

    assert latest_path(repo_url, tmp_path / "checkpoints") is None


def test_killed_with_9_right_after_a_save_the_checkpoint_reaches_the_repository_on_the_next_start(
    tmp_path, key, repo_url
):
    ck = tmp_path / "checkpoints"
    env = {**os.environ, "CKPT_TEST_PUT_DELAY": "2"}  # its upload is still running when the kill comes
    run = [sys.executable, str(JOB), str(ck), repo_url]
    first = subprocess.run([*run, "4", "--kill-after-save-at", "2"], env=env, capture_output=True, text=True)
    assert first.returncode == -9 and "saved step 2" in first.stdout, first.stderr
    assert (ck / "epoch=0-step=2.ckpt").exists()
    assert "epoch=0-step=2.ckpt" not in {m.name for m in _manifests(repo_url)}

    second = subprocess.run([*run, "4", "--resume"], capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert "rank 0 trained to step 4" in second.stdout and "last.ckpt" in second.stdout
    steps = {m.name: m.global_step for m in _manifests(repo_url)}
    assert steps["epoch=0-step=2.ckpt"] == 2 and steps["epoch=0-step=4.ckpt"] == 4


def test_under_ddp_only_rank_0_saves_and_each_checkpoint_is_uploaded_once(tmp_path, key, repo_url):
    ck = tmp_path / "checkpoints"
    proc = subprocess.run(
        [sys.executable, str(JOB), str(ck), repo_url, "4", "--ddp", "2"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "rank 0 trained to step 4" in proc.stdout and "rank 1 trained to step 4" in proc.stdout
    saves = sorted((m.name, m.global_step) for m in _manifests(repo_url))
    assert saves == [("epoch=0-step=2.ckpt", 2), ("epoch=1-step=4.ckpt", 4), ("last.ckpt", 2), ("last.ckpt", 4)]
