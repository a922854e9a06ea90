"""How long ``CheckpointManager.maybe_save`` blocks the training loop with ``async_save=True``.

    python bench/bench_async_save.py [--params 25M] [--repeats 5] [--dir /path/on/the/disk/to/test]

The model is an MLP with Adam, so the state is about 3x the parameter bytes (weights + two moments),
all CPU tensors. For each repeat it times, in this one run:

- ``torch.save`` of the same checkpoint dict, synchronously (the baseline the loop would wait for);
- ``maybe_save`` with async on: only the part the loop waits for (CPU snapshot + RNG capture + submit);
  the background write is awaited outside the timed region;
- ``maybe_save`` with async off (atomic write with fsync), for context.

Each timed region starts after ``os.sync()``, so none pays for the previous one's writeback.

Prints the medians and ``ratio = async maybe_save / sync torch.save`` (target <= 0.25), and the same
ratio for the fastest repeat of each (less sensitive to other processes on a shared machine). Figures
are ratios from one run on one machine, not promises.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ckpt_sync.training import CheckpointManager


def parse_count(s: str) -> int:
    mult = {"k": 10**3, "m": 10**6, "g": 10**9}.get(s[-1].lower(), 1)
    return int(float(s[:-1] if mult > 1 else s) * mult)


def build(params: int, hidden: int = 2048) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    layers = max(1, round(params / (hidden * hidden + hidden)))
    model = torch.nn.Sequential(*[torch.nn.Linear(hidden, hidden) for _ in range(layers)])
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    step(model, opt)  # materialise Adam's moment buffers
    return model, opt


def step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    x = torch.randn(8, model[0].in_features)
    model(x).square().mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def settle() -> None:
    """Start each timed region with no dirty pages still being written back from the previous one."""
    if hasattr(os, "sync"):
        os.sync()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="25M", help="model parameters (default 25M: ~300 MB of state with Adam)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temp folder)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ckpt-async-bench-", dir=args.dir))
    try:
        run(work, parse_count(args.params), args.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, params: int, repeats: int) -> None:
    model, opt = build(params)
    state_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values()) * 3
    print(f"state: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, ~{state_bytes / 2**20:.0f} MiB")

    common = {"model": model, "optimizer": opt, "interval_s": None, "every_n_steps": 1, "max_keep": 2}
    async_mgr = CheckpointManager(work / "async", async_save=True, handle_signals=False, **common)
    sync_mgr = CheckpointManager(work / "sync", async_save=False, handle_signals=False, **common)
    t_save, t_async, t_sync = [], [], []
    for i in range(1, repeats + 1):
        step(model, opt)
        content = async_mgr._content(i, 0, "full", {}, None)  # exactly what the manager writes
        settle()
        t0 = time.perf_counter()
        torch.save(content, work / "plain.pt")
        t_save.append(time.perf_counter() - t0)
        del content

        settle()
        t0 = time.perf_counter()
        async_mgr.maybe_save(i, 0)
        t_async.append(time.perf_counter() - t0)
        async_mgr.wait()  # outside the timed region: the write happens while the loop would train

        settle()
        t0 = time.perf_counter()
        sync_mgr.maybe_save(i, 0)
        t_sync.append(time.perf_counter() - t0)
    async_mgr.close()
    sync_mgr.close()

    med = {k: statistics.median(v) for k, v in (("save", t_save), ("async", t_async), ("sync", t_sync))}
    print(f"sync torch.save (baseline):          median {med['save'] * 1e3:8.1f} ms")
    print(f"maybe_save, async_save=True:         median {med['async'] * 1e3:8.1f} ms  (loop blocked)")
    print(f"maybe_save, async_save=False (fsync): median {med['sync'] * 1e3:8.1f} ms")
    print(f"ratio async maybe_save / sync torch.save = {med['async'] / med['save']:.3f} (target <= 0.25)")
    # Best of N: what a save costs when no other process competes for memory bandwidth.
    print(f"ratio of the fastest of each (best of {repeats}) = {min(t_async) / min(t_save):.3f}")
    print("per repeat, ms: torch.save", _ms(t_save), "| async", _ms(t_async), "| sync", _ms(t_sync))


def _ms(xs: list[float]) -> str:
    return " ".join(f"{x * 1e3:.0f}" for x in xs)


if __name__ == "__main__":
    main()
