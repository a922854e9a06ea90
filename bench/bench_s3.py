"""Push and pull through the S3 provider against moto's S3 server, next to plain boto3 on the same bytes.

    python bench/bench_s3.py [--size 1G] [--workers N] [--chunk-size 8M] [--parts 8M,16M]
                             [--endpoint-url URL | --tls] [--pin-server] [--dir PATH] [--base TREE]
                             [--repeat N]

Without ``--endpoint-url`` it starts moto's server on loopback with tests/servers.py (and stops it
afterwards); ``--tls`` serves it over https with a self-signed certificate (AWS_CA_BUNDLE), as
S3 itself is reached: TLS then costs both sides, and neither request signature covers the body
(botocore's default over TLS sends it aws-chunked with a CRC32 trailer; ckpt-sync's S3 provider
sends it whole, see providers/s3.py). ``--pin-server`` gives the server one CPU and every client the
others, so neither side's work slows the other, as with a remote store (Linux).

In one run it measures, each in its own process:

- plain boto3, unencrypted, same concurrency: ``upload_file`` / ``download_file`` (s3transfer's
  multipart transfer, in parts of our chunk size), and one ``put_object`` / ``get_object`` per part
  in a thread pool, at each of ``--parts`` (the request pattern ckpt-sync uses, so the ratio to the
  faster of them isolates our own overhead; get + fsync, as our pull fsyncs);
- the same parallel put/get with botocore's default CRC32 request checksums and response checks
  switched off (``when_required``, as ckpt-sync's S3 provider does): what those cost;
- s3torchconnector (AWS's CRT client for PyTorch checkpoints): the same file through
  ``S3Checkpoint.writer`` and back through ``S3Checkpoint.reader`` + fsync, in parts of our chunk
  size; where it cannot reach the server, one line says why. Its process imports torch (its
  package does), shown beside it;
- ``ckpt-sync push`` and ``ckpt-sync pull --latest`` of the same file with the same workers and
  chunk size (chunking, hashing, Fernet encryption and verification included), and with ``--base``
  the same with another source tree (before/after of a change), interleaved ``--repeat`` times.

Every run is measured alike: the order of the runs inside a round turns from round to round (the one
run last in every round was slowed ~15% by the write-back of the runs before it), each starts after
``os.sync``, and each round starts with the buckets emptied.

Ranged downloads (download_file, the reader) are distorted by moto, which re-reads the whole object
for every ranged GET: they run every round up to 256 MiB, above that in the first round only.

Prints throughput, each row's speed as a ratio of the faster plain parallel put/get (1.00 = as
fast; issue 17's target for our push and pull is >= 0.9), client CPU and each process's peak RSS;
then our push as a ratio of upload_file's speed and client CPU (issue 30: >= 1.2 x and <= 1.2 x).
Figures are ratios from one run on one machine: moto, the client and the encryption all share this machine's cores.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent / "tests"))
from common import (  # noqa: E402
    Measured,
    MiB,
    fmt_rate,
    launcher,
    make_checkpoint,
    median_cpu,
    median_wall,
    parse_size,
    print_table,
    run_python,
    source_tree,
)

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

# s3torchconnector (AWS's CRT-based client for PyTorch checkpoints) on the same file's bytes, in its
# own process like the rows above: the file copied in blocks of the part size through ``S3Checkpoint.writer``
# (what ``torch.save(state, writer)`` streams), and read back through ``S3Checkpoint.reader`` into a
# file + fsync. Path-style addressing: moto on 127.0.0.1 has no per-bucket host names.
CONNECTOR = r"""
import os, shutil, sys
from s3torchconnector import S3Checkpoint, S3ClientConfig
from s3torchconnectorclient import S3Exception
op, path, url, part = sys.argv[1:5]
config = S3ClientConfig(part_size=int(part), force_path_style=True)
checkpoint = S3Checkpoint(os.environ.get("AWS_DEFAULT_REGION", "us-east-1"), os.environ["AWS_ENDPOINT_URL"], config)
if op == "writer":
    try:
        with open(path, "rb") as src, checkpoint.writer(url) as dst:
            shutil.copyfileobj(src, dst, int(part))
    except S3Exception as e:  # see ETAG_NOTE: the upload completed; the caller checks the object
        if 'Header "ETag" not found' not in str(e):
            raise
        print("no-etag")
elif op == "reader":
    with checkpoint.reader(url) as src, open(path, "wb") as dst:
        shutil.copyfileobj(src, dst, int(part))
        dst.flush()
        os.fsync(dst.fileno())
"""
WRITER = "s3torchconnector S3Checkpoint.writer (CRT multipart)"
READER = "s3torchconnector S3Checkpoint.reader (CRT ranged), + fsync *"
UPLOAD = "plain boto3 upload_file (s3transfer multipart)"
DOWNLOAD = "plain boto3 download_file (s3transfer ranged) *"
RANGED_NOTE = (
    "* moto re-reads the whole object for every ranged GET, which distorts those clients' downloads "
    "(that row measures moto)"
)
ETAG_NOTE = (
    "s3torchconnector writer: moto {moto} answers CompleteMultipartUpload with <CompleteMultipartUploadResponse>, "
    "not S3's <CompleteMultipartUploadResult>, so the CRT fails ('Header \"ETag\" not found') after the upload "
    "completed; the row times the whole upload, and each object is checked by HeadObject (size)"
)
# The ranged downloads (download_file, the reader) cost moto ~size^2 / part (see RANGED_NOTE): every
# round up to this size, above it the first round only.
RANGED_EVERY_ROUND_UP_TO = 256 * MiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1G", help="checkpoint size (default 1G; 256M for a quick run)")
    ap.add_argument("--workers", type=int, default=None, help="parallel transfers, both sides (default: ours)")
    ap.add_argument("--chunk-size", default="8M", help="our chunk size and s3transfer's part size (default 8M)")
    ap.add_argument("--parts", default="8M,16M", help="part sizes of the plain parallel put/get (default 8M,16M)")
    ap.add_argument("--endpoint-url", default=None, help="an S3 endpoint to use instead of starting moto")
    ap.add_argument("--tls", action="store_true", help="moto over TLS (a self-signed certificate), as S3 is reached")
    pin = "moto on one CPU, the clients on the others (the store's CPU is not the client's, as with S3)"
    ap.add_argument("--pin-server", action="store_true", help=pin)
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temp folder)")
    ap.add_argument("--base", default=None, help="also run ckpt-sync from this source tree (before/after)")
    ap.add_argument("--repeat", type=int, default=1, help="interleaved rounds; medians (default 1)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ckpt-s3-bench-", dir=args.dir))
    try:
        measure(
            work,
            parse_size(args.size),
            repeat=args.repeat,
            workers=args.workers,
            chunk_size=args.chunk_size,
            parts=[parse_size(p) for p in args.parts.split(",")],
            base=args.base,
            endpoint_url=args.endpoint_url,
            tls=args.tls,
            pin_server=args.pin_server,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(
    work: Path,
    size: int,
    *,
    repeat: int = 1,
    workers: int | None = None,
    chunk_size: str = "8M",
    parts: list[int] | None = None,
    base: str | None = None,
    endpoint_url: str | None = None,
    tls: bool = False,
    pin_server: bool = False,
) -> dict[str, float]:
    """Run the section in ``work`` (starting moto unless ``endpoint_url``, over TLS with ``tls``, on a
    CPU of its own with ``pin_server``); print it and return our push and pull as ratios of the
    faster plain parallel put/get."""
    from ckpt_sync.pipeline import default_workers

    work.mkdir(parents=True, exist_ok=True)
    state = work / "servers"
    saved = dict(os.environ)
    import servers

    cpus = sorted(os.sched_getaffinity(0))
    if pin_server and len(cpus) < 2:
        raise SystemExit("--pin-server needs at least 2 CPUs")
    try:
        with contextlib.ExitStack() as stack:
            if pin_server:  # the server inherits the first CPU; this process and the launcher (every client) the rest
                os.sched_setaffinity(0, cpus[:1])
                stack.callback(os.sched_setaffinity, 0, cpus)
                stack.callback(launcher().set_cpus, cpus)
                launcher().set_cpus(cpus[1:])
            if endpoint_url:
                os.environ["AWS_ENDPOINT_URL"] = endpoint_url
            elif tls:
                os.environ.update(stack.enter_context(servers.moto_over_tls(state)))
            else:
                os.environ.update(servers.start(["s3"], state, prefer_default_ports=False)["s3"].env)
                stack.callback(servers.stop, state)
            if pin_server:
                os.sched_setaffinity(0, cpus[1:])
            parts = parts or [8 * MiB, 16 * MiB]
            cores = (
                f"server on CPU {cpus[0]}, clients on {len(cpus) - 1} other CPU(s)"
                if pin_server
                else f"{len(cpus)} CPUs shared by server and client"
            )
            return run(work, size, workers or default_workers(), chunk_size, parts, base, repeat, cores)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def connector_env() -> dict[str, str]:
    """The CRT reads no AWS_CA_BUNDLE: over TLS it trusts moto's certificate through SSL_CERT_FILE."""
    bundle = os.environ.get("AWS_CA_BUNDLE")
    return {"SSL_CERT_FILE": bundle} if bundle else {}


def connector_problem(script: Path, work: Path, part: int) -> str | None:
    """None where s3torchconnector writes a 1 MiB object here and reads it back, else one line saying
    why not. Run with a time limit: its client retries what fails (a certificate it does not trust)."""
    if importlib.util.find_spec("s3torchconnector") is None:
        return "not installed (pip install -e '.[bench]')"
    probe, back = work / "probe.bin", work / "probe-back.bin"
    probe.write_bytes(os.urandom(MiB))
    try:
        for op, path in (("writer", probe), ("reader", back)):
            cmd = [sys.executable, "-P", str(script), op, str(path), "s3://bench-plain/probe", str(part)]
            try:
                done = subprocess.run(
                    cmd, env={**os.environ, **connector_env()}, capture_output=True, text=True, timeout=60
                )
            except subprocess.TimeoutExpired:
                return f"cannot talk to the server: its {op} did not finish a 1 MiB object in 60 s"
            if done.returncode != 0:
                return f"cannot talk to the server: its {op} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}"
        return None if back.read_bytes() == probe.read_bytes() else "its reader returned other bytes than it wrote"
    finally:
        probe.unlink(missing_ok=True)
        back.unlink(missing_ok=True)


def run(
    work: Path, size: int, workers: int, chunk_arg: str, parts: list[int], base: str | None, repeat: int,
    cores: str,
) -> dict[str, float]:  # fmt: skip
    import boto3
    from cryptography.fernet import Fernet

    s3 = boto3.client("s3")
    part = parse_size(chunk_arg)
    trees = {"": None, **({" (base)": source_tree(base)} if base else {})}
    buckets = ["bench-plain"] + [f"bench-ours{i}" for i in range(len(trees))]
    for bucket in buckets:
        s3.create_bucket(Bucket=bucket)
    key_env = {"BACKUP_ENCRYPTION_KEY": Fernet.generate_key().decode()}
    ckpt = make_checkpoint(work / "src" / "checkpoint_bench_1.pt", size)
    nbytes = ckpt.stat().st_size
    ranged_every_round = nbytes <= RANGED_EVERY_ROUND_UP_TO
    once = f" (rows marked * in the first round only: over {RANGED_EVERY_ROUND_UP_TO // MiB} MiB)"
    print(
        f"checkpoint: {nbytes / MiB:.0f} MiB (torch.save of an MLP + Adam state); "
        f"S3 at {os.environ['AWS_ENDPOINT_URL']}; {workers} workers, our chunks {part // MiB} MiB; "
        f"{cores}; median of {repeat} interleaved rounds{'' if ranged_every_round or repeat == 1 else once}"
    )
    plain_script = work / "plain_boto3.py"
    plain_script.write_text(PLAIN)
    connector_script = work / "s3torchconnector_rw.py"
    connector_script.write_text(CONNECTOR)
    no_connector = connector_problem(connector_script, work, part)
    runs: dict[str, list[Measured]] = {}
    uploads: set[str] = set()  # the rows of the push side

    def plain(op: str, path: Path, key: str, size: int = part) -> Measured:
        return run_python(str(plain_script), op, str(path), "bench-plain", key, str(workers), str(size))

    def connector(op: str, path: Path, key: str) -> Measured:
        m = run_python(str(connector_script), op, str(path), f"s3://bench-plain/{key}", str(part), env=connector_env())
        if op == "writer":  # its object is whole, even where moto's reply made it fail (ETAG_NOTE)
            assert s3.head_object(Bucket="bench-plain", Key=key)["ContentLength"] == nbytes, "writer's object"
        return m

    def note(name: str, m: Measured) -> None:
        runs.setdefault(name, []).append(m)

    put_rows = [f"plain put_object per {p // MiB} MiB part, parallel" for p in parts]
    get_rows = [f"plain get_object per {p // MiB} MiB part, parallel, + fsync" for p in parts]

    def ours(verb: str, i: int, tree: str | None, r: int) -> Measured:
        env = {**key_env, **({"PYTHONPATH": tree} if tree else {})}
        url = f"s3://bench-ours{i}/run{r}"
        if verb == "push":
            return run_python("-m", "ckpt_sync.cli", "push", str(ckpt), "--to", url, "--workers", str(workers),
                              "--chunk-size", chunk_arg, env=env)  # fmt: skip
        out = work / f"out{i}"
        m = run_python("-m", "ckpt_sync.cli", "pull", "--latest", "--from", url, "--to", str(out),
                       "--workers", str(workers), env=env)  # fmt: skip
        assert (out / ckpt.name).stat().st_size == nbytes
        shutil.rmtree(out)
        return m

    # Interleaved, so a slow spell of the shared machine does not land on one side only; the order
    # inside a round turns each round, and every run starts with the disk's write-back done
    # (os.sync: moto spools each body to a temporary file, and the kernel writing those out
    # would otherwise be charged to whichever run came next).
    for r in range(repeat):
        ranged = r == 0 or ranged_every_round
        puts = [(UPLOAD, partial(plain, "upload_file", ckpt, "file"))]
        if no_connector is None:
            puts.append((WRITER, partial(connector, "writer", ckpt, "conn")))
        puts += [
            (n, partial(plain, "put_parts", ckpt, f"parts{p}-{r}", p)) for p, n in zip(parts, put_rows, strict=True)
        ]
        nocrc = f"plain put_object per {part // MiB} MiB part, no SDK checksums"
        puts.append((nocrc, partial(plain, "put_parts_nocrc", ckpt, f"nocrc{r}")))
        puts += [
            (f"ckpt-sync push{label}", partial(ours, "push", i, t, r)) for i, (label, t) in enumerate(trees.items())
        ]
        outputs = ["p-nocrc.pt", *(f"p-parts{p}.pt" for p in parts)]
        gets = []
        if ranged:
            gets.append((DOWNLOAD, partial(plain, "download_file", work / "p-file.pt", "file")))
            outputs.append("p-file.pt")
            if no_connector is None:
                gets.append((READER, partial(connector, "reader", work / "p-conn.pt", "conn")))
                outputs.append("p-conn.pt")
        gets += [(n, partial(plain, "get_parts", work / f"p-parts{p}.pt", f"parts{p}-{r}", p))
                 for p, n in zip(parts, get_rows, strict=True)]  # fmt: skip
        nocrc = f"plain get_object per {part // MiB} MiB part, no SDK checksums, + fsync"
        gets.append((nocrc, partial(plain, "get_parts_nocrc", work / "p-nocrc.pt", f"nocrc{r}")))
        gets += [(f"ckpt-sync pull --latest{label}", partial(ours, "pull", i, t, r))
                 for i, (label, t) in enumerate(trees.items())]  # fmt: skip
        uploads.update(name for name, _ in puts)
        for side in (puts, gets):
            for name, measure_one in side[r % len(side) :] + side[: r % len(side)]:
                os.sync()
                note(name, measure_one())
        for out in outputs:
            assert (work / out).stat().st_size == nbytes, out
            (work / out).unlink()
        for bucket in buckets:  # a store as full at every round as at the first (moto holds every body)
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                if keys := [{"Key": obj["Key"]} for obj in page.get("Contents", ())]:
                    s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})

    up = min((median_wall(runs[n]) for n in put_rows), key=lambda m: m.seconds)
    down = min((median_wall(runs[n]) for n in get_rows), key=lambda m: m.seconds)
    rows = []
    for name in runs:
        m = median_wall(runs[name])
        ref = up if name in uploads else down
        peak = max(x.peak_mib or 0 for x in runs[name])
        rows.append((name, fmt_rate(nbytes, m.seconds), f"{ref.seconds / m.seconds:.2f}",
                     median_cpu(runs[name]).cpu_per_gib(nbytes), f"{peak:.0f}"))  # fmt: skip
    if no_connector is not None:
        rows.append(("s3torchconnector writer and reader", "not measured (below)", "", "", ""))
    print_table(rows, ("operation", "throughput", "x faster plain parts", "client CPU s/GiB", "peak RSS MiB"))
    print(RANGED_NOTE)
    print_connector_notes(no_connector, runs, nbytes)
    return ratios(runs, trees, up, down)


def print_connector_notes(no_connector: str | None, runs: dict[str, list[Measured]], nbytes: int) -> None:
    """Why s3torchconnector has no rows, or what its rows carry that the others do not."""
    if no_connector is not None:
        print(f"s3torchconnector: not measured: {no_connector}")
        return
    if any("no-etag" in m.stdout for m in runs[WRITER]):
        print(ETAG_NOTE.format(moto=importlib.metadata.version("moto")))
    # Its package imports torch, which a training process has already paid for: shown, not subtracted.
    alone = run_python("-c", "import s3torchconnector")
    print(
        f"s3torchconnector's rows include importing it, which imports torch: {alone.cpu:.2f} CPU s "
        f"({alone.cpu / (nbytes / (1 << 30)):.2f} s/GiB of this checkpoint) and {alone.peak_mib:.0f} MiB peak RSS "
        "in a process that does only that"
    )


def ratios(
    runs: dict[str, list[Measured]], trees: dict[str, str | None], up: Measured, down: Measured
) -> dict[str, float]:
    """Print and return each ckpt-sync tree's push and pull against the plain clients (speed: how many
    times as fast; CPU: how many times the CPU)."""
    upload, download = median_wall(runs[UPLOAD]), median_wall(runs[DOWNLOAD])

    def faster(name: str, m: Measured) -> str:  # "" where that row was not measured; * as the row has it
        if name not in runs:
            return ""
        star = " *" if name.endswith("*") else ""
        return f", {median_wall(runs[name]).seconds / m.seconds:.2f} x {name.split(' (')[0]}{star}"

    out = {}
    for label in trees:
        push, pull = median_wall(runs[f"ckpt-sync push{label}"]), median_wall(runs[f"ckpt-sync pull --latest{label}"])
        cpu = median_cpu(runs[f"ckpt-sync push{label}"]).cpu / median_cpu(runs[UPLOAD]).cpu
        print(
            f"ckpt-sync{label}: push {up.seconds / push.seconds:.2f} x the faster plain parallel put_object, "
            f"{upload.seconds / push.seconds:.2f} x upload_file (client CPU {cpu:.2f} x its){faster(WRITER, push)}; "
            f"pull {down.seconds / pull.seconds:.2f} x the faster plain parallel get_object + fsync, "
            f"{download.seconds / pull.seconds:.2f} x download_file *{faster(READER, pull)}"
        )
        out[f"push{label} vs faster plain parallel put_object"] = up.seconds / push.seconds
        out[f"pull{label} vs faster plain parallel get_object"] = down.seconds / pull.seconds
        out[f"push{label} vs upload_file"] = upload.seconds / push.seconds
        out[f"push{label} client CPU vs upload_file"] = cpu
    return out


if __name__ == "__main__":
    main()
