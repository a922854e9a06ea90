"""restic and rclone crypt on the same bytes, to a local folder: the peers we compare push/pull with.

A peer whose binary is missing is reported as skipped, never faked. Both run with their defaults
(restic 0.14+: repository v2, compression auto; rclone crypt: XSalsa20-Poly1305, names encrypted).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from common import Measured, run_cmd, then_sync

PASSWORD = "ckpt-sync-bench"


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def restic_init(work: Path) -> tuple[str, dict[str, str]]:
    """A fresh restic repository (and cache) in ``work``: its path and the environment to use it."""
    env = {"RESTIC_PASSWORD": PASSWORD, "RESTIC_CACHE_DIR": str(work / "restic-cache")}
    for old in ("restic-repo", "restic-cache"):
        shutil.rmtree(work / old, ignore_errors=True)
    repo = str(work / "restic-repo")
    run_cmd(["restic", "init", "--repo", repo, "--quiet"], env=env)
    return repo, env


def restic(work: Path, src: Path) -> tuple[Measured, Measured] | None:
    """(backup, restore) of ``src`` with restic to a local repository, or None if restic is missing."""
    if not have("restic"):
        return None
    shutil.rmtree(work / "restic-out", ignore_errors=True)
    repo, env = restic_init(work)
    backup = run_cmd(["restic", "backup", "--repo", repo, "--quiet", str(src)], env=env)
    target = work / "restic-out"
    restore = run_cmd(["restic", "restore", "latest", "--repo", repo, "--target", str(target), "--quiet"], env=env)
    restored = target / str(src).lstrip("/")
    assert restored.stat().st_size == src.stat().st_size, "restic restored the wrong size"
    return backup, then_sync(restore, restored)  # + sync: our pull fsyncs what it restores


def rclone_crypt(work: Path, src: Path) -> tuple[Measured, Measured] | None:
    """(copy in, copy out) of ``src`` through an rclone crypt remote on a local folder, or None."""
    if not have("rclone"):
        return None
    obscured = subprocess.run(["rclone", "obscure", PASSWORD], capture_output=True, text=True, check=True).stdout
    env = {
        "RCLONE_CONFIG": os.devnull,
        "RCLONE_CONFIG_BENCHCRYPT_TYPE": "crypt",
        "RCLONE_CONFIG_BENCHCRYPT_REMOTE": str(work / "rclone-remote"),
        "RCLONE_CONFIG_BENCHCRYPT_PASSWORD": obscured.strip(),
    }
    push = run_cmd(["rclone", "copy", str(src), "benchcrypt:"], env=env)
    out = work / "rclone-out"
    pull = run_cmd(["rclone", "copy", f"benchcrypt:{src.name}", str(out)], env=env)
    assert (out / src.name).stat().st_size == src.stat().st_size, "rclone restored the wrong size"
    return push, then_sync(pull, out / src.name)  # + sync: our pull fsyncs what it restores


def copy_and_sync(work: Path, src: Path) -> tuple[Measured, Measured]:
    """``cp`` + ``sync FILE``: the disk's own limit for writing these bytes once (both columns)."""
    dst = work / "copy" / src.name
    dst.parent.mkdir()
    there = then_sync(run_cmd(["cp", str(src), str(dst)]), dst)
    back = work / "copy-back.pt"
    again = then_sync(run_cmd(["cp", str(dst), str(back)]), back)
    return there, again
