"""``ckpt-sync queue``: the jobs a watch has not committed (pending, running or interrupted, given up,
superseded by a newer version), and ``--drop ID`` for one the user no longer wants uploaded (it leaves
the queue; its held copy is freed)."""

from __future__ import annotations

import argparse
import json

from ..errors import EXIT_OK
from ..units import format_bytes
from .common import add_json_option, open_queue, say, table, when


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("queue", parents=[common], help="jobs a watch has not committed yet; --drop ID gives one up")
    p.add_argument("dir", nargs="?", metavar="DIR", help="the watched folder (its state is in DIR/.ckpt-sync)")
    p.add_argument("--state-dir", metavar="DIR", help="the queue's state folder")
    p.add_argument(
        "--drop", type=int, action="append", default=[], metavar="ID", help="remove job ID from the queue (repeatable)"
    )
    add_json_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    queue = open_queue(args, "queue")
    try:
        for job_id in args.drop:
            job = queue.drop(job_id)
            say(f"dropped job {job.id} ({job.name}): it will not be uploaded; its held copy was released")
        jobs = queue.listing()
    finally:
        queue.close()
    if args.json:
        print(json.dumps([_row(j) for j in jobs], indent=2))
        return EXIT_OK
    if not args.drop:
        if not jobs:
            print("the queue is empty: every checkpoint it was given is committed")
            return EXIT_OK
        rows = [
            [str(j.id), j.status, j.name, format_bytes(j.size), str(j.attempts), when(j.updated), j.last_error or "-"]
            for j in jobs
        ]
        print(table(rows, ["ID", "STATUS", "NAME", "SIZE", "ATTEMPTS", "UPDATED", "LAST ERROR"]))
    return EXIT_OK


def _row(job: object) -> dict[str, object]:
    keys = ("id", "status", "name", "path", "size", "attempts", "last_error", "created", "updated")
    return {k: getattr(job, k) for k in keys}
