"""The library surface: what the CLI verbs and a training loop call.

``push(path)`` after your own ``torch.save``; ``pull(to=...)`` on a fresh host. Every call finds
the store as the CLI does (service/settings.py ``resolve_store``): an argument, else the environment
(``$CKPT_SYNC_REPO``, ``$CKPT_SYNC_ENDPOINT_URL``, ...), else the config file, else the default (the
embedded local repository); the keys from a ``key_file`` argument, ``$BACKUP_ENCRYPTION_KEY``, a
key file the environment or the config file names, or the default key file.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, BinaryIO

from .errors import UsageError
from .format.chunking import ChunkPolicy
from .format.crypto import KeyRing
from .format.lookup import find_manifest
from .format.manifest import RESUMABLE, FileEntry, Manifest, RepositoryBinding
from .format.repo_config import RepositorySettings
from .format.repository import Repository
from .format.selection import Selection
from .providers import RetryPolicy
from .service.settings import StoreAccess, resolve_store
from .transfer.chunk_cache import ChunkCache
from .transfer.opening import Initialised, init_at, open_at, repair_config_at
from .transfer.push import push_path
from .transfer.restore import pull as _pull
from .transfer.restore import stream_file

if TYPE_CHECKING:
    from .transfer.direct_save import CheckpointWriter
    from .transfer.reader import CheckpointFile

__all__ = [
    "Initialised",
    "cat",
    "checkpoint",
    "init_repository",
    "open",
    "open_repository",
    "pull",
    "push",
    "repair_config",
    "save",
]


def open_repository(
    repo: str | None = None,
    *,
    key_file: str | os.PathLike[str] | None = None,
    keys: KeyRing | None = None,
    create: bool = False,
    settings: RepositorySettings | None = None,
    retry: RetryPolicy | None = None,
    cancel: threading.Event | None = None,
    endpoint_url: str | None = None,
    bwlimit: int | str | None = None,
    **provider_options: Any,
) -> Repository:
    """The repository ``repo`` names (resolved as the module says), opened with the key checked first.
    ``keys`` (a KeyRing) instead of a key file; ``settings`` (format version, padding, compression)
    apply when it is created and are refused for an existing one that differs; ``retry`` replaces
    the resolved retry budget; ``cancel`` ends the waits between retries (raising Cancelled)."""
    access = resolve_store(repo, key_file=key_file, endpoint_url=endpoint_url, bwlimit=bwlimit)
    return open_store(
        access, keys=keys, create=create, settings=settings, retry=retry, cancel=cancel, **provider_options
    )


def open_store(
    access: StoreAccess,
    *,
    keys: KeyRing | None = None,
    create: bool = False,
    settings: RepositorySettings | None = None,
    retry: RetryPolicy | None = None,
    cancel: threading.Event | None = None,
    **provider_options: Any,
) -> Repository:
    """The repository a resolved ``StoreAccess`` names (how the CLI and ``open_repository`` open it)."""
    options = access.provider_options() | provider_options
    if retry is not None:
        options["retry"] = retry
    return open_at(access.url, keys or access.keys(), create=create, settings=settings, cancel=cancel, **options)


def init_repository(
    repo: str | None = None,
    *,
    key_file: str | os.PathLike[str] | None = None,
    create_bucket: bool = False,
    settings: RepositorySettings | None = None,
    endpoint_url: str | None = None,
    **provider_options: Any,
) -> Initialised:
    """Create the repository ``repo`` names (with ``create_bucket``, first its bucket or container);
    with no key configured anywhere, and only for a new repository, a new default key file is made."""
    access = resolve_store(repo, key_file=key_file, endpoint_url=endpoint_url)
    return init_at(
        access.url,
        access.key_file,
        create_bucket=create_bucket,
        settings=settings,
        **(access.provider_options() | provider_options),
    )


def repair_config(
    repo: str | None = None,
    *,
    key_file: str | os.PathLike[str] | None = None,
    keys: KeyRing | None = None,
    endpoint_url: str | None = None,
    **provider_options: Any,
) -> tuple[RepositoryBinding, int]:
    """Rebuild the repository's missing or damaged config from the backup its manifests carry."""
    access = resolve_store(repo, key_file=key_file, endpoint_url=endpoint_url)
    return repair_config_at(access.url, keys or access.keys(), **(access.provider_options() | provider_options))


def _opened(
    repo: str | Repository | None, key_file: str | os.PathLike[str] | None, *, create: bool = False
) -> Repository:
    return repo if isinstance(repo, Repository) else open_repository(repo, key_file=key_file, create=create)


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

    ``role``: resumable, model-only or best (default: inferred, see transfer/push.py ``push_path``,
    which also returns the transfer's counters). Pushing a version that is already committed returns
    the existing checkpoint's id."""
    access = resolve_store(None if isinstance(repo, Repository) else repo, key_file=key_file)
    r = repo if isinstance(repo, Repository) else open_store(access, create=True)
    policy = ChunkPolicy.of_size(chunk_size or access.chunk_size)
    manifest, _ = push_path(
        r, path, tags=tags, metadata=metadata, role=role, policy=policy, workers=workers or access.workers
    )
    return manifest.id


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
    chunk_cache: str | os.PathLike[str] | ChunkCache | None = None,
) -> Manifest:
    """Restore ``checkpoint`` (id or name), or else the newest valid checkpoint by training position
    that the filters match (the CLI's ``pull --latest`` options: ``role`` resumable by default, or
    any role when the repository holds no resumable checkpoint; ``role="any"`` for any role), into
    ``to``; returns its manifest. Newer checkpoints encrypted with a key this host lacks raise
    MissingKeyError unless ``allow_older``. A different file already at the destination raises
    UsageError unless ``overwrite``; identical ones are skipped.

    ``include``/``exclude`` globs (on paths inside the checkpoint) restore only part of it.

    ``chunk_cache``: a folder (or a ``ChunkCache``, for another size bound than its default 16 GiB)
    shared by the processes of this host that pull from the same repositories: each chunk is read
    from the store once and kept there encrypted, checked again on every use
    (transfer/chunk_cache.py).
    """
    selection = Selection(role or RESUMABLE, tag, session, host, name, step, before_step)
    access = resolve_store(None if isinstance(repo, Repository) else repo, key_file=key_file)
    r = repo if isinstance(repo, Repository) else open_store(access)
    return _pull(
        r,
        to,
        selector=checkpoint,
        selection=selection,
        workers=workers or access.workers,
        include=include,
        exclude=exclude,
        allow_older=allow_older,
        any_role_if_none=role is None,
        overwrite=overwrite,
        chunk_cache=chunk_cache if isinstance(chunk_cache, ChunkCache | None) else ChunkCache(chunk_cache),
    )[0]


def checkpoint(
    selector: str = "latest", repo: str | Repository | None = None, *, key_file: str | os.PathLike[str] | None = None
) -> Manifest:
    """One checkpoint's manifest (its files: ``.files``), by id, unique id prefix, name or ``latest``."""
    return find_manifest(_opened(repo, key_file), selector)


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
    r = _opened(repo, key_file)
    return stream_file(r, find_manifest(r, selector), path, out, workers=workers)


def open(
    repo: str | Repository | None = None,
    checkpoint: str = "latest",
    path: str | None = None,
    *,
    key_file: str | os.PathLike[str] | None = None,
    cache_bytes: int | None = None,
    workers: int = 4,
    name: str | None = None,
    metadata: dict[str, Any] | None = None,
    tags: Sequence[str] = (),
    role: str | None = None,
    chunk_size: int | None = None,
) -> CheckpointFile | CheckpointWriter:
    """One file of a committed checkpoint as a seekable, read-only binary file object, its chunks
    fetched and authenticated as reads need them (transfer/reader.py). ``checkpoint``: an id, a
    unique id prefix, a name or ``latest``; ``path``: the file inside it (None for a one-file
    checkpoint); ``cache_bytes`` bounds the chunks it keeps (default 128 MiB). Use it as a context
    manager, or close it, to release connections.

    ``open(repo, "wb", name=...)`` instead returns a write-only stream that saves a new checkpoint
    straight into the repository (``torch.save(state, stream)``; transfer/direct_save.py): it
    commits when closed or when its ``with`` block ends normally, and commits nothing when the block
    raises. ``metadata``, ``tags``, ``role`` and ``chunk_size`` are a push's. (A checkpoint named
    ``wb`` is read by its id.)"""
    if checkpoint == "wb":
        if name is None:
            raise UsageError('open(repo, "wb") writes a new checkpoint: give its name=')
        return _writer(repo, name, key_file, metadata, tags, role, chunk_size, workers)
    from .transfer.reader import open_file  # the lazy reader (a thread pool, a cache) on first use

    owns = not isinstance(repo, Repository)
    r = _opened(repo, key_file)
    try:
        sized = {} if cache_bytes is None else {"cache_bytes": cache_bytes}
        return open_file(r, checkpoint, path, workers=workers, owns_repo=owns, **sized)
    except BaseException:
        if owns:
            r.provider.close()
        raise


def save(
    obj: Any,
    repo: str | Repository | None = None,
    *,
    name: str,
    metadata: dict[str, Any] | None = None,
    tags: Sequence[str] = (),
    role: str | None = None,
    key_file: str | os.PathLike[str] | None = None,
    chunk_size: int | None = None,
    workers: int | None = None,
) -> Manifest:
    """``torch.save(obj)`` straight into the repository as the checkpoint ``name``, with no local
    file: chunked, encrypted, deduplicated and uploaded as torch writes, committed when it is done
    (nothing is committed if it fails). Returns the committed checkpoint. ``metadata`` (e.g.
    ``global_step``, ``session_id``), ``tags`` and ``role`` are a push's; by default the role and
    position are read from what was saved, as a push reads them from a file."""
    import torch  # the sync core imports without torch; saving a torch object needs it

    with _writer(repo, name, key_file, metadata, tags, role, chunk_size, workers) as stream:
        torch.save(obj, stream)
    assert stream.manifest is not None
    return stream.manifest


def _writer(
    repo: str | Repository | None,
    name: str,
    key_file: str | os.PathLike[str] | None,
    metadata: dict[str, Any] | None,
    tags: Sequence[str],
    role: str | None,
    chunk_size: int | None,
    workers: int | None,
) -> CheckpointWriter:
    from .transfer.direct_save import CheckpointWriter

    access = resolve_store(None if isinstance(repo, Repository) else repo, key_file=key_file)
    r = repo if isinstance(repo, Repository) else open_store(access, create=True)
    try:
        return CheckpointWriter(
            r,
            name,
            metadata=metadata,
            tags=tags,
            role=role,
            policy=ChunkPolicy.of_size(chunk_size or access.chunk_size),
            workers=workers or access.workers,
            owns_repo=not isinstance(repo, Repository),
        )
    except BaseException:
        if not isinstance(repo, Repository):
            r.provider.close()
        raise
