"""The library surface: what the CLI verbs and a training loop call.

``push(path)`` after your own ``torch.save``; ``pull(to=...)`` on a fresh host. Both resolve the
repository (argument, ``$CKPT_SYNC_REPO``, embedded default) and keys (argument, key file,
``$BACKUP_ENCRYPTION_KEY``, default key file) the same way the CLI does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, BinaryIO

from .format.chunking import ChunkPolicy
from .format.lookup import find_manifest
from .format.manifest import RESUMABLE, FileEntry, Manifest
from .format.repository import Repository
from .format.selection import Selection
from .transfer.counters import TransferStats
from .transfer.opening import Initialised, init_repository, open_repository, repair_config
from .transfer.push import push_path
from .transfer.restore import pull as _pull
from .transfer.restore import stream_file

__all__ = [
    "Initialised",
    "cat",
    "checkpoint",
    "init_repository",
    "open_repository",
    "pull",
    "push",
    "push_with_stats",
    "repair_config",
]


def push(
    path: str | os.PathLike[str],
    repo: str | Repository | None = None,
    *,
    tags: tuple[str, ...] | list[str] = (),
    key_file: str | os.PathLike[str] | None = None,
    metadata: dict[str, Any] | None = None,
    chunk_size: int | None = None,
    workers: int | None = None,
    role: str | None = None,
) -> str:
    """Commit ``path`` (a file, or a directory as one checkpoint) and return the checkpoint's id.

    ``role``: resumable, model-only or best (default: inferred, see ``push_path``). Pushing a
    version that is already committed returns the existing checkpoint's id."""
    return push_with_stats(
        path, repo, tags=tags, key_file=key_file, metadata=metadata, chunk_size=chunk_size, workers=workers, role=role
    )[0].id


def push_with_stats(
    path: str | os.PathLike[str],
    repo: str | Repository | None = None,
    *,
    tags: tuple[str, ...] | list[str] = (),
    key_file: str | os.PathLike[str] | None = None,
    metadata: dict[str, Any] | None = None,
    chunk_size: int | None = None,
    workers: int | None = None,
    progress: Any = None,
    role: str | None = None,
) -> tuple[Manifest, TransferStats]:
    r = repo if isinstance(repo, Repository) else open_repository(repo, key_file=key_file, create=True)
    policy = ChunkPolicy.of_size(chunk_size)
    return push_path(
        r, path, tags=tags, metadata=metadata, role=role, policy=policy, workers=workers, progress=progress
    )


def pull(
    to: str | os.PathLike[str] = ".",
    repo: str | Repository | None = None,
    *,
    checkpoint: str | None = None,
    key_file: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    role: str | None = None,
    tag: str | None = None,
    session: str | None = None,
    host: str | None = None,
    name: str | None = None,
    step: int | None = None,
    before_step: int | None = None,
    allow_older: bool = False,
    overwrite: bool = False,
) -> Manifest:
    """Restore ``checkpoint`` (id or name), or else the newest valid checkpoint by training position
    that the filters match (the CLI's ``pull --latest`` options: ``role`` resumable by default, or
    any role when the repository holds no resumable checkpoint; ``role="any"`` for any role), into
    ``to``; returns its manifest. Newer checkpoints encrypted with a key this host lacks raise
    MissingKeyError unless ``allow_older``. A different file already at the destination raises
    UsageError unless ``overwrite``; identical ones are skipped.

    ``include``/``exclude`` globs (on paths inside the checkpoint) restore only part of it.
    """
    selection = Selection(role or RESUMABLE, tag, session, host, name, step, before_step)
    r = repo if isinstance(repo, Repository) else open_repository(repo, key_file=key_file)
    return _pull(
        r,
        to,
        selector=checkpoint,
        selection=selection,
        workers=workers,
        include=include,
        exclude=exclude,
        allow_older=allow_older,
        any_role_if_none=role is None,
        overwrite=overwrite,
    )[0]


def checkpoint(
    selector: str = "latest", repo: str | Repository | None = None, *, key_file: str | os.PathLike[str] | None = None
) -> Manifest:
    """One checkpoint's manifest (its files: ``.files``), by id, unique id prefix, name or ``latest``."""
    r = repo if isinstance(repo, Repository) else open_repository(repo, key_file=key_file)
    return find_manifest(r, selector)


def cat(
    selector: str,
    path: str | None,
    out: BinaryIO,
    repo: str | Repository | None = None,
    *,
    key_file: str | os.PathLike[str] | None = None,
    workers: int | None = None,
) -> FileEntry:
    """Write one verified file of a checkpoint to the binary stream ``out`` (see restore.stream_file)."""
    r = repo if isinstance(repo, Repository) else open_repository(repo, key_file=key_file)
    return stream_file(r, find_manifest(r, selector), path, out, workers=workers)
