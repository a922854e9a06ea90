"""Forget: remove chosen checkpoints (their manifests) from a repository.

Every stored version of a checkpoint goes: the manifest readers see and any older one it
supersedes that a tag change interrupted between its two writes left behind (else that one, without
the new tags, would be listed again). It runs under the locks a tag change takes, so no change is
in flight. Chunks stay until a prune finds them unreferenced and older than the grace period; what
that frees is their ``unique_bytes`` (for one checkpoint, the figure stats.py reports). The newest
resumable checkpoint (by training position, selection.py) is what a fresh host would resume from:
it is never forgotten without ``force``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import UsageError
from ..format.layout import manifest_key
from ..format.locks import acquire_manifests_lock, acquire_push_lock
from ..format.lookup import find_manifest
from ..format.manifest import Manifest
from ..format.repository import Repository
from ..format.selection import Selection, select
from .seen import removed_here


@dataclass
class ForgetReport:
    removed: list[Manifest] = field(default_factory=list)
    unique_bytes: int = 0  # what a prune past the grace period then frees
    dry_run: bool = False

    def to_json(self) -> dict[str, object]:
        return {
            "removed": [{"id": m.id, "name": m.name} for m in self.removed],
            "unique_bytes": self.unique_bytes,
            "dry_run": self.dry_run,
        }


def forget(repo: Repository, selectors: Sequence[str], *, force: bool = False, dry_run: bool = False) -> ForgetReport:
    """Remove the checkpoints ``selectors`` name (ids, id prefixes, names, ``latest``).

    Raises UsageError, removing nothing, when one of them is the newest resumable checkpoint and
    ``force`` is not set, or when a selector names no checkpoint.
    """
    if not selectors:
        raise UsageError("forget needs at least one checkpoint ID_OR_NAME")
    if dry_run:
        return _forget(repo, selectors, force=force, dry_run=True)
    # The locks a tag change holds: none is in flight, and no prune judges chunks meanwhile.
    with acquire_push_lock(repo.provider), acquire_manifests_lock(repo.provider):
        repo.authenticate_state()  # a repository of the previous release gains its MACs on its first write
        return _forget(repo, selectors, force=force, dry_run=False)


def _forget(repo: Repository, selectors: Sequence[str], *, force: bool, dry_run: bool) -> ForgetReport:
    doomed = list({m.id: m for m in (find_manifest(repo, s) for s in selectors)}.values())
    everything = list(repo.manifests())
    newest_resumable = select(everything, Selection())
    if newest_resumable and not force:
        for m in doomed:
            if m.id == newest_resumable[0].id:
                raise UsageError(
                    f"{m.name} ({m.id}) is the newest resumable checkpoint (what a new host resumes from); "
                    "pass --force to forget it anyway"
                )
    # What forgetting them together frees: chunks no remaining checkpoint references.
    ids = {m.id for m in doomed}
    kept_chunks: set[str] = set()
    for m in everything:
        if m.id not in ids:
            kept_chunks |= m.chunk_ids()
    sizes = repo.list_chunks()
    gone = set().union(*(m.chunk_ids() for m in doomed)) - kept_chunks
    report = ForgetReport(unique_bytes=sum(sizes.get(c, 0) for c in gone), dry_run=dry_run)
    versions = {m.id: repo.versions_of(m) for m in doomed}
    if not dry_run:
        removed_here(repo.id, {v for vs in versions.values() for v in vs})
    for m in doomed:
        if not dry_run:
            # The superseded ones first: a crash in between leaves the checkpoint listed as it was.
            for version in reversed(versions[m.id]):
                repo.provider.delete(manifest_key(version))
        report.removed.append(m)
    return report
