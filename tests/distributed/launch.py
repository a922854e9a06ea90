"""Start a real process group: one process per rank, each in its own folder (its "host disk")."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Group:
    procs: list[subprocess.Popen[bytes]]
    folders: list[Path]

    def wait(self, timeout: float = 300) -> list[int]:
        """Exit codes; the timeout only guards against a hang."""
        codes = []
        for p in self.procs:
            try:
                codes.append(p.wait(timeout))
            except subprocess.TimeoutExpired:
                for q in self.procs:
                    q.kill()
                raise AssertionError(f"rank processes hung:\n{self.logs()}") from None
        return codes

    def results(self) -> list[dict]:
        return [json.loads((f / "result.json").read_text()) for f in self.folders]

    def logs(self) -> str:
        return "\n".join(f"--- rank {i}\n{(f / 'log.txt').read_text()[-4000:]}" for i, f in enumerate(self.folders))


def start(script: str, args: list[str], world: int, root: Path, *, env: dict[str, str] | None = None) -> Group:
    """Run ``script ARGS`` as ``world`` ranks (gloo, env:// rendezvous), rank r in ``root/rank<r>``."""
    port = free_port()
    procs, folders = [], []
    for rank in range(world):
        folder = root / f"rank{rank}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "result.json").unlink(missing_ok=True)
        (folder / "paused").unlink(missing_ok=True)
        rank_env = {
            **os.environ,
            **(env or {}),
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        }
        log = open(folder / "log.txt", "wb")  # noqa: SIM115 - owned by the process
        cmd = [sys.executable, str(HERE / script), *args]
        procs.append(subprocess.Popen(cmd, cwd=folder, env=rank_env, stdout=log, stderr=log))
        folders.append(folder)
    return Group(procs, folders)


def run(script: str, args: list[str], world: int, root: Path, **kw) -> list[dict]:
    group = start(script, args, world, root, **kw)
    codes = group.wait()
    assert codes == [0] * world, f"exit codes {codes}:\n{group.logs()}"
    return group.results()
