"""Crash-safe local files, in one place: temp names, fsync, atomic writes, holding a file.

- **Temp names.** Every writer of this package names a file or folder it is still writing
  ``.<final name>.<writer>.<random>.<kind>`` (``kind``: ``tmp``, ``part`` for a restore in
  progress, ``old`` for a folder being replaced). Hidden, so watchers and globs for
  ``checkpoint_*.pt`` skip it (checkpoint_files.is_temp recognises it), and naming its writer (host,
  pid, process start: owners.WRITER_TAG), so a crashed writer's leftovers can be told from a live
  one's: ``leftover`` and ``abandoned``. Names earlier versions wrote are recognised too.
- **fsync.** ``fsync_file`` and ``fsync_dir`` with one error policy: where a file system cannot
  (Windows opens no folder; some network file systems refuse) or the path is gone, nothing is
  done; an I/O error is raised (a lost write must never pass for a durable one).
- **Atomic writes.** A temp file in the same folder, flushed, fsynced, renamed over the target,
  then the folder fsynced: a reader (or a crash at any instant) sees the old file or the complete
  new one, never a prefix.
- **Holding a file** until it is uploaded (``hold_copy``): a copy-on-write clone where the file
  system has one, else a hard link, else a real copy.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .. import platform
from ..owners import WRITER_TAG, writer_alive, writer_tag

TEMP_KINDS = ("tmp", "part", "old")
NAME_IN_TEMP = 48  # characters of the final name kept in a temp name (any name up to 255 bytes fits)
_TEMP = re.compile(rf"^\.(?P<name>.*)\.{WRITER_TAG}\.[0-9a-f]{{6}}\.(?P<kind>tmp|part|old)$")
# What earlier versions wrote: the training side's .<name>.<8 hex>.tmp (and the records' .<8 hex>.tmp),
# a pull's .ckpt-sync-<writer>-<random>.part|old and, older, .[<name>.]ckpt-sync-<random>.part, and
# the local store's .tmp-<writer>-<random>-<name>. The ones that name their writer are judged by it.
_LEGACY_OWNED = (
    re.compile(rf"^\.ckpt-sync-{WRITER_TAG}-[0-9a-f]+\.(part|old)$"),
    re.compile(rf"^\.tmp-{WRITER_TAG}-[0-9a-f]+-"),
)
_LEGACY = (
    re.compile(r"^\.(.+\.)?[0-9a-f]{8}\.tmp$"),
    re.compile(r"^\.(.+\.)?ckpt-sync-[0-9a-f]+\.part$"),
    re.compile(r"^\.tmp-"),
)
_CANNOT_SYNC = (errno.EACCES, errno.EPERM, errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EISDIR)


def temp_path(final: Path, kind: str = "tmp") -> Path:
    """A fresh temp name beside ``final`` for this process to write (see the module's docstring)."""
    if kind not in TEMP_KINDS:
        raise ValueError(f"temp kind {kind!r} is not one of {TEMP_KINDS}")
    return final.with_name(f".{final.name[:NAME_IN_TEMP]}.{writer_tag()}.{secrets.token_hex(3)}.{kind}")


temp_path_for = temp_path  # the name the training side knows it by


@dataclass(frozen=True)
class Leftover:
    """A temp name found on disk: whose it is, when that can be told."""

    alive: bool | None  # its writer is running (True), provably gone (False), or cannot be told here


def leftover(name: str) -> Leftover | None:
    """The temp a name is (ours, or an earlier version's), or None for any other name."""
    for pattern in (_TEMP, *_LEGACY_OWNED):
        m = pattern.match(name)
        if m:
            return Leftover(writer_alive(m["host"], m["pid"], m["start"]))
    if any(p.match(name) for p in _LEGACY):
        return Leftover(None)
    return None


def is_temp_name(name: str) -> bool:
    return leftover(name) is not None


def abandoned(path: Path, older_than: float | None, now: float | None = None) -> bool:
    """Whether the temp at ``path`` is a crashed writer's: its writer provably gone here, or, when
    it cannot be told (another host, an owner-less name), older than ``older_than`` seconds by
    ``now`` (a store's clock where given: this host's may be wrong). Never while its writer runs."""
    found = leftover(path.name)
    if found is None or found.alive:
        return False
    if found.alive is False:
        return True
    if older_than is None:
        return False
    try:
        age = (time.time() if now is None else now) - path.lstat().st_mtime
    except FileNotFoundError:
        return False
    return age > older_than


def _fsync(path: str | os.PathLike[str], flags: int) -> None:
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return  # removed since (a released lock, a swept temp): nothing to keep
    except OSError as err:
        if err.errno in _CANNOT_SYNC:
            return  # Windows opens no folder; nothing more can be done here
        raise
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in _CANNOT_SYNC:
            raise
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make renames, links and unlinks in the folder ``path`` durable (see the policy above)."""
    _fsync(path, os.O_RDONLY)


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Make a file's written bytes durable (see the policy above)."""
    _fsync(path, os.O_RDONLY)


def hold_copy(src: Path, dst: Path) -> None:
    """``dst`` holds ``src``'s bytes until it is removed, whatever happens to ``src``: a reflink
    (copy-on-write clone: a rewrite of ``src`` in place cannot reach it) where the file system has
    one, else a hard link (instant, but sharing ``src``'s inode: a caller that needs the bytes to
    stay checks them before use), else (across file systems, or where links are refused) a copy,
    which costs the file's size in time and space."""
    if platform.reflink(src, dst) or platform.hard_link(src, dst):
        return
    shutil.copy2(src, dst)


@contextlib.contextmanager
def atomic_open(final: str | os.PathLike[str], *, durable: bool = True) -> Iterator[IO[bytes]]:
    """Yield a binary file; on clean exit it replaces ``final`` durably, on error it leaves no trace.

    ``durable=False`` skips the fsyncs: readers still see the old file or the whole new one, but a
    crash may leave either, or an empty or partial file under the final name. Only for what is
    checked on every read anyway (a cache whose entries are authenticated on use)."""
    final = Path(final)
    tmp = temp_path(final)
    try:
        with open(tmp, "xb") as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        platform.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if durable:
        fsync_dir(final.parent)


class _KeepsWriteErrors:
    """A binary file whose ``write`` and ``flush`` keep the first OSError they raised (see
    ``write_keeping_errors``); otherwise the file itself (``fileno``, ``name``, ``with``)."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.error: OSError | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> _KeepsWriteErrors:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.__exit__(*exc)

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        try:
            self._f.flush()
        except OSError as err:
            self.error = self.error or err
            raise


def write_keeping_errors(f: IO[bytes], write: Callable[[IO[bytes]], Any]) -> None:
    """``write(f)``, with an OSError it swallowed raised as itself.

    torch.save's zip writer turns a failed write (a full disk) into RuntimeError("unexpected pos
    N vs M"), losing the errno that says what happened; the caller can only report it when it sees
    the OSError.
    """
    kept = _KeepsWriteErrors(f)
    try:
        write(kept)  # type: ignore[arg-type]
    except Exception as err:
        if kept.error is None or err is kept.error:
            raise
        raise OSError(kept.error.errno, kept.error.strerror, getattr(f, "name", None)) from err


def atomic_write(final: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    with atomic_open(final) as f:
        write(f)
    return Path(final)


def atomic_write_bytes(final: str | os.PathLike[str], data: Any, *, durable: bool = True) -> Path:
    """``data`` (bytes or any buffer) as ``final``'s whole content (``durable``: see ``atomic_open``)."""
    with atomic_open(final, durable=durable) as f:
        f.write(data)
    return Path(final)


def atomic_write_json(final: str | os.PathLike[str], obj: Any) -> Path:
    data = (json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()
    return atomic_write_bytes(final, data)
