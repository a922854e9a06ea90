"""A chunk cache folder that the processes of one host share, so a checkpoint several of them pull
is read from the store about once (opt-in: ``pull --chunk-cache DIR``, ``chunk_cache=``).

- **It holds what the store holds.** An entry is the stored object itself, the encrypted token,
  named by its repository's id and its chunk id (``<dir>/<repository id>/<id[:2]>/<id>``): nothing
  readable lies on this host's disk, and every use authenticates the token again and checks the
  plaintext against its id (``Repository.open_token``). An entry that fails (damaged, cut short,
  planted, another chunk's) is removed and the chunk is read from the store; the cache can make a
  pull slower, never wrong.
- **Concurrent processes.** Entries are written to a temp name and renamed into place
  (fs/atomic.py), so a reader sees a whole entry or none. A process about to fetch a chunk holds
  that chunk's lock file (``platform.try_lock``; where none can be taken, processes may fetch a
  chunk twice, which costs only traffic); one that waited finds the entry there and reads it.
- **Bounded.** After an entry is added, when the folder may have grown past ``max_bytes``, the
  least recently used entries (a use touches an entry's mtime) are removed until it holds at most
  90% of that, whatever repository they belong to; so are temp files and lock files that crashed
  processes left an hour ago or more. Other processes' entries count too: the folder is listed.

The cache is best-effort: a failure to write, touch or trim it is logged and the pull goes on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .. import platform
from ..errors import CkptSyncError, IntegrityError, UsageError
from ..format.layout import chunk_key
from ..format.manifest import ChunkRef
from ..format.repository import Repository
from ..fs.atomic import abandoned, atomic_write_bytes

log = logging.getLogger("ckpt_sync.pull")

DEFAULT_MAX_BYTES = 16 << 30
KEEP_AFTER_TRIM = 0.9  # of max_bytes: trimming removes a little more than needed, so it runs rarely
LEFTOVER_AGE = 3600.0  # a temp or lock file this old, with no entry, is a crashed process's
_SAFE_NAME = re.compile(r"^[0-9A-Za-z_-]{1,128}$")
_CHUNK_ID = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class ChunkCacheStats:
    hits: int = 0  # chunks read from the cache (each checked against its id)
    fetched: int = 0  # chunks this process read from the store (and added)
    bytes_fetched: int = 0  # stored bytes of those
    waited: int = 0  # fetches found in the cache after waiting on another process's lock
    dropped: int = 0  # entries that failed their check and were removed
    evicted: int = 0  # entries removed to keep the folder under its bound

    def to_json(self) -> dict[str, int]:
        return asdict(self)


class ChunkCache:
    """A shared chunk cache at ``folder`` (created when missing), at most ``max_bytes`` on disk
    (give or take the entries being written). Thread-safe; any number of processes may share it."""

    def __init__(self, folder: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes <= 0:
            raise UsageError(f"a chunk cache holds a positive number of bytes, not {max_bytes}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.stats = ChunkCacheStats()
        self._lock = threading.Lock()
        self._held: int | None = None  # what the folder held when last listed, plus what this process added
        self._added = 0  # bytes this process has added, ever

    # --- reading ---------------------------------------------------------------------------------

    def load_chunk(
        self, repo: Repository, ref: ChunkRef, *, out: bytearray | memoryview | None = None
    ) -> bytearray | memoryview:
        """``Repository.load_chunk`` through the cache: the plaintext of ``ref``, authenticated and
        checked against its id, from the cache when an entry there passes, else from the store
        (added to the cache). Raises what ``load_chunk`` raises for the store's copy."""
        path = self.entry_path(repo, ref)
        plain = self._from_cache(repo, ref, path, out)
        if plain is not None:
            return plain
        with self._fetching(path):
            plain = self._from_cache(repo, ref, path, out)  # another process fetched it meanwhile
            if plain is not None:
                with self._lock:
                    self.stats.waited += 1
                return plain
            bound = repo.format.max_token_size(ref.size)
            token = repo.provider.get(chunk_key(ref.id), 0, bound + 1)
            plain = repo.open_token(ref, token, out=out)  # the store's copy: its errors are the caller's
            self._add(path, token)
        with self._lock:
            self.stats.fetched += 1
            self.stats.bytes_fetched += len(token)
        return plain

    def entry_path(self, repo: Repository, ref: ChunkRef) -> Path:
        if not _CHUNK_ID.match(ref.id):
            raise ValueError(f"not a chunk id: {ref.id!r}")
        rid = repo.id if _SAFE_NAME.match(repo.id) else repo.chunk_id(repo.id.encode())
        return self.folder / rid / ref.id[:2] / ref.id

    def _from_cache(
        self, repo: Repository, ref: ChunkRef, path: Path, out: bytearray | memoryview | None
    ) -> bytearray | memoryview | None:
        bound = repo.format.max_token_size(ref.size)
        try:
            with open(path, "rb") as f:
                token = f.read(bound + 1)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as err:
            log.debug("chunk cache: cannot read %s: %s", path, err)
            return None
        try:
            plain = repo.open_token(ref, token, out=out)
        except IntegrityError as err:  # damaged, planted or another chunk's: the store's copy decides
            self._drop(path, err)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: the last to be evicted
        with self._lock:
            self.stats.hits += 1
        return plain

    def _drop(self, path: Path, why: object) -> None:
        log.warning("[WARN] chunk cache entry %s failed its check (%s): removed, reading the store", path, why)
        with contextlib.suppress(OSError):
            path.unlink()
        with self._lock:
            self.stats.dropped += 1

    @contextlib.contextmanager
    def _fetching(self, path: Path) -> Iterator[None]:
        """Hold this chunk's lock file while fetching it: the other processes (and threads) wanting
        it wait, then find it in the cache. Without a lock (none can be made here) it goes on: two
        may then fetch the same chunk, which costs only traffic."""
        lock = path.with_name(f".{path.name}.lock")
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | platform.BINARY, 0o600)
        except OSError as err:
            log.debug("chunk cache: no lock for %s: %s", path, err)
            yield
            return
        try:
            wait = 0.002
            while not platform.try_lock(fd):  # the holder is fetching this chunk: a store read's time
                time.sleep(wait)
                wait = min(2 * wait, 0.05)
        except CkptSyncError as err:  # no file locks on this platform
            log.debug("chunk cache: no lock for %s: %s", path, err)
        try:
            yield
        finally:
            os.close(fd)  # releases the lock

    # --- writing and trimming --------------------------------------------------------------------

    def _add(self, path: Path, token: Any) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, token, durable=False)  # checked on every use: no fsync needed
        except (OSError, CkptSyncError) as err:  # a full disk, a name held open elsewhere (Windows)
            log.debug("chunk cache: cannot add %s: %s", path, err)
            return
        with self._lock:
            self._added += len(token)
            if self._held is not None:
                self._held += len(token)
            over = self._held is None or self._held > self.max_bytes
        for _ in range(3):  # an entry another thread added while a trim listed can leave it over
            if not over:
                break
            over = self.trim() > self.max_bytes

    def trim(self) -> int:
        """List the folder; when it holds more than ``max_bytes``, remove least recently used
        entries until it holds at most 90% of that. Returns the bytes it holds then (with what this
        process added meanwhile)."""
        entries: list[tuple[float, int, Path]] = []
        total = 0
        now = time.time()
        with self._lock:
            added_before = self._added  # what this process adds while the folder is listed counts too
        for dirpath, _dirs, files in os.walk(self.folder):
            for name in files:
                p = Path(dirpath) / name
                try:
                    st = p.stat()
                except OSError:
                    continue
                if _CHUNK_ID.match(name):
                    entries.append((st.st_mtime, st.st_size, p))
                    total += st.st_size
                elif name.endswith(".lock"):
                    if now - st.st_mtime > LEFTOVER_AGE and not p.with_name(name[1:-5]).exists():
                        with contextlib.suppress(OSError):
                            p.unlink()
                elif abandoned(p, LEFTOVER_AGE, now):
                    with contextlib.suppress(OSError):
                        p.unlink()
        if total > self.max_bytes:
            entries.sort()
            keep = self.max_bytes * KEEP_AFTER_TRIM
            evicted = 0
            for _mtime, size, p in entries:
                if total <= keep:
                    break
                try:
                    p.unlink()
                except FileNotFoundError:  # another process evicted it
                    pass
                except OSError as err:
                    log.debug("chunk cache: cannot evict %s: %s", p, err)
                    continue
                total -= size
                evicted += 1
            with self._lock:
                self.stats.evicted += evicted
        with self._lock:
            self._held = total + (self._added - added_before)  # at worst counted twice: never too low
            return self._held
