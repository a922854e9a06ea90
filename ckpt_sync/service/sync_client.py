"""``SyncClient``: hand checkpoints to the durable queue from a training loop.

``enqueue(path)`` returns as soon as the job is durable (and the file held against rotation); a
background worker in this process uploads it (or, with ``worker=False``, a running
``ckpt-sync watch`` sharing the state folder picks it up). ``wait()`` blocks until this client's
jobs are committed; ``close()`` stops the worker (an upload in flight resumes on the next start).

Training never waits on the store: the constructor does not reach it. The worker opens the
repository in the background, and while it cannot (an endpoint down, a DNS failure, a stall, a
credential not yet valid) it warns once, naming the store and where the uploads are queued, keeps
trying with back-off, and uploads the queue when the store answers again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from ..defaults import DEFAULT_GRACE
from ..errors import CkptSyncError, OperationFailed
from ..format.repository import Repository
from ..locations import state_home
from ..providers import RetryPolicy
from ..transfer.opening import open_at
from ..transfer.retention import RetentionPolicy
from .queue import DONE, FAILED, SUPERSEDED, JobQueue
from .settings import resolve_store
from .worker import SyncWorker

log = logging.getLogger("ckpt_sync.sync")

# How the worker asks whether the store answers: a short budget, so the one warning comes in seconds
# and ``close()`` never waits out a long retry; once it answers, uploads get the full retry policy.
PROBE = RetryPolicy(attempts=2, max_seconds=5.0, quiet=True)
MAX_REOPEN_DELAY = 60.0
UNREACHABLE_WAIT = 15.0  # how long wait() keeps waiting while the store does not answer at all


class SyncClient:
    def __init__(
        self,
        repo: str | Repository | None = None,
        *,
        state_dir: str | os.PathLike[str] | None = None,
        key_file: str | os.PathLike[str] | None = None,
        keep: int | None = None,
        retention: RetentionPolicy | None = None,
        keep_scope: str = "run",
        grace: float = DEFAULT_GRACE,
        worker: bool = True,
        workers: int | None = None,
    ) -> None:
        """``keep`` (or ``retention``) applies after each commit to this client's run: the checkpoints
        its state folder committed and their sessions (``keep_scope="repository"``: everything).
        A missing or malformed key is an error here (it is this host's); the store is not reached."""
        self._repo: Repository | None = repo if isinstance(repo, Repository) else None
        self._store = None if isinstance(repo, Repository) else resolve_store(repo, key_file=key_file, workers=workers)
        self.url = repo.url if isinstance(repo, Repository) else self._store.url
        self._keys = None if self._store is None else self._store.keys()
        self.queue = JobQueue(state_dir or state_home() / "default")
        self._mine: list[int] = []
        self._stop = threading.Event()
        self._try_now = threading.Event()  # wait() asks the worker to try the store again at once
        self.reachable: bool | None = None if self._repo is None else True  # None: not tried yet
        self._opening = threading.Lock()
        self._worker: SyncWorker | None = None
        self._thread: threading.Thread | None = None
        self._worker_options: dict[str, Any] = {
            "keep": keep,
            "retention": retention,
            "keep_scope": keep_scope,
            "grace": grace,
            "workers": self._store.workers if self._store else workers,
        }
        SyncWorker.check_options(**self._worker_options)
        self.uploads_in_process = worker
        if worker:
            self._thread = threading.Thread(target=self._run, name="ckpt-sync-client", daemon=True)
            self._thread.start()

    @property
    def repo(self) -> Repository:
        """The repository, opened on first use (this blocks while the store does not answer; the
        worker opens it in the background instead)."""
        with self._opening:
            if self._repo is None:
                assert self._store is not None and self._keys is not None
                self._repo = open_at(self.url, self._keys, create=True, **self._store.provider_options())
            return self._repo

    def _run(self) -> None:
        """Open the repository (warning once while the store does not answer), then upload."""
        delay, warned = 1.0, False
        while self._repo is None:
            try:
                self._probe()
                repo = self.repo  # the store answers: open it with the full retry policy
            except CkptSyncError as err:
                self.reachable = False
                if self._stop.is_set():
                    return
                if not warned:
                    log.warning(
                        "[ckpt-sync] cannot reach %s (%s); checkpoints are queued in %s and upload when it answers",
                        self.url,
                        err,
                        self.queue.state_dir,
                    )
                    warned = True
                self._try_now.wait(delay)
                self._try_now.clear()
                if self._stop.is_set():
                    return
                delay = min(delay * 2, MAX_REOPEN_DELAY)
        repo = self.repo
        self.reachable = True
        if warned:
            log.warning("[ckpt-sync] %s answers again; uploading the queued checkpoints", self.url)
        self._worker = SyncWorker(repo, self.queue, **self._worker_options)
        self._worker.run(self._stop)

    def _probe(self) -> None:
        """Open the repository once on a short, quiet retry budget (raises while the store does not answer)."""
        assert self._store is not None and self._keys is not None
        options = self._store.provider_options() | {"retry": PROBE}
        open_at(self.url, self._keys, create=True, cancel=self._stop, **options).provider.close()

    @property
    def uploads_here(self) -> bool:
        """Whether this client's own worker uploads (else a ``watch`` sharing the queue does)."""
        return self.uploads_in_process

    def enqueue(
        self,
        path: str | os.PathLike[str],
        *,
        tags: tuple[str, ...] | list[str] = (),
        metadata: dict[str, Any] | None = None,
    ) -> int:
        """Durably queue ``path`` for upload; returns the job id."""
        job_id = self.queue.enqueue(Path(path), tags=tags, metadata=metadata)
        self._mine.append(job_id)
        if self._worker is not None:
            self._worker.wake()
        return job_id

    def wait(self, timeout: float | None = None) -> None:
        """Block until every job enqueued here is committed; raise OperationFailed if one was given up.

        Raises TimeoutError after ``timeout`` seconds, or as soon as the store has not answered for
        ``UNREACHABLE_WAIT`` seconds of this wait (the jobs stay queued: the next start, or a
        ``ckpt-sync watch`` of the folder, uploads them)."""
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        self._try_now.set()  # someone waits: ask the store again now rather than after the back-off
        while True:
            jobs = [self.queue.get(i) for i in self._mine]
            failed = [j for j in jobs if j and j.status in (FAILED, SUPERSEDED)]  # the version enqueued is gone
            if failed:
                raise OperationFailed(f"upload of {failed[0].name} failed: {failed[0].last_error}")
            left = sum(j is not None and j.status != DONE for j in jobs)
            if not left:
                return
            now = time.monotonic()
            if deadline is not None and now > deadline:
                raise TimeoutError(f"{left} upload(s) still pending")
            if self.uploads_in_process and self.reachable is False and now - started > UNREACHABLE_WAIT:
                raise TimeoutError(
                    f"{left} upload(s) still queued in {self.queue.state_dir}: {self.url} does not answer"
                )
            time.sleep(0.1)

    def close(self) -> None:
        self._stop.set()
        self._try_now.set()
        if self._thread:
            self._thread.join()
        self.queue.close()
        if self._repo is not None:
            self._repo.provider.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
