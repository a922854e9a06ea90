"""The sync worker: take a job from the durable queue, push it, mark it done, apply retention.

Used by ``ckpt-sync watch`` and by the in-process ``SyncClient``. A job that fails for a reason
that may pass (storage gave up after its retries, a file changed while read, a concurrent prune)
goes back to the queue with exponential backoff, held, however often it fails: only a commit or a
reason that cannot pass (its checkpoint is gone, or its held copy was rewritten in place so the
version it describes no longer exists) ends it. A cancelled job (SIGTERM) goes back untouched.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ..defaults import DEFAULT_GRACE
from ..errors import Cancelled, CkptSyncError, UsageError
from ..format.chunking import ChunkPolicy
from ..format.manifest import Manifest
from ..format.repository import Repository
from ..fs.checkpoint_files import FileState, changed_files, file_states
from ..logs import Throttle
from ..transfer.counters import TransferStats
from ..transfer.prune import prune
from ..transfer.push import push_path
from ..transfer.retention import KEEP_SCOPES, RetentionPolicy, RunScope, fifo_with_tags
from ..units import format_bytes
from .queue import Job, JobQueue

log = logging.getLogger("ckpt_sync.worker")

MAX_BACKOFF = 300.0


class _HeldCopyChanged(CkptSyncError):
    """The held copy is no longer the version its job describes."""


class SyncWorker:
    def __init__(
        self,
        repo: Repository,
        queue: JobQueue,
        *,
        keep: int | None = None,
        retention: RetentionPolicy | None = None,
        keep_scope: str = "run",
        grace: float = DEFAULT_GRACE,
        workers: int | None = None,
        policy: ChunkPolicy = ChunkPolicy(),
        on_commit: Callable[[Job, Manifest, TransferStats], None] | None = None,
        on_failure: Callable[[Job, str, bool], None] | None = None,
    ) -> None:
        self.repo = repo
        self.queue = queue
        # Remote retention after each commit: ``retention`` when given, else the FIFO of ``keep``.
        self.check_options(keep_scope=keep_scope)
        self.retention = retention if retention is not None else fifo_with_tags(keep) if keep else None
        # "run": retention counts and removes only what this queue's run committed (RunScope);
        # "repository": everything in it, as `prune` does.
        self.keep_scope = keep_scope
        self.grace = grace
        self.workers = workers
        self.policy = policy
        self.on_commit = on_commit
        self.on_failure = on_failure  # (job, message, gave_up): an observer, e.g. metrics
        self.failed: list[Job] = []  # given up (its version cannot be uploaded any more)
        self.superseded: list[Job] = []  # dropped: their held copy was rewritten in place (a newer version)
        self.tried: dict[int, int] = {}  # job id -> failed attempts by this worker (``watch --once`` stops on them)
        self._wake = threading.Event()
        self._failing = Throttle(60.0)  # job id -> its retry lines

    @staticmethod
    def check_options(*, keep_scope: str = "run", **_others: object) -> None:
        """Refuse options a worker could not run with (UsageError), before anything starts."""
        if keep_scope not in KEEP_SCOPES:
            raise UsageError(f"keep scope {keep_scope!r} is not one of {', '.join(KEEP_SCOPES)}")

    def wake(self) -> None:
        self._wake.set()

    def run(self, stop: threading.Event, *, drain: bool = False, poll: float = 0.5) -> None:
        """Process jobs until ``stop`` is set (or, with ``drain``, until the queue is empty)."""
        # Where this queue's jobs go (no credentials): `ckpt-sync status` reads it.
        self.queue.record_destination(self.repo.url, getattr(self.repo.provider, "endpoint", None))
        self.queue.recover_orphans()
        last_recovery = time.monotonic()
        while not stop.is_set():
            job = self.queue.claim()
            if job is None:
                if drain and self.queue.unfinished() == 0:
                    return
                if time.monotonic() - last_recovery > 30:  # another process's worker may have died
                    self.queue.recover_orphans()
                    last_recovery = time.monotonic()
                self._wake.wait(poll)
                self._wake.clear()
                continue
            self.process(job, stop)

    def process(self, job: Job, stop: threading.Event) -> None:
        done = [0]
        beating = threading.Event()

        def heartbeat() -> None:
            while not beating.wait(2.0):
                self.queue.beat(job.id, done[0])

        def progress(n: int) -> None:
            done[0] += n

        beat = threading.Thread(target=heartbeat, name=f"job {job.id} heartbeat", daemon=True)
        beat.start()
        try:
            source = self.queue.source(job)
            if not source.exists():
                raise UsageError(f"{job.path} vanished before it could be uploaded (and no held copy exists)")
            recorded = self.queue.held_states(job)
            held_before = {k: FileState.from_json(v) for k, v in recorded.items()} if recorded else None

            def unchanged() -> None:  # before the commit: the bytes read are still the version queued
                if held_before is None:
                    return
                changed = changed_files(held_before, file_states(source))
                if changed:
                    raise _HeldCopyChanged(
                        f"the held copy of {job.name} changed after it was queued ({', '.join(changed[:3])} "
                        "rewritten in place); that version no longer exists and is not uploaded"
                    )

            unchanged()
            manifest, stats = push_path(
                self.repo,
                source,
                name=job.name,
                tags=job.tags,
                metadata={**job.metadata, "source_mtime_ns": job.mtime_ns},
                policy=self.policy,
                workers=self.workers,
                progress=progress,
                cancel=stop,
                before_commit=unchanged,
            )
        except Cancelled:
            self.queue.release(job)
            log.info("stopped while uploading %s; it resumes on the next start", job.name)
            return
        except _HeldCopyChanged as err:  # superseded: what is on disk now is another version, queued on its own
            log.warning("%s; the version on disk now is queued on its own", err)
            self.queue.supersede(job, str(err))
            self.superseded.append(job)
            return
        except UsageError as err:
            self._give_up(job, str(err))
            return
        except Exception as err:  # storage gave up, file changed, concurrent prune, a bug: try again later
            message = str(err) if isinstance(err, CkptSyncError) else f"{type(err).__name__}: {err}"
            delay = min(MAX_BACKOFF, 2.0**job.attempts)
            self._log_retry(job, message, delay)
            self.queue.retry_later(job, message, delay)
            self.tried[job.id] = self.tried.get(job.id, 0) + 1
            if self.on_failure:
                self.on_failure(job, message, False)
            return
        finally:
            beating.set()
            beat.join()
        self.queue.complete(job, manifest.id, stats.bytes_new, stats.bytes_sent, stats.seconds)
        self._failing.forget(job.id)
        log.info(
            "committed %s (%s read) as %s: %s new, %s sent in %.1fs",
            manifest.name,
            format_bytes(manifest.size),
            manifest.id,
            format_bytes(stats.bytes_new),
            format_bytes(stats.bytes_sent),
            stats.seconds,
            extra={
                "event": "committed",
                "checkpoint": manifest.name,
                "id": manifest.id,
                "size": manifest.size,
                "bytes_read": stats.bytes_read,
                "bytes_new": stats.bytes_new,
                "bytes_sent": stats.bytes_sent,
                "chunks": stats.chunks,
                "chunks_new": stats.chunks_new,
                "seconds": round(stats.seconds, 3),
            },
        )
        if self.on_commit:
            self.on_commit(job, manifest, stats)
        self._apply_retention()

    def _log_retry(self, job: Job, message: str, delay: float) -> None:
        """The first failure of a job at once, then one summary line a minute while it keeps failing."""
        held = self._failing.admit(job.id)
        if held is None:
            log.debug("upload of %s failed again (%s); retrying in %.0fs", job.name, message, delay)
        elif job.attempts == 0 or not held:
            log.warning("upload of %s failed (%s); retrying in %.0fs", job.name, message, delay)
        else:
            log.warning(
                "upload of %s still failing: %d attempt(s) so far, %d in the last minute (last: %s); retrying in %.0fs",
                job.name,
                job.attempts + 1,
                held + 1,
                message,
                delay,
            )

    def _give_up(self, job: Job, message: str) -> None:
        log.error("giving up on %s: %s", job.name, message)
        self.queue.fail(job, message)
        self.failed.append(job)
        if self.on_failure:
            self.on_failure(job, message, True)

    def _apply_retention(self) -> None:
        """Retention runs only right after this worker committed something (never on an empty start)."""
        if self.retention is None:
            return
        scope = RunScope(self.queue.committed_ids()) if self.keep_scope == "run" else None
        try:
            report = prune(self.repo, self.retention, grace=self.grace, scope=scope)
        except Exception as err:  # retention failing must not stop uploads
            log.warning("remote retention failed: %s", err)
            return
        if report.removed:
            log.info("retention removed %d checkpoint(s): %s", len(report.removed), ", ".join(report.removed_names))
