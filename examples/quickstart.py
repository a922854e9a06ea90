"""The main job end to end on the embedded default repository.

Uses your default key (~/.config/ckpt-sync/key, made here if you have none and no
BACKUP_ENCRYPTION_KEY is set) and the default repository (~/.local/share/ckpt-sync/repo).
"""

from __future__ import annotations

import filecmp
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from ckpt_sync.locations import default_repo_url


def run(*args: str) -> None:
    print("$ ckpt-sync", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "ckpt_sync.cli", *args], check=True)


def main() -> None:
    # The repository, and a key in ~/.config/ckpt-sync/key if you have none (README: first steps).
    run("init")
    # Everything but the key and the repository lives here, and goes when the quickstart ends.
    with tempfile.TemporaryDirectory(prefix="ckpt-sync-quickstart-") as tmp:
        same = roundtrip(Path(tmp))
    if not same:
        sys.exit(1)


def roundtrip(work: Path) -> bool:
    """Save, push, pull into a fresh folder, compare: is the restored checkpoint byte-identical?"""
    model = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 10))
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(8, 256)).sum().backward()
    optimizer.step()
    ckpt = work / "checkpoints" / "checkpoint_20260101_120000_500.pt"
    ckpt.parent.mkdir()
    torch.save(
        {"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
         "epoch": 1, "global_step": 500},
        ckpt,
    )
    print(f"repository: {default_repo_url()}")
    run("push", str(ckpt))
    run("ls")
    fresh = work / "fresh-host"
    run("pull", "--latest", "--to", str(fresh))
    restored = fresh / ckpt.name
    same = filecmp.cmp(ckpt, restored, shallow=False)
    state = torch.load(restored, weights_only=True)
    print(f"restored {restored}: byte-identical={same}, global_step={state['global_step']}")
    run("verify", "--read-data")
    return same


if __name__ == "__main__":
    main()
