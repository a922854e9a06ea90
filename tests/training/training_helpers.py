"""Helpers for the training-side tests: run the deterministic training script as a real process, train a bit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).with_name("train_script.py")
HANG_GUARD_S = 300  # only to turn a hang into a failure; no test asserts on time


def start_script(*args: str, stdin: int | None = subprocess.DEVNULL) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *args],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=HANG_GUARD_S, env=os.environ
    )


def read_until(proc: subprocess.Popen[str], prefix: str) -> str:
    """Read stdout lines until one starts with ``prefix``; fail if the process ends first."""
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            proc.wait(timeout=HANG_GUARD_S)
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"process ended (rc={proc.returncode}) before printing {prefix!r}:\n{err}")
        if line.startswith(prefix):
            return line.strip()


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    """Poll until ``predicate()`` holds (a hang guard, not a timing assertion)."""
    deadline = time.monotonic() + HANG_GUARD_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def read_losses(path: Path) -> dict[int, str]:
    out: dict[int, str] = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        out[rec["step"]] = rec["loss"]
    return out


def train(model: Any, opt: Any, sched: Any, steps: int = 1) -> float:
    import torch

    loss = 0.0
    for _ in range(steps):
        out = model(torch.randn(8, 4)).pow(2).mean()
        opt.zero_grad()
        out.backward()
        opt.step()
        sched.step()
        loss = float(out.item())
    return loss
