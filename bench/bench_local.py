"""Push and pull of a real >=1 GiB checkpoint to a local-folder repository.

    python bench/bench_local.py [--size 1G] [--dir /path/on/the/disk/to/test]

Prints throughput, the ratio to a plain unencrypted copy of the same bytes (read + write + fsync,
the transport limit for a local folder), and each run's peak RSS. Figures are ratios from one run.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MiB, fmt_rate, make_checkpoint, parse_size, print_table, run_python

PLAIN_COPY = r"""
import os, shutil, sys
src, dst = sys.argv[1], sys.argv[2]
shutil.copyfile(src, dst)
fd = os.open(dst, os.O_RDONLY); os.fsync(fd); os.close(fd)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1G", help="checkpoint size (default 1G)")
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temp folder)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ckpt-bench-", dir=args.dir))
    try:
        run(work, parse_size(args.size))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, size: int) -> None:
    from cryptography.fernet import Fernet

    env = {"BACKUP_ENCRYPTION_KEY": Fernet.generate_key().decode()}
    ckpt = make_checkpoint(work / "src" / "checkpoint_bench_1.pt", size)
    nbytes = ckpt.stat().st_size
    print(f"checkpoint: {nbytes / MiB:.0f} MiB (torch.save of an MLP + Adam state) in {work}")
    script = work / "plain_copy.py"
    script.write_text(PLAIN_COPY)
    repo = str(work / "repo")

    plain = run_python(str(script), str(ckpt), str(work / "plain.pt"))
    push = run_python("-m", "ckpt_sync.cli", "push", "--repo", repo, str(ckpt), env=env)
    again = run_python("-m", "ckpt_sync.cli", "push", "--repo", repo, str(ckpt), env=env)
    pull = run_python("-m", "ckpt_sync.cli", "pull", "--latest", "--repo", repo, "--to", str(work / "out"), env=env)
    assert (work / "out" / ckpt.name).stat().st_size == nbytes

    rows = [
        ("plain copy + fsync", fmt_rate(nbytes, plain.seconds), "1.00", f"{plain.peak_mib:.0f}"),
        (
            "push (new repository)",
            fmt_rate(nbytes, push.seconds),
            f"{plain.seconds / push.seconds:.2f}",
            f"{push.peak_mib:.0f}",
        ),
        (
            "push again (all deduplicated)",
            fmt_rate(nbytes, again.seconds),
            f"{plain.seconds / again.seconds:.2f}",
            f"{again.peak_mib:.0f}",
        ),
        (
            "pull --latest",
            fmt_rate(nbytes, pull.seconds),
            f"{plain.seconds / pull.seconds:.2f}",
            f"{pull.peak_mib:.0f}",
        ),
    ]
    print_table(rows, ("operation", "throughput", "x plain copy", "peak RSS MiB"))


if __name__ == "__main__":
    main()
