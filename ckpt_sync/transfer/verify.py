"""Verify: is every committed checkpoint (or the ones named) restorable?

Three depths: structure (every manifest decrypts, every chunk it names is stored with the right
size), ``read_data`` (every chunk authenticated and hashed to its id, every file to its whole-file
hash), and ``read_data_subset`` (a random share of the distinct chunks read and checked: a cheap,
repeated spot check that over several runs covers the repository). The chunks found damaged are
recorded on this host (damage_record.py): the next push holding one uploads it again.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from ..errors import ChunkDamaged, IntegrityError, MissingKeyError, NotFound, UsageError
from ..format.lookup import find_manifest
from ..format.manifest import ChunkRef, Manifest
from ..format.repository import Repository
from ..pipeline import default_workers, ordered_map
from .damage_record import record_damaged, record_healed
from .restore import read_verified

UNREADABLE = "(unreadable manifest)"


@dataclass
class CheckResult:
    id: str
    name: str
    problems: list[str] = field(default_factory=list)
    missing_key: bool = False  # encrypted with a key this host lacks: unknown, not damaged

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "ok": self.ok}


def parse_subset(text: str) -> float:
    """``"10%"`` or ``"1/10"`` -> 0.1; a share in (0, 1]."""
    try:
        if text.endswith("%"):
            share = float(text[:-1]) / 100
        elif "/" in text:
            num, den = text.split("/", 1)
            share = int(num) / int(den)
        else:
            raise ValueError
    except (ValueError, ZeroDivisionError):
        raise UsageError(f"--read-data-subset takes a share such as 10% or 1/10, not {text!r}") from None
    if not 0 < share <= 1:
        raise UsageError(f"--read-data-subset must be more than 0% and at most 100%, not {text!r}")
    return share


def verify(
    repo: Repository,
    *,
    checkpoints: Sequence[str] = (),
    read_data: bool = False,
    read_data_subset: float | None = None,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    rng: random.Random | None = None,
) -> list[CheckResult]:
    """Check the checkpoints named by ``checkpoints`` (ids, id prefixes or names; all when empty).

    Every manifest must decrypt and every chunk be stored with the right size; with ``read_data``
    every chunk is read, authenticated and hashed to its id, and every file to its whole-file hash;
    with ``read_data_subset`` (a share in (0, 1]) that share of the distinct chunks, chosen at
    random, is read and checked, and each damaged one is reported on every checkpoint using it.
    """
    repo.read_manifests_from_store()  # the store is what is judged, not the host's copies of it
    stored = repo.list_chunks()
    workers = workers or default_workers()
    if checkpoints:
        pairs = [(m.id, m) for m in (find_manifest(repo, s) for s in dict.fromkeys(checkpoints))]
    else:
        found: dict[str, Manifest | CheckResult] = {}

        def unreadable(mid: str, err: IntegrityError) -> None:
            found[mid] = CheckResult(mid, UNREADABLE, [str(err)], missing_key=isinstance(err, MissingKeyError))

        # Repository.manifests: a config that disagrees with the checkpoints is refused first.
        found.update((m.id, m) for m in repo.manifests(unreadable))
        pairs = sorted(found.items(), reverse=True)
    results: list[CheckResult] = []
    users: dict[ChunkRef, list[CheckResult]] = {}
    damaged: set[str] = set()  # chunk ids found missing or failing their checks (damage_record.py)
    sound: set[str] = set()  # chunk ids read and found good
    with ThreadPoolExecutor(workers, thread_name_prefix="ckpt-verify") as pool:
        for mid, m in pairs:
            if isinstance(m, CheckResult):
                results.append(m)
                continue
            result = CheckResult(mid, m.name)
            for entry in m.files:
                for ref in entry.chunks:
                    have = stored.get(ref.id)
                    if have is None:
                        result.problems.append(f"{entry.path}: chunk {ref.id[:16]} is missing")
                        damaged.add(ref.id)
                    elif not repo.format.size_ok(ref.size, have):
                        result.problems.append(f"{entry.path}: chunk {ref.id[:16]} has the wrong size")
                        damaged.add(ref.id)
                    else:
                        users.setdefault(ref, []).append(result)
                if read_data and not result.problems:
                    try:
                        read_verified(repo, pool, entry, window=workers + 2, progress=progress)
                    except (IntegrityError, NotFound) as err:
                        result.problems.append(f"{entry.path}: {err}")
                        if isinstance(err, ChunkDamaged):
                            damaged.add(err.chunk_id)
                    else:
                        sound.update(ref.id for ref in entry.chunks)
            results.append(result)
        if read_data_subset is not None and not read_data and users:
            refs = sorted(users, key=lambda r: r.id)
            sample = (rng or random.SystemRandom()).sample(refs, math.ceil(read_data_subset * len(refs)))

            def check(ref: ChunkRef) -> tuple[ChunkRef, str | None]:
                try:
                    plain = repo.load_chunk(ref)
                except (IntegrityError, NotFound) as err:
                    return ref, str(err)
                if progress:
                    progress(len(plain))
                return ref, None

            for ref, problem in ordered_map(pool, check, sample, workers + 2):
                if problem:
                    damaged.add(ref.id)
                    for result in users[ref]:
                        result.problems.append(problem)
                else:
                    sound.add(ref.id)
    record_damaged(repo.id, damaged)  # the next push of a file holding one uploads it again
    record_healed(repo.id, sound - damaged)
    return results
