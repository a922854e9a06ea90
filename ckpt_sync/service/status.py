"""``ckpt-sync status``: is the repository keeping up with the training job?"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..defaults import DEFAULT_PATTERNS
from ..format.manifest import RESUMABLE
from ..format.names import parse_checkpoint_name
from ..format.ordering import Position, newest_first
from ..format.repository import Repository
from ..format.selection import newest
from ..fs.checkpoint_files import signature
from .daemon import committed_versions
from .queue import DONE, FAILED, INTERRUPTED, PENDING, RUNNING, JobQueue
from .watcher import CheckpointFinder


def gather(queue: JobQueue, repo: Repository | None, repo_error: str | None = None) -> dict[str, Any]:
    """The state of a watch as one consistent snapshot: the queue as of one moment (one read
    transaction), then the repository. A job whose version the repository already holds (committed,
    its job not yet marked done) is counted as done, never shown as uploading next to its commit."""
    with queue.reading():
        recorded_repository, recorded_endpoint = queue.destination()
        counts = queue.counts()
        running = [j for j in queue.listing() if j.status in (RUNNING, INTERRUPTED)]
        recent = [j for j in queue.jobs(DONE, newest_first=True, limit=20) if j.seconds]
        failed = queue.jobs(FAILED, newest_first=True, limit=5)
        last_error = json.loads(queue.get_value("last_error") or "null")
        newest_done = queue.jobs(DONE, newest_first=True, limit=1)
        watch_dir = queue.get_value("watch_dir")
        patterns = json.loads(queue.get_value("patterns") or "null") or DEFAULT_PATTERNS
    every = newest(repo.manifests()) if repo else []
    versions = committed_versions(every)
    for job in [j for j in running if (j.name, j.size, j.mtime_ns) in versions]:
        running.remove(job)
        counts[RUNNING] -= 1
        counts[DONE] += 1
    secs = sum(j.seconds or 0 for j in recent)
    if last_error and newest_done and newest_done[0].updated > last_error["time"]:
        last_error = None  # a later upload succeeded: the error is history, not the state
    status: dict[str, Any] = {
        "state_dir": str(queue.state_dir),
        "backlog": counts[PENDING] + counts[RUNNING],
        "jobs": counts,
        "in_flight": [
            {"job": j.id, "name": j.name, "bytes_done": j.bytes_done, "size": j.size}
            for j in running
            if j.status == RUNNING
        ],
        # "running" in the table, but its uploader is gone (kill -9): the next worker resumes it.
        "interrupted": [{"job": j.id, "name": j.name} for j in running if j.status == INTERRUPTED],
        "throughput_bytes_per_s": round(sum(j.size for j in recent) / secs) if secs else None,
        "last_error": last_error,
        "failed": [{"job": j.id, "name": j.name, "error": j.last_error} for j in failed],
        "repository": repo.url if repo else None,
        "endpoint_url": getattr(repo.provider, "endpoint", None) if repo else recorded_endpoint,
        "recorded_repository": recorded_repository,
        "repository_error": repo_error,
        "newest_committed": None,
        "newest_local": None,
        "lag_seconds": None,
        "lag_steps": None,
    }
    # Newest by training position (ordering.py): a late retry of an old step is not "the newest".
    committed = next((m for m in every if m.role == RESUMABLE), every[0] if every else None)
    if committed:
        status["newest_committed"] = {
            "id": committed.checkpoint_id,
            "name": committed.name,
            "step": committed.global_step,
            "created": committed.created,
        }
    if watch_dir and Path(watch_dir).is_dir():
        units = CheckpointFinder(Path(watch_dir), patterns).scan()
        local: list[tuple[Any, float, Position]] = []
        for u in units:
            try:
                mtime = signature(u.path)[1] / 1e9
            except FileNotFoundError:
                continue
            local.append((u, mtime, Position(*parse_checkpoint_name(u.path.name), mtime, mtime, u.path.name)))
        if local:
            ordered = newest_first(local, lambda x: x[2])
            unit, mtime, position = next((x for x in ordered if x[2].global_step is not None), ordered[0])
            step = position.global_step
            status["newest_local"] = {"name": unit.path.name, "step": step, "modified": mtime}
            if committed:
                source = committed.extra.get("source_mtime_ns")
                committed_time = source / 1e9 if isinstance(source, int) else committed.created
                status["lag_seconds"] = round(max(0.0, mtime - committed_time), 3)
                if step is not None and committed.global_step is not None:
                    status["lag_steps"] = max(0, step - committed.global_step)
            else:
                status["lag_seconds"] = round(time.time() - mtime, 3)
    return status
