"""Sync hand-off: each finished checkpoint goes to the sync layer without blocking training.

The manager talks to a ``SyncHandoff`` (``enqueue`` / ``wait`` / ``close``), so the interim
``BackgroundPush`` below can be replaced by the durable ``ckpt_sync.SyncClient`` (same three
methods) without touching the manager; ``make_handoff`` picks the SyncClient when it exists.

``BackgroundPush`` holds every enqueued file by a hard link in a hidden staging folder next to the
checkpoints (same filesystem, so linking is instant and costs no space) until its upload commits:
FIFO rotation may then delete the original at any time without losing the upload. A crash leaves
the staged links and their metadata behind; the next ``BackgroundPush`` on that folder uploads them.
Where hard links are not supported, the original is "held" instead and rotation skips it.
"""

from __future__ import annotations

import atexit
import contextlib
import inspect
import json
import logging
import os
import queue
import shutil
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..fs.atomic import atomic_write_json, fsync_dir
from .errors import HandoffError
from .naming import STAGING_DIR, SYNC_STATE_DIR

if TYPE_CHECKING:
    from ..transfer.retention import RetentionPolicy

log = logging.getLogger("ckpt_sync.training")


class SyncHandoff(Protocol):
    def enqueue(self, path: Path, metadata: dict[str, Any], tags: tuple[str, ...] = ()) -> None: ...

    def wait(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class _Job:
    id: str
    path: Path  # the staged link (or the held original)
    metadata: dict[str, Any]
    tags: tuple[str, ...]
    held: bool = False


def _link_tree(src: Path, dst: Path) -> None:
    if src.is_dir():
        dst.mkdir()
        for child in sorted(src.iterdir()):
            _link_tree(child, dst / child.name)
    else:
        os.link(src, dst)


class BackgroundPush:
    """One background thread calling ``ckpt_sync.api.push`` per enqueued checkpoint, in order."""

    def __init__(
        self,
        repo: str,
        *,
        staging_dir: str | os.PathLike[str],
        key_file: str | os.PathLike[str] | None = None,
        push: Callable[..., Any] | None = None,
    ) -> None:
        from .. import api

        self.repo_url = repo
        self.key_file = key_file
        self.staging = Path(staging_dir)
        self._push = push or api.push
        self._open = api.open_repository
        self._repo: Any = None
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._failures: list[str] = []
        self._held: set[Path] = set()
        self._closed = False
        self._seq = 0
        self.staging.mkdir(parents=True, exist_ok=True)
        self._resume_leftovers()
        self._thread = threading.Thread(target=self._run, name="ckpt-sync-handoff", daemon=True)
        self._thread.start()
        # Daemon thread + exit hook: uploads still finish at a normal interpreter exit, but a forgotten
        # close() cannot hang the process forever.
        ref = weakref.ref(self)
        atexit.register(lambda: (s := ref()) is not None and s._close_quietly())

    # --- producer side ---------------------------------------------------------------------------

    def enqueue(self, path: Path, metadata: dict[str, Any] | None = None, tags: tuple[str, ...] = ()) -> None:
        """Stage ``path`` (file or folder) and queue its upload; returns once the file is held."""
        if self._closed:
            raise HandoffError("hand-off is closed")
        path = Path(path)
        with self._lock:
            self._seq += 1
            job_id = f"{time.time_ns():020d}-{os.getpid()}-{self._seq}"
        tmp = self.staging / f"{job_id}.tmp"
        final = self.staging / job_id
        meta = {"name": path.name, "metadata": dict(metadata or {}), "tags": list(tags)}
        try:
            tmp.mkdir()
            _link_tree(path, tmp / path.name)
        except FileNotFoundError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        except OSError as err:  # no hard links here (some network or FAT filesystems): hold the original
            shutil.rmtree(tmp, ignore_errors=True)
            log.debug("cannot hard-link %s into %s (%s); holding it in place", path, self.staging, err)
            with self._lock:
                self._held.add(path.resolve())
            self._queue.put(_Job(job_id, path, meta["metadata"], tuple(tags), held=True))
            return
        atomic_write_json(self.staging / f"{job_id}.json", meta)
        os.replace(tmp, final)
        fsync_dir(self.staging)
        self._queue.put(_Job(job_id, final / path.name, meta["metadata"], tuple(tags)))

    def held_paths(self) -> set[Path]:
        """Originals that could not be linked and are not uploaded yet: rotation must keep them."""
        with self._lock:
            return set(self._held)

    def pending(self) -> int:
        return self._queue.unfinished_tasks

    def wait(self) -> None:
        """Block until every enqueued upload is done; raise HandoffError for any that failed (they stay staged)."""
        self._queue.join()
        with self._lock:
            failures, self._failures = self._failures, []
        if failures:
            raise HandoffError(
                f"{len(failures)} checkpoint(s) were not uploaded (kept in {self.staging}, retried on the next "
                f"start): {'; '.join(failures[:3])}"
            )

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()
            if self._repo is not None:
                with contextlib.suppress(Exception):
                    self._repo.provider.close()
        self.wait()

    def _close_quietly(self) -> None:
        try:
            self.close()
        except Exception as err:
            log.error("[SYNC] %s", err)

    # --- worker side -----------------------------------------------------------------------------

    def _resume_leftovers(self) -> None:
        for meta_file in sorted(self.staging.glob("*.json")):
            job_dir = meta_file.with_suffix("")
            try:
                meta = json.loads(meta_file.read_text(encoding="utf-8"))
                staged = job_dir / meta["name"]
            except (OSError, ValueError, KeyError):
                staged = None
            if staged is None or not staged.exists():
                meta_file.unlink(missing_ok=True)
                shutil.rmtree(job_dir, ignore_errors=True)
                continue
            log.info("[SYNC] resuming the upload of %s left by an earlier run", meta["name"])
            self._queue.put(_Job(job_dir.name, staged, meta.get("metadata") or {}, tuple(meta.get("tags") or ())))
        for tmp in self.staging.glob("*.tmp"):  # staging interrupted before enqueue returned
            shutil.rmtree(tmp, ignore_errors=True)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                self._upload(job)
            finally:
                self._queue.task_done()

    def _upload(self, job: _Job) -> None:
        try:
            if self._repo is None:
                self._repo = self._open(self.repo_url, key_file=self.key_file, create=True)
            started = time.monotonic()
            mid = self._push(job.path, repo=self._repo, tags=job.tags, metadata=job.metadata)
            log.info("[SYNC] committed %s as %s in %.1fs", job.path.name, mid, time.monotonic() - started)
        except Exception as err:
            log.error("[SYNC] upload of %s failed: %s (kept staged for a retry)", job.path.name, err)
            with self._lock:
                self._failures.append(f"{job.path.name}: {err}")
            return
        if job.held:
            with self._lock:
                self._held.discard(job.path.resolve())
        else:
            shutil.rmtree(self.staging / job.id, ignore_errors=True)
            (self.staging / f"{job.id}.json").unlink(missing_ok=True)


class SyncClientHandoff:
    """Adapter for ``ckpt_sync.SyncClient``; passes metadata and tags when its ``enqueue`` accepts them."""

    def __init__(self, client: Any, *, fallback: Callable[[], BackgroundPush]) -> None:
        self.client = client
        params = inspect.signature(client.enqueue).parameters
        self._takes_metadata = "metadata" in params
        self._takes_tags = "tags" in params
        self._fallback_factory = fallback
        self._fallback: BackgroundPush | None = None

    def enqueue(self, path: Path, metadata: dict[str, Any] | None = None, tags: tuple[str, ...] = ()) -> None:
        if tags and not self._takes_tags:  # keep "best" tagged (remote retention never prunes it)
            if self._fallback is None:
                self._fallback = self._fallback_factory()
            self._fallback.enqueue(path, metadata, tags)
            return
        kwargs: dict[str, Any] = {}
        if self._takes_metadata:
            kwargs["metadata"] = dict(metadata or {})
        if self._takes_tags:
            kwargs["tags"] = tuple(tags)
        self.client.enqueue(path, **kwargs)

    def wait(self) -> None:
        """Wait for the uploads; while the store does not answer, stop waiting with one warning (the
        uploads stay queued and go up on the next start: training never waits on the store)."""
        try:
            self.client.wait()
        except TimeoutError as err:
            log.warning("[SYNC] %s; they upload on the next start, or with `ckpt-sync watch DIR --once`", err)
        if self._fallback is not None:
            self._fallback.wait()

    def close(self) -> None:
        """Wait for the uploads (the SyncClient's own close does not), then stop its worker."""
        try:
            self.wait()
        finally:
            try:
                self.client.close()
            finally:
                if self._fallback is not None:
                    self._fallback.close()


def make_handoff(
    repo: str,
    *,
    directory: str | os.PathLike[str],
    key_file: str | os.PathLike[str] | None = None,
    remote_keep: int | None = None,
    remote_retention: RetentionPolicy | None = None,
) -> SyncHandoff:
    """The durable ``ckpt_sync.SyncClient`` when this installation has it, else ``BackgroundPush``.

    Both keep their state (queue, held links) in a hidden folder inside ``directory``: the same
    filesystem as the checkpoints, so holding a file is a hard link, never a copy. ``remote_keep``
    (SyncClient only) prunes the repository to that many newest checkpoints plus ``best``; 0 or None: never;
    ``remote_retention`` (a retention policy) replaces that count.
    """
    import ckpt_sync

    directory = Path(directory)

    def fallback() -> BackgroundPush:
        return BackgroundPush(repo, staging_dir=directory / STAGING_DIR, key_file=key_file)

    client_cls = getattr(ckpt_sync, "SyncClient", None)
    if client_cls is not None:
        try:
            params = inspect.signature(client_cls).parameters
            kwargs: dict[str, Any] = {"repo": repo}
            optional = {
                "key_file": key_file,
                "state_dir": directory / SYNC_STATE_DIR,
                "keep": remote_keep or None,
                "retention": remote_retention,
            }
            kwargs.update({k: v for k, v in optional.items() if v is not None and k in params})
            return SyncClientHandoff(client_cls(**kwargs), fallback=fallback)
        except (TypeError, ValueError) as err:
            log.warning("[SYNC] ckpt_sync.SyncClient unusable here (%s); pushing in the background instead", err)
    return fallback()
