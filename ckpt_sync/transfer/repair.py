"""Repair: heal a repository's missing or damaged chunks from good local copies of the files.

A chunk is named by a keyed hash of its plaintext, so a local file that holds the bytes a manifest
names can stand in for the stored object: for every committed file entry of the same size, the
local file is read at that entry's chunk boundaries and each piece is hashed to its id; where every
piece matches, the file is that entry. Each of its chunks is then checked in the store (present, of
a size its token may have, authenticated, the chunk its id names); one that is missing or fails is
encrypted again from the local bytes and stored over the bad object (a write replaces an object
whole: readers see the old or the new one). A good object is never touched, and nothing is deleted.
Afterwards every checkpoint using a checked chunk is verified (read and hashed): the repair succeeds
only if they all are sound. (restic's ``repair packs`` plays this part there.)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import IntegrityError, NotFound
from ..format.layout import chunk_key
from ..format.manifest import ChunkRef, FileEntry
from ..format.repository import Repository
from ..pipeline import default_workers, ordered_map
from .damage_record import record_healed
from .push import collect_files
from .verify import CheckResult, verify

ProgressFn = Callable[[int], None]


@dataclass
class RepairReport:
    checked: int = 0  # distinct chunks of the given files that committed checkpoints use
    healed: list[str] = field(default_factory=list)  # chunk ids stored again
    bytes_sent: int = 0
    unmatched: list[str] = field(default_factory=list)  # local files no committed file entry matches
    results: list[CheckResult] = field(default_factory=list)  # the checkpoints using them, verified after

    @property
    def sound(self) -> bool:
        return all(r.ok for r in self.results)

    def to_json(self) -> dict[str, object]:
        fields = {k: v for k, v in asdict(self).items() if k != "results"}
        return {**fields, "checkpoints": [r.to_json() for r in self.results], "sound": self.sound}


@dataclass(frozen=True)
class _Source:
    path: Path
    offset: int  # where the chunk's plaintext starts in the local file


def repair(
    repo: Repository,
    paths: Sequence[str | os.PathLike[str]],
    *,
    workers: int | None = None,
    progress: ProgressFn | None = None,
) -> RepairReport:
    """Heal every chunk of the files under ``paths`` (files or folders) that committed checkpoints
    use and the store has lost or damaged; then verify those checkpoints. Raises UsageError for a
    path that does not exist."""
    workers = workers or default_workers()
    report = RepairReport()
    local = [fp for p in paths for _, fp in collect_files(Path(p))[1]]
    manifests = list(repo.manifests())
    by_size: dict[int, list[FileEntry]] = {}
    for m in manifests:
        for entry in m.files:
            by_size.setdefault(entry.size, []).append(entry)
    sources: dict[ChunkRef, _Source] = {}
    for path in local:
        matched = [e for e in by_size.get(path.stat().st_size, []) if _holds(repo, path, e)]
        if not matched:
            report.unmatched.append(str(path))
        for entry in matched:
            offset = 0
            for ref in entry.chunks:
                sources.setdefault(ref, _Source(path, offset))
                offset += ref.size
    report.checked = len({ref.id for ref in sources})
    stored = repo.list_chunks()

    def heal(item: tuple[ChunkRef, _Source]) -> tuple[str, int]:
        ref, source = item
        if _sound(repo, ref, stored.get(ref.id)):
            return ref.id, 0
        plain = _read(source.path, source.offset, ref.size)
        if repo.chunk_id(plain) != ref.id:  # the file changed since it was matched: never store other bytes
            raise IntegrityError(f"{source.path} changed while it was being repaired from; run repair again")
        token = repo.format.seal(repo.keys, plain, ref.id)
        repo.provider.put(chunk_key(ref.id), token)
        return ref.id, len(token)

    distinct = list({ref.id: (ref, src) for ref, src in sources.items()}.values())
    with ThreadPoolExecutor(workers, thread_name_prefix="ckpt-repair") as pool:
        for cid, sent in ordered_map(pool, heal, distinct, workers + 2):
            if sent:
                report.healed.append(cid)
                report.bytes_sent += sent
            if progress:
                progress(1)
    record_healed(repo.id, report.healed)
    using = [m.id for m in manifests if m.chunk_ids() & {ref.id for ref in sources}]
    if using:
        report.results = verify(repo, checkpoints=using, read_data=True, workers=workers)
    return report


def _holds(repo: Repository, path: Path, entry: FileEntry) -> bool:
    """Whether the local file is the one ``entry`` describes: every piece at the entry's chunk
    boundaries hashes to that chunk's id (the first mismatch ends the check)."""
    with path.open("rb") as f:
        for ref in entry.chunks:
            piece = f.read(ref.size)
            if len(piece) != ref.size or repo.chunk_id(piece) != ref.id:
                return False
    return True


def _sound(repo: Repository, ref: ChunkRef, stored_size: int | None) -> bool:
    """Whether the stored object of ``ref`` is there and passes every check a reader makes."""
    if not repo.format.size_ok(ref.size, stored_size):
        return False
    try:
        repo.load_chunk(ref)
    except (IntegrityError, NotFound):
        return False
    return True


def _read(path: Path, offset: int, size: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(size)
