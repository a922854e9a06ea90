"""Each fallback of ckpt_sync/platform.py, taken by removing the capability from that module's view
of ``os``, ``signal`` or ``fcntl`` (simulate.View), and the lock across real processes."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from simulate import View

from ckpt_sync import platform
from ckpt_sync.errors import LocalTargetError
from ckpt_sync.fs.direct_io import aligned_buffer, is_aligned

SIMULATE = Path(__file__).with_name("simulate.py")


def without(monkeypatch: pytest.MonkeyPatch, *names: str, **extra: object) -> None:
    monkeypatch.setattr(platform, "os", View(os, missing=names, extra=extra))


def busy(winerror: int | None) -> PermissionError:
    err = PermissionError(errno.EACCES, "Access is denied")
    if winerror is not None:
        err.winerror = winerror  # what Windows sets on a sharing violation
    return err


def test_positional_io_without_pread_pwrite_is_the_same_from_many_threads(monkeypatch, tmp_path):
    without(monkeypatch, "pread", "preadv", "pwrite")
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        os.lseek(fd, 3, os.SEEK_SET)
        pieces = [bytes([i]) * 4096 for i in range(64)]
        threads = [threading.Thread(target=platform.pwrite, args=(fd, p, i * 4096)) for i, p in enumerate(pieces)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        os.lseek(fd, 5, os.SEEK_SET)
        out = bytearray(4096 * 64 + 100)
        assert platform.pread_into(fd, memoryview(out), 0) == 4096 * 64  # short at the end of the file
        assert os.lseek(fd, 0, os.SEEK_CUR) == 5
        assert bytes(out[: 4096 * 64]) == b"".join(pieces)
        assert platform.pread(fd, 3, 4096 * 2 - 1) == bytes([1, 2, 2])
        assert platform.pread_cached(fd, memoryview(out), 0) is None  # no RWF_NOWAIT without preadv
    finally:
        os.close(fd)


def test_without_fallocate_fdatasync_fchmod_or_utime_on_a_descriptor_the_path_is_used(monkeypatch, tmp_path):
    without(monkeypatch, "posix_fallocate", "fdatasync", "fchmod", supports_fd=set())
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        platform.preallocate(fd, 1 << 20)
        assert os.fstat(fd).st_size == 0  # nothing reserved: the restore compared free space already
        os.write(fd, b"data")
        platform.datasync(fd)
        platform.set_mode(fd, path, 0o640)
        platform.set_mtime(fd, path, 1_600_000_000_000_000_000)
    finally:
        os.close(fd)
    assert path.stat().st_mode & 0o777 == 0o640
    assert path.stat().st_mtime_ns == 1_600_000_000_000_000_000


def test_without_anonymous_mapping_flags_buffers_are_still_page_aligned(monkeypatch):
    import mmap

    monkeypatch.setattr(platform, "mmap", View(mmap, missing=("MAP_PRIVATE", "MAP_ANONYMOUS")))
    buf = aligned_buffer(10_000)
    assert isinstance(buf, mmap.mmap) and len(buf) == 12288 and is_aligned(memoryview(buf))


def test_where_links_are_refused_a_file_is_placed_only_under_a_free_name(monkeypatch, tmp_path):
    def refuse(*_a: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    without(monkeypatch, link=refuse)
    tmp, final = tmp_path / ".tmp", tmp_path / "obj"
    tmp.write_bytes(b"first")
    platform.place_new(tmp, final)
    assert final.read_bytes() == b"first"
    tmp.write_bytes(b"second")
    with pytest.raises(FileExistsError):
        platform.place_new(tmp, final)
    assert final.read_bytes() == b"first"
    assert platform.hard_link(tmp, tmp_path / "other") is False


def test_a_rename_over_a_file_windows_holds_open_is_retried_then_named(monkeypatch, tmp_path):
    monkeypatch.setattr(platform, "REPLACE_WAITS", (0.0, 0.0))
    src, dst = tmp_path / "new", tmp_path / "model.pt"
    src.write_bytes(b"new")
    failures = [busy(32)]

    def replace(a: object, b: object) -> None:
        if failures:
            raise failures.pop()
        os.replace(a, b)

    without(monkeypatch, replace=replace)
    platform.replace(src, dst)  # a viewer closed it in time
    assert dst.read_bytes() == b"new"

    src.write_bytes(b"newer")
    failures[:] = [busy(32), busy(5), busy(32)]
    with pytest.raises(LocalTargetError, match=r"cannot replace .*model\.pt: another program keeps it open"):
        platform.replace(src, dst)
    assert dst.read_bytes() == b"new"

    failures[:] = [busy(None)]  # a POSIX permission error is no sharing violation: raised at once
    with pytest.raises(PermissionError):
        platform.replace(src, dst)


def test_where_signal_0_would_be_ctrl_c_no_signal_is_sent(monkeypatch):
    def kill(*_a: object) -> None:
        raise AssertionError("os.kill(pid, 0) sends Ctrl-C on Windows")

    without(monkeypatch, kill=kill)
    monkeypatch.setattr(platform, "signal", View(signal, extra={"CTRL_C_EVENT": 0}))
    assert platform.process_gone(os.getpid()) is None  # no Windows API here: cannot be told


def test_ctrl_break_is_a_stop_signal_where_it_exists(monkeypatch):
    monkeypatch.setattr(platform, "signal", View(signal, extra={"SIGBREAK": 21}))
    assert platform.stop_signals() == (signal.SIGINT, signal.SIGTERM, 21)
    assert platform.signal_name(21) == "SIGBREAK"
    monkeypatch.setattr(platform, "signal", View(signal, missing=("SIGBREAK",)))
    assert platform.stop_signals() == (signal.SIGINT, signal.SIGTERM)


HOLD_LOCK = """
import sys
from ckpt_sync.service.statelock import StateDirLock
StateDirLock(sys.argv[-1]).acquire()
print("held", flush=True)
sys.stdin.readline()
"""
TRY_LOCK = """
import sys
from ckpt_sync.errors import UsageError
from ckpt_sync.service.statelock import StateDirLock
try:
    StateDirLock(sys.argv[-1]).acquire()
except UsageError as err:
    print(err)
else:
    print("taken")
"""


@pytest.mark.parametrize("profile", ["windows-like", "macos-like"])
def test_the_watch_lock_excludes_a_second_process_and_dies_with_its_holder(profile, tmp_path):
    def python(code: str) -> list[str]:
        return [sys.executable, str(SIMULATE), profile, "code", code, str(tmp_path)]

    holder = subprocess.Popen(python(HOLD_LOCK), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        second = subprocess.run(python(TRY_LOCK), capture_output=True, text=True, timeout=600)
        assert f"another ckpt-sync watch (pid {holder.pid}) is already running" in second.stdout, second.stderr
    finally:
        holder.kill()  # however it ends, the operating system drops its lock
        holder.wait()
    third = subprocess.run(python(TRY_LOCK), capture_output=True, text=True, timeout=600)
    assert third.stdout.strip() == "taken", third.stderr
