"""Shared benchmark helpers: generated checkpoints, measured subprocess runs, a results table.

Everything is measured side by side in one run on the same machine; we report ratios. Every child
is started by one small launcher process (``Launcher``) and measured by its ``wait4``: wall time,
user and system CPU, and peak RSS (``ru_maxrss``: the child and any children it waited for). A
child forked straight from the benchmark would inherit the benchmark's own high-water mark (a big
process holding a torch model), so nothing is measured from there; the launcher's own peak (a
bare interpreter) is the floor every figure carries, printed by ``launcher_floor_mib``.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

MiB = 1 << 20

# The launcher: reads one JSON request a line (cmd, env, and optionally a regex after whose first
# match on the child's stdout or stderr it sends SIGTERM: a daemon that did one thing, then stopped),
# runs it, and answers one JSON line with the child's wait4 figures and its output.
_LAUNCHER = r"""
import json, os, re, signal, subprocess, sys, threading, time
def serve(req):
    stop_on = re.compile(req["stop_on"]) if req.get("stop_on") else None
    start = time.perf_counter()
    proc = subprocess.Popen(req["cmd"], env=req["env"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace")
    out = {"stdout": [], "stderr": []}
    stopped = []
    def pump(name, stream):
        for line in stream:
            out[name].append(line)
            if stop_on is not None and not stopped and stop_on.search(line):
                stopped.append(time.perf_counter() - start)
                proc.send_signal(signal.SIGTERM)
    pumps = [threading.Thread(target=pump, args=(n, getattr(proc, n))) for n in out]
    for t in pumps:
        t.start()
    _, status, ru = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; Popen must not wait again
    for t in pumps:
        t.join()
    return {"rc": proc.returncode, "seconds": seconds, "user": ru.ru_utime, "sys": ru.ru_stime,
            "peak_kib": ru.ru_maxrss, "stdout": "".join(out["stdout"]), "stderr": "".join(out["stderr"]),
            "stopped_at": stopped[0] if stopped else None}
for line in sys.stdin:
    if line.strip() == "floor":
        hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
        print(json.dumps({"peak_kib": int(hwm)}), flush=True)
        continue
    print(json.dumps(serve(json.loads(line))), flush=True)
"""


@dataclass
class Measured:
    seconds: float
    peak_mib: float | None
    stdout: str
    user: float = 0.0  # the child's CPU seconds (it and its waited-for children), user and system
    sys: float = 0.0
    stopped_at: float | None = None  # when the launcher sent SIGTERM (``stop_on`` matched), seconds from start

    @property
    def cpu(self) -> float:
        return self.user + self.sys

    def cpu_per_gib(self, nbytes: int) -> str:
        """``total (user u, sys s)`` CPU seconds per GiB of ``nbytes``."""
        g = nbytes / (1 << 30)
        return f"{self.cpu / g:.2f} (u {self.user / g:.2f}, s {self.sys / g:.2f})"


class Launcher:
    """One small long-lived process that starts every measured child (see the module docstring)."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-S", "-c", _LAUNCHER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self._lock = threading.Lock()
        atexit.register(self.close)

    def run(self, cmd: list[str], env: dict[str, str] | None = None, stop_on: str | None = None) -> dict:
        request = {"cmd": cmd, "env": {**os.environ, **(env or {})}, "stop_on": stop_on}
        with self._lock:
            assert self._proc.stdin and self._proc.stdout
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
            return json.loads(self._proc.stdout.readline())

    def floor_mib(self) -> float:
        with self._lock:
            assert self._proc.stdin and self._proc.stdout
            self._proc.stdin.write("floor\n")
            self._proc.stdin.flush()
            return json.loads(self._proc.stdout.readline())["peak_kib"] / 1024

    def set_cpus(self, cpus: list[int]) -> None:
        """Run this launcher, and so every child it starts from now on, on ``cpus`` only."""
        os.sched_setaffinity(self._proc.pid, cpus)

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()  # type: ignore[union-attr]
            self._proc.wait()


_launcher: Launcher | None = None


def launcher() -> Launcher:
    global _launcher
    if _launcher is None:
        _launcher = Launcher()
    return _launcher


def launcher_floor_mib() -> float:
    """The launcher's own peak RSS: what every child's figure may carry from it (a bare interpreter)."""
    return launcher().floor_mib()


def run_cmd(cmd: list[str], env: dict[str, str] | None = None, *, stop_on: str | None = None) -> Measured:
    """Run ``cmd`` from the launcher; its wall time, CPU and peak RSS. ``stop_on``: a regex; on its
    first match in the child's output the child gets SIGTERM (and must then exit 0)."""
    r = launcher().run(cmd, env, stop_on)
    if r["rc"] != 0:
        raise RuntimeError(f"{cmd} failed (exit {r['rc']}):\n{r['stdout']}\n{r['stderr']}")
    if stop_on and r["stopped_at"] is None:
        raise RuntimeError(f"{cmd} exited before printing {stop_on!r}:\n{r['stdout']}\n{r['stderr']}")
    return Measured(r["seconds"], r["peak_kib"] / 1024, r["stdout"], r["user"], r["sys"], r["stopped_at"])


def run_python(*args: str, env: dict[str, str] | None = None, stop_on: str | None = None) -> Measured:
    """``python -m module ...`` or ``python script.py ...`` in a child of the launcher (see ``run_cmd``).

    ``-P``: the current folder (or the script's) does not go first on sys.path, so a ``PYTHONPATH``
    naming another source tree (a before/after) is the ``ckpt_sync`` that runs wherever this started.
    """
    return run_cmd([sys.executable, "-P", *args], env, stop_on=stop_on)


def median_wall(runs: list[Measured]) -> Measured:
    """The run of median wall time."""
    return sorted(runs, key=lambda m: m.seconds)[len(runs) // 2]


def median_cpu(runs: list[Measured]) -> Measured:
    """The run of median CPU (user + system) seconds."""
    return sorted(runs, key=lambda m: m.cpu)[len(runs) // 2]


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


def make_streamed_checkpoint(path: Path, size: int, *, seed: int = 0) -> Path:
    """The same shape as ``make_checkpoint`` (Linear weights and biases, Adam's two moments, a pickle
    with a loss history), of any size, made with little memory: every tensor is a file-backed
    mapping (``torch.from_file(shared=True)``) filled in place, so ``torch.save`` streams 16 GiB from
    the page cache instead of holding it. The scratch files are removed afterwards.
    """
    import torch

    torch.manual_seed(seed)
    hidden = 2048
    layers = max(1, -(-size // (hidden * hidden * 4 * 3)))
    scratch = path.parent / f".{path.name}.tensors"
    scratch.mkdir(parents=True, exist_ok=True)

    def mapped(name: str, shape: tuple[int, ...], fill: str) -> torch.Tensor:
        numel = 1
        for d in shape:
            numel *= d
        f = scratch / name
        with open(f, "wb") as out:
            out.truncate(numel * 4)
        t = torch.from_file(str(f), shared=True, size=numel, dtype=torch.float32).view(shape)
        t.normal_() if fill == "normal" else t.uniform_()
        return t

    try:
        model, state = {}, {}
        for i in range(layers):
            model[f"{i}.weight"] = mapped(f"w{i}", (hidden, hidden), "normal")
            model[f"{i}.bias"] = mapped(f"b{i}", (hidden,), "normal")
            for j, key in ((2 * i, "weight"), (2 * i + 1, "bias")):
                shape = (hidden, hidden) if key == "weight" else (hidden,)
                state[j] = {
                    "step": torch.tensor(1.0),
                    "exp_avg": mapped(f"m{j}", shape, "normal"),
                    "exp_avg_sq": mapped(f"v{j}", shape, "uniform"),
                }
        groups = [{"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "params": list(range(2 * layers))}]
        torch.save(
            {
                "model_state_dict": model,
                "optimizer_state_dict": {"state": state, "param_groups": groups},
                "epoch": 0,
                "global_step": 0,
                "training_stats": {"loss_history": [1.0] * 100},
            },
            path,
        )
    finally:
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)
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
    compile_tree(tree)
    return str(tree)


def read_into_cache(folder: Path) -> None:
    """Read every file below ``folder`` once, so a restore from it reads the page cache, as a restore
    by rclone, restic or ``cp`` does from the store its own write just filled (ckpt-sync's push
    writes its repository around the cache, see ckpt_sync/direct_io.py)."""
    for path in folder.rglob("*"):
        if path.is_file():
            path.read_bytes()


def drop_caches() -> bool:
    """``sync; echo 3 > /proc/sys/vm/drop_caches``: the next read of any file comes from the disk (a
    cold restore, as after a reboot or on another machine). False where that is not allowed (not
    root, a read-only /proc/sys): the caller says so rather than measure a warm read as cold."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def compile_tree(tree: Path) -> None:
    """Write ``tree``'s bytecode, as installing a wheel does. An editable install leaves it to the
    first import, which never writes it where PYTHONDONTWRITEBYTECODE is set (as on this machine):
    every child would then compile every module it imports, ~0.1 CPU s a command, and a per-GiB
    figure would charge ckpt-sync for compiling itself where rclone and restic start as binaries."""
    import compileall

    for folder in ("ckpt_sync", "providers"):
        if (tree / folder).is_dir():
            compileall.compile_dir(tree / folder, quiet=2)


compile_tree(Path(__file__).resolve().parent.parent)
