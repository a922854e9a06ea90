"""Holding a checkpoint until it is committed, so local rotation cannot delete it from under us.

A held copy is made of hard links (instant, no extra space) in the state folder, which must be on
the same filesystem as the checkpoints for that; across filesystems it falls back to a real copy.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import time
from pathlib import Path


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError as err:
        if err.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        shutil.copy2(src, dst)


def hold(path: Path, staging_root: Path) -> Path:
    """Make a held copy of ``path`` (a file, or a folder of files) and return where it is."""
    slot = staging_root / secrets.token_hex(8)
    slot.mkdir(parents=True)
    target = slot / path.name
    if path.is_dir():
        for dirpath, _, filenames in os.walk(path):
            rel = Path(dirpath).relative_to(path)
            (target / rel).mkdir(parents=True, exist_ok=True)
            for name in filenames:
                src = Path(dirpath) / name
                if src.is_file():
                    _link_or_copy(src, target / rel / name)
    else:
        _link_or_copy(path, target)
    return target


def release(held: Path | str | None) -> None:
    """Drop a held copy (its slot folder)."""
    if held:
        shutil.rmtree(Path(held).parent, ignore_errors=True)


def sweep(staging_root: Path, keep: set[str], *, min_age: float = 3600.0) -> None:
    """Remove slots no job refers to (left by a crash between holding and enqueueing).

    Only slots older than ``min_age``: another process sharing the queue may have just made one
    and not yet recorded its job.
    """
    if not staging_root.is_dir():
        return
    cutoff = time.time() - min_age
    for slot in staging_root.iterdir():
        try:
            young = slot.stat().st_mtime > cutoff
        except FileNotFoundError:
            continue
        if str(slot) not in keep and not young:
            shutil.rmtree(slot, ignore_errors=True)
