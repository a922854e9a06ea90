"""A small, fully deterministic training run used by the process-level tests (and importable by them).

The model has dropout and every batch is sampled at random with torch, numpy and python's ``random``,
so an exact resume needs all three RNG states plus model, optimizer and scheduler state.

Each completed step prints ``step N loss HEX`` (and appends it to ``--losses``). Fault hooks:
``--pause-at N`` blocks on stdin after step N (the test then SIGKILLs the process);
``--kill-during-save-at N`` makes the save of step N write half its bytes and SIGKILL the process;
``--sigterm-mid-step N`` sends SIGTERM to itself between ``backward()`` and ``optimizer.step()`` of step N.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

N, D = 256, 16
BATCH = 16
STEPS_PER_EPOCH = 10


def seed_everything(seed: int = 0) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)  # same reduction order in every process: bit-exact losses


def build() -> tuple[torch.nn.Module, torch.optim.Optimizer, Any, torch.Tensor, torch.Tensor]:
    """Data, model, optimizer and scheduler, from a freshly seeded state."""
    seed_everything(0)
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(N, D, generator=g)
    y = (x @ torch.randn(D, 1, generator=g)).tanh()
    model = torch.nn.Sequential(torch.nn.Linear(D, 32), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(32, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.7)
    return model, opt, sched, x, y


def train_step(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    sched: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    mid_step: Any = None,
) -> float:
    model.train()
    idx = torch.randint(0, N, (BATCH,))  # torch RNG
    noise = torch.from_numpy(np.random.normal(0.0, 0.05, size=(BATCH, D)).astype(np.float32))  # numpy RNG
    scale = 1.0 + random.uniform(-0.1, 0.1)  # python RNG
    pred = model(x[idx] * scale + noise)  # dropout: torch RNG again
    loss = torch.nn.functional.mse_loss(pred, y[idx])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if mid_step is not None:
        mid_step()
    opt.step()
    sched.step()
    return float(loss.item())


def run_reference(steps: int) -> tuple[torch.nn.Module, torch.optim.Optimizer, list[float]]:
    """The uninterrupted run, in this process: the state after ``steps`` steps."""
    model, opt, sched, x, y = build()
    losses = [train_step(model, opt, sched, x, y) for _ in range(steps)]
    return model, opt, losses


def _kill_during_torch_save() -> None:
    """Replace torch.save by one that writes half the checkpoint, flushes it, then SIGKILLs this process."""
    real = torch.save

    def half_then_die(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        buf = io.BytesIO()
        real(obj, buf, *args, **kwargs)
        data = buf.getvalue()
        with open(f, "wb") if isinstance(f, str | os.PathLike) else f as out:  # type: ignore[attr-defined]
            out.write(data[: len(data) // 2])
            out.flush()
            os.fsync(out.fileno())
            print("dying mid-save", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    torch.save = half_then_die  # type: ignore[assignment]


def _slow_torch_save(seconds: float) -> None:
    """torch.save says "saving" and takes ``seconds`` longer: a test can signal during the save."""
    real = torch.save

    def slow(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        print("saving", flush=True)
        time.sleep(seconds)
        real(obj, f, *args, **kwargs)

    torch.save = slow  # type: ignore[assignment]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--every", type=int, default=5)
    p.add_argument("--async-save", action="store_true")
    p.add_argument("--recover", action="store_true")
    p.add_argument("--losses")
    p.add_argument("--pause-at", type=int)
    p.add_argument("--kill-during-save-at", type=int)
    p.add_argument("--sigterm-mid-step", type=int)
    p.add_argument("--on-signal", default="raise", choices=["raise", "exit"])
    p.add_argument("--session-id", default="run1")
    p.add_argument("--max-keep", type=int, default=5)
    p.add_argument("--slow-save", type=float, help="every torch.save prints 'saving' and sleeps this long first")
    args = p.parse_args(argv)
    if args.slow_save:
        _slow_torch_save(args.slow_save)

    from ckpt_sync.training import CheckpointManager, TrainingInterrupted

    model, opt, sched, x, y = build()
    losses_out = open(args.losses, "a") if args.losses else None  # noqa: SIM115
    mgr = CheckpointManager(
        args.dir,
        model=model,
        optimizer=opt,
        scheduler=sched,
        interval_s=None,
        every_n_steps=args.every,
        max_keep=args.max_keep,
        async_save=args.async_save,
        session_id=args.session_id,
        on_signal=args.on_signal,
        pid_file=Path(args.dir) / "training.pid",
    )
    start = 1
    if args.recover:
        info = mgr.recover()
        if info is not None:
            start = info["start_step"] + 1
            print(f"resumed from {info['start_step']}", flush=True)
    step = start
    try:
        for step in range(start, args.steps + 1):
            if args.kill_during_save_at == step:
                _kill_during_torch_save()
            hook = None
            if args.sigterm_mid_step == step:

                def hook() -> None:
                    os.kill(os.getpid(), signal.SIGTERM)

            loss = train_step(model, opt, sched, x, y, mid_step=hook)
            line = json.dumps({"step": step, "loss": loss.hex()})
            print(f"step {step} loss {loss.hex()}", flush=True)
            if losses_out:
                losses_out.write(line + "\n")
                losses_out.flush()
            mgr.maybe_save(step, (step - 1) // STEPS_PER_EPOCH, loss=loss)
            if args.pause_at == step:
                print(f"paused {step}", flush=True)
                sys.stdin.readline()
    except TrainingInterrupted as err:
        print(f"interrupted {step} {err.checkpoint}", flush=True)
        mgr.close()
        return 3
    mgr.close()
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
