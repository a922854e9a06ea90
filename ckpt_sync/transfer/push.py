"""Push: turn a checkpoint (one file, or a directory of files) into chunks and a committed manifest."""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .. import platform
from ..buffers import BufferPool
from ..errors import Cancelled, OperationFailed, UsageError
from ..format.checkpoint_content import Content, file_content, folder_content
from ..format.chunking import ChunkPolicy, plan_chunks
from ..format.layout import new_manifest_id
from ..format.locks import Lock, acquire_push_lock
from ..format.manifest import (
    BEST,
    BEST_MARKER,
    ROLE_FROM,
    ROLES,
    ChunkRef,
    FileEntry,
    Manifest,
    infer_role,
)
from ..format.names import parse_checkpoint_name
from ..format.paths import component_problem, file_set_problem, path_problem
from ..format.repository import Repository, hostname
from ..fs.checkpoint_files import FileState, folder_files
from ..pipeline import default_workers, ordered_map
from .counters import TransferStats
from .damage_record import damaged_chunks, record_healed

ProgressFn = Callable[[int], None]
log = logging.getLogger("ckpt_sync.push")


def collect_files(path: Path) -> tuple[str, list[tuple[str, Path]]]:
    """("file", [(name, path)]) or ("dir", [(relative posix path, path), ...]) sorted by path.

    A folder's files follow checkpoint_files.folder_files: hidden and temp files at any depth are
    not part of it, a symlink leaving it is an error, special files are skipped.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist") from None
    except PermissionError:
        raise UsageError(f"cannot read {path}: permission denied") from None
    if stat.S_ISREG(st.st_mode):
        _refuse_unsafe_names(path, [path.name])
        return "file", [(path.name, path)]
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{path} is neither a file nor a directory")
    files = folder_files(path)
    if not files:
        raise UsageError(f"{path} is an empty directory: nothing to push")
    _refuse_unsafe_names(path, [path.name] + [rel for rel, _ in files])
    return "dir", sorted(files)


def _refuse_unsafe_names(path: Path, names: list[str]) -> None:
    """The names a pull would refuse (paths.path_problem) are refused here, before any upload."""
    problem = component_problem(names[0]) or file_set_problem(names[1:])
    bad = names[0]
    for rel in names[1:]:
        if problem:
            break
        problem, bad = path_problem(rel), rel
    if problem:
        raise UsageError(f"cannot push {path}: {bad!r}: {problem}; rename it")


def push_file(
    repo: Repository,
    pool: ThreadPoolExecutor,
    rel: str,
    path: Path,
    stats: TransferStats,
    *,
    policy: ChunkPolicy,
    window: int,
    workers: int,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> FileEntry:
    """Read, hash and hand out chunks in order (this thread); id, encrypt and upload in the pool.

    Chunks are read into a bounded set of reusable buffers, and tokens built in another: memory is
    at most (window + 1 + workers) x chunk size whatever the file's size.
    """
    inputs = BufferPool(window + 1, policy.chunk_size)
    tokens = repo.token_buffers(workers, policy.chunk_size)  # one per running store

    def read(fd: int, spans: list[tuple[int, int]], sha: Any) -> Iterator[tuple[bytearray, memoryview]]:
        for off, length in spans:
            if cancel is not None and cancel.is_set():
                raise Cancelled("push cancelled; nothing was committed")
            buf = inputs.acquire()
            view = memoryview(buf)[:length]
            if platform.pread_into(fd, view, off) != length:
                raise OperationFailed(f"{path} shrank while it was being read")
            sha.update(view)  # sequential whole-file hash; hashlib releases the GIL
            stats.bytes_read += length
            yield buf, view

    def store(item: tuple[bytearray, memoryview]) -> tuple[ChunkRef, int]:
        buf, view = item
        scratch = tokens.acquire()
        try:
            return repo.store_chunk(view, scratch=scratch)
        finally:
            tokens.release(scratch)
            inputs.release(buf)

    with open(path, "rb") as f:
        before = os.fstat(f.fileno())
        state = FileState.of(before)
        spans = plan_chunks(f, before.st_size, policy)
        sha = repo.file_hasher()
        refs: list[ChunkRef] = []
        for ref, sent in ordered_map(pool, store, read(f.fileno(), spans, sha), window):
            refs.append(ref)
            stats.chunks += 1
            if sent:
                stats.chunks_new += 1
                stats.bytes_new += ref.size
                stats.bytes_sent += sent
            if progress:
                progress(ref.size)
        after = FileState.of(os.fstat(f.fileno()))
    # Size and mtime alone miss a same-size rewrite that sets the mtime back; ctime cannot be set back.
    if state.changed_to(after):
        raise OperationFailed(f"{path} changed while it was being read; push it again once it is fully written")
    stats.files += 1
    mode = stat.S_IMODE(before.st_mode) & 0o777
    return FileEntry(
        path=rel, size=before.st_size, chunks=tuple(refs), mtime_ns=before.st_mtime_ns, mode=mode, **sha.entry_hashes()
    )


def push_path(
    repo: Repository,
    path: str | os.PathLike[str],
    *,
    tags: tuple[str, ...] | list[str] = (),
    name: str | None = None,
    metadata: dict[str, Any] | None = None,
    role: str | None = None,
    policy: ChunkPolicy = ChunkPolicy(),
    workers: int | None = None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    before_commit: Callable[[], None] | None = None,
) -> tuple[Manifest, TransferStats]:
    """Upload ``path`` and commit it as one checkpoint. The manifest is written last (the commit point).

    ``metadata`` may carry ``session_id``, ``global_step``, ``epoch``, ``loss`` (else read from what
    the files hold, checkpoint_content.py, else parsed from a ``checkpoint_{session}_{step}.pt`` name) and anything else
    JSON-serialisable, kept under ``extra``. ``role`` (or ``metadata["role"]``) is resumable,
    model-only or best; by default a folder holding ``best_metadata.json`` or a checkpoint tagged
    ``best`` is best, a model-only save model-only, else what the files hold (optimizer state or a
    position: resumable; weights alone: model-only), else resumable. How the role was decided is
    recorded as ``extra.role_from``. The source's modification time is recorded (restored by pull). Committing a
    version that is already committed returns the existing checkpoint. Setting ``cancel`` stops at
    the next chunk with ``Cancelled``; chunks already stored are reused by the next push.
    ``before_commit`` runs after every file was read and before the manifest is written; raising
    there commits nothing.
    """
    p = Path(path)
    kind, files = collect_files(p)
    rels = [rel for rel, _ in files]
    content = file_content(files[0][1]) if kind == "file" else folder_content(p, rels)
    name = name or p.name
    role, meta, session_id, step = describe(name, kind, rels, tags, metadata, role, content)
    workers = workers or default_workers()
    stats = TransferStats()
    suspect = damaged_chunks(repo.id)
    with acquire_push_lock(repo.provider, cancel=cancel) as lock:

        def upload(show: ProgressFn | None = progress) -> list[FileEntry]:
            repo.forget_known_chunks()  # what is stored now, under this lock
            repo.distrust(suspect)  # found damaged by this host: uploaded again, never reused
            with ThreadPoolExecutor(workers, thread_name_prefix="ckpt-push") as pool:
                return [
                    push_file(
                        repo,
                        pool,
                        rel,
                        fp,
                        stats,
                        policy=policy,
                        window=workers + 2,
                        workers=workers,
                        progress=show,
                        cancel=cancel,
                    )
                    for rel, fp in files
                ]

        entries = upload()
        if "source_mtime_ns" not in meta:  # what `watch` compares: the file's, or a folder's newest, mtime
            dir_mtime = [p.stat().st_mtime_ns] if kind == "dir" else []
            meta["source_mtime_ns"] = max(dir_mtime + [e.mtime_ns or 0 for e in entries])
        if before_commit is not None:
            before_commit()
        draft = draft_manifest(name, kind, entries, session_id, step, tags, meta, role)
        manifest = commit_checked(repo, lock, draft, reupload=lambda: upload(None), cancel=cancel)
    record_healed(repo.id, suspect & {c.id for e in entries for c in e.chunks})  # stored again above
    return manifest, stats.finish()


def commit_checked(
    repo: Repository,
    lock: Lock,
    manifest: Manifest,
    *,
    reupload: Callable[[], object] | None = None,
    cancel: threading.Event | None = None,
) -> Manifest:
    """Commit ``manifest`` under the push lock ``lock``, then make sure no chunk collection ran
    past that lock meanwhile.

    ``Repository.commit`` checks every chunk is stored before it writes the manifest, but a
    process paused between that check and the write (SIGSTOP, a suspended VM) past the lock's
    lifetime is judged gone, and a prune may then remove chunks it reused. So when the lock was
    broken while held (``Lock.lost``), the checkpoint's chunks are listed again under a new push
    lock (which waits out that prune); missing ones are uploaded again by ``reupload`` (a push
    still has its source) and listed once more. Raises OperationFailed naming the checkpoint when
    chunks stay missing: never a success with a damaged checkpoint.
    """
    committed = repo.commit(manifest)
    if not lock.lost():
        return committed
    log.warning(
        "the push lock of %s was broken while it was held (another process judged this one gone); "
        "checking its chunks again",
        committed.name,
    )
    with acquire_push_lock(repo.provider, cancel=cancel):
        refs = [c for f in committed.files for c in f.chunks]
        missing = repo.missing_chunks(refs, fresh=True)
        if missing and reupload is not None:
            log.warning("%s: %d chunk(s) were removed meanwhile; uploading them again", committed.name, len(missing))
            reupload()
            missing = repo.missing_chunks(refs, fresh=True)
        if missing:
            raise OperationFailed(
                f"checkpoint {committed.name} ({committed.id}) lost {len(missing)} chunk(s) to a prune that ran "
                "while this process was paused: it is damaged; push it again"
            )
    return committed


def describe(
    name: str,
    kind: str,
    rels: list[str],
    tags: Iterable[str],
    metadata: dict[str, Any] | None,
    role: str | None,
    content: Content | None,
) -> tuple[str, dict[str, Any], str | None, int | None]:
    """What every writer records of a new checkpoint the same way (a push, a direct save): its
    role (said, else a best-model folder, else ``infer_role`` with what the files hold), its
    metadata (with ``role_from`` and the files' position), and the position its name gives."""
    meta = dict(metadata or {})
    said = role or meta.pop("role", None)
    found = content.role if content is not None else None
    if said:
        role = said
    elif kind == "dir" and BEST_MARKER in rels:
        role = BEST
    else:
        role = infer_role(tuple(tags), meta, found)
    if role not in ROLES:
        raise UsageError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    meta.setdefault(ROLE_FROM, "user" if said else "content" if found == role else "inferred")
    # Training position: what the caller says, else what the files hold, else the file name.
    for key, value in (content.metadata() if content is not None else {}).items():
        meta.setdefault(key, value)
    session_id, step = parse_checkpoint_name(name)
    return role, meta, session_id, step


def draft_manifest(
    name: str,
    kind: str,
    entries: list[FileEntry],
    session_id: str | None,
    step: int | None,
    tags: tuple[str, ...] | list[str],
    meta: dict[str, Any],
    role: str | None = None,
) -> Manifest:
    return Manifest(
        id=new_manifest_id(),
        name=name,
        kind=kind,
        created=time.time(),
        host=hostname(),
        files=tuple(entries),
        session_id=meta.pop("session_id", session_id),
        global_step=meta.pop("global_step", step),
        epoch=meta.pop("epoch", None),
        loss=meta.pop("loss", None),
        tags=tuple(dict.fromkeys(tags)),
        extra=meta,
        role=role or meta.pop("role", None) or infer_role(tags, meta),
    )


def total_size(path: str | os.PathLike[str]) -> int:
    _, files = collect_files(Path(path))
    return sum(fp.stat().st_size for _, fp in files)
