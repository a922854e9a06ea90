"""What the framework integrations (lightning.py, hf.py) share: a lazily started sync hand-off, a
bounded drain, and restoring the newest resumable checkpoint of a kind on a fresh host.

Nothing here imports a framework (or torch).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LocalTargetError, MissingKeyError, OperationFailed, UsageError
from ..format.manifest import Manifest
from ..format.selection import Selection
from ..transfer.restore import pull

log = logging.getLogger("ckpt_sync.integration")

STATE_DIR = ".ckpt-sync"  # beside the checkpoints, as `ckpt-sync watch DIR` defaults to: they share the queue
DEFAULT_DRAIN_TIMEOUT = 600.0


@dataclass(frozen=True)
class SyncOptions:
    """How a framework integration hands its checkpoints to ckpt-sync: the keywords
    ``CkptSyncCallback`` (hf.py) and ``CkptSyncCheckpointIO`` (lightning.py) take.

    ``repo`` and ``key_file`` resolve as every library call does (service/settings.py).
    ``state_dir`` defaults to ``<checkpoint folder>/.ckpt-sync``, the folder ``ckpt-sync watch
    <folder>`` uses, so a sidecar can do the uploads instead (``worker=False``). ``keep`` prunes the
    repository to that many newest checkpoints plus the best; None keeps everything.
    ``drain_timeout`` bounds the wait at the end of training (what is left resumes on the next start).
    """

    repo: str | None = None
    key_file: str | os.PathLike[str] | None = None
    state_dir: str | os.PathLike[str] | None = None
    keep: int | None = None
    worker: bool = True
    drain_timeout: float | None = DEFAULT_DRAIN_TIMEOUT


class LazySync:
    """A ``SyncClient`` started on the first checkpoint (only the rank that saves ever starts one).

    ``enqueue`` returns once the checkpoint is durably queued and held against deletion; the upload
    runs in this process's worker thread (or, with ``worker=False``, in a ``ckpt-sync watch`` sharing
    the state folder). A queued job survives ``kill -9``: the next start (or ``watch``) uploads it.
    """

    def __init__(self, options: SyncOptions) -> None:
        self.options = options
        self._client: Any = None

    def _state_dir(self, checkpoint_dir: Path) -> Path:
        return Path(self.options.state_dir or Path(checkpoint_dir) / STATE_DIR)

    def client(self, checkpoint_dir: Path) -> Any:
        if self._client is None:
            from ..service.sync_client import SyncClient

            o, state = self.options, self._state_dir(checkpoint_dir)
            self._client = SyncClient(o.repo, state_dir=state, key_file=o.key_file, keep=o.keep, worker=o.worker)
            log.info("[ckpt-sync] syncing checkpoints to %s (queue in %s)", self._client.url, state)
        return self._client

    def resume_leftovers(self, checkpoint_dir: Path) -> None:
        """Start the worker now when an earlier run left jobs in this folder's queue (killed after a save)."""
        if (
            self._client is None
            and self.options.worker
            and (self._state_dir(checkpoint_dir) / "queue.sqlite3").exists()
        ):
            self.client(checkpoint_dir)

    def enqueue(self, path: Path, *, tags: tuple[str, ...] = (), metadata: dict[str, Any] | None = None) -> int:
        job = self.client(path.parent).enqueue(path, tags=tags, metadata=metadata)
        log.info("[ckpt-sync] queued %s for upload (job %d)", path.name, job)
        return job

    def drain(self) -> bool:
        """Wait (bounded by ``drain_timeout``) until every queued upload is committed, then stop the worker.

        Returns False, after one log line saying what is left and where it resumes, when it had to stop early.
        """
        if self._client is None:
            return True
        client, self._client = self._client, None
        try:
            if not client.uploads_here:
                return True  # a `watch` sharing the queue uploads them; nothing to wait for here
            try:
                client.wait(self.options.drain_timeout)
            except TimeoutError as err:
                log.warning(
                    "[ckpt-sync] stopped waiting for uploads after %.0fs (%s); they stay queued in %s and resume "
                    "on the next start, or with `ckpt-sync watch %s --once`",
                    self.options.drain_timeout,
                    err,
                    client.queue.state_dir,
                    client.queue.state_dir.parent,
                )
                return False
            log.info("[ckpt-sync] all checkpoints are committed to %s", client.url)
            return True
        finally:
            client.close()


def restore_first(repo: Any, dest: Path, selection: Selection, *, accept: Any = None) -> Manifest | None:
    """Restore into ``dest`` the newest intact checkpoint ``selection`` and ``accept`` match (the one
    rule of "latest": lookup.py; restore.pull falls back past one that fails verification); None when
    the repository has none. A file of the same name already there is replaced by the committed one
    (identical files are not downloaded again). A problem with ``dest`` itself (a symlink in the way,
    permissions, a full disk) raises: it is never a reason to resume from an older checkpoint."""

    def warn(line: str) -> None:
        log.warning("[ckpt-sync] %s", line)

    try:
        m, _ = pull(repo, dest, selection=selection, accept=accept, warn=warn, overwrite=True)
    except MissingKeyError:
        raise
    except (LocalTargetError, UsageError):
        raise
    except OperationFailed as err:
        log.info("[ckpt-sync] nothing to restore from %s (%s)", repo.url, err)
        return None
    log.info("[ckpt-sync] restored %s (step %s) from %s into %s", m.name, m.global_step, repo.url, dest)
    return m
