"""Chunk encryption across cores: a thread pool (what ckpt-sync uses) against a process pool.

    python bench/threads_vs_processes.py [--chunks 64] [--chunk-size 8M]

The per-chunk work is what push does in its workers: the keyed chunk id (HMAC-SHA256, releases the
GIL) and the binary Fernet token (AES-CBC holds the GIL, fed in 1 MiB slices; HMAC releases it).
Processes avoid the GIL but pay for sending each plaintext to the child and the token back.
"""

from __future__ import annotations

import argparse
import hmac
import os
import sys
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MiB, parse_size, print_table

from ckpt_sync.format.crypto import FernetKey

KEY = os.urandom(32)
ID_KEY = os.urandom(32)


def work(chunk: bytes) -> tuple[str, int]:
    cid = hmac.digest(ID_KEY, chunk, "sha256").hex()
    token = FernetKey(KEY).encrypt(chunk)
    return cid, len(token)


def work_returning_token(chunk: bytes) -> tuple[str, bytes]:
    cid = hmac.digest(ID_KEY, chunk, "sha256").hex()
    return cid, bytes(FernetKey(KEY).encrypt(chunk))


def measure(executor: Executor, fn, chunks: list[bytes]) -> float:
    list(executor.map(fn, chunks[:2]))  # warm up (process start-up is not what we measure)
    start = time.perf_counter()
    list(executor.map(fn, chunks))
    return sum(map(len, chunks)) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=64)
    ap.add_argument("--chunk-size", default="8M")
    args = ap.parse_args()
    size = parse_size(args.chunk_size)
    chunks = [os.urandom(size) for _ in range(args.chunks)]
    cores = os.cpu_count() or 2
    rows = []
    with ThreadPoolExecutor(1) as ex:
        one = measure(ex, work, chunks)
    rows.append(("1 thread", f"{one / MiB:.0f} MiB/s", "1.00"))
    with ThreadPoolExecutor(cores) as ex:
        r = measure(ex, work, chunks)
    rows.append((f"{cores} threads", f"{r / MiB:.0f} MiB/s", f"{r / one:.2f}"))
    with ProcessPoolExecutor(cores) as ex:
        r = measure(ex, work_returning_token, chunks)
    rows.append((f"{cores} processes (token sent back)", f"{r / MiB:.0f} MiB/s", f"{r / one:.2f}"))
    with ProcessPoolExecutor(cores) as ex:
        r = measure(ex, work, chunks)
    rows.append((f"{cores} processes (token dropped: the IPC floor)", f"{r / MiB:.0f} MiB/s", f"{r / one:.2f}"))
    print(f"chunk id + binary Fernet token over {args.chunks} x {size / MiB:.0f} MiB chunks, {cores} cores")
    print_table(rows, ("pool", "throughput", "x 1 thread"))


if __name__ == "__main__":
    main()
