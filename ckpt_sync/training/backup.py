"""Local backup: copy each finished checkpoint into a second folder (another disk), atomically."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from ..fs.atomic import atomic_open

log = logging.getLogger("ckpt_sync.training")


def backup_checkpoint(checkpoint_path: str | os.PathLike[str], backup_dir: str | os.PathLike[str]) -> Path:
    """Copy ``checkpoint_path`` into ``backup_dir`` under the same name: temp, fsync, rename (never a partial copy)."""
    src = Path(checkpoint_path)
    dst_dir = Path(backup_dir)
    dst_dir.mkdir(parents=True, exist_ok=True)
    dst = dst_dir / src.name
    with open(src, "rb") as inp, atomic_open(dst) as out:
        shutil.copyfileobj(inp, out, 1 << 20)
    shutil.copystat(src, dst)
    log.info("[BACKUP] Copied to %s", dst)
    return dst
