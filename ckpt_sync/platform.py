"""What differs between the platforms ckpt-sync runs on (Linux, macOS, Windows), in one place.

Every other module calls these functions instead of the operating-system calls that only some
platforms have: file locks, positional reads and writes, unbuffered writes, preallocation, holding
a file (reflink, hard link), rename over a file another process may hold open, the signals the
training side handles, whether a process still runs, the folder observer ``watch`` uses, the
system's libcrypto, and which names the local file system refuses.

Each picks its way by the capability itself — a module that imports, an attribute that exists, a
call that succeeds — not by the platform's name, so the branch a platform takes is the one a test
takes by removing that capability (tests/platform/). Only where no check can tell does the
platform decide: the names Windows refuses (``os.name``). On Linux the fast paths are unchanged:
O_DIRECT, ``preadv`` (with RWF_NOWAIT), ``posix_fallocate``, FICLONE.

The fallbacks, and what they cost:

- locks: ``fcntl.flock``, else ``msvcrt.locking`` on one byte past the file's content (Windows
  refuses reads of a locked range, and the second process reads the owner's pid); both are
  released by the operating system when the process ends, however it ends;
- positional I/O: ``os.preadv``/``pread``/``pwrite``, else a seek and a read or write under a lock
  per descriptor (the threads of a pull share one file's descriptor);
- unbuffered writes: O_DIRECT, else ``F_NOCACHE`` (macOS), else buffered writes and the fsync the
  caller does anyway;
- aligned buffers: a private anonymous mapping, else an anonymous mapping (Windows: also
  page-aligned), else a bytearray (not aligned: the buffered path);
- holding a file: reflink (FICLONE, ``clonefile``), else a hard link, else a copy (the caller's);
- placing a file under a new name only if the name is free: a hard link (fails atomically when the
  name exists), else an exclusive create of the name and a rename over it (a reader may then see
  the empty file for an instant);
- ``os.replace`` over a file another process holds open fails on Windows: retried for a few
  seconds, then one error naming the file.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import importlib
import mmap
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

from .errors import LocalTargetError, OperationFailed


def _optional(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


fcntl = _optional("fcntl")  # POSIX
msvcrt = _optional("msvcrt")  # Windows

# Windows opens a descriptor in text mode (newline translation) unless told otherwise.
BINARY = getattr(os, "O_BINARY", 0)

# --- locks -------------------------------------------------------------------------------------

LOCK_OFFSET = 1 << 20  # msvcrt locks a byte range: one byte past anything a lock file holds


def try_lock(fd: int) -> bool:
    """Take an exclusive lock on the open file ``fd`` without waiting: True when taken, False when
    another process holds it. Closing ``fd`` releases it, and so does the process ending (a crash
    or ``kill -9`` included): a stale lock file never blocks anyone."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    if msvcrt is not None:
        os.lseek(fd, LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    raise OperationFailed("this platform has no file locks (neither fcntl nor msvcrt): cannot run here")


# --- positional reads and writes ----------------------------------------------------------------

_SEEK_LOCKS = [threading.Lock() for _ in range(16)]  # a seek and the read or write after it are one step


def _seek_lock(fd: int) -> threading.Lock:
    return _SEEK_LOCKS[fd % len(_SEEK_LOCKS)]


def pread_into(fd: int, view: memoryview, offset: int) -> int:
    """Read up to ``len(view)`` bytes at ``offset`` of ``fd`` into ``view``; the count read (0 at
    the end of the file). The file position is not used (where it has to be, it is restored)."""
    if hasattr(os, "preadv"):
        return os.preadv(fd, [view], offset)
    if hasattr(os, "pread"):
        data = os.pread(fd, len(view), offset)
    else:
        with _seek_lock(fd):
            old = os.lseek(fd, 0, os.SEEK_CUR)
            os.lseek(fd, offset, os.SEEK_SET)
            try:
                data = os.read(fd, len(view))
            finally:
                os.lseek(fd, old, os.SEEK_SET)
    view[: len(data)] = data
    return len(data)


def pread(fd: int, size: int, offset: int) -> bytes:
    """Up to ``size`` bytes at ``offset`` of ``fd``."""
    buf = bytearray(size)
    return bytes(buf[: pread_into(fd, memoryview(buf), offset)])


def pread_cached(fd: int, view: memoryview, offset: int) -> int | None:
    """Read into ``view`` at ``offset`` what the page cache holds, without waiting for the disk
    (RWF_NOWAIT): the count read, or None where that cannot be done without waiting."""
    nowait = getattr(os, "RWF_NOWAIT", 0)
    if not nowait or not hasattr(os, "preadv"):
        return None
    try:
        return os.preadv(fd, [view], offset, nowait)
    except OSError as err:
        if err.errno in (errno.EAGAIN, errno.EOPNOTSUPP, errno.EINVAL):
            return None
        raise


def no_read_ahead(fd: int) -> None:
    """Ask the OS not to read ahead on ``fd`` (``POSIX_FADV_RANDOM``); nothing where there is no such call."""
    if (advise := getattr(os, "posix_fadvise", None)) is not None:
        with contextlib.suppress(OSError):
            advise(fd, 0, 0, os.POSIX_FADV_RANDOM)


def pwrite(fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
    """Write ``data`` at ``offset`` of ``fd``; the count written (the file position is not used)."""
    if hasattr(os, "pwrite"):
        return os.pwrite(fd, data, offset)
    with _seek_lock(fd):
        os.lseek(fd, offset, os.SEEK_SET)
        return os.write(fd, data)


def preallocate(fd: int, size: int) -> None:
    """Reserve ``size`` bytes for ``fd`` where the platform can (a full disk then shows here, before
    any download); elsewhere nothing (the caller compares free space beforehand)."""
    if hasattr(os, "posix_fallocate"):
        os.posix_fallocate(fd, 0, size)


def datasync(fd: int) -> None:
    """Push ``fd``'s written bytes to the disk (``fdatasync``, else ``fsync``)."""
    (os.fdatasync if hasattr(os, "fdatasync") else os.fsync)(fd)


def set_mode(fd: int, path: str | os.PathLike[str], mode: int) -> None:
    """Permission bits of the open file ``fd`` at ``path`` (by path where no ``fchmod``: Windows)."""
    if hasattr(os, "fchmod"):
        os.fchmod(fd, mode)
    else:
        os.chmod(path, mode)


def set_mtime(fd: int, path: str | os.PathLike[str], mtime_ns: int) -> None:
    """Access and modification times of the open file ``fd`` at ``path`` (by path where the
    descriptor cannot be used: Windows)."""
    if os.utime in os.supports_fd:
        os.utime(fd, ns=(mtime_ns, mtime_ns))
    else:
        os.utime(path, ns=(mtime_ns, mtime_ns))


# --- unbuffered writes, aligned memory -----------------------------------------------------------


def set_uncached(fd: int, on: bool) -> bool:
    """Turn reads and writes around the page cache on or off for ``fd``: True when now on.

    O_DIRECT (Linux: memory, offset and length aligned), else F_NOCACHE (macOS); False where there
    is neither, or the file system refuses."""
    direct = getattr(os, "O_DIRECT", 0)
    if direct and fcntl is not None:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        try:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | direct if on else flags & ~direct)
        except OSError as err:
            if err.errno != errno.EINVAL:
                raise
            return False
        return on
    nocache = getattr(fcntl, "F_NOCACHE", None)
    if nocache is not None:
        try:
            fcntl.fcntl(fd, nocache, int(on))  # type: ignore[union-attr]
        except OSError:
            return False
        return on
    return False


def anonymous_memory(size: int) -> mmap.mmap | bytearray:
    """``size`` writable, zero-filled bytes starting on a page boundary where the platform gives
    such memory (an anonymous mapping), else a bytearray."""
    private, anonymous = getattr(mmap, "MAP_PRIVATE", None), getattr(mmap, "MAP_ANONYMOUS", None)
    if private is not None and anonymous is not None:
        # Private (a shared anonymous mapping is shmem, slower to fault and to pin for O_DIRECT), and
        # populated at once: one call instead of a page fault per 4 KiB on first use.
        return mmap.mmap(-1, size, flags=private | anonymous | getattr(mmap, "MAP_POPULATE", 0))
    try:
        return mmap.mmap(-1, size)  # Windows: paging-file-backed memory, page-aligned
    except (OSError, ValueError, TypeError):
        return bytearray(size)


# --- holding and placing files --------------------------------------------------------------------

FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)
_LINK_REFUSED = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES, errno.EOPNOTSUPP)


def reflink(src: Path, dst: Path) -> bool:
    """A copy-on-write clone of ``src`` at the new name ``dst`` (its times and bits too); False
    where the file system cannot (nothing left behind)."""
    return _ficlone(src, dst) or _clonefile(src, dst)


def _ficlone(src: Path, dst: Path) -> bool:
    if fcntl is None or not hasattr(fcntl, "ioctl"):
        return False
    with open(src, "rb") as s:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | BINARY, 0o600)
        try:
            fcntl.ioctl(fd, FICLONE, s.fileno())
        except OSError:
            os.close(fd)
            os.unlink(dst)
            return False
        shutil.copystat(src, dst)
        os.close(fd)
    return True


def _clonefile(src: Path, dst: Path) -> bool:
    """macOS's clonefile(2) through libc, where libc has it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        clone = libc.clonefile
    except (OSError, AttributeError, TypeError):
        return False
    clone.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint32]
    clone.restype = ctypes.c_int
    if clone(os.fsencode(src), os.fsencode(dst), 0) != 0:
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise FileExistsError(err, os.strerror(err), str(dst))
        return False
    return True


def hard_link(src: Path, dst: Path) -> bool:
    """A hard link of ``src`` at ``dst``; False where links are refused (another file system, a
    file system without them, too many links). FileExistsError when ``dst`` exists."""
    try:
        os.link(src, dst)
    except FileExistsError:
        raise
    except OSError as err:
        if err.errno not in _LINK_REFUSED:
            raise
        return False
    return True


def place_new(tmp: Path, final: Path) -> None:
    """Give the new name ``final`` the content of the complete file ``tmp``, atomically, only if
    ``final`` does not exist yet (FileExistsError then). ``tmp`` may stay behind: the caller
    removes it. Where hard links are refused: on Windows a plain rename, which never replaces an
    existing file (atomic); elsewhere the name is claimed by an exclusive create and ``tmp`` renamed
    over the claim, so a reader may see an empty file there for an instant."""
    if hard_link(tmp, final):
        return
    if sys.platform == "win32":  # a semantic of the platform's rename, not a capability to probe
        os.rename(tmp, final)
        return
    os.close(os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL | BINARY, 0o600))
    try:
        replace(tmp, final)
    except BaseException:
        final.unlink(missing_ok=True)
        raise


# --- rename over a file -------------------------------------------------------------------------

REPLACE_WAITS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0)  # about 4.5 s in all
_WINDOWS_BUSY = (5, 32)  # ERROR_ACCESS_DENIED, ERROR_SHARING_VIOLATION


def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """``os.replace``. Windows refuses to rename over a file another process holds open (a viewer,
    a virus scanner, a trainer loading it): that is retried for a few seconds, then raised as one
    LocalTargetError naming the file."""
    for wait in (*REPLACE_WAITS, None):
        try:
            os.replace(src, dst)
            return
        except PermissionError as err:
            if getattr(err, "winerror", None) not in _WINDOWS_BUSY:
                raise
            if wait is None:
                raise LocalTargetError(
                    f"cannot replace {dst}: another program keeps it open (Windows allows no rename over "
                    "an open file); close it and re-run"
                ) from None
            time.sleep(wait)


# --- processes and signals ---------------------------------------------------------------------


def stop_signals() -> tuple[int, ...]:
    """The signals that ask a process to finish cleanly (a training run: save, then stop): SIGINT
    (Ctrl-C), SIGTERM, and SIGBREAK (Windows console Ctrl-Break, what a power-event hook sends)
    where they exist."""
    return tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGBREAK") if hasattr(signal, name))


def signal_name(signum: int) -> str:
    for name in ("SIGINT", "SIGTERM", "SIGBREAK"):
        if getattr(signal, name, None) == signum:
            return name
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def process_gone(pid: int) -> bool | None:
    """True when no process has ``pid``, False when one has, None when this cannot be told here."""
    if hasattr(signal, "CTRL_C_EVENT"):  # Windows: os.kill(pid, 0) would send Ctrl-C to that group
        return _windows_process_gone(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _windows_process_gone(pid: int) -> bool | None:
    kernel32 = getattr(getattr(ctypes, "windll", None), "kernel32", None)
    if kernel32 is None:
        return None
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return kernel32.GetLastError() == 87  # ERROR_INVALID_PARAMETER: no such process
    try:
        code = ctypes.c_ulong()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return None
        return code.value != 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


# --- watching folders ---------------------------------------------------------------------------


def folder_observer() -> tuple[type, bool]:
    """watchdog's observer class for this host, and whether it reports a file closed after writing
    (inotify only). The native one where watchdog has it (inotify, FSEvents, ReadDirectoryChangesW),
    else polling (watchdog chooses; a libc without inotify gives polling)."""
    from watchdog.observers import Observer

    return Observer, Observer.__module__ == "watchdog.observers.inotify"


def polling_observer() -> type:
    """The observer that works everywhere (a scan per second): for when the native one cannot start."""
    from watchdog.observers.polling import PollingObserver

    return PollingObserver


# --- the AES binding's library ------------------------------------------------------------------

# Versioned names only: loading macOS's unversioned /usr/lib/libcrypto.dylib aborts the process.
LIBCRYPTO_NAMES = (
    "libcrypto.so.3",
    "libcrypto.so.1.1",
    "libcrypto.3.dylib",
    "libcrypto.1.1.dylib",
    "libcrypto-3-x64.dll",
    "libcrypto-1_1-x64.dll",
)


def load_libcrypto() -> ctypes.CDLL | None:
    """The system's OpenSSL libcrypto, or None where none loads (the caller then uses
    ``cryptography``'s AES)."""
    for name in LIBCRYPTO_NAMES:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


# --- names the local file system holds ----------------------------------------------------------


def refuses_windows_names() -> bool:
    """Whether this host's file systems refuse the names Windows reserves (CON, NUL, a trailing
    dot, ``<>:"|?*``). No probe can tell (creating ``NUL`` opens the null device): Windows does."""
    return os.name == "nt"


def case_insensitive(probe: Path) -> bool:
    """Whether the folder of ``probe`` (a free name with letters in it) folds case: ``probe`` is
    created, looked up with its case swapped, and removed."""
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | BINARY, 0o600)
    os.close(fd)
    try:
        return os.path.lexists(probe.with_name(probe.name.swapcase()))
    finally:
        probe.unlink(missing_ok=True)
