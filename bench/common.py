"""Shared benchmark helpers: generated checkpoints, measured subprocess runs, a results table.

Everything is measured side by side in one run on the same machine; we report ratios, and peak
RSS read from each child's own /proc/<pid>/status VmHWM (ru_maxrss would inherit the parent's peak).
"""

from __future__ import annotations

import os
import resource
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
    user: float = 0.0  # the child's CPU seconds (it and its waited-for children), user and system
    sys: float = 0.0

    @property
    def cpu(self) -> float:
        return self.user + self.sys

    def cpu_per_gib(self, nbytes: int) -> str:
        """``total (user u, sys s)`` CPU seconds per GiB of ``nbytes``."""
        g = nbytes / (1 << 30)
        return f"{self.cpu / g:.2f} (u {self.user / g:.2f}, s {self.sys / g:.2f})"


def _timed(cmd: list[str], env: dict[str, str] | None) -> tuple[subprocess.CompletedProcess[str], float, float, float]:
    """Run ``cmd``; wall seconds and its user/system CPU (RUSAGE_CHILDREN grows by exactly the
    children reaped meanwhile, and the benchmarks run one child at a time)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return proc, seconds, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime


def run_python(*args: str, env: dict[str, str] | None = None) -> Measured:
    """Run ``python -m module ...`` or ``python script.py ...`` in a child; time it and read its peak RSS."""
    proc, seconds, user, system = _timed([sys.executable, "-c", _MEASURED, *args], env)
    if proc.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{proc.stdout}\n{proc.stderr}")
    peak = None
    for line in proc.stdout.splitlines():
        if line.startswith("PEAK_RSS_KIB"):
            peak = int(line.split()[1]) / 1024
    return Measured(seconds, peak, proc.stdout, user, system)


def run_cmd(cmd: list[str], env: dict[str, str] | None = None) -> Measured:
    """Run a non-Python tool; peak RSS from GNU time's ``%M`` when /usr/bin/time exists."""
    timer = Path("/usr/bin/time")
    full = [str(timer), "-f", "PEAK_RSS_KIB %M", *cmd] if timer.exists() else cmd
    proc, seconds, user, system = _timed(full, env)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}")
    peak = None
    for line in proc.stderr.splitlines():
        if line.startswith("PEAK_RSS_KIB"):
            peak = int(line.split()[1]) / 1024
    return Measured(seconds, peak, proc.stdout, user, system)


def then_sync(m: Measured, path: Path) -> Measured:
    """``m`` followed by ``sync FILE`` (fsync of what it wrote), as our pull fsyncs: the two added up."""
    s = run_cmd(["sync", str(path)])
    return Measured(m.seconds + s.seconds, m.peak_mib, m.stdout, m.user + s.user, m.sys + s.sys)


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


def source_tree(path: str) -> str:
    """``path`` as a tree whose ``ckpt_sync`` (providers included) imports on its own from PYTHONPATH.

    This checkout maps ``ckpt_sync.providers`` to the top-level ``providers/`` folder through its
    editable install, so another tree without a ``ckpt_sync/providers`` would silently borrow this
    tree's providers and a before/after would compare the wrong code.
    """
    tree = Path(path).resolve()
    if (tree / "providers").is_dir() and not (tree / "ckpt_sync" / "providers").exists():
        raise SystemExit(
            f"{tree}: its ckpt_sync.providers would come from this checkout; give it its own first: "
            f"ln -s ../providers {tree / 'ckpt_sync' / 'providers'}"
        )
    return str(tree)
