"""Which committed checkpoint a selector names — an id, a unique id prefix, a name, or ``latest`` —
and the one rule every reader uses for "latest".

**Latest** is the newest checkpoint, by training position (ordering.py), that the selection matches
(by default the role ``resumable``; readers add what they can load: DCP folders, ``*.ckpt`` files,
``checkpoint-N`` folders) and that is intact: every chunk it names is stored with the right size.
A damaged newer one is skipped with a warning; one encrypted with a key this host lacks stops the
choice (never a silent rollback) unless an older one is explicitly allowed. ``pull --latest``,
``CheckpointManager.recover()``, ``dcp.Reader("latest")``, ``ckpt_sync.open("latest")``,
``ckptsync://latest``, Lightning's ``latest_path`` and Hugging Face's ``restore_latest`` all take
their candidates from :func:`latest_candidates`; those that restore go on to the next candidate
when one fails verification while it is read.

The choice is made on summaries (summary.py: this host's index, kept current by a listing of the
manifest names), and only the candidates actually tried are loaded whole and have their chunks
checked, so finding "latest" costs the same in a repository of a hundred checkpoints as in one of
thousands.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterator

from ..errors import IntegrityError, MissingKeyError, NotFound, OperationFailed, UsageError
from .manifest import Manifest
from .repository import Repository
from .selection import ANY, Selection, newest, select
from .summary import Summary

LATEST = "latest"
WarnFn = Callable[[str], None]
Accept = Callable[[Manifest | Summary], bool]  # sees a summary: name, kind, role, tags, paths (not chunks)


def latest_candidates(
    repo: Repository,
    selection: Selection | None = None,
    *,
    accept: Accept | None = None,
    allow_older: bool = False,
    any_role_if_none: bool = False,
    noun: str = "checkpoint",
    warn: WarnFn | None = None,
) -> Iterator[Manifest]:
    """The checkpoints ``selection`` (default: resumable) and ``accept`` match, newest first by
    training position, whose chunks are all stored: what "latest" tries, in order. Each is loaded
    and checked only when the caller asks for it (a lazy iterator); when none turns out intact,
    the iteration raises OperationFailed.

    ``any_role_if_none``: when the repository holds no checkpoint of the role asked for at all (a
    repository of exported weights), the same choice among every role, with a warning. Readers that
    only read (``pull``, ``open``, ``cat``, fsspec) allow it; readers that resume training do not.

    Raises OperationFailed when there is none (saying what there is instead), and MissingKeyError
    when checkpoints committed after the newest readable one are encrypted with a key this host does
    not have (``allow_older``: warn and go on with the older ones).
    """
    selection = selection or Selection()
    unreadable: dict[str, IntegrityError] = {}
    everything = repo.summaries(unreadable.__setitem__)
    if not everything and not unreadable:
        raise OperationFailed(f"no checkpoints in {repo.url}")
    locked = {mid: err for mid, err in unreadable.items() if isinstance(err, MissingKeyError)}
    for mid, err in unreadable.items():
        if warn and mid not in locked:
            warn(f"checkpoint {mid} is damaged ({err}); skipped, falling back to the readable ones")
    if any_role_if_none and selection.role != ANY and not any(m.role == selection.role for m in everything):
        wider = dataclasses.replace(selection, role=ANY)
        if select(everything, wider) and warn:
            warn(f"no {selection.role} checkpoint in {repo.url}: taking the newest {wider.describe()} instead")
        selection = wider
    candidates = [m for m in select(everything, selection) if accept is None or accept(m)]
    if not candidates and not locked:
        raise OperationFailed(_none_matches(repo, selection, everything, noun))
    # What we cannot decrypt has no known training position: judge it by commit time (its id).
    newer_locked = sorted(mid for mid in locked if not candidates or mid > candidates[0].id)
    if newer_locked:
        fps = sorted({fp for mid in newer_locked for fp in locked[mid].fingerprints})
        what = f"{len(newer_locked)} checkpoint(s) committed after the newest one this host can read"
        if not allow_older or not candidates:
            older = f"; --allow-older restores {candidates[0].name} instead" if candidates else ""
            raise MissingKeyError(
                f"{what} in {repo.url} are encrypted with a key this host does not have "
                f"(fingerprint {', '.join(fps)}): add that key to the key ring{older}",
                fps,
            )
        if warn:
            warn(
                f"restoring an older checkpoint ({candidates[0].name}): {what} are encrypted with a key this "
                f"host does not have (fingerprint {', '.join(fps)})"
            )
    return _intact(repo, candidates, selection.describe(noun), warn)


def _intact(repo: Repository, candidates: list[Summary], what: str, warn: WarnFn | None) -> Iterator[Manifest]:
    """Each candidate loaded whole, skipped with a warning when it cannot be read or a chunk it
    names is not stored (asked of the store now, for this checkpoint's chunks only)."""
    found = False
    for s in candidates:
        try:
            m = repo.load_manifest(s.id)
            problems = _chunk_problems(repo, m)
        except NotFound:
            problems = ["removed meanwhile"]
        except IntegrityError as err:
            problems = [str(err)]
        if problems:
            if warn:
                more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
                warn(f"checkpoint {s.name} ({s.id}) is damaged ({problems[0]}{more}); falling back to the previous one")
            continue
        found = True
        yield m
    if not found:
        raise OperationFailed(f"no valid checkpoint in {repo.url}: all {len(candidates)} {what}(s) are damaged")


def latest(
    repo: Repository,
    selection: Selection | None = None,
    *,
    accept: Accept | None = None,
    any_role_if_none: bool = False,
    noun: str = "checkpoint",
    warn: WarnFn | None = None,
) -> Manifest:
    """The newest intact checkpoint ``selection`` and ``accept`` match (``latest_candidates``)."""
    found = latest_candidates(repo, selection, accept=accept, any_role_if_none=any_role_if_none, noun=noun, warn=warn)
    return next(found)


def find_manifest(repo: Repository, selector: str, *, warn: WarnFn | None = None) -> Manifest:
    """A checkpoint by manifest id (or a unique id prefix), else the newest with that name;
    ``latest`` (unless a checkpoint is named so) is ``latest(repo)``: the newest intact resumable one
    (of any role when the repository holds no resumable checkpoint at all).
    An id a tag change replaced (``Manifest.supersedes``), and the id a checkpoint was first committed
    under (``Manifest.checkpoint_id``), resolve to the manifest that holds it now."""
    ids = repo.manifest_ids()
    matches = [i for i in ids if i.startswith(selector)]
    if len(matches) > 1:
        raise UsageError(f"{selector!r} matches {len(matches)} checkpoints; give more of the id")
    unreadable: list[str] = []
    everything = repo.summaries(lambda mid, _err: unreadable.append(mid))
    replaced = {old: m for m in everything for old in (m.supersedes, m.checkpoint_id) if old and old != m.id}
    if len(matches) == 1:
        return repo.load_manifest(replaced[matches[0]].id if matches[0] in replaced else matches[0])
    named = [m for m in everything if m.name == selector]
    if named:
        return repo.load_manifest(newest(named)[0].id)
    successors = {m.id: m for old, m in replaced.items() if old.startswith(selector)}
    if len(successors) == 1:
        return repo.load_manifest(next(iter(successors)))
    if selector == LATEST:
        return latest(repo, any_role_if_none=True, warn=warn)
    hint = (
        f"; {len(unreadable)} checkpoint(s) could not be decrypted with the given key(s) (an older key, or damage?)"
        if unreadable
        else ""
    )
    raise OperationFailed(f"no checkpoint with id or name {selector!r} in {repo.url}{hint}")


def _chunk_problems(repo: Repository, m: Manifest) -> list[str]:
    """What is wrong with the stored chunks ``m`` names (missing, or of a size its token cannot have)."""
    stored = repo.stored_sizes(c.id for f in m.files for c in f.chunks)
    out = []
    for f in m.files:
        for r in f.chunks:
            size = stored.get(r.id)
            if size is None:
                out.append(f"{f.path}: chunk {r.id[:16]} is missing")
            elif not repo.format.size_ok(r.size, size):
                out.append(f"{f.path}: chunk {r.id[:16]} has the wrong size")
    return out


def _none_matches(repo: Repository, selection: Selection, everything: list[Summary], noun: str) -> str:
    roles = Counter(m.role for m in everything)
    there = ", ".join(f"{n} {role}" for role, n in sorted(roles.items()))
    line = f"no {selection.describe(noun)} in {repo.url} ({len(everything)} checkpoint(s) in all: {there})"
    if selection.role not in roles and roles:
        other = sorted(roles)[0]
        line += f"; name one, or choose another role (e.g. --role {other} or --role any)"
    return line
