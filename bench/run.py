"""Every performance figure in one run, side by side on the same generated checkpoints.

    python bench/run.py [--size 1G] [--big 4G] [--repeat 3] [--no-s3] [--growth 30,300,3000] [--dir PATH]

Sections: the CPU's own limits; push/pull to a local-folder repository against restic and rclone
crypt (a missing peer is reported as skipped); the incremental fine-tuning checkpoint; peak RSS for a
``--size`` and a ``--big`` checkpoint (the same budget must hold for both); and push/pull to moto's
S3 server against plain boto3 (bench/bench_s3.py); provider requests per verb as the repository grows
(bench/growth.py). Results are ratios measured in this run only.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import cpu_limits  # noqa: E402
import incremental  # noqa: E402
import peers  # noqa: E402
from common import Measured, MiB, make_checkpoint, parse_size, print_table, run_python  # noqa: E402


def _rate(nbytes: int, m: Measured) -> str:
    return f"{nbytes / MiB / m.seconds:.0f} MiB/s"


def _ours(ckpt: Path, repo: Path, out: Path, env: dict[str, str]) -> tuple[Measured, Measured]:
    push = run_python("-m", "ckpt_sync.cli", "push", "--repo", str(repo), str(ckpt), env=env)
    pull = run_python("-m", "ckpt_sync.cli", "pull", "--latest", "--repo", str(repo), "--to", str(out), env=env)
    assert (out / ckpt.name).stat().st_size == ckpt.stat().st_size
    return push, pull


def section_cpu(ckpt: Path) -> None:
    binary, standard = cpu_limits.encryption_rate()
    read = cpu_limits.read_rate(ckpt)
    print("\n## CPU limits (one core)")
    print_table(
        [
            ("binary Fernet token encryption (ours)", f"{binary / MiB:.0f} MiB/s"),
            ("Fernet.encrypt (base64 tokens)", f"{standard / MiB:.0f} MiB/s"),
            ("sequential file read", f"{read / MiB:.0f} MiB/s"),
        ],
        ("what", "rate"),
    )


def _median(runs: list[Measured]) -> Measured:
    return sorted(runs, key=lambda m: m.seconds)[len(runs) // 2]


def _median_cpu(runs: list[Measured]) -> Measured:
    return sorted(runs, key=lambda m: m.cpu)[len(runs) // 2]


def section_local(work: Path, ckpt: Path, env: dict[str, str], repeat: int) -> dict[str, float]:
    """Each tool ``repeat`` times, interleaved (so drift in the machine's load hits all alike); medians.

    CPU is user + system seconds of the tool's process per GiB (median): far steadier than wall
    time on a shared machine. Peers' restores are followed by ``sync FILE``, as our pull fsyncs.
    """
    nbytes = ckpt.stat().st_size
    tools = {
        "ckpt-sync": lambda w: _ours(ckpt, w / "repo", w / "out", env),
        "restic": lambda w: peers.restic(w, ckpt),
        "rclone crypt": lambda w: peers.rclone_crypt(w, ckpt),
        "cp + sync (the limit)": lambda w: peers.copy_and_sync(w, ckpt),
    }
    runs: dict[str, list[tuple[Measured, Measured]]] = {name: [] for name in tools}
    for i in range(repeat):
        for name, fn in tools.items():
            scratch = work / f"{name.split()[0]}-{i}"
            scratch.mkdir()
            result = fn(scratch)
            if result is not None:
                runs[name].append(result)
            shutil.rmtree(scratch, ignore_errors=True)
    rows = []
    medians: dict[str, tuple[Measured, Measured]] = {}
    for name, results in runs.items():
        if not results:
            rows.append((name, "skipped (not installed)", "", "", "", "", ""))
            continue
        push, pull = _median([r[0] for r in results]), _median([r[1] for r in results])
        cpu_push, cpu_pull = _median_cpu([r[0] for r in results]), _median_cpu([r[1] for r in results])
        medians[name] = (push, pull)
        peak = f"{push.peak_mib or 0:.0f}/{pull.peak_mib or 0:.0f}"
        spread = "  ".join(f"{nbytes / MiB / r[0].seconds:.0f}/{nbytes / MiB / r[1].seconds:.0f}" for r in results)
        rows.append(
            (
                name,
                _rate(nbytes, push),
                cpu_push.cpu_per_gib(nbytes),
                _rate(nbytes, pull),
                cpu_pull.cpu_per_gib(nbytes),
                peak,
                spread,
            )
        )
    print(
        f"\n## Local-folder repository, {nbytes / MiB:.0f} MiB torch checkpoint (MLP + Adam state), "
        f"median of {repeat} interleaved runs"
    )
    print_table(
        rows,
        (
            "tool",
            "push / backup",
            "CPU s/GiB",
            "pull / restore (+ sync)",
            "CPU s/GiB",
            "peak RSS MiB push/pull",
            "each run MiB/s push/pull",
        ),
    )
    ours = medians["ckpt-sync"]
    limit = medians["cp + sync (the limit)"]
    gib = nbytes / (1 << 30)
    out = {
        "pull vs cp + sync": limit[1].seconds / ours[1].seconds,
        "push CPU s/GiB": _median_cpu([r[0] for r in runs["ckpt-sync"]]).cpu / gib,
        "pull CPU s/GiB": _median_cpu([r[1] for r in runs["ckpt-sync"]]).cpu / gib,
    }
    peer_push = [m[0].seconds for n, m in medians.items() if n in ("restic", "rclone crypt")]
    peer_pull = [m[1].seconds for n, m in medians.items() if n in ("restic", "rclone crypt")]
    if peer_push:
        out["push vs faster peer"] = min(peer_push) / ours[0].seconds
        out["pull vs faster peer"] = min(peer_pull) / ours[1].seconds
    return out


def section_rss(work: Path, sizes: list[int], env: dict[str, str]) -> dict[str, float]:
    rows, peaks = [], {}
    for size in sizes:
        ckpt = make_checkpoint(work / f"rss-{size}" / "checkpoint_rss_1.pt", size)
        push, pull = _ours(ckpt, work / f"rss-repo-{size}", work / f"rss-out-{size}", env)
        label = f"{ckpt.stat().st_size / (1 << 30):.1f} GiB"
        rows.append((label, f"{push.peak_mib:.0f}", f"{pull.peak_mib:.0f}"))
        peaks[label] = max(push.peak_mib or 0, pull.peak_mib or 0)
        shutil.rmtree(ckpt.parent, ignore_errors=True)
        shutil.rmtree(work / f"rss-repo-{size}", ignore_errors=True)
        shutil.rmtree(work / f"rss-out-{size}", ignore_errors=True)
    print("\n## Peak RSS (MiB) by checkpoint size")
    print_table(rows, ("checkpoint", "push", "pull"))
    return peaks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1G", help="main checkpoint size (default 1G)")
    ap.add_argument("--big", default="4G", help="second size for the memory check (default 4G; 0 to skip)")
    ap.add_argument("--no-s3", action="store_true", help="skip the S3 section")
    ap.add_argument("--growth", default="30,300,3000", help="checkpoint counts for the growth curve ('' skips)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per tool in the local section (median; default 3)")
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temp folder)")
    args = ap.parse_args()
    from cryptography.fernet import Fernet

    env = {"BACKUP_ENCRYPTION_KEY": Fernet.generate_key().decode()}
    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="ckpt-bench-", dir=args.dir))
    summary: list[tuple[str, str, str]] = []
    try:
        ckpt = make_checkpoint(work / "src" / "checkpoint_bench_1.pt", size)
        section_cpu(ckpt)
        targets = {
            "push vs faster peer": ">= 2.0 x",
            "pull vs faster peer": ">= 1.1 x",
            "pull vs cp + sync": ">= 0.85 x",
            "push CPU s/GiB": "<= 3.0",
            "pull CPU s/GiB": "<= 2.0",
        }
        for name, value in section_local(work, ckpt, env, args.repeat).items():
            summary.append((f"local {name}", f"{value:.2f}", targets[name]))
        inc = incremental.run(work, env)
        print(f"\n## Incremental: fine-tuned head, frozen backbone ({inc['backbone_share']:.0%} of parameters)")
        print(
            f"second checkpoint {inc['size'] / MiB:.1f} MiB: {inc['bytes_new'] / MiB:.2f} MiB new, "
            f"{inc['bytes_sent'] / MiB:.2f} MiB sent = {inc['share_sent']:.1%} of the file"
        )
        summary.append(("incremental bytes sent / file size", f"{inc['share_sent']:.1%}", "<= 15%"))
        sizes = [size] + ([parse_size(args.big)] if parse_size(args.big) else [])
        for label, peak in section_rss(work, sizes, env).items():
            summary.append((f"peak RSS push/pull, {label}", f"{peak:.0f} MiB", "<= 300 MiB"))
        if not args.no_s3:
            print("\n## S3 (moto server on loopback) vs plain boto3")
            sys.stdout.flush()
            subprocess.run([sys.executable, str(HERE / "bench_s3.py"), "--size", args.size], check=True)
        if args.growth:
            print()
            sys.stdout.flush()
            growth = [sys.executable, str(HERE / "growth.py"), "--counts", args.growth, "--dir", str(work)]
            subprocess.run(growth, check=True)
        print("\n## Summary (ratios from this run)")
        print_table(summary, ("figure", "measured", "target"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
