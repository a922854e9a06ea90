"""Verify: is every committed checkpoint restorable?"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .crypto import token_size
from .errors import IntegrityError, NotFound
from .pipeline import default_workers
from .repository import Repository
from .restore import read_verified


@dataclass
class CheckResult:
    id: str
    name: str
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "name": self.name, "ok": self.ok, "problems": self.problems}


def verify(
    repo: Repository,
    *,
    read_data: bool = False,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[CheckResult]:
    """Check every manifest decrypts, every chunk exists with the right size, and (``read_data``)
    that every chunk authenticates and hashes to its id and every file to its whole-file hash."""
    stored = repo.list_chunks()
    workers = workers or default_workers()
    results: list[CheckResult] = []
    with ThreadPoolExecutor(workers, thread_name_prefix="ckpt-verify") as pool:
        for mid in repo.manifest_ids():
            try:
                m = repo.load_manifest(mid)
            except (IntegrityError, NotFound) as err:
                results.append(CheckResult(mid, "(unreadable manifest)", [str(err)]))
                continue
            result = CheckResult(mid, m.name)
            for entry in m.files:
                for ref in entry.chunks:
                    have = stored.get(ref.id)
                    if have is None:
                        result.problems.append(f"{entry.path}: chunk {ref.id[:16]} is missing")
                    elif have != token_size(ref.size):
                        result.problems.append(f"{entry.path}: chunk {ref.id[:16]} has the wrong size")
                if read_data and not result.problems:
                    try:
                        read_verified(repo, pool, entry, window=workers + 2, progress=progress)
                    except (IntegrityError, NotFound) as err:
                        result.problems.append(f"{entry.path}: {err}")
            results.append(result)
    return results
