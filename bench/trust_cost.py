"""What the store-cannot-steer checks cost: provider requests and seconds per open, per push and per
prune, in a repository of 300 checkpoints on S3 (moto) and on a local folder.

    python bench/trust_cost.py [--count 300] [--no-s3] [--dir PATH]

Each operation runs as a fresh process would (a new Repository through growth.py's counting wrapper),
with an empty manifest cache (a new host) and then again (the host has seen the manifests):

- ``open``: the config read and checked (its MAC), the key found;
- ``push``: one new checkpoint committed (the config's agreement with the checkpoints, the lock
  judged by the store's clock, the check after the commit);
- ``prune``: retention dropping one checkpoint and a chunk collection (the store's time, every lock
  judged, every manifest the keys open read for the chunks it protects, break marks swept).

The same file runs against an earlier tree (``PYTHONPATH=/path/to/old/tree``) to compare: it uses
only calls both have. Requests count a listing as its pages (growth.py).
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent / "tests"))
from common import print_table  # noqa: E402
from growth import CountingProvider, fill  # noqa: E402

from ckpt_sync.format.crypto import KeyRing  # noqa: E402


def operations(work: Path, count: int) -> list[tuple[str, Callable]]:
    from ckpt_sync.retention import fifo_with_tags
    from ckpt_sync.transfer.prune import prune
    from ckpt_sync.transfer.push import push_path

    src = work / "new" / "checkpoint_growth_new.pt"
    src.parent.mkdir(parents=True, exist_ok=True)

    def push(repo) -> None:
        src.write_bytes(os.urandom(4096))
        push_path(repo, src)

    return [
        ("open", lambda repo: None),
        ("push (one commit)", push),
        (f"prune --keep {count - 1} --grace 0", lambda repo: prune(repo, fifo_with_tags(count - 1), grace=0.0)),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--no-s3", action="store_true", help="the local folder only")
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    from ckpt_sync.providers.local import LocalProvider
    from cryptography.fernet import Fernet

    import ckpt_sync
    from ckpt_sync.format.repository import Repository

    keys = KeyRing([base64.urlsafe_b64decode(Fernet.generate_key())])
    work = Path(tempfile.mkdtemp(prefix="ckpt-trust-", dir=args.dir))
    os.environ["XDG_CACHE_HOME"] = str(work / "cache")
    os.environ["XDG_STATE_HOME"] = str(work / "state")
    state = work / "servers"
    stores: list[tuple[str, Callable[[str], object]]] = [("local", lambda name: LocalProvider(work / name))]
    try:
        if not args.no_s3:
            import boto3
            import servers

            os.environ.update(servers.start(["s3"], state, prefer_default_ports=False)["s3"].env)
            boto3.client("s3").create_bucket(Bucket="trust-bench")
            from ckpt_sync.providers.s3 import S3Provider

            stores.append(("s3", lambda name: S3Provider("trust-bench", name)))
        table = []
        for store, make in stores:
            for name, op in operations(work, args.count):
                repo_name = f"repo-{name.split()[0]}"
                fill(Repository.open(make(repo_name), keys, create=True), args.count)
                for cache in ("cold", "warm"):
                    if cache == "cold":
                        shutil.rmtree(work / "cache", ignore_errors=True)
                    counter = CountingProvider(make(repo_name))
                    start = time.perf_counter()
                    repo = Repository.open(counter, keys)
                    op(repo)
                    seconds = time.perf_counter() - start
                    calls = ", ".join(f"{k} {v}" for k, v in sorted(counter.calls.items()))
                    table.append((store, f"{name} ({cache} cache)", str(counter.requests()), f"{seconds:.3f}", calls))
                    counter.close()
        print(
            f"## Requests and seconds with {args.count} checkpoints (ckpt_sync from {Path(ckpt_sync.__file__).parent})"
        )
        print_table(table, ("store", "operation", "requests", "seconds", "calls"))
    finally:
        if not args.no_s3:
            import servers

            servers.stop(state)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
