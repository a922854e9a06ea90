"""Fine-tuning with a frozen backbone: what a second checkpoint costs to push.

The model is a backbone of Linear layers (frozen, the large majority of parameters) and a head
trained by Adam (so only the head has optimizer state); the pickle carries a loss history that
grows between the two checkpoints, which shifts every later offset in the zip archive.
"""

from __future__ import annotations

import json
from pathlib import Path

from common import run_python


def make_pair(
    folder: Path,
    *,
    hidden: int = 1024,
    backbone_layers: int = 12,
    head_out: int = 480,
    steps: tuple[int, int] = (10, 300),
) -> dict:
    import torch

    torch.manual_seed(0)
    backbone = torch.nn.Sequential(*[torch.nn.Linear(hidden, hidden) for _ in range(backbone_layers)])
    head = torch.nn.Linear(hidden, head_out)
    for p in backbone.parameters():
        p.requires_grad_(False)
    model = torch.nn.Sequential(backbone, head)
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    losses: list[float] = []

    def train(steps: int) -> None:
        for _ in range(steps):
            loss = model(torch.randn(16, hidden)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())

    def save(step: int) -> Path:
        path = folder / f"checkpoint_finetune_{step}.pt"
        torch.save(
            {
                "model_state_dict": model.state_dict(),
                "optimizer_state_dict": opt.state_dict(),
                "global_step": step,
                "training_stats": {"loss_history": list(losses)},
            },
            path,
        )
        return path

    folder.mkdir(parents=True, exist_ok=True)
    train(steps[0])
    first = save(steps[0])
    train(steps[1])
    second = save(sum(steps))
    n_backbone = sum(p.numel() for p in backbone.parameters())
    n_head = sum(p.numel() for p in head.parameters())
    return {"first": first, "second": second, "backbone_share": n_backbone / (n_backbone + n_head)}


def run(work: Path, env: dict[str, str]) -> dict:
    pair = make_pair(work / "finetune")
    repo = str(work / "finetune-repo")
    stats = []
    for path in (pair["first"], pair["second"]):
        m = run_python("-m", "ckpt_sync.cli", "push", "--repo", repo, str(path), "--json", env=env)
        stats.append(json.loads(m.stdout)[0]["stats"])
    size = pair["second"].stat().st_size
    return {
        "backbone_share": pair["backbone_share"],
        "size": size,
        "bytes_sent": stats[1]["bytes_sent"],
        "bytes_new": stats[1]["bytes_new"],
        "share_sent": stats[1]["bytes_sent"] / size,
    }
