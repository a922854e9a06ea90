"""Holding a checkpoint until it is committed, so local rotation cannot delete it from under us.

A held copy lives in its own slot folder under the state folder's ``staging/``, made by
fs.atomic.hold_copy: a copy-on-write clone (reflink) where the filesystem has it, so a rewrite of
the original in place cannot reach it; else hard links (instant, no extra space, but sharing the
original's inode: the worker checks a held file did not change before committing,
checkpoint_files.FileState); across filesystems, or where links are refused, a real copy (the
file's size in time and disk space). Each slot also records its job
(``.ckpt-sync-job.json``: the original's absolute path, its version and what was asked), so a queue
that was deleted or damaged can be rebuilt from the slots alone. A failed hold (a full disk) leaves no slot behind.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import platform
from ..fs.atomic import hold_copy
from ..fs.checkpoint_files import file_states, folder_files

JOB_FILE = ".ckpt-sync-job.json"


def hold(path: Path, staging_root: Path, record: dict[str, Any] | None = None) -> Path:
    """Make a held copy of ``path`` (a file, or a folder checkpoint's files) and return where it is.

    ``record`` (the job's description) is written beside it with the held files' states. On any
    failure the slot is removed and the error raised.
    """
    slot = staging_root.resolve() / secrets.token_hex(8)
    slot.mkdir(parents=True)
    target = slot / path.name
    try:
        if path.is_dir():
            target.mkdir()
            for rel, src in folder_files(path):
                dst = target / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                hold_copy(src, dst)
        else:
            hold_copy(path, target)
        # Taken after holding: a hard link itself moves the inode's ctime.
        states = {k: v.to_json() for k, v in file_states(target).items()}
        body = json.dumps({**(record or {}), "held": target.name, "states": states}).encode()
        fd = os.open(slot / JOB_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | platform.BINARY, 0o600)
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        shutil.rmtree(slot, ignore_errors=True)
        raise
    return target


def slot_of(held: Path | str) -> Path:
    return Path(held).parent


def read_record(slot: Path) -> dict[str, Any] | None:
    """The job a slot holds, or None when it has no readable record (a crash while holding)."""
    try:
        d = json.loads((slot / JOB_FILE).read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) and isinstance(d.get("held"), str) else None


def slots(staging_root: Path) -> Iterator[Path]:
    if staging_root.is_dir():
        yield from (p for p in staging_root.iterdir() if p.is_dir())


def release(held: Path | str | None) -> None:
    """Drop a held copy (its slot folder)."""
    if held:
        shutil.rmtree(slot_of(held), ignore_errors=True)


def sweep(staging_root: Path, keep: set[str], *, min_age: float = 3600.0) -> None:
    """Remove slots no job refers to and that record no job (left by a crash while holding).

    Only slots older than ``min_age``: another process sharing the queue may have just made one
    and not yet recorded its job. Slots with a record are the queue's to adopt, never swept here.
    """
    cutoff = time.time() - min_age
    for slot in slots(staging_root):
        if str(slot) in keep or read_record(slot) is not None:
            continue
        try:
            young = slot.stat().st_mtime > cutoff
        except FileNotFoundError:
            continue
        if not young:
            shutil.rmtree(slot, ignore_errors=True)
