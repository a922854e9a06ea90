"""Helpers for tests that run real daemons and look at a local repository's files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from ckpt_sync.providers.wrapper import WrappingProvider

SLOW_CLI = str(Path(__file__).with_name("slow_cli.py"))


def chunk_files(repo_dir: Path) -> list[Path]:
    root = repo_dir / "chunks"
    return [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")] if root.exists() else []


def manifest_ids(repo_dir: Path) -> list[str]:
    root = repo_dir / "manifests"
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) if root.exists() else []


def wait_until(predicate: Callable[[], object], what: str, timeout: float = 120.0, every: float = 0.05) -> object:
    """Poll ``predicate`` until truthy; the timeout only guards against a hang, it is not a speed check."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def start_cli(
    *args: str,
    put_delay: float = 0.0,
    get_delay: float = 0.0,
    log_file: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``ckpt-sync ARGS`` as a real process (optionally with slowed chunk uploads or downloads)."""
    env = {**os.environ, **(env or {}), "CKPT_TEST_PUT_DELAY": str(put_delay), "CKPT_TEST_GET_DELAY": str(get_delay)}
    out = open(log_file, "wb") if log_file else subprocess.DEVNULL  # noqa: SIM115 - owned by the process
    return subprocess.Popen([sys.executable, SLOW_CLI, *args], stdout=subprocess.DEVNULL, stderr=out, env=env)


def json_events(log_file: Path, event: str) -> list[dict]:
    out = []
    for line in log_file.read_text().splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if d.get("event") == event:
            out.append(d)
    return out


def run_together(commands: list[list[str]], env: dict[str, str]) -> list[dict]:
    """Start every command at once (each a ``--json`` CLI run), wait for all, and return each one's
    JSON report; fails with their stderr if any exits non-zero."""
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) for cmd in commands]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), [e.decode()[-2000:] for _, e in outs]
    return [json.loads(o) for o, _ in outs]


def make_torch_checkpoint(
    path: Path, *, hidden: int = 256, layers: int = 3, seed: int = 0, step: int | None = None, history: int = 0
) -> Path:
    """A real ``torch.save`` of a small MLP, Adam state and a loss history, as the seed saves them.
    Its ``global_step`` is ``step``, else the one its seed-style name (``checkpoint_{session}_{step}.pt``)
    gives, else 0: what a file holds and what its name says agree, as in a real run."""
    import re

    import torch

    if step is None:
        named = re.match(r"^checkpoint_.+_(\d+)\.pt$", path.name)
        step = int(named.group(1)) if named else 0

    torch.manual_seed(seed)
    mods: list[torch.nn.Module] = []
    for _ in range(layers):
        mods += [torch.nn.Linear(hidden, hidden), torch.nn.ReLU()]
    model = torch.nn.Sequential(*mods)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, hidden)).sum().backward()
    opt.step()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "model_state_dict": model.state_dict(),
            "optimizer_state_dict": opt.state_dict(),
            "epoch": 0,
            "global_step": step,
            "training_stats": {"loss_history": [1.0 / (i + 1) for i in range(history)]},
        },
        path,
    )
    return path


def make_folder_checkpoint(path: Path, *, seed: int = 0, hidden: int = 128) -> Path:
    """A three-file folder checkpoint, as a sharded save leaves one: model, optimizer (real torch.save
    files) and a small JSON file."""
    path.mkdir(parents=True, exist_ok=True)
    make_torch_checkpoint(path / "model.pt", seed=seed, hidden=hidden, layers=2)
    make_torch_checkpoint(path / "optim" / "state.pt", seed=seed + 1000, hidden=hidden, layers=2)
    (path / "meta.json").write_text(json.dumps({"seed": seed, "step": 100 * (seed + 1)}))
    return path


def flip_chunk_byte(url: str, chunk_id: str) -> None:
    """Flip one bit in the middle of a stored chunk object, through the provider (any store)."""
    from ckpt_sync.providers import open_provider

    from ckpt_sync.format.layout import chunk_key

    provider = open_provider(url, retry=None)
    try:
        raw = bytearray(provider.get(chunk_key(chunk_id)))
        raw[len(raw) // 2] ^= 0x01
        provider.put(chunk_key(chunk_id), bytes(raw))
    finally:
        provider.close()


FAKETIME_SHIM = Path(__file__).with_name("faketime")


def skewed(command: list[str], offset: str, env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """``command`` run with its wall clock moved by ``offset`` (``+300s``, ``-5m``): libfaketime's
    ``faketime -f`` for the whole process, as on a host whose clock is wrong (monotonic time stays
    real, see faketime/sitecustomize.py). Returns the command line and its environment."""
    import shutil

    if shutil.which("faketime") is None:
        raise AssertionError("this test needs libfaketime: apt install faketime (scripts/test.sh installs it)")
    base = {**os.environ, **(env or {})}
    path = os.pathsep.join(p for p in (str(FAKETIME_SHIM), base.get("PYTHONPATH", "")) if p)
    return ["faketime", "-f", offset, *command], {**base, "FAKETIME_DONT_FAKE_MONOTONIC": "1", "PYTHONPATH": path}


def one_error_line(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """The process failed with ``code`` and one ``ckpt-sync: error:`` line holding every needle."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("ckpt-sync: error: "), lines[0]
    for n in needles:
        assert n in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
    return lines[0]


# ``python -c MEASURE_CLI ARGS...``: the CLI, then its peak RSS (``MAXRSS_KIB n``). A child measured
# from this small launcher, not forked from the large test process, whose high-water mark it inherits.
MEASURE_CLI = """
import sys
from ckpt_sync.cli import main
rc = main(sys.argv[1:])
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
print("MAXRSS_KIB", hwm)
sys.exit(rc)
"""


PAGE = 1000  # objects per listing page, as S3, Azure and GCS page them


class CountingProvider(WrappingProvider):
    """Counts every provider call as ``"<op> <top folder>"`` (``get manifests``, ``size chunks``); a
    listing counts as the pages a cloud store would return (``PAGE`` objects each), and the
    objects it returned are summed under ``objects listed``."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.calls: Counter[str] = Counter()
        self._counting = threading.Lock()

    def _call(self, op, key, fn):
        result = fn()
        where = key.split("/", 1)[0] or "(all)"
        with self._counting:
            if op == "list":
                n = len(result)
                self.calls[f"list {where}"] += max(1, -(-n // PAGE))
                self.calls["objects listed"] += n
            else:
                self.calls[f"{op} {where}"] += 1
        return result

    def requests(self, *, listings: bool = True) -> int:
        """Requests made: every call, a listing as its pages (``listings`` False: leaves them out)."""
        return sum(
            v for k, v in self.calls.items() if k != "objects listed" and (listings or not k.startswith("list "))
        )

    def reset(self) -> Counter[str]:
        with self._counting:
            calls, self.calls = self.calls, Counter()
        return calls


def fill_repository(repo, count: int, *, session: str = "growth") -> None:
    """``count`` committed checkpoints, fast: one unique 4 KiB chunk each plus one they all share,
    positioned at steps 0..count-1 of ``session`` and stamped as a push stamps them. What grows is
    the number of objects, not their bytes."""
    import hashlib

    from ckpt_sync.format.layout import manifest_key, new_manifest_id
    from ckpt_sync.format.manifest import ChunkRef, FileEntry, Manifest

    shared = os.urandom(64 << 10)
    shared_ref, _ = repo.store_chunk(shared)
    t0 = time.time() - count - 10
    for i in range(count):
        unique = os.urandom(4096)
        ref, _ = repo.store_chunk(unique)
        data = shared + unique
        mid = new_manifest_id(t0 + i)
        name = f"checkpoint_{session}_{i}.pt"
        chunks = (ChunkRef(shared_ref.id, len(shared)), ChunkRef(ref.id, len(unique)))
        m = Manifest(
            id=mid,
            name=name,
            kind="file",
            created=t0 + i,
            host="filler",
            files=(FileEntry(name, len(data), hashlib.sha256(data).hexdigest(), chunks),),
            session_id=session,
            global_step=i,
            repository=repo.binding(),
        )
        token = repo.keys.encrypt(json.dumps(m.to_json(), separators=(",", ":")).encode())
        repo.provider.put_if_absent(manifest_key(mid), token)
