"""Remote retention: drop old manifests by policy, then garbage-collect chunks nobody references.

Rules: only readable manifests of this repository are candidates — a damaged, malformed or foreign
one never takes a slot and is never deleted by retention; the newest valid checkpoint is always
kept; a fresh host with an empty folder never causes deletions (the policy looks at the repository
only). Chunks go only when no manifest the keys open refers to them (whatever repository it names:
Repository.referenced_chunks), they are older than a grace period *by the store's clock*, and no
push is in flight (locks.py); a prune whose own lock was broken stops collecting. A manifest no key
authenticates blocks chunk GC only while the ring lacks one of the keys the repository vouches for
(it might be encrypted with that one); otherwise it is damaged, reported, and removable with
``remove_damaged``, as are key entries the repository does not vouch for.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

from ..defaults import DEFAULT_GRACE
from ..errors import UsageError
from ..format.layout import CHUNKS, KEYS, chunk_key, manifest_key
from ..format.locks import Lock, live_push_locks, store_now, sweep_marks, try_acquire_prune_lock
from ..format.manifest import RESUMABLE
from ..format.repository import Repository
from ..format.selection import newest
from ..providers.base import ObjectInfo
from .retention import Candidate, RetentionPolicy, RunScope, to_remove
from .seen import removed_here

log = logging.getLogger("ckpt_sync.prune")


@dataclass
class PruneReport:
    kept: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # manifest ids
    removed_names: list[str] = field(default_factory=list)
    chunks_removed: int = 0
    bytes_freed: int = 0
    temp_removed: int = 0  # temp objects crashed writers left (local repositories)
    gc_skipped: str | None = None  # why chunk GC did not run
    dry_run: bool = False
    # Unreferenced chunks the grace period keeps for now, and when the first and the last of them
    # become removable (unix seconds; None when there are none).
    chunks_in_grace: int = 0
    bytes_in_grace: int = 0
    grace_first_removable: float | None = None
    grace_all_removable: float | None = None
    # Per training session ("" for none): how many checkpoints were removed (would be, in a dry run).
    sessions: dict[str, int] = field(default_factory=dict)
    damaged: list[str] = field(default_factory=list)  # unreadable manifest ids (left alone unless removed)
    damaged_removed: list[str] = field(default_factory=list)
    foreign_keys_removed: list[str] = field(default_factory=list)  # key entries the repository does not vouch for

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def prune(
    repo: Repository,
    policy: RetentionPolicy,
    *,
    grace: float = DEFAULT_GRACE,
    dry_run: bool = False,
    remove_damaged: bool = False,
    scope: RunScope | None = None,
) -> PruneReport:
    """Apply ``policy`` — to the checkpoints of one run when ``scope`` is given (a watch's or a
    SyncClient's ``--keep``), else to the whole repository — then collect chunks. ``remove_damaged``
    also deletes every manifest that is not a readable manifest of this repository and every key
    entry it does not vouch for (refused unless the ring holds all its keys)."""
    if remove_damaged and not repo.has_all_keys():
        raise UsageError(
            "--remove-damaged needs every key of the repository (give them all with --key-file): a checkpoint "
            "none of the given keys opens may be encrypted with one you left out"
        )
    report = PruneReport(dry_run=dry_run)
    lock = None if dry_run else try_acquire_prune_lock(repo.provider)
    if lock is None and not dry_run:
        report.gc_skipped = "another prune is running"
        log.info("prune of %s skipped: another prune is running", repo.url)
        return report
    try:
        if not dry_run:
            repo.authenticate_state()  # a repository of the previous release gains its MACs on its first write
        # One listing of the chunks serves both steps. Collecting from a listing taken before the
        # manifests are judged is as safe as a later one: a chunk stored since is simply not a
        # candidate, and what protects chunks a push may reuse is the push lock, checked below.
        if remove_damaged:
            _remove_damaged(repo, report)
        chunks = {info.key.rsplit("/", 1)[-1]: info for info in repo.provider.list(CHUNKS)}
        _drop_manifests(repo, policy, report, chunks, scope)
        now = store_now(repo.provider)  # grace is judged by the store's clock, never this host's
        _collect_chunks(repo, grace, report, chunks, lock, now)
        remove_abandoned = getattr(repo.provider, "remove_abandoned", None)
        if not dry_run and now is not None:
            sweep_marks(repo.provider, now, max(grace, 3600.0))
            if remove_abandoned is not None:
                report.temp_removed = remove_abandoned(grace, now=now)
    finally:
        if lock is not None:
            lock.release()
    return report


def _remove_damaged(repo: Repository, report: PruneReport) -> None:
    for _ in repo.manifests(lambda mid, _err: report.damaged_removed.append(mid)):
        pass
    for mid in report.damaged_removed:
        if not report.dry_run:
            repo.provider.delete(manifest_key(mid))
            log.info("removed damaged manifest %s", mid)
    if repo.authenticated:  # before that, every entry found is trusted as found (repo_auth.py)
        report.foreign_keys_removed = repo.foreign_key_entries()
    for fp in report.foreign_keys_removed:
        if not report.dry_run:
            repo.provider.delete(f"{KEYS}{fp}")
            log.info("removed key entry %s (not authenticated by the repository's keys)", fp)


def _drop_manifests(
    repo: Repository,
    policy: RetentionPolicy,
    report: PruneReport,
    chunks: dict[str, ObjectInfo],
    scope: RunScope | None,
) -> None:
    # A tag change interrupted between its two writes left the old manifest (hidden); finish it.
    if not report.dry_run:
        for mid in repo.superseded_ids():
            repo.provider.delete(manifest_key(mid))
            log.info("removed superseded manifest %s", mid)
    # An unreadable or foreign manifest is not this repository's checkpoint: it takes no slot and
    # is never deleted by retention (only by --remove-damaged).
    manifests = {m.id: m for m in repo.summaries(lambda mid, _err: report.damaged.append(mid))}
    if not manifests:
        return
    counted = scope.members(manifests.values()) if scope is not None else set(manifests)
    doomed = {c.key for c in to_remove(policy, [Candidate.of(m) for m in manifests.values() if m.id in counted])}
    # The newest resumable checkpoint (by training position) whose chunks are all present survives
    # whatever the policy says; with none resumable, the newest of any role.
    stored = {cid: info.size for cid, info in chunks.items()}
    ordered = newest(manifests.values())
    for m in [m for m in ordered if m.role == RESUMABLE] or ordered:
        if all(repo.format.size_ok(size, stored.get(cid)) for cid, size in m.chunks):
            doomed.discard(m.id)
            break
    report.kept = [m.id for m in ordered if m.id not in doomed]
    if not report.dry_run:
        removed_here(repo.id, doomed)
    for mid in reversed([m.id for m in ordered if m.id in doomed]):  # oldest first
        report.removed.append(mid)
        report.removed_names.append(manifests[mid].name)
        session = manifests[mid].session_id or ""
        report.sessions[session] = report.sessions.get(session, 0) + 1
        if not report.dry_run:
            repo.provider.delete(manifest_key(mid))
            log.info("pruned checkpoint %s (%s)", manifests[mid].name, mid)


def _collect_chunks(
    repo: Repository,
    grace: float,
    report: PruneReport,
    chunks: dict[str, ObjectInfo],
    lock: Lock | None,
    now: float | None,
) -> None:
    if live_push_locks(repo.provider):
        report.gc_skipped = "a push is in progress; unreferenced chunks are collected by a later prune"
        return
    if now is None:
        report.gc_skipped = (
            f"the time of {repo.url} could not be read (a probe object under locks/ could not be written)"
        )
        return
    unreadable: list[str] = []
    dropped = set(report.removed) if report.dry_run else set()  # a dry run counts them as gone
    # Fresh: includes new commits. Every manifest the keys open protects its chunks, whichever
    # repository it names; in a dry run, the ones retention would drop count as gone.
    referenced = repo.referenced_chunks(lambda mid, _err: unreadable.append(mid), leave_out=dropped)
    if unreadable and not repo.has_all_keys():
        report.gc_skipped = (
            f"manifest {unreadable[0]} is unreadable with these keys and the repository has keys not given; "
            "its chunks cannot be judged (give every key, or remove it with --remove-damaged)"
        )
        return
    cutoff = now - grace
    unreferenced = [info for cid, info in chunks.items() if cid not in referenced]
    garbage = [info for info in unreferenced if info.modified < cutoff]
    young = [info for info in unreferenced if info.modified >= cutoff]
    if young:
        report.chunks_in_grace = len(young)
        report.bytes_in_grace = sum(i.size for i in young)
        # Grace counts from each chunk's upload, so a chunk of a checkpoint dropped now may go at once.
        report.grace_first_removable = min(i.modified for i in young) + grace
        report.grace_all_removable = max(i.modified for i in young) + grace
    for i, info in enumerate(garbage):
        if i % 64 == 0 and i and live_push_locks(repo.provider):
            report.gc_skipped = "a push started; the rest is collected by a later prune"
            return
        if i % 64 == 0 and lock is not None and lock.lost():
            report.gc_skipped = (
                "this prune's lock was broken by another process (was it paused past the lock's lifetime?); "
                "the rest is collected by a later prune"
            )
            log.warning("stopped collecting chunks of %s: %s", repo.url, report.gc_skipped)
            return
        cid = info.key.rsplit("/", 1)[-1]
        if not report.dry_run:
            repo.provider.delete(chunk_key(cid))
        report.chunks_removed += 1
        report.bytes_freed += info.size
