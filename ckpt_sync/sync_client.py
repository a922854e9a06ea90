"""``SyncClient``: hand checkpoints to the durable queue from a training loop.

``enqueue(path)`` returns as soon as the job is durable (and the file held against rotation); a
background worker in this process uploads it (or, with ``worker=False``, a running
``ckpt-sync watch`` sharing the state folder picks it up). ``wait()`` blocks until this client's
jobs are committed; ``close()`` stops the worker (an upload in flight resumes on the next start).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from .api import open_repository
from .defaults import DEFAULT_GRACE
from .errors import OperationFailed
from .locations import state_home
from .queue import DONE, FAILED, SUPERSEDED, JobQueue
from .retention import RetentionPolicy
from .worker import SyncWorker


class SyncClient:
    def __init__(
        self,
        repo: str | None = None,
        *,
        state_dir: str | os.PathLike[str] | None = None,
        key_file: str | os.PathLike[str] | None = None,
        keep: int | None = None,
        retention: RetentionPolicy | None = None,
        grace: float = DEFAULT_GRACE,
        worker: bool = True,
        workers: int | None = None,
    ) -> None:
        self.repo = open_repository(repo, key_file=key_file, create=True)
        self.queue = JobQueue(state_dir or state_home() / "default")
        self._mine: list[int] = []
        self._stop = threading.Event()
        self._worker: SyncWorker | None = None
        self._thread: threading.Thread | None = None
        if worker:
            self._worker = SyncWorker(
                self.repo, self.queue, keep=keep, retention=retention, grace=grace, workers=workers
            )
            self._thread = threading.Thread(
                target=self._worker.run, args=(self._stop,), name="ckpt-sync-client", daemon=True
            )
            self._thread.start()

    @property
    def uploads_here(self) -> bool:
        """Whether this client's own worker uploads (else a ``watch`` sharing the queue does)."""
        return self._worker is not None

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
        if self._worker:
            self._worker.wake()
        return job_id

    def wait(self, timeout: float | None = None) -> None:
        """Block until every job enqueued here is committed; raise OperationFailed if one was given up."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            jobs = [self.queue.get(i) for i in self._mine]
            failed = [j for j in jobs if j and j.status in (FAILED, SUPERSEDED)]  # the version enqueued is gone
            if failed:
                raise OperationFailed(f"upload of {failed[0].name} failed: {failed[0].last_error}")
            if all(j is None or j.status == DONE for j in jobs):
                return
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{sum(j is not None and j.status != DONE for j in jobs)} upload(s) still pending")
            time.sleep(0.1)

    def close(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.queue.close()
        self.repo.provider.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
