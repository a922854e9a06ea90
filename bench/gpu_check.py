"""On a machine with a CUDA device: how long CheckpointManager's async and direct saves of a large
CUDA state block the training loop, and whether the saved tensors and the CUDA RNG state come back
exactly.

    python bench/gpu_check.py [--gib 4] [--dir PATH]

One command, a few minutes. A model of ``--gib`` GiB of CUDA parameters with Adam moments (so the
state is about 3x that) is saved:

- synchronously with ``torch.save`` (the baseline the loop would wait for);
- with ``CheckpointManager(async_save=True)`` into a local folder: the blocking part is the copy to
  pinned host memory; the write happens in the background;
- with ``CheckpointManager(direct=True, async_save=True)`` into a local repository: the same
  snapshot, then the bytes streamed straight into the repository.

Each is then recovered into a fresh model on the device by a fresh manager, and every tensor and the
CUDA RNG state (the next draws after recovery equal the draws after the save) are compared exactly.
Prints one table. Without a CUDA device it says so and exits 0: nothing is measured.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def build(gib: float, device: str, seed: int):
    import torch

    torch.manual_seed(seed)
    hidden = 8192
    layers = max(1, int(gib * (1 << 30) / (4 * hidden * hidden)))
    model = torch.nn.Sequential(*[torch.nn.Linear(hidden, hidden, bias=False) for _ in range(layers)]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    model(torch.randn(2, hidden, device=device)).square().mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return model, opt


def same(a, b) -> bool:
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def same_optimizer(a, b) -> bool:
    import torch

    sa, sb = a.state_dict()["state"], b.state_dict()["state"]
    return sa.keys() == sb.keys() and all(
        torch.equal(sa[k][n], sb[k][n]) for k in sa for n in sa[k] if isinstance(sa[k][n], torch.Tensor)
    )


def one(label: str, gib: float, folder: Path, options: dict, device: str) -> tuple[str, ...]:
    import torch

    from ckpt_sync.training import CheckpointManager

    rng = torch.cuda if device == "cuda" else torch
    model, opt = build(gib, device, seed=1)
    synchronize(device)
    settings = {"interval_s": None, "handle_signals": False, **options}
    with CheckpointManager(folder, model=model, optimizer=opt, **settings) as mgr:
        start = time.perf_counter()
        mgr.save(100, 0, loss=1.0)
        blocked = time.perf_counter() - start
        after_save = rng.get_rng_state().clone()
        expected = torch.rand(4, device=device)
        mgr.wait()
        done = time.perf_counter() - start
    fresh, fresh_opt = build(gib, device, seed=2)
    rng.manual_seed(12345)  # a different stream: recovery must put the saved one back
    with CheckpointManager(folder, model=fresh, optimizer=fresh_opt, **settings) as again:
        again.recover()
    rng_ok = torch.equal(rng.get_rng_state(), after_save) and torch.equal(torch.rand(4, device=device), expected)
    exact = same(model, fresh) and same_optimizer(opt, fresh_opt)
    del model, opt, fresh, fresh_opt
    if device == "cuda":
        torch.cuda.empty_cache()
    return label, f"{blocked:.2f}", f"{done:.2f}", "yes" if exact else "NO", "yes" if rng_ok else "NO"


def synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=4.0, help="GiB of CUDA parameters (the state is ~3x)")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--device", default="cuda", help="cpu: a dry run of the script itself, small --gib")
    args = ap.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: nothing measured (run this on a machine with one)")
        return 0
    from cryptography.fernet import Fernet

    work = Path(tempfile.mkdtemp(prefix="ckpt-gpu-", dir=args.dir))
    os.environ.setdefault("BACKUP_ENCRYPTION_KEY", Fernet.generate_key().decode())
    os.environ["XDG_CACHE_HOME"] = str(work / "cache")
    try:
        model, opt = build(args.gib, args.device, seed=1)
        synchronize(args.device)
        start = time.perf_counter()
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, work / "sync.pt")
        sync = time.perf_counter() - start
        state_gib = (work / "sync.pt").stat().st_size / (1 << 30)
        (work / "sync.pt").unlink()
        del model, opt
        rows = [("torch.save, synchronous", f"{sync:.2f}", f"{sync:.2f}", "", "")]
        rows.append(one("manager, async save", args.gib, work / "async", {"async_save": True}, args.device))
        direct = {"async_save": True, "repo": (work / "repo").as_uri(), "direct": True}
        rows.append(one("manager, direct + async", args.gib, work / "direct", direct, args.device))
        where = torch.cuda.get_device_name() if args.device == "cuda" else "cpu (dry run)"
        print(f"## {where}: {state_gib:.1f} GiB checkpoint ({args.gib:g} GiB of parameters + Adam)")
        head = ("save", "loop blocked s", "committed s", "tensors exact", f"{args.device} RNG exact")
        widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
        for r in [head, tuple("-" * w for w in widths), *rows]:
            print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
        return 0 if all(r[3] in ("yes", "") and r[4] in ("yes", "") for r in rows) else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
