"""The durable job queue: SQLite (WAL, synchronous=FULL) in a state folder.

A job is "upload this checkpoint". Enqueueing holds the checkpoint (hard links, staging.py) and
commits a row before returning, so a ``kill -9`` at any moment loses nothing: on restart, jobs
that were running under a dead owner go back to pending, and the re-push reuses every chunk that
was already stored. Several processes (a ``watch`` daemon and a trainer's SyncClient) may share
one queue: claiming a job is a single IMMEDIATE transaction.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import staging

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    path        TEXT NOT NULL,
    name        TEXT NOT NULL,
    held        TEXT,
    size        INTEGER NOT NULL,
    mtime_ns    INTEGER NOT NULL,
    tags        TEXT NOT NULL DEFAULT '[]',
    metadata    TEXT NOT NULL DEFAULT '{}',
    status      TEXT NOT NULL DEFAULT 'pending',
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    not_before  REAL NOT NULL DEFAULT 0,
    owner       TEXT,
    heartbeat   REAL,
    bytes_done  INTEGER NOT NULL DEFAULT 0,
    manifest_id TEXT,
    bytes_new   INTEGER,
    bytes_sent  INTEGER,
    seconds     REAL,
    created     REAL NOT NULL,
    updated     REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs(status, id);
CREATE INDEX IF NOT EXISTS jobs_by_source ON jobs(path, size, mtime_ns);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
STALE_AFTER = 60.0  # a running job whose owner has not beaten for this long is orphaned


@dataclass(frozen=True)
class Job:
    id: int
    path: str
    name: str
    held: str | None
    size: int
    mtime_ns: int
    tags: tuple[str, ...]
    metadata: dict[str, Any]
    status: str
    attempts: int
    last_error: str | None
    bytes_done: int
    manifest_id: str | None
    bytes_new: int | None
    bytes_sent: int | None
    seconds: float | None
    created: float
    updated: float

    @property
    def source(self) -> Path:
        """The held copy while it exists, else the original path."""
        if self.held and os.path.exists(self.held):
            return Path(self.held)
        return Path(self.path)


def signature(path: Path) -> tuple[int, int]:
    """(total size, newest mtime in ns) of a file or a folder of files: what "unchanged" means."""
    st = path.stat()
    if not path.is_dir():
        return st.st_size, st.st_mtime_ns
    size, mtime = 0, st.st_mtime_ns
    for dirpath, _, names in os.walk(path):
        for n in names:
            try:
                s = os.stat(os.path.join(dirpath, n))
            except FileNotFoundError:
                continue
            size += s.st_size
            mtime = max(mtime, s.st_mtime_ns)
    return size, mtime


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_alive(owner: str | None) -> bool:
    if not owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname():
        return True  # cannot tell: rely on the heartbeat
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


class JobQueue:
    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.staging = self.state_dir / "staging"
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            self.state_dir / "queue.sqlite3", timeout=30, isolation_level=None, check_same_thread=False
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        d = dict(row)
        d["tags"] = tuple(json.loads(d["tags"]))
        d["metadata"] = json.loads(d["metadata"])
        for k in ("not_before", "owner", "heartbeat"):
            d.pop(k)
        return Job(**d)

    # --- producing -------------------------------------------------------------------------------

    def find(self, path: Path, size: int, mtime_ns: int) -> Job | None:
        """A job for exactly this version of ``path`` that is queued, running or done."""
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM jobs WHERE path=? AND size=? AND mtime_ns=? AND status != ? ORDER BY id DESC LIMIT 1",
                (str(path), size, mtime_ns, FAILED),
            ).fetchone()
        return self._job(row) if row else None

    def enqueue(
        self,
        path: str | os.PathLike[str],
        *,
        tags: tuple[str, ...] | list[str] = (),
        metadata: dict[str, Any] | None = None,
        hold: bool = True,
    ) -> int:
        """Durably queue ``path`` (held against deletion) and return the job id; a version already
        queued or done is not queued twice."""
        p = Path(path).absolute()
        size, mtime_ns = signature(p)
        existing = self.find(p, size, mtime_ns)
        if existing is not None and set(tags) <= set(existing.tags):
            return existing.id
        held = str(staging.hold(p, self.staging)) if hold else None
        now = time.time()
        try:
            with self._tx() as db:
                cur = db.execute(
                    "INSERT INTO jobs (path, name, held, size, mtime_ns, tags, metadata, created, updated)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        str(p),
                        p.name,
                        held,
                        size,
                        mtime_ns,
                        json.dumps(list(tags)),
                        json.dumps(metadata or {}),
                        now,
                        now,
                    ),
                )
                return int(cur.lastrowid or 0)
        except BaseException:
            staging.release(held)
            raise

    # --- consuming -------------------------------------------------------------------------------

    def recover_orphans(self) -> int:
        """Put running jobs whose owner died (or stopped beating) back to pending; sweep stray holds."""
        now = time.time()
        with self._tx() as db:
            rows = db.execute("SELECT id, owner, heartbeat FROM jobs WHERE status=?", (RUNNING,)).fetchall()
            orphans = [
                r["id"] for r in rows if not _owner_alive(r["owner"]) or (r["heartbeat"] or 0) < now - STALE_AFTER
            ]
            for job_id in orphans:
                db.execute("UPDATE jobs SET status=?, owner=NULL, updated=? WHERE id=?", (PENDING, now, job_id))
            held = {
                r["held"]
                for r in db.execute(
                    "SELECT held FROM jobs WHERE held IS NOT NULL AND status IN (?, ?)", (PENDING, RUNNING)
                )
            }
        staging.sweep(self.staging, {str(Path(h).parent) for h in held})
        return len(orphans)

    def claim(self) -> Job | None:
        now = time.time()
        with self._tx() as db:
            row = db.execute(
                "SELECT * FROM jobs WHERE status=? AND not_before <= ? ORDER BY id LIMIT 1", (PENDING, now)
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET status=?, owner=?, heartbeat=?, bytes_done=0, updated=? WHERE id=?",
                (RUNNING, owner_id(), now, now, row["id"]),
            )
        return self._job(row)

    def beat(self, job_id: int, bytes_done: int) -> None:
        now = time.time()
        with self._lock:
            self._db.execute("UPDATE jobs SET heartbeat=?, bytes_done=? WHERE id=?", (now, bytes_done, job_id))

    def complete(self, job: Job, manifest_id: str, bytes_new: int, bytes_sent: int, seconds: float) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET status=?, manifest_id=?, bytes_new=?, bytes_sent=?, seconds=?, bytes_done=size,"
                " last_error=NULL, held=NULL, updated=? WHERE id=?",
                (DONE, manifest_id, bytes_new, bytes_sent, seconds, now, job.id),
            )
        staging.release(job.held)

    def release(self, job: Job) -> None:
        """Give a claimed job back untouched (cancelled on shutdown)."""
        with self._tx() as db:
            db.execute("UPDATE jobs SET status=?, owner=NULL, updated=? WHERE id=?", (PENDING, time.time(), job.id))

    def retry_later(self, job: Job, error: str, delay: float) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET status=?, owner=NULL, attempts=attempts+1, last_error=?, not_before=?, updated=?"
                " WHERE id=?",
                (PENDING, error, now + delay, now, job.id),
            )
        self.set("last_error", json.dumps({"time": now, "job": job.name, "error": error}))

    def fail(self, job: Job, error: str) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET status=?, owner=NULL, attempts=attempts+1, last_error=?, held=NULL, updated=?"
                " WHERE id=?",
                (FAILED, error, now, job.id),
            )
        staging.release(job.held)
        self.set("last_error", json.dumps({"time": now, "job": job.name, "error": error}))

    # --- reading ---------------------------------------------------------------------------------

    def get(self, job_id: int) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return self._job(row) if row else None

    def jobs(self, *statuses: str, newest_first: bool = False, limit: int = 1000) -> list[Job]:
        order = "DESC" if newest_first else "ASC"
        marks = ",".join("?" * len(statuses))
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY id {order} LIMIT ?", (*statuses, limit)
            ).fetchall()
        return [self._job(r) for r in rows]

    def in_flight(self) -> list[Job]:
        """Running jobs whose owner is alive and beating: after a ``kill -9`` a job stays "running" in the
        table until the next worker recovers it, but it is not being uploaded by anyone."""
        now = time.time()
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs WHERE status=? ORDER BY id", (RUNNING,)).fetchall()
        return [
            self._job(r) for r in rows if _owner_alive(r["owner"]) and (r["heartbeat"] or 0) >= now - STALE_AFTER
        ]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetchall()
        out = dict.fromkeys((PENDING, RUNNING, DONE, FAILED), 0)
        out.update({r["status"]: r["n"] for r in rows})
        return out

    def unfinished(self) -> int:
        c = self.counts()
        return c[PENDING] + c[RUNNING]

    def set(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, value))

    def get_value(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
        return row["value"] if row else None
