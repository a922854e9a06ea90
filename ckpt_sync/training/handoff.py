"""Sync hand-off: each finished checkpoint goes to the durable sync queue without blocking training.

The manager talks to a ``SyncHandoff`` (``enqueue`` / ``wait`` / ``close``). With ``repo=`` that is
a ``QueueHandoff`` over ``ckpt_sync.SyncClient``, the one sync queue; tests, and callers with an
uploader of their own, pass any object with those three methods as ``handoff=``.

What the manager relies on comes from SyncClient's queue (service/queue.py, service/staging.py):
``enqueue`` returns once the job is committed to the queue and the file is held in the queue's
``staging/`` (a reflink, else a hard link, else a copy), so rotation may delete the original at
once and the upload still has it; a crash loses nothing (the next start, or a ``ckpt-sync watch``
of the folder, uploads what is queued); and training never waits on the store (the client does not
reach it when built, and ``wait`` stops waiting with one warning while the store does not answer).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Protocol

from ..service.sync_client import SyncClient
from ..transfer.retention import RetentionPolicy
from .naming import SYNC_STATE_DIR

log = logging.getLogger("ckpt_sync.training")


class SyncHandoff(Protocol):
    def enqueue(self, path: Path, metadata: dict[str, Any], tags: tuple[str, ...] = ()) -> None:
        """Queue ``path`` for upload; from its return on, deleting ``path`` must not lose the upload."""
        ...

    def wait(self) -> None:
        """Block until what was enqueued is uploaded (or cannot be now); raise an upload's error."""
        ...

    def close(self) -> None:
        """Wait as ``wait`` does, then release the uploader."""
        ...


class QueueHandoff:
    """``SyncHandoff`` over a ``SyncClient``: the manager's calling conventions on the client's queue.

    Pass one as ``handoff=`` to upload through a client built your way, e.g.
    ``QueueHandoff(SyncClient(url, state_dir=folder / ".ckpt-sync", worker=False))`` to leave the
    uploads to a ``ckpt-sync watch`` sharing that queue.
    """

    def __init__(self, client: SyncClient) -> None:
        self.client = client

    def enqueue(self, path: Path, metadata: dict[str, Any] | None = None, tags: tuple[str, ...] = ()) -> None:
        self.client.enqueue(path, metadata=dict(metadata or {}), tags=tuple(tags))

    def wait(self) -> None:
        """Wait for the uploads; while the store does not answer, stop waiting with one warning (the
        uploads stay queued and go up on the next start: training never waits on the store). A job
        the client gave up on raises its OperationFailed."""
        try:
            self.client.wait()
        except TimeoutError as err:
            log.warning("[SYNC] %s; they upload on the next start, or with `ckpt-sync watch DIR --once`", err)

    def close(self) -> None:
        """Wait for the uploads (the client's own ``close`` does not), then stop its worker."""
        try:
            self.wait()
        finally:
            self.client.close()


def make_handoff(
    repo: str,
    *,
    directory: str | os.PathLike[str],
    key_file: str | os.PathLike[str] | None = None,
    remote_keep: int | None = None,
    remote_retention: RetentionPolicy | None = None,
) -> QueueHandoff:
    """A ``QueueHandoff`` whose client keeps its queue in ``directory/.ckpt-sync``: the same
    filesystem as the checkpoints, so holding one is a reflink or a hard link, never a copy.

    ``remote_keep`` prunes the repository to that many newest checkpoints plus ``best`` after each
    upload (0 or None: never); ``remote_retention`` (a retention policy) replaces that count. Raises
    what ``SyncClient`` raises for a missing or malformed key; the store is not reached here.
    """
    client = SyncClient(
        repo,
        state_dir=Path(directory) / SYNC_STATE_DIR,
        key_file=key_file,
        keep=remote_keep or None,
        retention=remote_retention,
    )
    return QueueHandoff(client)
