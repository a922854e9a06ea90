"""The manager's local FIFO takes the same retention objects `ckpt-sync prune` composes."""

from __future__ import annotations

from pathlib import Path

import torch

from ckpt_sync.retention import build_policy
from ckpt_sync.training import CheckpointManager


def test_the_manager_rotates_with_a_composed_policy(tmp_path: Path, tiny) -> None:
    model, opt, sched = tiny()
    policy = build_policy(keep_last=2, keep_every_steps=4, roles=("resumable", "model-only"))
    with CheckpointManager(
        tmp_path, model=model, optimizer=opt, scheduler=sched, interval_s=None, every_n_steps=1,
        async_save=False, handle_signals=False, retention=policy,
    ) as mgr:  # fmt: skip
        for step in range(1, 11):
            loss = model(torch.randn(2, 4)).sum()
            loss.backward()
            opt.step()
            opt.zero_grad()
            mgr.maybe_save(step, 0, val_loss=1.0 / step)
    steps = sorted(int(p.stem.rsplit("_", 1)[1]) for p in tmp_path.glob("checkpoint_*.pt"))
    assert steps == [1, 4, 8, 9, 10]  # milestones of [0,4), [4,8), [8,12) and the 2 newest


def test_the_manager_prunes_the_repository_with_a_remote_policy(tmp_path: Path, tiny, key: str, repo_url: str) -> None:
    from ckpt_sync.api import open_repository

    model, opt, sched = tiny()
    remote = build_policy(keep_last=1, keep_every_steps=4)
    with CheckpointManager(
        tmp_path / "ck", model=model, optimizer=opt, scheduler=sched, interval_s=None, every_n_steps=1,
        async_save=False, handle_signals=False, repo=repo_url, remote_retention=remote,
    ) as mgr:  # fmt: skip
        for step in range(1, 7):
            loss = model(torch.randn(2, 4)).sum()
            loss.backward()
            opt.step()
            opt.zero_grad()
            mgr.maybe_save(step, 0)
    remote_steps = sorted(m.global_step for m in open_repository(repo_url).manifests())
    assert remote_steps == [1, 4, 6]  # milestones of [0,4) and [4,8), and the newest; the local 5 differ
    assert len(list((tmp_path / "ck").glob("checkpoint_*.pt"))) == 5
