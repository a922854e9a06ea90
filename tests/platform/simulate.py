"""Run ckpt-sync in this process as it would run where some of Linux's capabilities are missing.

``python simulate.py PROFILE [--case-insensitive] cli ARGS...`` runs the ``ckpt-sync`` command,
``... script PATH ARGS...`` a Python script, ``... code SOURCE`` some Python source; first, before
ckpt_sync is imported, the profile takes away what that platform lacks:

- ``windows-like``: ``fcntl`` cannot be imported (ckpt_sync.platform gets a ``msvcrt`` whose
  ``locking`` is a byte-range lock, as Windows' is; not the whole process: the standard library
  takes an importable ``msvcrt`` for Windows); ``os.link`` fails with EPERM; no system libcrypto loads; the
  C library has no inotify (watchdog falls back to polling); and, as ckpt_sync.platform sees the
  ``os``, ``mmap`` and ``signal`` modules (the only module that touches those names:
  tests/platform/test_one_home.py), no O_DIRECT, RWF_NOWAIT, ``pread``, ``pwrite``, ``preadv``,
  ``posix_fallocate``, ``fdatasync``, ``fchmod``, ``statvfs``, ``sync``, ``utime`` on a
  descriptor, ``MAP_PRIVATE``/``MAP_ANONYMOUS``, and only Windows' signals (SIGBREAK, Ctrl-Break,
  is this platform's SIGUSR2, so a test can send it); ``os.name`` is ``nt`` there, so Windows' name
  rules apply to a restore.
- ``macos-like``: no O_DIRECT or RWF_NOWAIT, no inotify, and FICLONE fails as it does on macOS.

``--case-insensitive`` makes the target folder's file system report that it folds case.

With ``CKPT_SIM_REPORT`` set, the facts a test checks to know the absence was in force — seen from
inside this process after the work — are written there as JSON when the process exits.
"""

from __future__ import annotations

import atexit
import ctypes
import errno
import importlib
import importlib.abc
import importlib.machinery
import json
import os
import runpy
import signal
import sys
import tempfile
import types
from pathlib import Path

PROFILES = ("windows-like", "macos-like")
INOTIFY = ("watchdog.observers.inotify", "watchdog.observers.inotify_c", "watchdog.observers.inotify_buffer")

# What Windows' os module lacks of what ckpt-sync would use, and what its signal module has.
WINDOWS_MISSING_OS = (
    "O_DIRECT",
    "RWF_NOWAIT",
    "pread",
    "pwrite",
    "preadv",
    "pwritev",
    "posix_fallocate",
    "fdatasync",
    "fchmod",
    "statvfs",
    "sync",
)
WINDOWS_MISSING_MMAP = ("MAP_PRIVATE", "MAP_ANONYMOUS", "MAP_SHARED", "MAP_POPULATE")
WINDOWS_SIGNALS = ("SIGABRT", "SIGFPE", "SIGILL", "SIGINT", "SIGSEGV", "SIGTERM")
SIGNAL_FUNCTIONS = (
    "SIG_DFL",
    "SIG_IGN",
    "NSIG",
    "Signals",
    "Handlers",
    "default_int_handler",
    "getsignal",
    "signal",
    "raise_signal",
    "set_wakeup_fd",
    "valid_signals",
    "strsignal",
)
MACOS_MISSING_OS = ("O_DIRECT", "RWF_NOWAIT")


class View(types.ModuleType):
    """A module as one platform has it: ``real`` less ``missing`` (or only ``only``), plus ``extra``."""

    def __init__(self, real: types.ModuleType, *, missing=(), only=None, extra=None) -> None:
        super().__init__(real.__name__)
        self.__dict__.update(_real=real, _missing=frozenset(missing), _only=only, **(extra or {}))

    def __getattr__(self, name: str):
        if name.startswith("__") or (name not in self._missing and (self._only is None or name in self._only)):
            return getattr(self._real, name)
        raise AttributeError(f"module {self._real.__name__!r} has no attribute {name!r} (simulated)")


class Blocker(importlib.abc.MetaPathFinder):
    """Makes modules unimportable: ``fcntl`` as on Windows, watchdog's inotify as on a libc without it."""

    def __init__(self, blocked: set[str]) -> None:
        self.blocked = blocked

    def find_spec(self, name, path=None, target=None):
        if name in INOTIFY:
            from watchdog.utils import UnsupportedLibcError

            raise UnsupportedLibcError("simulated: this libc has no inotify")
        if name in self.blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


class PlatformViews(importlib.abc.MetaPathFinder):
    """Gives ckpt_sync.platform its views of os, mmap, signal and fcntl as soon as it is loaded."""

    def __init__(self, views: dict[str, object]) -> None:
        self.views = views

    def find_spec(self, name, path=None, target=None):
        if name != "ckpt_sync.platform":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        real_exec = spec.loader.exec_module

        def exec_module(module: types.ModuleType) -> None:
            real_exec(module)
            for attr, view in self.views.items():
                setattr(module, attr, view)

        spec.loader.exec_module = exec_module
        return spec


def _msvcrt_stand_in(real_fcntl: types.ModuleType) -> types.ModuleType:
    """``msvcrt.locking``: a byte-range lock from the file position, refused at once when held."""
    msvcrt = types.ModuleType("msvcrt")
    msvcrt.LK_UNLCK, msvcrt.LK_LOCK, msvcrt.LK_NBLCK = 0, 1, 2
    msvcrt.simulated = True

    def locking(fd: int, mode: int, nbytes: int) -> None:
        op = real_fcntl.LOCK_UN if mode == msvcrt.LK_UNLCK else real_fcntl.LOCK_EX | real_fcntl.LOCK_NB
        try:
            real_fcntl.lockf(fd, op, nbytes, 0, os.SEEK_CUR)
        except BlockingIOError:
            raise PermissionError(errno.EACCES, "Permission denied") from None

    msvcrt.locking = locking
    return msvcrt


def _refuse_links() -> None:
    def link(src, dst, *args, **kwargs):
        raise PermissionError(errno.EPERM, "Operation not permitted (simulated: no hard links)", str(src))

    os.link = link


def _no_system_libcrypto() -> None:
    real = ctypes.CDLL

    class CDLL(real):
        def __init__(self, name, *args, **kwargs):
            if name and "crypto" in os.path.basename(os.fsdecode(name)):
                raise OSError(f"{name}: cannot open shared object file (simulated: no system libcrypto)")
            super().__init__(name, *args, **kwargs)

    ctypes.CDLL = CDLL


def _macos_fcntl(real_fcntl: types.ModuleType) -> View:
    def ioctl(fd, request, *args):
        if request == 0x40049409:  # FICLONE: no such ioctl on macOS
            raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")
        return real_fcntl.ioctl(fd, request, *args)

    return View(real_fcntl, extra={"ioctl": ioctl})


def apply(profile: str) -> None:
    import mmap

    real_fcntl = importlib.import_module("fcntl")
    if profile == "windows-like":
        sys.modules.pop("fcntl", None)
        sys.meta_path.insert(0, Blocker({"fcntl"}))
        _refuse_links()
        _no_system_libcrypto()
        only = {*WINDOWS_SIGNALS, *SIGNAL_FUNCTIONS}
        extra = {"SIGBREAK": signal.SIGUSR2, "CTRL_C_EVENT": 0, "CTRL_BREAK_EVENT": 1}
        views = {
            "msvcrt": _msvcrt_stand_in(real_fcntl),
            "os": View(os, missing=WINDOWS_MISSING_OS, extra={"name": "nt", "supports_fd": set()}),
            "mmap": View(mmap, missing=WINDOWS_MISSING_MMAP),
            "signal": View(signal, only=only, extra=extra),
        }
    elif profile == "macos-like":
        sys.meta_path.insert(0, Blocker(set()))
        views = {"os": View(os, missing=MACOS_MISSING_OS), "fcntl": _macos_fcntl(real_fcntl)}
    else:
        raise SystemExit(f"unknown profile {profile!r}: one of {PROFILES}")
    sys.meta_path.insert(0, PlatformViews(views))


def facts() -> dict[str, object]:
    """What is missing, as this process sees it (after the work: nothing restored it meanwhile)."""
    from ckpt_sync import platform
    from ckpt_sync.format import aes_openssl

    out: dict[str, object] = {}
    try:
        importlib.import_module("fcntl")
        out["fcntl_importable"] = True
    except ImportError:
        out["fcntl_importable"] = False
    out["platform_fcntl"] = platform.fcntl is not None
    out["platform_msvcrt_simulated"] = bool(getattr(platform.msvcrt, "simulated", False))
    out["os_view_has"] = sorted(n for n in WINDOWS_MISSING_OS if hasattr(platform.os, n))
    out["mmap_view_has"] = sorted(n for n in WINDOWS_MISSING_MMAP if hasattr(platform.mmap, n))
    out["posix_only_signals"] = sorted(
        n for n in ("SIGHUP", "SIGUSR1", "SIGKILL", "SIGQUIT", "SIGPIPE", "SIGALRM") if hasattr(platform.signal, n)
    )
    out["stop_signals"] = [platform.signal_name(s) for s in platform.stop_signals()]
    observer, out["observer_reports_close"] = platform.folder_observer()
    out["observer"] = observer.__name__
    out["aes_backend"] = aes_openssl.BACKEND
    out["libcrypto"] = platform.load_libcrypto() is not None
    out["windows_names"] = platform.refuses_windows_names()
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "src"
        src.write_bytes(b"x" * 8192)
        try:
            os.link(src, Path(d) / "link")
            out["link"] = True
        except OSError as err:
            out["link"] = errno.errorcode.get(err.errno or 0, str(err))
        out["reflink"] = platform.reflink(src, Path(d) / "clone")
        fd = os.open(src, os.O_RDONLY)
        try:
            out["uncached"] = platform.set_uncached(fd, True)
        finally:
            os.close(fd)
        out["aligned_memory"] = type(platform.anonymous_memory(4096)).__name__
    return out


def _write_report() -> None:
    path = os.environ.get("CKPT_SIM_REPORT")
    if path:
        Path(path).write_text(json.dumps(facts()))


def main(argv: list[str]) -> int:
    profile, *rest = argv
    apply(profile)
    if rest and rest[0] == "--case-insensitive":
        rest = rest[1:]
        from ckpt_sync import platform

        platform.case_insensitive = lambda probe: True
    atexit.register(_write_report)
    kind, *args = rest
    if kind == "cli":
        from ckpt_sync.cli import main as cli_main

        return cli_main(args)
    if kind == "script":
        sys.argv = args
        runpy.run_path(args[0], run_name="__main__")
        return 0
    if kind == "code":
        exec(compile(args[0], "<simulated>", "exec"), {"__name__": "__main__"})
        return 0
    raise SystemExit(f"unknown kind {kind!r}: cli, script or code")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
