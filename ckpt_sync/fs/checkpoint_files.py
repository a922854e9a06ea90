"""Which files make up a checkpoint on disk, whether they are complete, and what "changed" means.

The one home for rules that hold for every checkpoint, whoever reads it (``watch``, ``push``,
held copies, ``status``):

- hidden and temp files (``.x``, ``x.tmp``, ``x.part``, ...) are never part of a checkpoint, at
  any depth of a folder checkpoint (a crashed restore or writer leaves them);
- a folder checkpoint never reaches outside itself: a symlinked sub-folder, or a symlinked file
  that resolves outside the folder, is an error, not a silent omission;
- only regular files are read; special files (FIFOs, sockets, devices) are skipped;
- a ``torch.save`` file is a zip archive and a safetensors file a header plus the data it
  describes: one cut short (a crashed non-atomic save) is not complete.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

log = logging.getLogger("ckpt_sync.files")

TEMP_SUFFIXES = (".tmp", ".temp", ".part", ".partial", ".incomplete", ".swp", ".lock", "~")
ZIP_SUFFIXES = (".pt", ".pth", ".ckpt")
# Hidden by name but part of a checkpoint: torch.distributed.checkpoint's metadata file.
CHECKPOINT_DOTFILES = frozenset({".metadata"})


def is_temp(name: str) -> bool:
    low = name.lower()
    return low.startswith((".", "~")) or low.endswith(TEMP_SUFFIXES) or ".tmp" in low


def is_regular(path: Path) -> bool:
    """A regular file (following a symlink), not a FIFO, socket or device."""
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return False


def folder_files(folder: Path, *, strict: bool = True) -> list[tuple[str, Path]]:
    """(relative POSIX path, path) of every file of a folder checkpoint, sorted.

    Hidden and temp files and folders are skipped at every depth, and so are special files. With
    ``strict`` a symlink leaving the folder (or any symlinked sub-folder) raises UsageError;
    without it (signatures, status) such entries are just left out.
    """
    real_root = folder.resolve()
    out: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            if is_temp(d):
                continue
            if (here / d).is_symlink():
                if strict:
                    raise UsageError(
                        f"{here / d} is a symlinked folder inside the checkpoint {folder}: "
                        "replace it with a real folder (symlinks are never followed)"
                    )
                continue
            keep.append(d)
        dirnames[:] = keep
        for name in filenames:
            if is_temp(name) and name not in CHECKPOINT_DOTFILES:
                continue
            p = here / name
            if p.is_symlink():
                try:
                    inside = p.resolve(strict=True).is_relative_to(real_root)
                except (OSError, RuntimeError):
                    inside = False
                if not inside:
                    if strict:
                        raise UsageError(
                            f"{p} is a symlink leading outside the checkpoint {folder}: "
                            "copy the file in instead (symlinks out of a checkpoint are never followed)"
                        )
                    continue
            if not is_regular(p):
                log.warning("skipping %s: not a regular file", p)
                continue
            out.append((p.relative_to(folder).as_posix(), p))
    return sorted(out)


def signature(path: Path) -> tuple[int, int]:
    """(total size, newest mtime in ns) of a file or a folder checkpoint: what "this version" means."""
    st = path.stat()
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size, st.st_mtime_ns
    size, mtime = 0, st.st_mtime_ns
    for _, p in folder_files(path, strict=False):
        try:
            s = p.stat()
        except FileNotFoundError:
            continue
        size += s.st_size
        mtime = max(mtime, s.st_mtime_ns)
    return size, mtime


@dataclass(frozen=True)
class FileState:
    """What a rewrite cannot hide: an in-place write moves ctime (which no one can set back) even
    when size and mtime are restored. Adding or removing a hard link moves ctime too, so a ctime
    change counts only when the link count stayed the same (on filesystems without reflink a held
    copy shares its inode with the original, whose rotation is such a link change)."""

    size: int
    mtime_ns: int
    ctime_ns: int
    nlink: int
    ino: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileState:
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_nlink, st.st_ino)

    def changed_to(self, later: FileState) -> bool:
        if (self.size, self.mtime_ns, self.ino) != (later.size, later.mtime_ns, later.ino):
            return True
        return self.ctime_ns != later.ctime_ns and self.nlink == later.nlink

    def to_json(self) -> list[int]:
        return [self.size, self.mtime_ns, self.ctime_ns, self.nlink, self.ino]

    @classmethod
    def from_json(cls, d: list[int]) -> FileState:
        return cls(*(int(x) for x in d))


def file_states(path: Path) -> dict[str, FileState]:
    """The FileState of each file of a checkpoint (one file, or a folder's files by relative path)."""
    if not path.is_dir():
        return {path.name: FileState.of(path.stat())}
    return {rel: FileState.of(p.stat()) for rel, p in folder_files(path, strict=False)}


def changed_files(before: dict[str, FileState], now: dict[str, FileState]) -> list[str]:
    """Names of files added, removed or rewritten between two ``file_states``."""
    names = sorted(set(before) | set(now))
    return [n for n in names if n not in before or n not in now or before[n].changed_to(now[n])]


def incomplete_reason(path: Path) -> str | None:
    """Why a single-file checkpoint is not complete on disk yet (None when it looks whole).

    ``.pt``/``.pth``/``.ckpt``: not empty, and when it starts as a zip archive (torch.save's
    format) its central directory reads and its last member ends inside the file. Other content
    (torch's legacy pickle format) has no trailer to check and is accepted.
    ``.safetensors``: the 8-byte header length, a JSON header, and exactly the data it describes.
    """
    name = path.name.lower()
    try:
        if name.endswith(ZIP_SUFFIXES):
            return _zip_problem(path)
        if name.endswith(".safetensors"):
            return _safetensors_problem(path)
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    return None


def _zip_problem(path: Path) -> str | None:
    size = path.stat().st_size
    if size == 0:
        return "is empty (0 bytes)"
    with open(path, "rb") as f:
        magic = f.read(4)
    if not magic.startswith(b"PK"):
        # Not a zip at all: torch's legacy pickle format (no trailer to check) or a format we do
        # not know; only what starts as a zip can be judged complete or not.
        return None if len(magic) == 4 else "is too short to be a checkpoint"
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, ValueError, EOFError):
        return "is not a complete zip archive (truncated, or still being written)"
    if not infos:
        return "is an empty zip archive"
    end = max(i.header_offset + len(i.FileHeader()) + i.compress_size for i in infos)
    if end > size:
        return "is not a complete zip archive (a member runs past the end of the file)"
    return None


def _safetensors_problem(path: Path) -> str | None:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return "is too short for a safetensors header"
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            return "has a safetensors header longer than the file (truncated)"
        try:
            header = json.loads(f.read(n))
        except ValueError:
            return "has an unreadable safetensors header"
    if not isinstance(header, dict):
        return "has an unreadable safetensors header"
    ends = [
        int(v["data_offsets"][1])
        for k, v in header.items()
        if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v
    ]
    expected = 8 + n + (max(ends) if ends else 0)
    if expected != size:
        return f"is {size} bytes but its safetensors header describes {expected} (truncated or still being written)"
    return None
