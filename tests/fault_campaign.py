"""Fault campaign: ``kill -9`` a running ``watch`` at random points while a trainer saves and rotates.

A writer process saves real ``torch.save`` checkpoints (mostly tmp + rename, every fifth written in
place) and keeps the newest few, logging each file's SHA-256. Meanwhile ``watch`` is killed with
SIGKILL after a random delay and restarted at once, over and over; optionally against S3 (the
moto server) through tests/faultproxy.py, which breaks a share of the requests. At the end a
``watch --once`` drains the queue, and the repository is checked against the writer's log:

- lost: a checkpoint written but never committed;
- duplicates: a checkpoint committed more than once;
- torn: a committed checkpoint whose bytes are not the ones written;
- ``verify --read-data``: every stored chunk of every checkpoint reads back and matches.

    python tests/fault_campaign.py --kills 30 --s3-share 0.5     # the full campaign (also a slow test)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

WRITER = r"""
import hashlib, json, os, sys, time
import blake3
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from helpers import make_torch_checkpoint
folder, count, interval = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
keep = 5
log = open(folder.parent / "written.jsonl", "a")
saved = []
for step in range(1, count + 1):
    path = folder / f"checkpoint_campaign_{step:05d}.pt"
    if step % 5:
        tmp = folder / f".{path.name}.tmp"
        make_torch_checkpoint(tmp, hidden=96, seed=step, step=step, history=step)
        os.replace(tmp, path)
    else:  # a non-atomic save: written in place, then closed
        make_torch_checkpoint(path, hidden=96, seed=step, step=step, history=step)
    data = path.read_bytes()
    hashes = {"sha256": hashlib.sha256(data).hexdigest(), "blake3": blake3.blake3(data).hexdigest()}
    log.write(json.dumps({"name": path.name, **hashes}) + "\n")
    log.flush()
    saved.append(path)
    while len(saved) > keep:  # FIFO rotation, as CheckpointManager does
        saved.pop(0).unlink()
    time.sleep(interval)
"""


@dataclass
class Figures:
    written: int = 0
    kills: int = 0
    kills_s3: int = 0
    committed: int = 0
    lost: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    torn: list[str] = field(default_factory=list)
    verify_read_data: str = ""
    faults_injected: dict[str, int] = field(default_factory=dict)

    def ok(self) -> bool:
        return not (self.lost or self.duplicates or self.torn) and self.verify_read_data == "ok"


def _cli(*args: str, env: dict[str, str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ckpt_sync.cli", *args], capture_output=True, text=True, env=env, timeout=900, **kw
    )


def _phase(
    ckdir: Path,
    url: str,
    env: dict[str, str],
    *,
    kills: int,
    interval: float,
    rng: random.Random,
    logs: Path,
    extra: tuple[str, ...] = (),
) -> int:
    """Run a writer for ``kills`` rounds of watch-then-SIGKILL; returns how many kills landed."""
    per_round = 4  # checkpoints written per kill, on average
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(ckdir), str(kills * per_round), str(interval), str(Path(__file__).parent)],
        env=env,
    )
    landed = 0

    def start_watch(i: int) -> subprocess.Popen[bytes]:
        log = open(logs / f"watch-{url.split(':')[0]}-{i}.log", "wb")  # noqa: SIM115 - owned by the process
        return subprocess.Popen(
            [sys.executable, "-m", "ckpt_sync.cli", "watch", str(ckdir), "--to", url, "--settle", "0.3",
             "--rescan", "1", "--keep", "0", "--chunk-size", "64K", *extra],
            stdout=subprocess.DEVNULL, stderr=log, env=env,
        )  # fmt: skip

    try:
        for i in range(kills):
            watch = start_watch(i)
            # Killed at a random point of its *running* life: from the moment it has looked at the folder
            # (its "watching" line). A watch killed before it ever scanned is a sidecar that was not up,
            # and what the trainer rotates away meanwhile no sidecar could have held.
            log_path = logs / f"watch-{url.split(':')[0]}-{i}.log"
            deadline = time.monotonic() + 120
            while watch.poll() is None and time.monotonic() < deadline and "watching " not in log_path.read_text():
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, per_round * interval * 1.5))
            if watch.poll() is None:
                os.kill(watch.pid, signal.SIGKILL)
                landed += 1
            watch.wait()
        # Until the writer is done a watch stays up: a checkpoint no watch ever saw is not the test.
        watch = start_watch(kills)
        writer.wait(timeout=600)
        time.sleep(2.0)
        watch.send_signal(signal.SIGTERM)
        watch.wait(timeout=300)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    return landed


def _check(url: str, env: dict[str, str], ckdirs: list[Path], figures: Figures, extra: tuple[str, ...]) -> None:
    from ckpt_sync.api import open_repository

    written: dict[str, dict[str, str]] = {}
    for ckdir in ckdirs:
        for line in (ckdir.parent / "written.jsonl").read_text().splitlines():
            d = json.loads(line)
            written[d["name"]] = d
    figures.written += len(written)
    saved_env = dict(os.environ)
    os.environ.update(env)
    try:
        repo = open_repository(url)
        manifests = list(repo.manifests())
        committed = {m.id: _committed_hash(repo, m) for m in manifests if m.name in written}
        repo.provider.close()
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
    names = Counter(m.name for m in manifests)
    figures.committed += len(names)
    figures.duplicates += sorted(n for n, c in names.items() if c > 1)
    figures.lost += sorted(set(written) - set(names))
    figures.torn += sorted(
        m.name for m in manifests if m.name in written and written[m.name][committed[m.id][0]] != committed[m.id][1]
    )
    verify = _cli("verify", "--read-data", "--repo", url, *extra, env=env)
    result = "ok" if verify.returncode == 0 else f"failed: {verify.stderr.strip()[-300:]}"
    figures.verify_read_data = result if figures.verify_read_data in ("", "ok") else figures.verify_read_data


def _committed_hash(repo: Any, m: Any) -> tuple[str, str]:
    """(algorithm, hex) of the file ``m`` committed: the hash it records, or (format 2, which records
    none) the SHA-256 of what the repository restores for it, every chunk checked against its id."""
    import hashlib

    import ckpt_sync

    if m.files[0].digest is not None:
        return m.files[0].digest
    with ckpt_sync.open(repo, m.id) as f:
        return "sha256", hashlib.sha256(f.read()).hexdigest()


def run_campaign(workdir: Path, *, kills: int, s3_share: float = 0.0, interval: float = 0.5, seed: int = 11) -> Figures:
    """``kills`` SIGKILLs in all, ``s3_share`` of them against S3 behind a flaky proxy."""
    from cryptography.fernet import Fernet

    rng = random.Random(seed)
    os.environ.setdefault("BACKUP_ENCRYPTION_KEY", Fernet.generate_key().decode())
    env = dict(os.environ)
    figures = Figures()
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    s3_kills = round(kills * s3_share)
    local_kills = kills - s3_kills

    if local_kills:
        ckdir = workdir / "local" / "ck"
        ckdir.mkdir(parents=True)
        url = (workdir / "local" / "repo").as_uri()
        figures.kills += _phase(ckdir, url, env, kills=local_kills, interval=interval, rng=rng, logs=logs)
        drain = _cli("watch", str(ckdir), "--to", url, "--once", "--settle", "0.3", "--keep", "0", env=env)
        if drain.returncode:
            figures.verify_read_data = f"drain failed: {drain.stderr.strip()[-300:]}"
        _check(url, env, [ckdir], figures, ())

    if s3_kills:
        import boto3
        import servers as harness
        from faultproxy import FaultProxy

        server = harness.start(["s3"], workdir / "servers", prefer_default_ports=False)["s3"]
        try:
            s3env = {**env, **server.env, "AWS_EC2_METADATA_DISABLED": "true"}
            boto3.client(
                "s3",
                endpoint_url=server.env["AWS_ENDPOINT_URL"],
                aws_access_key_id=server.env["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=server.env["AWS_SECRET_ACCESS_KEY"],
                region_name=server.env["AWS_DEFAULT_REGION"],
            ).create_bucket(Bucket="campaign")
            url = "s3://campaign/run"
            ckdir = workdir / "s3" / "ck"
            ckdir.mkdir(parents=True)
            with FaultProxy(server.port, fault_rate=0.05, stall_seconds=0.3, seed=seed) as proxy:
                flaky = {**s3env, "AWS_ENDPOINT_URL": proxy.url}
                budget = ("--retry-attempts", "12", "--retry-time", "60")
                figures.kills_s3 = _phase(
                    ckdir, url, flaky, kills=s3_kills, interval=interval, rng=rng, logs=logs, extra=budget
                )
                figures.kills += figures.kills_s3
                drain = _cli("watch", str(ckdir), "--to", url, "--once", "--settle", "0.3", "--keep", "0", *budget,
                             env=flaky)  # fmt: skip
                if drain.returncode:
                    figures.verify_read_data = f"drain failed: {drain.stderr.strip()[-300:]}"
                figures.faults_injected = {k: v for k, v in proxy.counts.items() if k != "requests"}
                figures.faults_injected["requests"] = proxy.counts["requests"]
            _check(url, s3env, [ckdir], figures, ())
        finally:
            harness.terminate(server)
    return figures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=30)
    ap.add_argument("--s3-share", type=float, default=0.5)
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between the writer's saves")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    import tempfile

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ckpt-campaign-"))
    figures = run_campaign(workdir, kills=args.kills, s3_share=args.s3_share, interval=args.interval, seed=args.seed)
    print(json.dumps(asdict(figures), indent=1))
    return 0 if figures.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
