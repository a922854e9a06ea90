"""What the everyday verbs cost as a repository grows: provider requests and time at 100, 1,000
and 2,000 checkpoints.

    python bench/growth.py [--counts 100,1000,2000] [--s3] [--dir PATH]

For each size a repository is filled with that many committed checkpoints (small ones: what grows is
the number of objects, not their bytes), then:

- each operation runs as a fresh process would (a new Repository) through a counting wrapper
  (tests/helpers.py ``CountingProvider``) that records every provider call: ``ls`` (every
  manifest), ``pull --latest``, a ``watch`` commit with its retention pass (push one new
  checkpoint, then prune to ``keep`` = the count, as the watch worker does), ``prune --dry-run``;
  each twice: with an empty host cache (a new host), then again (the host has seen them);
- ``push`` and ``pull --latest`` run as whole CLI processes (a host that has listed the repository
  once), medians of 3, wall seconds: the figure a sidecar or a restarted job meets.

"requests" counts calls, a listing as its pages (1,000 objects each, as S3 pages them). The curve is
flat when a verb's requests do not grow with the count beyond the listings' pages.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent / "tests"))
from common import print_table  # noqa: E402
from helpers import CountingProvider, fill_repository  # noqa: E402

from ckpt_sync.format.crypto import KeyRing  # noqa: E402

CLI = [sys.executable, "-P", "-m", "ckpt_sync.cli"]


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
            counter.reset()
            start = time.perf_counter()
            op(repo)
            seconds = time.perf_counter() - start
            rows.append((f"{name} ({cache} cache)", counter.requests(), Counter(counter.calls), seconds))
            repo.provider.close()
    return rows


def cli_medians(url: str, count: int, work: Path, env: dict[str, str]) -> dict[str, float]:
    """Wall seconds of one more ``push`` and a ``pull --latest``, as whole CLI processes on a host
    that has listed the repository once (medians of 3)."""
    subprocess.run([*CLI, "ls", "--repo", url, "--json"], env=env, check=True, capture_output=True)
    times: dict[str, list[float]] = {"push": [], "pull --latest": []}
    for i in range(3):
        here = Path(tempfile.mkdtemp(dir=work))
        src = here / f"checkpoint_growth_{count + i}.pt"
        src.write_bytes(os.urandom(4096))
        push = [*CLI, "push", "--repo", url, str(src), "--step", str(count + i), "--session", "growth"]
        pull = [*CLI, "pull", "--latest", "--repo", url, "--to", str(here / "out")]
        for name, cmd in (("push", push), ("pull --latest", pull)):
            start = time.perf_counter()
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            times[name].append(time.perf_counter() - start)
            if done.returncode:
                raise SystemExit(f"{' '.join(cmd[3:])} failed: {done.stderr.strip()}")
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", default="100,1000,2000")
    ap.add_argument("--s3", action="store_true", help="also against moto's S3 server (slow to fill)")
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    from ckpt_sync.providers.local import LocalProvider
    from cryptography.fernet import Fernet

    from ckpt_sync.format.repository import Repository
    from ckpt_sync.transfer.opening import with_host_state

    key = Fernet.generate_key()
    keys = KeyRing([base64.urlsafe_b64decode(key)])
    work = Path(tempfile.mkdtemp(prefix="ckpt-growth-", dir=args.dir))
    os.environ["XDG_CACHE_HOME"] = str(work / "cache")
    os.environ["BACKUP_ENCRYPTION_KEY"] = key.decode()
    state = work / "servers"
    stores: list[tuple[str, Callable[[str], object]]] = [("local", lambda name: LocalProvider(work / name))]
    urls = {"local": lambda name: (work / name).as_uri(), "s3": lambda name: f"s3://growth-bench/{name}"}
    try:
        if args.s3:
            import boto3
            import servers

            os.environ.update(servers.start(["s3"], state, prefer_default_ports=False)["s3"].env)
            boto3.client("s3").create_bucket(Bucket="growth-bench")
            from ckpt_sync.providers.s3 import S3Provider

            stores.append(("s3", lambda name: S3Provider("growth-bench", name)))
        table = []
        processes = []
        for store, make in stores:
            for count in [int(c) for c in args.counts.split(",")]:
                name = f"repo-{count}"
                fill_repository(Repository.open(make(name), keys, create=True), count)

                def open_repo(make=make, name=name) -> tuple:
                    counter = CountingProvider(make(name))
                    return with_host_state(Repository.open(counter, keys)), counter

                for op, requests, calls, seconds in measure(open_repo, count, work):
                    detail = ", ".join(f"{k} {v}" for k, v in sorted(calls.items()))
                    table.append((store, str(count), op, str(requests), f"{seconds:.2f}", detail))
                medians = cli_medians(urls[store](name), count, work, dict(os.environ))
                processes.append((store, count, medians))
        print("## Growth: provider requests per operation by committed checkpoints (fresh process each)")
        print_table(table, ("store", "checkpoints", "operation", "requests", "seconds", "calls"))
        print()
        print("## Growth: whole CLI processes, wall seconds (median of 3), and the ratio to the smallest repository")
        rows = []
        for store, count, medians in processes:
            base = next(m for s_, _c, m in processes if s_ == store)
            for op, seconds in medians.items():
                rows.append((store, str(count), op, f"{seconds:.3f}", f"{seconds / base[op]:.2f}x"))
        print_table(rows, ("store", "checkpoints", "command", "seconds", "vs smallest"))
    finally:
        if args.s3:
            import servers

            servers.stop(state)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
