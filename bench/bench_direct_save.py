"""Saving straight into a repository against ``torch.save`` to disk followed by ``ckpt-sync push``.

    python bench/bench_direct_save.py [--size 1G] [--repeats 3] [--s3] [--dir PATH]

For a state of ``--size`` bytes of float32 tensors (64 of them), each in a child process started by
the launcher (bench/common.py: wall, CPU and peak RSS by ``wait4``), medians of ``--repeats``:

- **direct**: ``ckpt_sync.save(state, repo, name=...)``: time to a committed checkpoint;
- **disk + push**: ``torch.save(state, path)`` (fsynced) then a push of that file, as a training
  loop with a sidecar does it: the sum of both;
- **second save**: the same state with 10 % of its tensors changed, saved straight in again: bytes
  sent against the changed bytes (target <= 1.2x);
- **loop blocking**: ``CheckpointManager(direct=True, async_save=True).save`` of a model with Adam
  (state ~= ``--size``): how long the call blocks (the snapshot), against a synchronous
  ``torch.save`` of the same dict, and the time until the background save is committed.

CPU is the saving's own (every thread, measured in the child around the save); peak RSS is printed
as measured for the child and as how far saving raised it above the child holding its state. Every byte is
still encrypted, authenticated and tied to its manifest; nothing is skipped to make a figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import MiB, median_wall, print_table, run_python  # noqa: E402

TENSORS = 64
MODES = ("direct", "disk+push", "second", "blocking")


def parse_size(s: str) -> int:
    mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(s[-1].lower(), 1)
    return int(float(s[:-1] if mult > 1 else s) * mult)


def make_state(size: int, seed: int, changed: float = 0.0) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    each = size // TENSORS // 4
    state = {f"layer{i}": torch.randn(each, generator=g) for i in range(TENSORS)}
    for i in range(int(TENSORS * changed)):
        state[f"layer{i}"].add_(1.0)
    return {"model": state, "global_step": 100 if not changed else 200}


def child(mode: str, size: int, url: str, work: Path) -> dict:
    import torch

    import ckpt_sync
    from ckpt_sync.api import open_repository
    from ckpt_sync.transfer.push import push_path

    if mode == "direct":
        state = make_state(size, 0)
        before = _usage()
        m = ckpt_sync.save(state, url, name=f"checkpoint_b_{time.time_ns()}.pt")
        return {**_since(before), "id": m.id}
    if mode == "disk+push":
        state = make_state(size, 0)
        path = work / f"checkpoint_b_{time.time_ns()}.pt"
        before = _usage()
        start = time.perf_counter()
        with open(path, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        saved = time.perf_counter() - start
        push_path(open_repository(url, create=True), path)
        path.unlink()
        return {**_since(before), "torch_save": saved}
    if mode == "second":
        ckpt_sync.save(make_state(size, 0), url, name="checkpoint_b_100.pt")
        state = make_state(size, 0, changed=0.1)
        with ckpt_sync.open(url, "wb", name="checkpoint_b_200.pt") as stream:
            torch.save(state, stream)
        changed = sum(t.numel() * 4 for i, t in enumerate(state["model"].values()) if i < int(TENSORS * 0.1))
        return {"bytes_new": stream.stats.bytes_new, "bytes_sent": stream.stats.bytes_sent, "changed": changed}
    if mode == "blocking":
        return blocking(size, url, work)
    raise SystemExit(f"unknown mode {mode}")


def _usage() -> tuple[float, float, int]:
    import resource

    return time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _since(before: tuple[float, float, int]) -> dict:
    """Wall and CPU seconds (every thread) since ``before``, and how far the peak RSS rose (MiB)."""
    now = _usage()
    return {"seconds": now[0] - before[0], "cpu": now[1] - before[1], "rss_growth": (now[2] - before[2]) / 1024}


def blocking(size: int, url: str, work: Path) -> dict:
    import torch

    from ckpt_sync.training import CheckpointManager

    hidden = 2048
    layers = max(1, size // 3 // (4 * (hidden * hidden + hidden)))
    model = torch.nn.Sequential(*[torch.nn.Linear(hidden, hidden) for _ in range(layers)])
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    model(torch.randn(4, hidden)).square().mean().backward()
    opt.step()
    sync_start = time.perf_counter()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, work / "sync.pt")
    sync = time.perf_counter() - sync_start
    (work / "sync.pt").unlink()
    folder = work / f"run-{time.time_ns()}"
    options = {"repo": url, "direct": True, "async_save": True, "interval_s": None, "handle_signals": False}
    with CheckpointManager(folder, model=model, optimizer=opt, **options) as mgr:
        start = time.perf_counter()
        mgr.save(1, 0, loss=1.0)
        blocked = time.perf_counter() - start
        mgr.wait()
        committed = time.perf_counter() - start
    return {"blocked": blocked, "sync_torch_save": sync, "committed": committed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1G")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--s3", action="store_true", help="also into moto's S3 server")
    ap.add_argument(
        "--modes",
        default=",".join(MODES),
        help=f"which rows (default {','.join(MODES)}; 'direct' alone for a memory check at 16G: "
        "'blocking' holds the state three times over, model, Adam and its snapshot)",
    )
    ap.add_argument("--dir", default=None)
    ap.add_argument("--child", nargs=4, metavar=("MODE", "SIZE", "URL", "WORK"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, size, url, work = args.child
        print(json.dumps(child(mode, int(size), url, Path(work))))
        return
    from cryptography.fernet import Fernet

    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="ckpt-direct-", dir=args.dir))
    env = {**os.environ, "BACKUP_ENCRYPTION_KEY": Fernet.generate_key().decode(), "XDG_CACHE_HOME": str(work / "c")}
    stores = [("local", lambda n: (work / n).as_uri())]
    state_dir = work / "servers"
    try:
        if args.s3:
            sys.path.insert(1, str(HERE.parent / "tests"))
            import boto3
            import servers

            env.update(servers.start(["s3"], state_dir, prefer_default_ports=False)["s3"].env)
            os.environ.update(env)
            boto3.client("s3").create_bucket(Bucket="direct-bench")
            stores.append(("s3", lambda n: f"s3://direct-bench/{n}"))
        modes = args.modes.split(",")
        if unknown := set(modes) - set(MODES):
            ap.error(f"unknown mode(s) {', '.join(sorted(unknown))}: choose from {', '.join(MODES)}")
        rows = []
        for store, url_of in stores:
            runs: dict[str, list] = {m: [] for m in ("direct", "disk+push") if m in modes}
            for r in range(args.repeats):
                for mode in runs:
                    url = url_of(f"{mode}-{r}")
                    m = run_python(__file__, "--child", mode, str(size), url, str(work), env=env)
                    runs[mode].append((m, json.loads(m.stdout)))
            for mode, done in runs.items():
                best = median_wall([m for m, _ in done])
                seconds = statistics.median(out["seconds"] for _, out in done)
                cpu = statistics.median(out["cpu"] for _, out in done)
                growth = max(out["rss_growth"] for _, out in done)
                rows.append(
                    (
                        store,
                        mode,
                        f"{seconds:.2f}",
                        f"{size / MiB / seconds:.0f} MiB/s",
                        f"{cpu / (size / (1 << 30)):.2f}",
                        f"{best.peak_mib:.0f}",
                        f"{growth:.0f}",
                    )
                )
            if "second" in modes:
                m = run_python(__file__, "--child", "second", str(size), url_of("second"), str(work), env=env)
                second = json.loads(m.stdout)
                ratio = second["bytes_sent"] / second["changed"]
                rows.append((store, "second save, 10 % changed", "", f"{ratio:.2f}x changed bytes sent", "", "", ""))
            if "blocking" not in modes:
                continue
            m = run_python(__file__, "--child", "blocking", str(size), url_of("blocking"), str(work), env=env)
            b = json.loads(m.stdout)
            rows.append(
                (
                    store,
                    "manager direct+async: loop blocked",
                    f"{b['blocked']:.2f}",
                    f"{b['blocked'] / b['sync_torch_save']:.2f}x a sync torch.save",
                    "",
                    f"{m.peak_mib:.0f}",
                    "",
                )
            )
            rows.append((store, "manager direct+async: committed after", f"{b['committed']:.2f}", "", "", "", ""))
        print(f"## Direct save of {args.size} ({TENSORS} float32 tensors), medians of {args.repeats}")
        print_table(rows, ("store", "what", "seconds", "rate / ratio", "CPU s/GiB", "peak RSS MiB", "RSS growth"))
    finally:
        if args.s3:
            import servers

            servers.stop(state_dir)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
