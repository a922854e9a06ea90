"""What the everyday verbs cost as a repository grows: provider requests at 30, 300 and 3,000 checkpoints.

    python bench/growth.py [--counts 30,300,3000] [--s3] [--dir PATH]

For each size a repository is filled with that many committed checkpoints (small ones: what grows is
the number of objects, not their bytes), then each operation runs as a fresh process would (a new
Repository) through a counting wrapper (providers/wrapper.py) that records every provider call:

- ``ls`` (every manifest), ``pull --latest``, a ``watch`` commit with its retention pass (push one
  new checkpoint, then prune to ``keep`` = the count, as the watch worker does), ``prune --dry-run``;
- each twice: with an empty manifest cache (a new host), then again (the host has seen them).

"requests" counts calls, a listing as its pages (1,000 objects each, as S3 pages them). The curve is
flat when a verb's requests do not grow with the count beyond the listings' pages.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent / "tests"))
from ckpt_sync.providers.wrapper import WrappingProvider  # noqa: E402
from common import print_table  # noqa: E402

from ckpt_sync.format.crypto import KeyRing  # noqa: E402
from ckpt_sync.format.manifest import ChunkRef, FileEntry, Manifest  # noqa: E402

T = TypeVar("T")
PAGE = 1000


class CountingProvider(WrappingProvider):
    """Counts every call by kind; a listing counts as its pages and the objects it returned."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.calls: Counter[str] = Counter()

    def _call(self, op: str, key: str, fn: Callable[[], T]) -> T:
        result = fn()
        if op == "list":
            n = len(result)  # type: ignore[arg-type]
            self.calls[f"list {key.split('/')[0] or '(all)'}"] += max(1, -(-n // PAGE))  # pages, by prefix
            self.calls["objects listed"] += n
        else:
            self.calls[op] += 1
        return result

    def requests(self) -> int:
        return sum(v for k, v in self.calls.items() if k != "objects listed")


def fill(repo, count: int) -> None:
    """``count`` committed checkpoints, one unique 4 KiB chunk each plus a shared one."""
    from ckpt_sync.format.layout import manifest_key, new_manifest_id

    shared = os.urandom(64 << 10)
    shared_ref, _ = repo.store_chunk(shared)
    t0 = time.time() - count - 10
    for i in range(count):
        unique = os.urandom(4096)
        ref, _ = repo.store_chunk(unique)
        data = shared + unique
        mid = new_manifest_id(t0 + i)
        m = Manifest(
            id=mid,
            name=f"checkpoint_growth_{i}.pt",
            kind="file",
            created=t0 + i,
            host="bench",
            files=(
                FileEntry(
                    f"checkpoint_growth_{i}.pt",
                    len(data),
                    hashlib.sha256(data).hexdigest(),
                    (ChunkRef(shared_ref.id, len(shared)), ChunkRef(ref.id, len(unique))),
                ),
            ),
            session_id="growth",
            global_step=i,
            epoch=None,
            loss=None,
            tags=(),
            extra={},
            repository=repo.binding(),  # as a push stamps it
        )
        import json

        token = repo.keys.encrypt(json.dumps(m.to_json(), separators=(",", ":")).encode())
        repo.provider.put_if_absent(manifest_key(mid), token)


def measure(open_repo: Callable[[], tuple], count: int, work: Path) -> list[tuple[str, int, Counter, float]]:
    from ckpt_sync.retention import fifo_with_tags
    from ckpt_sync.transfer.prune import prune
    from ckpt_sync.transfer.push import push_path
    from ckpt_sync.transfer.restore import pull

    rows = []
    src = work / "new" / "checkpoint_growth_new.pt"
    src.parent.mkdir(parents=True, exist_ok=True)
    ops: list[tuple[str, Callable]] = [
        ("ls", lambda r: list(r.manifests())),
        ("pull --latest", lambda r: pull(r, work / f"out-{time.monotonic_ns()}")),
        (
            "watch commit + retention",
            lambda r: (src.write_bytes(os.urandom(4096)), push_path(r, src), prune(r, fifo_with_tags(count))),
        ),
        ("prune --dry-run", lambda r: prune(r, fifo_with_tags(10), dry_run=True)),
    ]
    for name, op in ops:
        for cache in ("cold", "warm"):
            if cache == "cold":
                shutil.rmtree(work / "cache", ignore_errors=True)
            repo, counter = open_repo()
            start = time.perf_counter()
            op(repo)
            seconds = time.perf_counter() - start
            rows.append((f"{name} ({cache} cache)", counter.requests(), Counter(counter.calls), seconds))
            repo.provider.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", default="30,300,3000")
    ap.add_argument("--s3", action="store_true", help="also against moto's S3 server (slow to fill)")
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    from ckpt_sync.providers.local import LocalProvider
    from cryptography.fernet import Fernet

    from ckpt_sync.format.repository import Repository

    keys = KeyRing([base64.urlsafe_b64decode(Fernet.generate_key())])
    work = Path(tempfile.mkdtemp(prefix="ckpt-growth-", dir=args.dir))
    os.environ["XDG_CACHE_HOME"] = str(work / "cache")
    state = work / "servers"
    stores: list[tuple[str, Callable[[str], object]]] = [("local", lambda name: LocalProvider(work / name))]
    try:
        if args.s3:
            import boto3
            import servers

            os.environ.update(servers.start(["s3"], state, prefer_default_ports=False)["s3"].env)
            boto3.client("s3").create_bucket(Bucket="growth-bench")
            from ckpt_sync.providers.s3 import S3Provider

            stores.append(("s3", lambda name: S3Provider("growth-bench", name)))
        table = []
        for store, make in stores:
            for count in [int(c) for c in args.counts.split(",")]:
                name = f"repo-{count}"
                fill(Repository.open(make(name), keys, create=True), count)

                def open_repo(make=make, name=name) -> tuple:
                    counter = CountingProvider(make(name))
                    return Repository.open(counter, keys), counter

                for op, requests, calls, seconds in measure(open_repo, count, work):
                    detail = ", ".join(f"{k} {v}" for k, v in sorted(calls.items()))
                    table.append((store, str(count), op, str(requests), f"{seconds:.2f}", detail))
        print("## Growth: provider requests per operation by committed checkpoints (fresh process each)")
        print_table(table, ("store", "checkpoints", "operation", "requests", "seconds", "calls"))
    finally:
        if args.s3:
            import servers

            servers.stop(state)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
