"""A tiny real Lightning job with the ckpt-sync plugin; imported by the tests and run as a script.

    python lightning_job.py DIRPATH REPO_URL MAX_STEPS [--kill-after-save-at STEP] [--resume] [--ddp N]

With ``--kill-after-save-at S`` the process SIGKILLs itself right after the checkpoint of step S is
saved (and, with $CKPT_TEST_PUT_DELAY, before its upload can finish). With ``--resume`` it resumes
from ``latest_path``. With ``--ddp N`` it trains with N processes (DDP, gloo on CPU).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from ckpt_sync.lightning import CkptSyncCheckpointIO, latest_path

STEPS_PER_EPOCH = 4


class TinyRegression(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        self.log("progress", float(self.global_step))  # ModelCheckpoint(monitor="progress", mode="max"): newest
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def data() -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8 * STEPS_PER_EPOCH, 4, generator=g)
    y = x.sum(dim=1, keepdim=True)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)


def trainer(dirpath: Path, repo: str, callbacks=(), devices: int = 1, **kw) -> pl.Trainer:
    checkpoint = ModelCheckpoint(
        dirpath=dirpath, save_top_k=2, save_last=True, monitor="progress", mode="max", every_n_train_steps=2
    )
    return pl.Trainer(
        plugins=[CkptSyncCheckpointIO(repo)],
        callbacks=[checkpoint, *callbacks],
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kw,
    )


class KillAfterSave(pl.Callback):
    """SIGKILL at the start of the batch after the save of ``step`` (the save has returned by then)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            print(f"saved step {self.step}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("dirpath", type=Path)
    parser.add_argument("repo")
    parser.add_argument("max_steps", type=int)
    parser.add_argument("--kill-after-save-at", type=int)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--ddp", type=int, default=1)
    args = parser.parse_args(argv)
    if os.environ.get("CKPT_TEST_PUT_DELAY"):
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        import slow_cli  # noqa: F401 - slows every chunk upload of this process

    torch.manual_seed(0)
    callbacks = [KillAfterSave(args.kill_after_save_at)] if args.kill_after_save_at else []
    t = trainer(args.dirpath, args.repo, callbacks, devices=args.ddp, max_steps=args.max_steps)
    ckpt = latest_path(args.repo, args.dirpath) if args.resume else None
    t.fit(TinyRegression(), data(), ckpt_path=ckpt)
    print(f"rank {t.global_rank} trained to step {t.global_step} (resumed from {ckpt})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
