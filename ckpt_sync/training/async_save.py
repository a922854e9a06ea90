"""One background writer thread with at most one write in flight.

The caller snapshots state to CPU first (see ``state.snapshot``), then submits a job. A job's error
is kept and re-raised, once, on the caller's next ``raise_pending_error``/``wait``/``close`` —
a failed background save must not pass silently, nor kill the training loop from another thread.
The worker thread is not a daemon: an interpreter exiting normally still finishes the write.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from .errors import CheckpointSaveError

log = logging.getLogger("ckpt_sync.training")


class BackgroundWriter:
    def __init__(self, name: str = "ckpt-sync-writer") -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._future: Future[None] | None = None
        self._what = ""

    def busy(self) -> bool:
        return self._future is not None and not self._future.done()

    def submit(self, job: Callable[[], None], what: str) -> None:
        """Start ``job``; the caller has made sure nothing is in flight (``wait()`` or checked ``busy()``)."""
        if self.busy():
            raise RuntimeError("a checkpoint write is already in flight")
        self.raise_pending_error()
        self._what = what
        self._future = self._pool.submit(job)

    def raise_pending_error(self) -> None:
        f = self._future
        if f is None or not f.done():
            return
        self._future = None
        err = f.exception()
        if isinstance(err, CheckpointSaveError):  # its message already names the file and the cause
            raise CheckpointSaveError(f"background checkpoint write failed: {err}") from err
        if err is not None:
            raise CheckpointSaveError(f"background checkpoint write of {self._what} failed: {err}") from err

    def wait(self) -> None:
        """Block until the write in flight (if any) is done; re-raise its error."""
        f = self._future
        if f is not None:
            with contextlib.suppress(BaseException):  # raised below, wrapped, exactly once
                f.result()
        self.raise_pending_error()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)
