"""Local-folder provider: the embedded default repository (``file:///abs/path`` or a plain path).

Objects are files below the root; writes go to a hidden temp file in the same folder, are fsynced,
then renamed, so a reader (or a crash) never sees a partial object. ``put_if_absent`` uses
``link()``, which fails atomically when the name exists (platform.place_new: where links are
refused, an exclusive create of the name and a rename over it).

Durability: a plain ``put`` (a chunk) returns without waiting for the disk; a background flusher
fsyncs it meanwhile, and the next ``put_if_absent`` — the commit point — waits for those fsyncs and
the folders', then writes its own object durably. Measured here, waiting for an fsync per 8 MiB
chunk caps a local push near 260 MiB/s; overlapped with the pipeline they cost little. After a
power loss a chunk written but not yet committed may be short or empty: the repository only trusts
a stored chunk of exactly the right size, so such a chunk is simply sent again.

Temp files are named as every writer of this package names them (fs.atomic: hidden, naming their
writer) and are removed only when abandoned (``remove_abandoned``): the first write of a process
removes those whose writer is provably dead on this host (a ``kill -9``), and prune also those
whose writer cannot be checked from here, by age. Hidden names are never objects.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from urllib.parse import unquote, urlparse

from ckpt_sync import platform
from ckpt_sync.errors import NotFound, PermanentStorageError, StorageError, UsageError
from ckpt_sync.fs.atomic import abandoned, fsync_file, temp_path
from ckpt_sync.fs.direct_io import DIRECT_MIN, SequentialWriter, read_file_into

from .base import ObjectInfo

log = logging.getLogger("ckpt_sync.providers.local")

# A temp whose writer cannot be checked from here (another host, an older version's name) is judged
# abandoned only once this old, whatever the prune's grace: a live writer rewrites its temp until
# it links it an fsync later, so an hour untouched is a crash, while --grace 0 ("collect chunks
# now") says nothing about how long another host's write may take.
FOREIGN_TEMP_MIN_AGE = 3600.0


def path_from_url(url: str) -> Path:
    if "://" not in url:
        return Path(url).expanduser().absolute()
    parsed = urlparse(url)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        raise UsageError(f"not a local folder URL: {url} (use file:///absolute/path or a plain path)")
    if not parsed.path:
        raise UsageError(f"{url} names no folder (use file:///absolute/path)")
    return Path(unquote(parsed.path))


class LocalProvider:
    aligned_buffers = True  # chunk tokens go to and from the disk with O_DIRECT, straight from the buffer
    reads_locally = True  # a restore reads ahead with a few threads of its own (transfer/restore.py)

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.url = self.root.as_uri()
        self._fsync = fsync
        self._unsynced_dirs: set[Path] = set()  # folders that gained entries since the last barrier
        self._flushes: list[Future[None]] = []  # background fsyncs of files written since then
        self._unsynced_lock = threading.Lock()
        self._flusher: ThreadPoolExecutor | None = None
        self._swept = False

    @classmethod
    def from_url(cls, url: str, **_options: object) -> LocalProvider:
        return cls(path_from_url(url))

    # --- helpers ---------------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"bad object key {key!r}")
        return self.root / key

    def _error(self, err: OSError, what: str) -> StorageError:
        if err.errno == errno.ENOSPC:
            return StorageError(f"no space left on device writing {what}: free space in {self.root} and re-run")
        if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return PermanentStorageError(f"permission denied for {what}: check access to {self.root}")
        return StorageError(f"{what}: {err.strerror or err}")

    def write_temp(self, path: Path, data: bytes | bytearray | memoryview, *, sync: bool = True) -> Path:
        """The first half of every write: ``data`` in a temp file beside ``path``, named for this
        writer (fs/atomic.py); ``put`` and ``put_if_absent`` then link or rename it into place."""
        if not self._swept:
            self._swept = True
            self.remove_abandoned()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(path)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | platform.BINARY, 0o600)
        try:
            view = memoryview(data).cast("B")
            writer = SequentialWriter(fd, direct=len(view) >= DIRECT_MIN, staging=64 << 10)  # small: cached
            writer.write(view)
            writer.finish()
            if self._fsync and sync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        return tmp

    def _fsync_path(self, path: Path) -> None:
        fsync_file(path)  # a file or a folder: gone since (a released lock) is nothing to keep

    def _flush_later(self, path: Path) -> None:
        with self._unsynced_lock:
            self._unsynced_dirs.add(path.parent)
            if not self._fsync:
                return
            if self._flusher is None:
                self._flusher = ThreadPoolExecutor(2, thread_name_prefix="fsync")
            self._flushes.append(self._flusher.submit(self._fsync_path, path))

    def _barrier(self) -> None:
        """Make everything ``put`` wrote so far durable: wait for the files' fsyncs, then sync their folders."""
        with self._unsynced_lock:
            flushes, self._flushes = self._flushes, []
            folders, self._unsynced_dirs = sorted(self._unsynced_dirs), set()
        for fut in flushes:
            fut.result()
        if self._fsync:
            for folder in folders:
                self._fsync_path(folder)

    # --- Provider --------------------------------------------------------------------------------

    def _place(self, key: str, data: bytes | bytearray | memoryview, *, commit: bool) -> bool:
        """Write ``data`` to a temp file, then move it to ``key``: by rename (``commit`` False), or by
        link, which refuses an existing name (True; returns False when ``key`` exists).

        A temp that vanishes before it is placed (removed by a prune elsewhere that judged it
        abandoned by its age, e.g. an older version's with --grace 0) is written once more: the
        bytes are still in hand and placing is all-or-nothing, so a retry cannot tear anything.
        Twice in a row is not a race but a repository something keeps emptying: an error.
        """
        path = self._path(key)
        for attempt in (1, 2):
            tmp = self.write_temp(path, data, sync=commit)
            try:
                if commit:
                    platform.place_new(tmp, path)
                else:
                    platform.replace(tmp, path)
                return True
            except FileExistsError:
                return False
            except FileNotFoundError:
                if attempt == 2:
                    raise StorageError(
                        f"{self.url}/{key}: its temp file was removed while it was being written, twice "
                        "(something is deleting this repository's files: another prune, a cleanup job?); re-run"
                    ) from None
                log.warning("the temp file of %s/%s vanished before it was placed; writing it again", self.url, key)
            finally:
                if commit:
                    tmp.unlink(missing_ok=True)
        raise AssertionError("unreachable")

    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        try:
            self._place(key, data, commit=False)
            self._flush_later(self._path(key))
        except OSError as err:
            raise self._error(err, f"{self.url}/{key}") from err

    def put_if_absent(self, key: str, data: bytes | bytearray | memoryview) -> bool:
        try:
            self._barrier()
            if not self._place(key, data, commit=True):
                return False
            self._fsync_path(self._path(key).parent)
            return True
        except OSError as err:
            raise self._error(err, f"{self.url}/{key}") from err

    def get(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                if start:
                    f.seek(start)
                return f.read() if length is None else f.read(length)
        except FileNotFoundError:
            raise NotFound(f"{self.url}/{key} does not exist") from None
        except OSError as err:
            raise self._error(err, f"{self.url}/{key}") from err

    def get_into(self, key: str, out: bytearray) -> memoryview | None:
        path = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY | platform.BINARY)
            try:
                size = os.fstat(fd).st_size
                return None if size > len(out) else read_file_into(fd, size, out)
            finally:
                os.close(fd)
        except FileNotFoundError:
            raise NotFound(f"{self.url}/{key} does not exist") from None
        except OSError as err:
            raise self._error(err, f"{self.url}/{key}") from err

    def size(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Walk only the folder the prefix names, then filter by the rest of the prefix.
        folder, _, _ = prefix.rpartition("/")
        base = self.root / folder if folder else self.root
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith("."):  # a temp being written (fs.atomic), or nothing of ours
                    continue
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if not key.startswith(prefix):
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except FileNotFoundError:
                    continue
                yield ObjectInfo(key, st.st_size, st.st_mtime)

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as err:
            raise self._error(err, f"{self.url}/{key}") from err

    def create_container(self) -> bool:
        """The repository's folder (and its parents); True when this call made it."""
        self.check()
        if self.root.is_dir():
            return False
        try:
            self.root.mkdir(parents=True)
        except OSError as err:
            raise self._error(err, self.url) from err
        return True

    def remove_abandoned(self, older_than: float | None = None, *, now: float | None = None) -> int:
        """Remove temp files crashed writers left; returns how many went.

        A temp whose writer is running on this host stays, however old; one whose writer is
        provably dead here goes at once; one whose writer cannot be checked from here (another
        host or container, a name without a writer tag) goes only with ``older_than`` (seconds)
        and only once older than both it and FOREIGN_TEMP_MIN_AGE, by ``now`` (the store's time,
        as a probe object's stamp gives it: this host's clock may be wrong), else this host's clock
        (fs.atomic.abandoned).
        """
        limit = None if older_than is None else max(older_than, FOREIGN_TEMP_MIN_AGE)
        removed = 0
        for dirpath, _dirnames, filenames in os.walk(self.root):
            for name in filenames:
                if not name.startswith("."):  # not a temp: most of a repository, skipped cheaply
                    continue
                path = Path(dirpath) / name
                if abandoned(path, limit, now):
                    with suppress(FileNotFoundError):
                        os.unlink(path)
                        removed += 1
        return removed

    def check(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise PermanentStorageError(f"{self.url} is not a folder")
        probe = self.root
        while not probe.exists():
            probe = probe.parent
        if not os.access(probe, os.W_OK | os.X_OK):
            raise PermanentStorageError(f"cannot write to {probe}: choose a repository folder you can write")

    def close(self) -> None:
        if self._flusher is not None:
            self._flusher.shutdown(wait=True)
