"""DCP saves of sharded state with 2 ranks (gloo, CPU): ckpt_sync.dcp.Writer vs FileSystemWriter + push.

    python bench/bench_dcp.py [--size 1G] [--ranks 2] [--dir /path/on/the/disk/to/test]

Each rank holds ``size / ranks`` of random float32 DTensor shards (``DTensor.from_local``, sharded
on dim 0), so the state is ``size`` in all and nothing deduplicates. Side by side, in one run:

- **Writer**: ``dcp.save(state, storage_writer=Writer(repo))`` into a local-folder repository; the
  time is until the checkpoint is committed (manifest written), on every rank.
- **FileSystemWriter + push**: ``dcp.save`` to a local folder, then rank 0 runs ``ckpt-sync push`` of
  it (what a user does today); the time is the save plus the push, until committed.
- **async_save**: ``dcp.async_save(state, storage_writer=Writer(repo))``: how long the call blocks
  the training loop (staging to CPU), and the time until its future completes.
- **agreement**: the one all-reduce ``CheckpointManager.maybe_save`` does per call in a group
  (median microseconds over 2000 calls).

Peak RSS per rank is the rank's VmHWM during the operation only (reset through
``/proc/self/clear_refs`` just before it), printed as ``peak (+ growth over the RSS before the
operation, which holds the state and torch)``; the push child is measured by bench/common.py's launcher. Figures are
ratios from one run on one machine, not promises.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from common import Measured, MiB, parse_size, print_table, run_python  # noqa: E402


def _status(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    return 0.0


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5": reset VmHWM to the current RSS
        f.write("5")


def worker(args: argparse.Namespace) -> None:
    """One rank: build its shards, then run every scenario in order, writing results to JSON."""
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard

    from ckpt_sync.dcp import Writer
    from ckpt_sync.training.distributed import RankGroup

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    work = Path(args.dir)
    per_rank = args.size // world
    tensors = 8
    rows = per_rank // tensors // (4 * 4096)
    g = torch.Generator().manual_seed(rank)
    state = {
        f"layer{i}.weight": DTensor.from_local(torch.randn(rows, 4096, generator=g), mesh, [Shard(0)])
        for i in range(tensors)
    }
    out: dict[str, object] = {"rank": rank, "state_mib": sum(t.to_local().nbytes for t in state.values()) / MiB}
    ranks = RankGroup()

    def timed(name: str, fn) -> None:
        dist.barrier()
        _reset_peak()
        before = _status("VmRSS:")
        start = time.perf_counter()
        extra = fn()
        dist.barrier()  # committed on every rank
        seconds = time.perf_counter() - start
        out[name] = {"seconds": seconds, "peak_mib": _status("VmHWM:"), "before_mib": before, **(extra or {})}

    def writer_save() -> None:
        dcp.save(state, storage_writer=Writer((work / "repo-writer").as_uri(), name="w"))

    def fs_save_then_push() -> dict:
        folder = work / "dcp-folder"
        dcp.save(state, storage_writer=dcp.FileSystemWriter(str(folder)))
        dist.barrier()
        if rank != 0:
            return {}
        push: Measured = run_python("-m", "ckpt_sync.cli", "push", str(folder), "--repo", (work / "repo-push").as_uri())
        return {"push_seconds": push.seconds, "push_peak_mib": push.peak_mib}

    def async_save() -> dict:
        start = time.perf_counter()
        fut = dcp.async_save(state, storage_writer=Writer((work / "repo-async").as_uri(), name="a"))
        blocked = time.perf_counter() - start
        fut.result()
        return {"blocked_seconds": blocked}

    timed("writer", writer_save)
    timed("fs_push", fs_save_then_push)
    timed("async", async_save)

    times = []
    for _ in range(2000):
        t0 = time.perf_counter_ns()
        ranks.agree(None, False, False)
        times.append(time.perf_counter_ns() - t0)
    out["agree_us"] = statistics.median(times) / 1000
    (work / f"result{rank}.json").write_text(json.dumps(out))
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="1G", help="sharded state in all (default 1G)")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--dir", default=None, help="working folder (default: a temp folder)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.size = parse_size(args.size) if isinstance(args.size, str) else args.size
    if args.worker:
        worker(args)
        return
    work = Path(tempfile.mkdtemp(prefix="ckpt-bench-dcp-", dir=args.dir))
    try:
        run(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, args: argparse.Namespace) -> list[dict]:
    """Run the ranks, print the table, and return each rank's results (as its worker wrote them)."""
    from cryptography.fernet import Fernet

    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "OMP_NUM_THREADS": "1"}
    env.setdefault("BACKUP_ENCRYPTION_KEY", Fernet.generate_key().decode())
    procs = []
    for rank in range(args.ranks):
        cmd = [sys.executable, __file__, "--worker", "--size", str(args.size), "--dir", str(work)]
        procs.append(subprocess.Popen(cmd, env={**env, "RANK": str(rank), "WORLD_SIZE": str(args.ranks)}))
    if any(p.wait() != 0 for p in procs):
        raise SystemExit("a rank failed")
    results = [json.loads((work / f"result{r}.json").read_text()) for r in range(args.ranks)]
    gib = args.size / (1 << 30)
    print(f"\nDCP save of {gib:.2f} GiB sharded state, {args.ranks} ranks (gloo, CPU), {os.cpu_count()} CPUs")
    writer = max(r["writer"]["seconds"] for r in results)
    fs = results[0]["fs_push"]
    rows = [
        (
            "Writer -> local repository",
            f"{writer:.1f}",
            "1.00",
            _peaks(results, "writer"),
        ),
        (
            "FileSystemWriter + ckpt-sync push",
            f"{fs['seconds']:.1f} (push {fs['push_seconds']:.1f})",
            f"{fs['seconds'] / writer:.2f}",
            _peaks(results, "fs_push") + f" (push {fs['push_peak_mib']:.0f})",
        ),
        (
            "async_save with the Writer (total)",
            f"{max(r['async']['seconds'] for r in results):.1f}",
            f"{max(r['async']['seconds'] for r in results) / writer:.2f}",
            _peaks(results, "async"),
        ),
    ]
    print_table(rows, ("to a committed checkpoint", "seconds", "x Writer", "peak RSS MiB per rank (+ growth)"))
    blocked = [r["async"]["blocked_seconds"] for r in results]
    print(f"\nasync_save blocked the training loop for {' / '.join(f'{b:.2f}' for b in blocked)} s per rank")
    print(f"state per rank: {results[0]['state_mib']:.0f} MiB")
    agree = " / ".join(f"{r['agree_us']:.0f}" for r in results)
    print(f"agreement all-reduce per maybe_save: {agree} us (median)")
    return results


def _peaks(results: list[dict], name: str) -> str:
    parts = (f"{r[name]['peak_mib']:.0f} (+{r[name]['peak_mib'] - r[name]['before_mib']:.0f})" for r in results)
    return " / ".join(parts)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
