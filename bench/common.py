"""Shared benchmark helpers: generated checkpoints, measured subprocess runs, a results table.

Everything is measured side by side in one run on the same machine; we report ratios, and peak
RSS read from each child's own /proc/<pid>/status VmHWM (ru_maxrss would inherit the parent's peak).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

MiB = 1 << 20

# Runs a command in a child and reports that child's peak RSS (VmHWM) on its last stdout line.
_MEASURED = r"""
import runpy, sys
sys.argv = sys.argv[1:]
try:
    if sys.argv[0] == "-m":
        sys.argv = sys.argv[1:]
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    else:
        runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as e:
    code = e.code
else:
    code = 0
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
print("\nPEAK_RSS_KIB", hwm, flush=True)
sys.exit(code if isinstance(code, int) else 1)
"""


@dataclass
class Measured:
    seconds: float
    peak_mib: float | None
    stdout: str


def run_python(*args: str, env: dict[str, str] | None = None) -> Measured:
    """Run ``python -m module ...`` or ``python script.py ...`` in a child; time it and read its peak RSS."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURED, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{proc.stdout}\n{proc.stderr}")
    peak = None
    for line in proc.stdout.splitlines():
        if line.startswith("PEAK_RSS_KIB"):
            peak = int(line.split()[1]) / 1024
    return Measured(seconds, peak, proc.stdout)


def run_cmd(cmd: list[str], env: dict[str, str] | None = None) -> Measured:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}")
    return Measured(seconds, None, proc.stdout)


def make_checkpoint(path: Path, size: int, *, seed: int = 0, frozen_share: float = 0.0) -> Path:
    """A real ``torch.save`` of an MLP's state dict plus Adam state, about ``size`` bytes.

    Parameters are ~1/3 of the file and Adam's two moments the rest, as in a real training checkpoint.
    """
    import torch

    torch.manual_seed(seed)
    hidden = 2048
    per_layer = hidden * hidden * 4 * 3  # weights + two Adam moments, fp32
    layers = max(1, -(-size // per_layer))  # round up: "1G" means at least 1 GiB
    model = torch.nn.Sequential(*[torch.nn.Linear(hidden, hidden) for _ in range(layers)])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "model_state_dict": model.state_dict(),
            "optimizer_state_dict": opt.state_dict(),
            "epoch": 0,
            "global_step": 0,
            "training_stats": {"loss_history": [1.0] * 100},
        },
        path,
    )
    return path


def fmt_rate(nbytes: int, seconds: float) -> str:
    return f"{nbytes / MiB / seconds:8.1f} MiB/s"


def print_table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)
