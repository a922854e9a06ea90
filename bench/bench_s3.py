"""Push and pull through the S3 provider against moto's S3 server, next to plain boto3 on the same bytes.

    python bench/bench_s3.py [--size 1G] [--workers N] [--chunk-size 8M] [--endpoint-url URL] [--dir PATH]
                             [--base TREE] [--repeat N]

Without ``--endpoint-url`` it starts moto's server on loopback with tests/servers.py (and stops it
afterwards). In one run it measures, each in its own process:

- plain boto3, unencrypted, same concurrency and part size: ``upload_file`` / ``download_file``
  (s3transfer's multipart transfer), and one ``put_object`` / ``get_object`` per part in a thread
  pool (the request pattern ckpt-sync uses, so the ratio to it isolates our own overhead);
- the same parallel put/get with botocore's default CRC32 request checksums and response checks
  switched off (``when_required``, as ckpt-sync's S3 provider does): what those cost;
- ``ckpt-sync push`` and ``ckpt-sync pull --latest`` of the same file with the same workers and
  chunk size (chunking, hashing, Fernet encryption and verification included), and with ``--base``
  the same with another source tree (before/after of a change), interleaved ``--repeat`` times.

Prints throughput, our speed as a ratio of plain boto3's (1.00 = as fast; the target for push is
>= 0.8 of the plain parallel put_object), and each process's peak RSS. Figures are ratios from
one run on one machine: moto, the client and the encryption all share this machine's cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent / "tests"))
from common import Measured, MiB, fmt_rate, make_checkpoint, parse_size, print_table, run_python, source_tree  # noqa: E402

# The baselines, each run in its own process like ours so all pay interpreter start-up alike:
# s3transfer's multipart upload_file/download_file (what a user would reach for), and the request
# pattern ckpt-sync itself uses (one PutObject/GetObject per part, in parallel) minus chunking,
# hashing and encryption: the transport's limit for that pattern.
PLAIN = r"""
import os, sys, boto3
from concurrent.futures import ThreadPoolExecutor
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
op, path, bucket, key, workers, part = sys.argv[1:7]
workers, part = int(workers), int(part)
checks = {}
if op.endswith("_nocrc"):
    op = op[: -len("_nocrc")]
    checks = {"request_checksum_calculation": "when_required", "response_checksum_validation": "when_required"}
s3 = boto3.client("s3", config=Config(max_pool_connections=max(10, 2 * workers), **checks))
cfg = TransferConfig(multipart_threshold=part, multipart_chunksize=part, max_concurrency=workers, use_threads=True)
if op == "upload_file":
    s3.upload_file(path, bucket, key, Config=cfg)
elif op == "download_file":
    s3.download_file(bucket, key, path, Config=cfg)
elif op == "put_parts":
    fd = os.open(path, os.O_RDONLY)
    offsets = range(0, os.fstat(fd).st_size, part)
    put = lambda off: s3.put_object(Bucket=bucket, Key=f"{key}/{off:016d}", Body=os.pread(fd, part, off))
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(put, offsets))
elif op == "get_parts":
    keys = [o["Key"] for p in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key + "/")
            for o in p.get("Contents", ())]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    get = lambda k: os.pwrite(fd, s3.get_object(Bucket=bucket, Key=k)["Body"].read(), int(k.rsplit("/", 1)[1]))
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(get, keys))
    os.fsync(fd)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1G", help="checkpoint size (default 1G; 256M for a quick run)")
    ap.add_argument("--workers", type=int, default=None, help="parallel transfers, both sides (default: ours)")
    ap.add_argument("--chunk-size", default="8M", help="our chunk size and boto3's part size (default 8M)")
    ap.add_argument("--endpoint-url", default=None, help="an S3 endpoint to use instead of starting moto")
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temp folder)")
    ap.add_argument("--base", default=None, help="also run ckpt-sync from this source tree (before/after)")
    ap.add_argument("--repeat", type=int, default=1, help="interleaved rounds; medians (default 1)")
    args = ap.parse_args()

    from ckpt_sync.pipeline import default_workers

    workers = args.workers or default_workers()
    part = parse_size(args.chunk_size)
    work = Path(tempfile.mkdtemp(prefix="ckpt-s3-bench-", dir=args.dir))
    state = work / "servers"
    try:
        if args.endpoint_url:
            env = {"AWS_ENDPOINT_URL": args.endpoint_url}
        else:
            import servers

            env = servers.start(["s3"], state, prefer_default_ports=False)["s3"].env
        os.environ.update(env)
        run(work, parse_size(args.size), workers, part, args.chunk_size, args.base, args.repeat)
    finally:
        if not args.endpoint_url:
            import servers

            servers.stop(state)
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, size: int, workers: int, part: int, chunk_arg: str, base: str | None, repeat: int) -> None:
    import boto3
    from cryptography.fernet import Fernet

    s3 = boto3.client("s3")
    trees = {"": None, **({" (base)": source_tree(base)} if base else {})}
    buckets = ["bench-plain"] + [f"bench-ours{i}" for i in range(len(trees))]
    for bucket in buckets:
        s3.create_bucket(Bucket=bucket)
    key_env = {"BACKUP_ENCRYPTION_KEY": Fernet.generate_key().decode()}
    ckpt = make_checkpoint(work / "src" / "checkpoint_bench_1.pt", size)
    nbytes = ckpt.stat().st_size
    print(
        f"checkpoint: {nbytes / MiB:.0f} MiB (torch.save of an MLP + Adam state); "
        f"S3 at {os.environ['AWS_ENDPOINT_URL']}; {workers} workers, {part // MiB} MiB chunks/parts; "
        f"{os.cpu_count()} CPUs shared by server and client; median of {repeat} interleaved rounds"
    )
    plain_script = work / "plain_boto3.py"
    plain_script.write_text(PLAIN)
    runs: dict[str, list[Measured]] = {}

    def plain(op: str, path: Path, key: str) -> Measured:
        return run_python(str(plain_script), op, str(path), "bench-plain", key, str(workers), str(part))

    def note(name: str, m: Measured) -> None:
        runs.setdefault(name, []).append(m)

    # Interleaved, so a slow spell of the shared machine does not land on one side only.
    for r in range(repeat):
        note("plain boto3 upload_file (s3transfer multipart)", plain("upload_file", ckpt, f"file{r}"))
        note("plain boto3 put_object per part, parallel", plain("put_parts", ckpt, f"parts{r}"))
        note("plain put_object per part, no SDK checksums", plain("put_parts_nocrc", ckpt, f"nocrc{r}"))
        for i, (label, tree) in enumerate(trees.items()):
            env = {**key_env, **({"PYTHONPATH": tree} if tree else {})}
            url = f"s3://bench-ours{i}/run{r}"
            note(f"ckpt-sync push{label}", run_python("-m", "ckpt_sync.cli", "push", str(ckpt), "--to", url,
                 "--workers", str(workers), "--chunk-size", chunk_arg, env=env))  # fmt: skip
        note("plain boto3 download_file (s3transfer ranged)", plain("download_file", work / "p-file.pt", f"file{r}"))
        note("plain boto3 get_object per part, parallel", plain("get_parts", work / "p-parts.pt", f"parts{r}"))
        note("plain get_object per part, no SDK checksums", plain("get_parts_nocrc", work / "p-nocrc.pt", f"nocrc{r}"))
        for i, (label, tree) in enumerate(trees.items()):
            env = {**key_env, **({"PYTHONPATH": tree} if tree else {})}
            out = work / f"out{i}"
            note(f"ckpt-sync pull --latest{label}", run_python("-m", "ckpt_sync.cli", "pull", "--latest", "--from",
                 f"s3://bench-ours{i}/run{r}", "--to", str(out), "--workers", str(workers), env=env))  # fmt: skip
            assert (out / ckpt.name).stat().st_size == nbytes
            shutil.rmtree(out)
        for out in ("p-file.pt", "p-parts.pt", "p-nocrc.pt"):
            assert (work / out).stat().st_size == nbytes, out
            (work / out).unlink()

    def median(name: str) -> Measured:
        return sorted(runs[name], key=lambda m: m.seconds)[len(runs[name]) // 2]

    def median_cpu(name: str) -> Measured:
        return sorted(runs[name], key=lambda m: m.cpu)[len(runs[name]) // 2]

    up, down = median("plain boto3 put_object per part, parallel"), median("plain boto3 get_object per part, parallel")
    rows = []
    for name in runs:
        m = median(name)
        ref = up if any(w in name for w in ("push", "put", "upload")) else down
        rows.append((name, fmt_rate(nbytes, m.seconds), f"{ref.seconds / m.seconds:.2f}",
                     median_cpu(name).cpu_per_gib(nbytes), f"{m.peak_mib:.0f}"))  # fmt: skip
    print_table(rows, ("operation", "throughput", "x plain parts", "client CPU s/GiB", "peak RSS MiB"))
    for label in trees:
        push, pull = median(f"ckpt-sync push{label}"), median(f"ckpt-sync pull --latest{label}")
        print(
            f"ckpt-sync{label}: push {up.seconds / push.seconds:.2f} x plain parallel put_object, "
            f"{median('plain boto3 upload_file (s3transfer multipart)').seconds / push.seconds:.2f} x upload_file; "
            f"pull {down.seconds / pull.seconds:.2f} x plain parallel get_object, "
            f"{median('plain boto3 download_file (s3transfer ranged)').seconds / pull.seconds:.2f} x download_file"
        )


if __name__ == "__main__":
    main()
