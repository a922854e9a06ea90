"""Before/after of one change: push and pull with two source trees, interleaved, medians.

    python bench/ab.py --base /path/to/old/tree [--size 1G] [--repeat 5] [--dir PATH]

Each round runs, in turn, ``cp`` + ``sync FILE`` of the checkpoint (the disk's limit), then push and
pull with the base tree (its ``ckpt_sync`` first on PYTHONPATH) and with this tree, each into a fresh
repository and folder; each repository is pulled twice: cold (the page cache dropped first, where
that is allowed) and warm (read into the page cache first, as ``cp``'s source is). Interleaving
spreads the load of a shared machine over both sides alike; CPU seconds (user + system of the
child) are far steadier than wall time on a busy machine.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import (  # noqa: E402
    Measured,
    MiB,
    drop_caches,
    make_checkpoint,
    median_cpu,
    median_wall,
    parse_size,
    print_table,
    read_into_cache,
    run_cmd,
    run_python,
    source_tree,
    then_sync,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the tree to compare with (a checkout or git worktree)")
    ap.add_argument("--size", default="1G")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    from cryptography.fernet import Fernet

    key = {"BACKUP_ENCRYPTION_KEY": Fernet.generate_key().decode()}
    trees = {"base": source_tree(args.base), "this": str(HERE.parent)}
    work = Path(tempfile.mkdtemp(prefix="ckpt-ab-", dir=args.dir))
    runs: dict[str, list[Measured]] = {}
    try:
        ckpt = make_checkpoint(work / "src" / "checkpoint_ab_1.pt", parse_size(args.size))
        nbytes = ckpt.stat().st_size
        for _ in range(args.repeat):
            copy = work / "copy.pt"
            runs.setdefault("cp + sync", []).append(then_sync(run_cmd(["cp", str(ckpt), str(copy)]), copy))
            copy.unlink()
            for label, tree in trees.items():
                env = {**key, "PYTHONPATH": tree}
                repo, out = work / f"repo-{label}", work / f"out-{label}"
                push = run_python("-m", "ckpt_sync.cli", "push", "--repo", str(repo), str(ckpt), env=env)
                runs.setdefault(f"push {label}", []).append(push)
                pull = ["-m", "ckpt_sync.cli", "pull", "--latest", "--repo", str(repo), "--to", str(out)]
                if drop_caches():
                    runs.setdefault(f"pull cold {label}", []).append(run_python(*pull, env=env))
                    shutil.rmtree(out)
                read_into_cache(repo)  # whether or not that push wrote around the cache, as cp's source is
                runs.setdefault(f"pull {label}", []).append(run_python(*pull, env=env))
                assert (out / ckpt.name).stat().st_size == nbytes
                shutil.rmtree(repo)
                shutil.rmtree(out)
        rows = []
        names = ("cp + sync", "push base", "push this", "pull base", "pull this", "pull cold base", "pull cold this")
        for name in [n for n in names if n in runs]:
            m, c = median_wall(runs[name]), median_cpu(runs[name])
            each = " ".join(f"{nbytes / MiB / r.seconds:.0f}" for r in runs[name])
            rows.append(
                (
                    name,
                    f"{nbytes / MiB / m.seconds:.0f}",
                    c.cpu_per_gib(nbytes),
                    f"{max(r.peak_mib or 0 for r in runs[name]):.0f}",
                    each,
                )
            )
        print(f"{nbytes / MiB:.0f} MiB checkpoint, median of {args.repeat} interleaved rounds; base={trees['base']}")
        print_table(rows, ("run", "MiB/s", "CPU s/GiB", "peak RSS MiB", "each run MiB/s"))
        for op in [o for o in ("push", "pull", "pull cold") if f"{o} this" in runs]:
            b, t = median_wall(runs[f"{op} base"]), median_wall(runs[f"{op} this"])
            bc, tc = median_cpu(runs[f"{op} base"]), median_cpu(runs[f"{op} this"])
            cp = median_wall(runs["cp + sync"])
            print(
                f"{op}: this/base speed {b.seconds / t.seconds:.2f}x, CPU {tc.cpu / bc.cpu:.2f}x; "
                f"this vs cp + sync {cp.seconds / t.seconds:.2f}x (base {cp.seconds / b.seconds:.2f}x)"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
