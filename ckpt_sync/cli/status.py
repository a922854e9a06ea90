"""``ckpt-sync status``: backlog, upload in flight, newest committed, lag, throughput, last error of a watch."""

from __future__ import annotations

import argparse
import json

from ..errors import EXIT_OK, CkptSyncError
from ..redact import redact
from ..units import format_bytes
from .common import add_json_option, add_repo_option, err, open_queue, open_repository, when


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("status", parents=[common], help="backlog, lag, throughput and last error of a watch")
    p.add_argument("dir", nargs="?", metavar="DIR", help="the watched folder (its state is in DIR/.ckpt-sync)")
    p.add_argument("--state-dir", metavar="DIR", help="the queue's state folder")
    add_json_option(p)
    add_repo_option(p, "--from")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..service.status import gather  # imported by the verb that needs it, not at every start-up

    queue = open_queue(args, "status")
    # The repository the watch uploads to and its store's endpoint (recorded by its worker), unless a
    # flag names another: a new shell without the watch's environment still reaches it.
    recorded, endpoint = queue.destination()
    if recorded and not args.settings.values["repo"].source.startswith("flag"):
        args.repo = recorded
        if not args.settings.values["endpoint_url"].source.startswith("flag"):
            args.endpoint_url = endpoint or args.endpoint_url
    # The queue's state is still shown when the repository cannot be opened, but the exit code says
    # so: a wrong key or an unreachable store is not a healthy status.
    repo, repo_error, exit_code = None, None, EXIT_OK
    try:
        repo = open_repository(args)
    except CkptSyncError as e:
        repo_error, exit_code = redact(str(e)), e.exit_code
    try:
        st = gather(queue, repo, repo_error)
    finally:
        queue.close()
    if args.json:
        print(json.dumps(st, indent=2))
        return exit_code
    at = f" at {st['endpoint_url']}" if st["endpoint_url"] else ""
    where = st["repository"] + at if st["repository"] else f"unavailable: {st['repository_error']}"
    print(f"repository:  {where}")
    print(f"backlog:     {st['backlog']} job(s) ({st['jobs']['failed']} failed, {st['jobs']['done']} done)")
    for j in st["in_flight"]:
        pct = 100 * j["bytes_done"] / j["size"] if j["size"] else 100
        print(f"uploading:   {j['name']} {pct:.0f}% of {format_bytes(j['size'])}")
    for j in st["interrupted"]:
        print(f"interrupted: {j['name']} (its uploader is gone; the next watch resumes it)")
    if st["newest_committed"]:
        c = st["newest_committed"]
        print(f"committed:   {c['name']}{_step(c['step'])} at {when(c['created'])}")
    if st["newest_local"]:
        loc = st["newest_local"]
        print(f"local:       {loc['name']}{_step(loc['step'])} at {when(loc['modified'])}")
    if st["lag_seconds"] is not None:
        steps = f", {st['lag_steps']} step(s)" if st["lag_steps"] is not None else ""
        print(f"lag:         {st['lag_seconds']:.0f}s{steps}")
    if st["throughput_bytes_per_s"]:
        print(f"throughput:  {format_bytes(st['throughput_bytes_per_s'])}/s (recent uploads)")
    if st["last_error"]:
        e = st["last_error"]
        print(f"last error:  {when(e['time'])} {e['job']}: {e['error']}")
    if repo_error:
        err(repo_error)
    return exit_code


def _step(step: int | None) -> str:
    """`` (step 300)``, or nothing for a checkpoint without a step (a bare ``model.pt``)."""
    return "" if step is None else f" (step {step})"
