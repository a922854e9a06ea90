"""Pull: rebuild a committed checkpoint into a folder, verified, with no partial file under a final name.

A single-file checkpoint is written to a hidden temp name beside its destination, checked against
its whole-file hash, then renamed into place. A folder checkpoint is assembled whole in a hidden
sibling folder and renamed into place as a whole, so a crash at any point never leaves a folder
that looks complete (a ``.metadata`` beside some of its shards). Files get the source's permission
bits, never wider. Temp names carry their owner (host tag, pid): each pull first removes what a
crashed pull left in the same folder (its owner dead on this host, or older than a day).
``pull`` walks from the newest intact checkpoint (lookup.py) back to the first one that fully
verifies; a problem with the destination stops it instead (never a reason to restore an older one).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import mmap
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from .. import platform
from ..buffers import BufferPool
from ..errors import (
    Cancelled,
    CkptSyncError,
    ConfigError,
    IntegrityError,
    LocalTargetError,
    NoSpace,
    NotFound,
    OperationFailed,
    PermanentStorageError,
    TransientStorageError,
    UsageError,
)
from ..format.contents import file_entry, select_files
from ..format.file_digest import FileHasher, file_matches
from ..format.lookup import find_manifest, latest_candidates
from ..format.manifest import ChunkRef, FileEntry, Manifest
from ..format.paths import case_collisions, safe_relative_path, windows_path_problem
from ..format.repository import Repository
from ..format.selection import Selection
from ..fs.atomic import abandoned, fsync_dir, temp_path
from ..fs.direct_io import ALIGN, DIRECT_MIN, SequentialWriter
from ..pipeline import default_workers, ordered_map
from .chunk_cache import ChunkCache
from .counters import TransferStats
from .seen import remember

ProgressFn = Callable[[int], None]
WarnFn = Callable[[str], None]

ABANDONED_AFTER = 86400.0  # another host's temp this old is abandoned too
LOCAL_READERS = 2  # threads reading a local store's chunk objects (O_DIRECT: one read fills the disk's queue)
LOCAL_READS_AHEAD = 4  # chunk objects read ahead of the workers from a local store
DEFAULT_MODE = 0o644  # for manifests that did not record the source's bits (the umask applies)


def clean_leftovers(folder: Path) -> int:
    """Remove temp files and folders a crashed pull (or save) left directly in ``folder``; returns
    how many. One whose writer is running stays, however old; one whose writer is provably dead
    here goes at once; others (another host, the owner-less names of older versions) when older
    than a day (fs.atomic.abandoned)."""
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for e in entries:
        path = Path(e.path)
        if not abandoned(path, ABANDONED_AFTER):
            continue
        if e.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed += 1
    return removed


def read_verified(
    repo: Repository,
    pool: ThreadPoolExecutor,
    entry: FileEntry,
    *,
    window: int,
    writer: SequentialWriter | None = None,
    progress: ProgressFn | None = None,
    sink: Callable[[memoryview], object] | None = None,
    chunk_cache: ChunkCache | None = None,
) -> None:
    """Fetch and verify every chunk of ``entry`` in parallel (through ``chunk_cache`` when given),
    writing each in file order to ``writer`` when given, and handing each in file order to ``sink``
    when given (a stream); the whole-file hash is checked in order at the end.

    Raises IntegrityError (or NotFound) for any chunk or hash mismatch.
    """
    if not entry.chunks:
        if not FileHasher.checking(entry).matches(entry):
            raise IntegrityError(f"{entry.path}: whole-file hash mismatch")
        return
    # Tokens and plaintexts go into reusable buffers: each pending chunk holds a plaintext, this
    # thread one more, the writer the few it is writing from, and each running fetch a token until
    # it is decrypted. A plaintext is decrypted at its file offset modulo ALIGN into an aligned
    # buffer, so the writer sends its whole blocks to the disk without copying them (direct_io.py).
    largest = max(c.size for c in entry.chunks)
    plains = BufferPool(
        window + 1 + SequentialWriter.IN_FLIGHT, repo.format.max_token_size(largest) + ALIGN, aligned=True
    )
    local = getattr(repo.provider, "reads_locally", False) and chunk_cache is None
    tokens = repo.token_buffers(window + (LOCAL_READS_AHEAD if local else 0), largest)

    def read(item: tuple[ChunkRef, int]) -> tuple[ChunkRef, int, bytearray, bytes | memoryview | None]:
        ref, offset = item
        scratch = tokens.acquire()
        try:
            return ref, offset, scratch, repo.read_token(ref, scratch)
        except BaseException:
            tokens.release(scratch)
            raise

    def open_read(item: tuple[ChunkRef, int, bytearray, bytes | memoryview | None]) -> tuple[mmap.mmap, memoryview]:
        ref, offset, scratch, token = item
        buf = plains.acquire()
        try:
            return buf, memoryview(repo.open_token(ref, token, out=memoryview(buf)[offset % ALIGN :]))
        except BaseException:
            plains.release(buf)
            raise
        finally:
            tokens.release(scratch)

    def fetch(item: tuple[ChunkRef, int]) -> tuple[mmap.mmap, memoryview]:
        if chunk_cache is None:
            return open_read(read(item))
        ref, offset = item
        buf = plains.acquire()
        try:
            return buf, memoryview(chunk_cache.load_chunk(repo, ref, out=memoryview(buf)[offset % ALIGN :]))
        except BaseException:
            plains.release(buf)
            raise

    sha = FileHasher.checking(entry)  # often none: every chunk is checked against its id in fetch
    # One writer, in order (workers writing one file in parallel spin on its lock), hashing a whole
    # chunk per call: each call gives up the GIL, and taking it back from six busy workers can wait
    # a switch interval (5 ms), so per-slice calls left this thread waiting most of the time.
    placed = zip(entry.chunks, itertools.accumulate((c.size for c in entry.chunks), initial=0), strict=False)
    with contextlib.ExitStack() as stack:
        if local:
            # A local disk: its own threads read the next LOCAL_READS_AHEAD tokens (with O_DIRECT, no copy
            # through the page cache) while the workers decrypt and check the ones read before.
            readers = stack.enter_context(ThreadPoolExecutor(LOCAL_READERS, thread_name_prefix="ckpt-read"))
            verified = ordered_map(pool, open_read, ordered_map(readers, read, placed, LOCAL_READS_AHEAD), window)
        else:
            verified = ordered_map(pool, fetch, placed, window)
        stack.callback(verified.close)  # the outer stage stops first, then the readers' pool
        _write_in_order(verified, sha, sink, progress, writer, plains)
    if not sha.matches(entry):
        raise IntegrityError(f"{entry.path}: whole-file hash mismatch")


def _write_in_order(
    verified: Iterator[tuple[mmap.mmap, memoryview]],
    sha: FileHasher,
    sink: Callable[[memoryview], object] | None,
    progress: ProgressFn | None,
    writer: SequentialWriter | None,
    plains: BufferPool,
) -> None:
    for buf, plain in verified:
        sha.update(plain)
        if sink is not None:
            sink(plain)
        if progress:
            progress(len(plain))
        if writer is not None:
            writer.write(plain, release=lambda buf=buf: plains.release(buf))  # kept until written
        else:
            plains.release(buf)


def _destination(dest: Path, rel: str, *, create: bool = True) -> Path:
    """Where ``rel`` goes under ``dest`` (its folders made, with ``create``); refuses anything that
    could land outside it."""
    parts = safe_relative_path(rel).parts
    target = dest
    for part in parts[:-1]:
        target = target / part
        if target.is_symlink():
            raise LocalTargetError(f"refusing to write through the symlink {target}: move it away and re-run")
        if create:
            target.mkdir(exist_ok=True)
    final = target / parts[-1]
    if final.is_dir() and not final.is_symlink():
        raise UsageError(f"{final} is a directory; cannot restore a file there")
    real_dest = dest.resolve()
    if not final.parent.resolve().is_relative_to(real_dest):
        raise LocalTargetError(f"refusing to write {rel!r} outside {dest} (a symlink in the way?)")
    return final


def restore(
    repo: Repository,
    manifest: Manifest,
    dest: str | os.PathLike[str],
    *,
    workers: int | None = None,
    progress: ProgressFn | None = None,
    overwrite: bool = False,
    whole: bool = True,
    chunk_cache: ChunkCache | None = None,
) -> TransferStats:
    """Write the checkpoint under ``dest`` — a file as ``dest/<name>``, a folder as ``dest/<name>/...``
    — with its original modification time; on any failure leave nothing new behind.

    A file already there holding exactly the checkpoint's bytes (format/file_digest.py file_matches:
    its size, then its whole-file hash or its chunk ids) is left as it is (not downloaded); a
    different one — or, for a folder, files the checkpoint does not have — is refused with
    UsageError (exit 2) naming it, unless ``overwrite``: then it is replaced, and the folder ends
    up holding exactly the checkpoint's files (no stale ones from an older copy). ``whole=False``
    (a partial restore: ``manifest`` is a selection of the files) leaves other files alone.
    ``chunk_cache``: chunks come through this host's shared cache (chunk_cache.py)."""
    dest = Path(dest)
    for f in manifest.files:  # validate every path before writing anything
        safe_relative_path(f.path)
    if manifest.kind == "dir":
        safe_relative_path(manifest.name)
    check_names_fit(dest, [f"{manifest.name}/{f.path}" if manifest.kind == "dir" else f.path for f in manifest.files])
    prepare_target(dest)
    root = dest / manifest.name if manifest.kind == "dir" else dest
    # The source's mtime, so a `watch` on this folder sees the version it already committed.
    source_mtime = manifest.extra.get("source_mtime_ns")
    mtime_ns = source_mtime if isinstance(source_mtime, int) else None
    free = shutil.disk_usage(dest).free
    if free < manifest.size:
        raise NoSpace(
            f"not enough space in {dest}: {manifest.name} needs {manifest.size / 2**20:.1f} MiB, "
            f"{free / 2**20:.1f} MiB free; free some space and re-run"
        )
    workers = workers or default_workers()
    stats = TransferStats()
    rels = {e.path: f"{manifest.name}/{e.path}" if root != dest else e.path for e in manifest.files}
    finals = {path: _destination(dest, rel, create=False) for path, rel in rels.items()}
    identical = _existing(repo, manifest, finals, root if root != dest and whole else None, overwrite)
    clean_leftovers(dest)
    if manifest.kind == "dir":
        _check_replaceable(root)
        clean_leftovers(root)  # the per-file leftovers of older versions, inside the folder
    # A folder is assembled in a hidden sibling and renamed into place whole (its files already there
    # and identical are linked in, not downloaded); a single file is written beside its name.
    build = temp_path(dest / manifest.name, "part") if manifest.kind == "dir" else dest
    written: list[tuple[Path, str]] = []  # (temp path, path under dest) of each downloaded file
    try:
        if build != dest:
            build.mkdir()
        with ThreadPoolExecutor(workers, thread_name_prefix="ckpt-pull") as pool:
            for entry in manifest.files:
                final = finals[entry.path]
                if entry.path in identical:
                    stats.files_skipped += 1
                    if build != dest and whole:
                        _link_or_copy(final, _destination(build, entry.path))
                    continue
                tmp = _destination(build, entry.path) if build != dest else temp_path(finals[entry.path], "part")
                written.append((tmp, rels[entry.path]))
                file_mtime = entry.mtime_ns if entry.mtime_ns is not None else mtime_ns
                _write_file(
                    repo,
                    pool,
                    entry,
                    tmp,
                    workers=workers,
                    mtime_ns=file_mtime,
                    progress=progress,
                    chunk_cache=chunk_cache,
                )
                stats.files += 1
                stats.chunks += len(entry.chunks)
                stats.bytes_read += entry.size
        if build != dest:
            for folder in sorted({tmp.parent for tmp, _ in written} | {build}, key=lambda p: -len(p.parts)):
                fsync_dir(folder)
        if build != dest and whole:
            if mtime_ns is not None:
                os.utime(build, ns=(mtime_ns, mtime_ns))
            _replace_folder(build, root)
        else:  # one file, or a partial restore of a folder: each file renamed into place
            finals_made = [(tmp, _destination(dest, rel)) for tmp, rel in written]
            for tmp, final in finals_made:
                platform.replace(tmp, final)
            for parent in {final.parent for _, final in finals_made}:
                fsync_dir(parent)
            if build != dest:
                shutil.rmtree(build, ignore_errors=True)
                if mtime_ns is not None:
                    os.utime(root, ns=(mtime_ns, mtime_ns))
        fsync_dir(dest)
    except OSError as err:
        _discard(build, written)
        if err.errno == errno.ENOSPC:
            raise NoSpace(f"no space left on device in {dest}: free some space and re-run") from err
        if err.errno in _CANNOT_WRITE:  # about the user's folder, not our hidden temp file's name
            raise UsageError(f"cannot write into {dest}: {err.strerror} (choose another --to)") from None
        where = f"{err.filename}" if err.filename else str(dest)
        raise LocalTargetError(f"cannot restore into {dest}: {err.strerror or err} ({where})") from None
    except BaseException:
        _discard(build, written)
        raise
    return stats.finish()


def _existing(
    repo: Repository, manifest: Manifest, finals: dict[str, Path], root: Path | None, overwrite: bool
) -> set[str]:
    """Paths of the checkpoint already at the destination and identical; refuses (UsageError) to
    replace a different file, or to leave stale files in a folder checkpoint, unless ``overwrite``,
    and (LocalTargetError) to replace a symlink."""
    identical: set[str] = set()
    for entry in manifest.files:
        final = finals[entry.path]
        if final.is_symlink():  # a link (Lightning's last.ckpt, say) is the user's: never replaced silently
            raise LocalTargetError(f"refusing to replace the symlink {final}: move it away and re-run")
        if not final.is_file():
            continue
        if file_matches(final, entry, repo.format):
            identical.add(entry.path)
        elif not overwrite:
            raise UsageError(
                f"{final} already exists and differs from {manifest.name} ({manifest.id}); "
                "pass --overwrite to replace it"
            )
    if root is not None and root.is_dir() and not overwrite:
        stale = sorted(p for p in root.rglob("*") if p.is_file() and p not in set(finals.values()))
        if stale:
            raise UsageError(
                f"{root} already holds {len(stale)} file(s) not in {manifest.name} ({manifest.id}), e.g. "
                f"{stale[0].relative_to(root)}; pass --overwrite to replace that folder's content"
            )
    return identical


def _remove_stale(root: Path, keep: set[Path]) -> None:
    """After an ``overwrite`` restore of a folder: drop what an older copy left that this one lacks."""
    for p in sorted(root.rglob("*"), reverse=True):
        if (p.is_file() or p.is_symlink()) and p not in keep:
            p.unlink()
        elif p.is_dir() and not p.is_symlink() and not any(p.iterdir()):
            p.rmdir()


def _write_file(
    repo: Repository,
    pool: ThreadPoolExecutor,
    entry: FileEntry,
    tmp: Path,
    *,
    workers: int,
    mtime_ns: int | None,
    progress: ProgressFn | None,
    chunk_cache: ChunkCache | None = None,
) -> None:
    """Fetch, verify and write one file at ``tmp``: fsynced, with the source's mode bits (never
    wider; the umask applies where the manifest has none) and modification time."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | platform.BINARY, 0o600)
    try:
        if entry.size:
            platform.preallocate(fd, entry.size)  # a full disk shows here, before any download
        direct = entry.size >= DIRECT_MIN  # a small file is cheaper through the cache
        with (
            SequentialWriter(fd, direct=direct, staging=min(1 << 20, entry.size), background=True) as writer,
            # Direct writes leave nothing in the page cache for the fsync below; cached ones are flushed as they go.
            contextlib.nullcontext() if writer.direct else _Flusher(fd) as flusher,
        ):
            on_bytes = progress if flusher is None else flusher.wrap(progress)
            read_verified(
                repo, pool, entry, window=workers + 2, writer=writer, progress=on_bytes, chunk_cache=chunk_cache
            )
            writer.finish()
        if entry.mode is not None:
            platform.set_mode(fd, tmp, entry.mode & 0o777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            platform.set_mode(fd, tmp, DEFAULT_MODE & ~umask)
        if mtime_ns is not None:
            platform.set_mtime(fd, tmp, mtime_ns)
        os.fsync(fd)  # what the flusher has not already pushed to the disk
    finally:
        os.close(fd)


def _check_replaceable(root: Path) -> None:
    """A folder restore replaces ``root`` whole: refuse when that would touch a symlink or a file."""
    if root.is_symlink():
        raise LocalTargetError(f"refusing to write through the symlink {root}: move it away and re-run")
    if root.exists() and not root.is_dir():
        raise UsageError(f"{root} exists and is not a folder; move it away and re-run")
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            if os.path.islink(os.path.join(dirpath, name)):
                raise LocalTargetError(
                    f"refusing to replace {root}: it holds the symlink {os.path.join(dirpath, name)}; "
                    "move it away and re-run"
                )


def _replace_folder(build: Path, root: Path) -> None:
    """Rename the assembled folder to ``root``; one already there is moved aside first, then removed."""
    aside = None
    if root.exists():
        aside = temp_path(root, "old")
        os.rename(root, aside)
    try:
        os.rename(build, root)
    except BaseException:
        if aside is not None:
            os.rename(aside, root)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        linked = platform.hard_link(src, dst)
    except OSError:
        linked = False
    if not linked:
        shutil.copy2(src, dst)


_CANNOT_WRITE = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR)


def check_names_fit(dest: Path, paths: list[str]) -> None:
    """Refuse, before anything is written (LocalTargetError, naming the file), paths that this host's
    file system cannot hold as they are: names Windows reserves or refuses, when restoring on
    Windows; two paths that differ only in case, where ``dest``'s file system folds case (Windows,
    macOS by default) and one would silently overwrite the other."""
    if platform.refuses_windows_names():
        for path in paths:
            problem = windows_path_problem(path)
            if problem:
                raise LocalTargetError(
                    f"cannot restore {path!r} here: {problem}; pull it on another system, "
                    "or rename it where it was saved and push it again"
                )
    pairs = case_collisions(paths)
    if pairs and _folds_case(dest):
        first, second = pairs[0]
        raise LocalTargetError(
            f"cannot restore {second!r} into {dest}: it differs from {first!r} only in case, and this file "
            "system does not tell them apart (one would overwrite the other); pull to a case-sensitive folder"
        )


def _folds_case(dest: Path) -> bool:
    """Whether the file system ``dest`` is (or will be) on folds case: probed in its nearest
    existing folder, with a temp name (removed again)."""
    folder = dest
    while not folder.is_dir() and folder.parent != folder:
        folder = folder.parent
    try:
        return platform.case_insensitive(temp_path(folder / "case-probe"))
    except OSError:
        return False  # cannot write there: the restore says so itself, in its own words


def prepare_target(dest: Path) -> None:
    """Create the target folder, or raise UsageError naming the user's path (never a temp file's)."""
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"the target {dest} is a file, not a folder: give --to a folder")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create the target folder {dest}: {err.strerror} (choose another --to)") from None
    probe = temp_path(dest / "probe")  # permission bits do not tell root (or RO mounts)
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | platform.BINARY, 0o600))
        probe.unlink()
    except OSError as err:
        raise UsageError(f"cannot write into {dest}: {err.strerror} (choose another --to)") from None


class _Flusher:
    """Pushes a file being restored to the disk in the background as it fills (fdatasync every
    ``every`` bytes), so the fsync before the rename finds little left to write."""

    def __init__(self, fd: int, every: int = 64 << 20) -> None:
        self.fd = fd
        self.every = every
        self._since = 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="fdatasync")
        self._flushes: list[Future[None]] = []

    def wrap(self, progress: ProgressFn | None) -> ProgressFn:
        def on_bytes(n: int) -> None:
            self._since += n
            if self._since >= self.every and (not self._flushes or self._flushes[-1].done()):
                self._since = 0
                self._flushes.append(self._pool.submit(platform.datasync, self.fd))
            if progress:
                progress(n)

        return on_bytes

    def __enter__(self) -> _Flusher:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True)  # never close the fd under a running fdatasync
        for fut in self._flushes:
            fut.result()  # an I/O error is reported to one sync call only: it must not be lost here


def _discard(build: Path, written: list[tuple[Path, str]]) -> None:
    for tmp, _ in written:
        tmp.unlink(missing_ok=True)
    if build.name.endswith(".part"):
        shutil.rmtree(build, ignore_errors=True)


# Failures no older checkpoint can get past: the store, the key or this host's folder, not one checkpoint.
_FATAL = (Cancelled, ConfigError, LocalTargetError, PermanentStorageError, TransientStorageError, UsageError)


def pull(
    repo: Repository,
    dest: str | os.PathLike[str],
    *,
    selector: str | None = None,
    selection: Selection | None = None,
    accept: Callable[[Manifest], bool] | None = None,
    workers: int | None = None,
    progress: ProgressFn | None = None,
    warn: WarnFn | None = None,
    on_start: Callable[[Manifest], None] | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    allow_older: bool = False,
    any_role_if_none: bool = False,
    overwrite: bool = False,
    chunk_cache: ChunkCache | None = None,
) -> tuple[Manifest, TransferStats]:
    """Restore one checkpoint: ``selector`` names it; else the newest intact one ``selection`` (by
    default: resumable) and ``accept`` match — lookup.latest_candidates, the one rule of "latest" —
    falling back to the next when one fails verification while it is read.

    A problem on this host's side (a symlink or a file in the way, permissions, a full disk:
    LocalTargetError, UsageError) stops the pull: it is never a reason to restore an older
    checkpoint. Checkpoints committed after the chosen one but encrypted with a key this host lacks
    raise MissingKeyError (exit 2) unless ``allow_older``; ``any_role_if_none``: see
    lookup.latest_candidates. Files already at the destination: see
    ``restore`` (``overwrite``).

    With ``include``/``exclude`` globs only the matching files are restored (contents.select_files);
    the manifest returned is then that selection. ``chunk_cache``: see ``restore``.
    """
    whole = not (include or exclude)

    def restore_one(m: Manifest) -> tuple[Manifest, TransferStats]:
        m = select_files(m, include, exclude)
        if on_start:
            on_start(m)
        options = {"workers": workers, "progress": progress, "overwrite": overwrite, "whole": whole}
        stats = restore(repo, m, dest, chunk_cache=chunk_cache, **options)
        return m, _pulled(repo, m, stats)

    if selector is not None:
        m = find_manifest(repo, selector, warn=warn)
        try:
            return restore_one(m)
        except (IntegrityError, NotFound) as err:
            raise IntegrityError(f"checkpoint {m.name} ({m.id}) is damaged: {err}") from None
    selection = selection or Selection()
    candidates = latest_candidates(
        repo, selection, accept=accept, allow_older=allow_older, any_role_if_none=any_role_if_none, warn=warn
    )
    tried = 0
    for m in candidates:
        tried += 1
        try:
            return restore_one(m)
        except _FATAL:
            raise
        except OSError as err:  # writing here failed: this host's problem, not the checkpoint's
            raise LocalTargetError(f"cannot restore into {dest}: {err.strerror or err}") from None
        except CkptSyncError as err:  # anything about this one checkpoint: damaged, missing, unrestorable
            if warn:
                warn(f"checkpoint {m.name} ({m.id}) is damaged ({err}); falling back to the previous one")
    raise OperationFailed(f"no valid checkpoint in {repo.url}: all {tried} {selection.describe()}(s) tried are damaged")


def _pulled(repo: Repository, m: Manifest, stats: TransferStats) -> TransferStats:
    remember(repo.id, m)  # this host has seen it (rollback detection, seen.py)
    return stats


def stream_file(
    repo: Repository, manifest: Manifest, path: str | None, out: BinaryIO, *, workers: int | None = None
) -> FileEntry:
    """Write one file of the checkpoint (``path`` inside it; None for a one-file checkpoint) to the
    stream ``out``, in order, fetching chunks in parallel.

    Each chunk is authenticated and checked against its id before it is written; the whole-file hash
    is checked at the end (IntegrityError: the consumer must discard what it got).
    """
    entry = file_entry(manifest, path)
    workers = workers or default_workers()
    with ThreadPoolExecutor(workers, thread_name_prefix="ckpt-cat") as pool:
        read_verified(repo, pool, entry, window=workers + 2, sink=out.write)
    out.flush()
    return entry
