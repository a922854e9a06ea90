"""Fan-out restore through ckpt_sync.dcp on S3 (moto): restore time and store bytes for 1, 2 and 4
ranks (gloo, CPU), with and without fan-out.

    python bench/bench_fanout.py [--size 96M] [--ranks 1,2,4] [--endpoint-url URL]

The state is ``size`` of replicated float32 tensors (8 MiB each, the same on every rank, as DDP or
plain modules hold them) plus a small DTensor sharded over the ranks (256 KiB a rank). It is saved
once through ``Writer`` (4 ranks), then loaded with ``dcp.Reader`` by fresh groups of each size,
``fan_out=False`` (every rank reads every chunk its plan needs from the store) and on (the ranks
split the shared chunks, fetch their share, and exchange it over gloo). Each load starts fresh
processes and is timed on every rank from a barrier after the group is up to a barrier after
``dcp.load``; the table shows the slowest rank. Store bytes are the encrypted bytes the ranks
fetched (the Reader's counters, summed over the group), against what the checkpoint occupies in
the store. Without ``--endpoint-url`` it starts moto on loopback (tests/servers.py). Figures are
from one run on one machine, where moto, the ranks and gloo share the CPUs: ratios, not promises.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent / "tests"))

from common import MiB, parse_size, print_table  # noqa: E402

TENSOR = 8 * MiB
SAVE_RANKS = 4


def worker(args: argparse.Namespace) -> None:
    """One rank: save, or load and time it; writes result<rank>.json in the working folder."""
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from ckpt_sync.dcp import Reader, Writer

    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    saving = args.action == "save"
    state: dict = {}
    for i in range(max(1, args.size // TENSOR)):
        g = torch.Generator().manual_seed(i)
        n = TENSOR // 4
        state[f"replicated.{i}"] = torch.randn(n, generator=g) if saving else torch.zeros(n)
    rows = 256 * 1024 // (4 * 256) * SAVE_RANKS
    full = torch.randn(rows, 256, generator=torch.Generator().manual_seed(99)) if saving else torch.zeros(rows, 256)
    state["sharded"] = distribute_tensor(full, mesh, [Shard(0)])
    out: dict = {"rank": rank}
    if saving:
        dcp.save(state, storage_writer=Writer(args.repo, name="bench", metadata={"global_step": 1}))
    else:
        reader = Reader(args.repo, fan_out=args.action == "load-fan-out")
        dist.barrier()
        start = time.perf_counter()
        dcp.load(state, storage_reader=reader)
        dist.barrier()
        out["seconds"] = time.perf_counter() - start
        out["bytes"] = reader.stats.bytes_sent
        out["owned"] = reader.fan_out_stats.owned
    Path(args.work, f"result{rank}.json").write_text(json.dumps(out))
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: argparse.Namespace, action: str, world: int, env: dict[str, str]) -> list[dict]:
    work = Path(args.work)
    for f in work.glob("result*.json"):
        f.unlink()
    base = {**env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--worker", action, "--repo", args.repo, "--work", str(work)]
    cmd += ["--size", str(args.size)]
    procs = [
        subprocess.Popen(cmd, env={**base, "RANK": str(r), "WORLD_SIZE": str(world)}, cwd=work) for r in range(world)
    ]
    if any(p.wait() != 0 for p in procs):
        raise SystemExit(f"a rank failed ({action}, {world} ranks)")
    return [json.loads((work / f"result{r}.json").read_text()) for r in range(world)]


def stored_bytes(repo_url: str) -> int:
    from ckpt_sync.api import open_repository

    repo = open_repository(repo_url)
    (m,) = list(repo.manifests())
    sizes = repo.list_chunks()
    return sum(sizes[c] for c in m.chunk_ids())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="96M", help="replicated state (default 96M, in 8 MiB tensors)")
    ap.add_argument("--ranks", default="1,2,4", help="group sizes to load with (default 1,2,4)")
    ap.add_argument("--endpoint-url", default=None, help="an S3 endpoint to use instead of starting moto")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--repo", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.size = parse_size(args.size) if isinstance(args.size, str) else args.size
    if args.worker:
        args.action = args.worker
        worker(args)
        return
    work = Path(tempfile.mkdtemp(prefix="ckpt-bench-fanout-"))
    try:
        run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> None:
    import boto3
    import servers
    from cryptography.fernet import Fernet

    saved = dict(os.environ)
    try:
        if args.endpoint_url:
            os.environ["AWS_ENDPOINT_URL"] = args.endpoint_url
        else:
            os.environ.update(servers.start(["s3"], work / "servers", prefer_default_ports=False)["s3"].env)
        os.environ.setdefault("BACKUP_ENCRYPTION_KEY", Fernet.generate_key().decode())
        bucket = f"bench-fanout-{uuid.uuid4().hex[:8]}"
        boto3.client("s3").create_bucket(Bucket=bucket)
        args.repo, args.work = f"s3://{bucket}/repo", str(work)
        env = dict(os.environ)
        launch(args, "save", SAVE_RANKS, env)
        stored = stored_bytes(args.repo)
        rows = []
        for world in (int(x) for x in args.ranks.split(",")):
            for fan_out in (False, True) if world > 1 else (False,):
                results = launch(args, "load-fan-out" if fan_out else "load", world, env)
                seconds = max(r["seconds"] for r in results)
                fetched = sum(r["bytes"] for r in results)
                rows.append(
                    (
                        str(world),
                        "on" if fan_out else "off",
                        f"{seconds:.2f}",
                        f"{fetched / MiB:.1f}",
                        f"{fetched / stored:.2f}",
                    )
                )
        cpus = len(os.sched_getaffinity(0))
        print(f"\nDCP load of {args.size / MiB:.0f} MiB replicated + sharded state from S3 (moto), {cpus} CPUs")
        print(f"stored: {stored / MiB:.1f} MiB; saved by {SAVE_RANKS} ranks\n")
        print_table(rows, ("ranks", "fan-out", "seconds", "store MiB", "x stored"))
    finally:
        if not args.endpoint_url:
            servers.stop(work / "servers")
        os.environ.clear()
        os.environ.update(saved)


if __name__ == "__main__":
    main()
