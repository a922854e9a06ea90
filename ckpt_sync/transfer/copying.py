"""Copy checkpoints from one repository to another (another bucket, another cloud, another key).

For each checkpoint: every chunk is read from the source and verified (authenticated and checked
against its id), then stored in the destination unless it already holds it: the stored object
itself when the destination's keys can decrypt it (same key), else re-encrypted with the
destination's key. Chunk ids are keyed hashes, so with another id key they are recomputed and the
copied manifest names the destination's ids. The manifest is committed last in the destination,
under a push lock (a prune there never collects what we just uploaded), keeping its id and
metadata. A checkpoint the destination already has (same version, ``Manifest.same_version``) is
skipped without reading anything: a second run copies nothing.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from ..errors import UsageError
from ..format.layout import chunk_key
from ..format.locks import acquire_push_lock
from ..format.lookup import find_manifest
from ..format.manifest import ChunkRef, FileEntry, Manifest
from ..format.ordering import oldest_first
from ..format.repository import Repository
from ..pipeline import default_workers, ordered_map
from .push import commit_checked

ProgressFn = Callable[[int], None]
_counting = threading.Lock()  # report counters and the destination's known-chunk map, from worker threads


@dataclass
class CopyReport:
    copied: list[str] = field(default_factory=list)  # manifest ids committed in the destination
    skipped: list[str] = field(default_factory=list)  # already there
    chunks_copied: int = 0
    chunks_reencrypted: int = 0
    bytes_sent: int = 0

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def choose(
    src: Repository,
    *,
    selectors: Iterable[str] = (),
    latest: bool = False,
    tag: str | None = None,
    everything: bool = False,
) -> list[Manifest]:
    """The source checkpoints a copy takes: named ones, the latest, all with a tag, or all."""
    selectors = list(selectors)
    if sum((bool(selectors), latest, tag is not None, everything)) != 1:
        raise UsageError("copy needs exactly one of: checkpoint IDs, --latest, --tag TAG, --all")
    if selectors:
        return list({m.id: m for m in (find_manifest(src, s) for s in selectors)}.values())
    if latest:
        return [find_manifest(src, "latest")]
    chosen = [m for m in src.manifests() if tag is None or tag in m.tags]
    if not chosen:
        raise UsageError(f"no checkpoint in {src.url} has the tag {tag!r}" if tag else f"no checkpoints in {src.url}")
    return chosen


def copy_checkpoints(
    src: Repository,
    dst: Repository,
    manifests: Iterable[Manifest],
    *,
    workers: int | None = None,
    progress: ProgressFn | None = None,
) -> CopyReport:
    """Copy ``manifests`` (of ``src``) into ``dst``, oldest first by training position."""
    if src.url == dst.url:
        raise UsageError(f"copy needs two repositories; both are {src.url}")
    workers = workers or default_workers()
    report = CopyReport()
    # One id key and one id function: chunk names carry over.
    same_ids = src.id == dst.id and src.format.version == dst.format.version
    # Any token the source can decrypt, the destination can too, and it is encoded as the destination
    # encodes (chunk_format.ChunkFormat.reusable_from): stored objects are copied as they are.
    same_keys = set(src.keys.fingerprints()) <= set(dst.keys.fingerprints()) and dst.format.reusable_from(src.format)
    dst.check_agreement()  # stored objects are copied as they are: the destination's config is checked first
    with acquire_push_lock(dst.provider) as lock:
        dst.forget_known_chunks()
        present = list(dst.manifests())
        with ThreadPoolExecutor(workers, thread_name_prefix="ckpt-copy") as pool:
            for m in oldest_first(manifests, lambda m: m.position):
                if any(p.same_version(m, chunk_ids=same_ids) for p in present):
                    report.skipped.append(m.id)
                    continue

                def one(ref: ChunkRef) -> ChunkRef:
                    return _copy_chunk(src, dst, ref, same_ids, same_keys, report, progress)

                def copy_files(m: Manifest = m, one: Callable[[ChunkRef], ChunkRef] = one) -> list[FileEntry]:
                    return [
                        dataclasses.replace(entry, chunks=tuple(ordered_map(pool, one, entry.chunks, workers + 2)))
                        for entry in m.files
                    ]

                draft = dataclasses.replace(m, files=tuple(copy_files()), supersedes=None)
                committed = commit_checked(
                    dst, lock, draft, reupload=lambda f=copy_files: (dst.forget_known_chunks(), f())
                )
                present.append(committed)
                report.copied.append(committed.id)
    return report


def _copy_chunk(
    src: Repository,
    dst: Repository,
    ref: ChunkRef,
    same_ids: bool,
    same_keys: bool,
    report: CopyReport,
    progress: ProgressFn | None,
) -> ChunkRef:
    known = dst.known_chunks()
    if same_ids and dst.format.size_ok(ref.size, known.get(ref.id)):  # already there: not even read
        if progress:
            progress(ref.size)
        return ref
    token = src.provider.get(chunk_key(ref.id), 0, src.format.max_token_size(ref.size) + 1)
    plain = src.open_token(ref, token)  # verified before anything is written
    if same_keys:
        new = ChunkRef(ref.id if same_ids else dst.chunk_id(plain), ref.size)
        if known.get(new.id) != len(token):
            dst.provider.put(chunk_key(new.id), token)
            with _counting:
                known[new.id] = len(token)
                report.chunks_copied += 1
                report.bytes_sent += len(token)
    else:
        new, sent = dst.store_chunk(plain)
        if sent:
            with _counting:
                report.chunks_reencrypted += 1
                report.bytes_sent += sent
    if progress:
        progress(ref.size)
    return new
