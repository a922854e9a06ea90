"""The durable job queue: SQLite (WAL, synchronous=FULL) in a state folder.

A job is "upload this checkpoint". Enqueueing holds the checkpoint (staging.py) and commits a row
before returning, so a ``kill -9`` at any moment loses nothing: on restart, jobs that were running
under a dead owner go back to pending, and the re-push reuses every chunk that was already stored.
Several processes (a ``watch`` daemon and a trainer's SyncClient) may share one queue: claiming a
job is a single IMMEDIATE transaction.

Paths are stored absolute and resolved, and a job finds its held copy through its slot under this
queue's own ``staging/`` (``held_path``), never through the caller's working directory. A job stays
queued, held, until it is committed or dropped: failures only delay it. The held copies are the
ground truth: a queue database that was deleted is rebuilt from the slots' records, and one that
cannot be opened is moved aside (one warning) and rebuilt the same way.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .. import platform
from ..errors import OperationFailed, UsageError
from ..fs.checkpoint_files import signature
from ..owners import owner_alive, owner_id
from . import staging

log = logging.getLogger("ckpt_sync.queue")

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
# Its version no longer exists (the file was rewritten in place after it was queued): nothing was lost,
# the version on disk now is a job of its own. Listed until a newer version of the same file is committed.
SUPERSEDED = "superseded"
# Never stored: how a running job whose uploader is gone (kill -9) is shown until a worker recovers it.
INTERRUPTED = "interrupted"
STALE_AFTER = 60.0  # a running job whose owner has not beaten for this long is orphaned
ADOPT_AFTER = 600.0  # a slot with a record but no job this old was lost by the database: adopt it
DB_NAME = "queue.sqlite3"


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


def _damaged(err: sqlite3.DatabaseError) -> bool:
    """The file is not a database or is corrupt (not: busy, full, an I/O error that may pass)."""
    code = getattr(err, "sqlite_errorcode", None)
    return code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB) or str(err).startswith("integrity check")


def _no_space(err: BaseException, folder: Path | None = None) -> bool:
    """A full disk, however it shows: SQLite says "full", or (creating its shared-memory file on a
    full filesystem) "disk I/O error" while the folder has no room left."""
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    if not isinstance(err, sqlite3.OperationalError):
        return False
    if "full" in str(err):
        return True
    try:
        return folder is not None and "I/O error" in str(err) and shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        return False


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2], query="", fragment=""))


class JobQueue:
    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.state_dir = Path(state_dir).expanduser().resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.staging = self.state_dir / "staging"
        self._lock = threading.RLock()
        db_path = self.state_dir / DB_NAME
        fresh = not db_path.exists()
        try:
            self._db = self._connect(db_path)
        except sqlite3.DatabaseError as err:
            if _no_space(err, self.state_dir):
                raise self._full(err) from err
            if not _damaged(err):
                raise OperationFailed(f"cannot open the queue {db_path}: {err}") from err
            aside = db_path.with_name(f"{DB_NAME}.damaged-{int(time.time())}")
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{db_path}{suffix}")
                if src.exists():
                    platform.replace(src, f"{aside}{suffix}")
            log.warning(
                "the queue %s could not be opened (%s): moved it aside to %s; rebuilding it from the held copies",
                db_path,
                err,
                aside.name,
            )
            self._db = self._connect(db_path)
            fresh = True
        adopted = self.adopt_held(min_age=0.0 if fresh else ADOPT_AFTER)
        if adopted and fresh:
            log.warning("rebuilt %d queued job(s) from the held copies in %s", adopted, self.staging)

    @staticmethod
    def _connect(db_path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(db_path, timeout=30, isolation_level=None, check_same_thread=False)
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(SCHEMA)
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"integrity check: {check}")
        except BaseException:
            db.close()
            raise
        return db

    def _full(self, err: BaseException) -> OperationFailed:
        return OperationFailed(f"no space left on device for the queue in {self.state_dir}: free some space and re-run")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock, with a full disk reported as the one-line no-space error."""
        with self._lock:
            try:
                yield self._db
            except sqlite3.OperationalError as err:
                if _no_space(err, self.state_dir):
                    raise self._full(err) from err
                raise

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._writing() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def held_path(self, job: Job) -> Path | None:
        """Where ``job``'s held copy is now: its slot under this queue's staging folder (the path
        recorded may be relative, from an older version, or from a state folder since moved)."""
        if not job.held:
            return None
        recorded = Path(job.held)
        local = self.staging / recorded.parent.name / recorded.name
        for candidate in (local, recorded):
            if candidate.is_absolute() and os.path.lexists(candidate):
                return candidate
        return None

    def source(self, job: Job) -> Path:
        """The held copy while it exists, else the original path."""
        return self.held_path(job) or Path(job.path)

    def held_states(self, job: Job) -> dict | None:
        """The held files' states taken when the job was held (None for an unheld job)."""
        held = self.held_path(job)
        record = staging.read_record(held.parent) if held else None
        return record.get("states") if record else None

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
                "SELECT * FROM jobs WHERE path=? AND size=? AND mtime_ns=? AND status NOT IN (?, ?)"
                " ORDER BY id DESC LIMIT 1",
                (str(path), size, mtime_ns, FAILED, SUPERSEDED),
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
        p = Path(path).expanduser().absolute()
        p = p.parent.resolve() / p.name  # absolute and resolved, yet a symlink keeps its own name
        size, mtime_ns = signature(p)
        existing = self.find(p, size, mtime_ns)
        if existing is not None and set(tags) <= set(existing.tags):
            return existing.id
        now = time.time()
        record = {
            "path": str(p),
            "size": size,
            "mtime_ns": mtime_ns,
            "tags": list(tags),
            "metadata": metadata or {},
            "created": now,
        }
        try:
            held = str(staging.hold(p, self.staging, record)) if hold else None
        except OSError as err:
            if _no_space(err):
                raise OperationFailed(
                    f"no space left on device holding {p.name} in {self.staging}: free some space and re-run"
                ) from err
            raise
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

    def adopt_held(self, *, min_age: float = ADOPT_AFTER) -> int:
        """Queue again every held copy whose job the database lost (deleted, damaged); returns how many.

        A slot whose version has a job already (any state) is not this one's to adopt: one left by
        a crash just after its job was done or dropped is removed. ``min_age`` spares slots another
        process sharing the queue has just made and not yet recorded.
        """
        now = time.time()
        adopted = 0
        for slot in staging.slots(self.staging):
            record = staging.read_record(slot)
            if record is None or now - float(record.get("created", 0)) < min_age:
                continue
            held = slot / record["held"]
            with self._tx() as db:
                if db.execute("SELECT 1 FROM jobs WHERE held LIKE ?", (f"%{slot.name}/%",)).fetchone():
                    continue
                same = db.execute(
                    "SELECT 1 FROM jobs WHERE path=? AND size=? AND mtime_ns=?",
                    (record["path"], record["size"], record["mtime_ns"]),
                ).fetchone()
                if same is None and os.path.lexists(held):
                    db.execute(
                        "INSERT INTO jobs (path, name, held, size, mtime_ns, tags, metadata, created, updated)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            record["path"],
                            Path(record["path"]).name,
                            str(held),
                            int(record["size"]),
                            int(record["mtime_ns"]),
                            json.dumps(record.get("tags", [])),
                            json.dumps(record.get("metadata", {})),
                            float(record.get("created", now)),
                            now,
                        ),
                    )
                    adopted += 1
                    continue
            staging.release(held)
        return adopted

    def recover_orphans(self) -> int:
        """Put running jobs whose owner died (or stopped beating) back to pending; adopt held copies
        the database lost; sweep stray holds."""
        now = time.time()
        self.adopt_held()
        with self._tx() as db:
            rows = db.execute("SELECT id, owner, heartbeat FROM jobs WHERE status=?", (RUNNING,)).fetchall()
            orphans = [r["id"] for r in rows if not self._uploading(r, now)]
            for job_id in orphans:
                db.execute("UPDATE jobs SET status=?, owner=NULL, updated=? WHERE id=?", (PENDING, now, job_id))
            held = {
                r["held"]
                for r in db.execute(
                    "SELECT held FROM jobs WHERE held IS NOT NULL AND status IN (?, ?)", (PENDING, RUNNING)
                )
            }
        staging.sweep(self.staging, {str(self.staging / Path(h).parent.name) for h in held})
        return len(orphans)

    def retry_now(self) -> None:
        """Clear every pending job's backoff (a new run tries them at once)."""
        with self._tx() as db:
            db.execute("UPDATE jobs SET not_before=0 WHERE status=?", (PENDING,))

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
        with self._writing() as db:
            db.execute("UPDATE jobs SET heartbeat=?, bytes_done=? WHERE id=?", (now, bytes_done, job_id))

    def complete(self, job: Job, manifest_id: str, bytes_new: int, bytes_sent: int, seconds: float) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET status=?, manifest_id=?, bytes_new=?, bytes_sent=?, seconds=?, bytes_done=size,"
                " last_error=NULL, held=NULL, updated=? WHERE id=?",
                (DONE, manifest_id, bytes_new, bytes_sent, seconds, now, job.id),
            )
        staging.release(self.held_path(job))

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
        staging.release(self.held_path(job))
        self.set("last_error", json.dumps({"time": now, "job": job.name, "error": error}))

    def supersede(self, job: Job, reason: str) -> None:
        """``job``'s version was rewritten in place before it could be uploaded: it is not a failure
        (the version on disk now is queued on its own) and it leaves ``listing()`` once a newer version
        of the same file is committed."""
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET status=?, owner=NULL, last_error=?, held=NULL, updated=? WHERE id=?",
                (SUPERSEDED, reason, time.time(), job.id),
            )
        staging.release(self.held_path(job))

    def drop(self, job_id: int) -> Job:
        """The user gives up on a job: it leaves the queue and its held copy is released.

        Raises UsageError for an unknown or finished job, and for one a live worker is uploading
        now (stop that watch first): a drop never pulls a job out from under its upload.
        """
        with self._tx() as db:
            row = db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                raise UsageError(f"no job {job_id} in the queue in {self.state_dir}: see `ckpt-sync queue`")
            if row["status"] == DONE:
                raise UsageError(f"job {job_id} ({row['name']}) is already committed: nothing to drop")
            if row["status"] == RUNNING and owner_alive(row["owner"]):
                raise UsageError(
                    f"job {job_id} ({row['name']}) is being uploaded by a running watch: stop it first, then drop"
                )
            db.execute(
                "UPDATE jobs SET status=?, owner=NULL, last_error=?, held=NULL, updated=? WHERE id=?",
                (FAILED, "dropped by the user", time.time(), job_id),
            )
        job = self._job(row)
        staging.release(self.held_path(job))
        return job

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

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Every read inside sees the queue as of one moment (one SQLite read transaction), so counts
        and lists taken together agree; nothing may be written inside."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                yield
            finally:
                self._db.execute("COMMIT")

    def listing(self) -> list[Job]:
        """What is not committed, as ``ckpt-sync queue`` shows it: pending, running (``INTERRUPTED``
        while its uploader is gone), failed, and superseded versions whose file has no newer version
        committed yet; oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs AS j WHERE status IN (?, ?, ?) OR (status = ? AND NOT EXISTS ("
                "SELECT 1 FROM jobs AS d WHERE d.path = j.path AND d.status = ? AND d.id > j.id)) ORDER BY id",
                (PENDING, RUNNING, FAILED, SUPERSEDED, DONE),
            ).fetchall()
        now = time.time()
        return [
            replace(self._job(r), status=INTERRUPTED)
            if r["status"] == RUNNING and not self._uploading(r, now)
            else self._job(r)
            for r in rows
        ]

    @staticmethod
    def _uploading(row: sqlite3.Row, now: float) -> bool:
        """A running job's uploader is alive and beating."""
        return owner_alive(row["owner"]) and (row["heartbeat"] or 0) >= now - STALE_AFTER

    def in_flight(self) -> list[Job]:
        """Running jobs whose owner is alive and beating: after a ``kill -9`` a job stays "running" in the
        table until the next worker recovers it, but it is not being uploaded by anyone."""
        now = time.time()
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs WHERE status=? ORDER BY id", (RUNNING,)).fetchall()
        return [self._job(r) for r in rows if self._uploading(r, now)]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetchall()
        out = dict.fromkeys((PENDING, RUNNING, DONE, FAILED, SUPERSEDED), 0)
        out.update({r["status"]: r["n"] for r in rows})
        return out

    def unfinished(self) -> int:
        c = self.counts()
        return c[PENDING] + c[RUNNING]

    def committed_ids(self) -> frozenset[str]:
        """The manifest ids this queue's jobs were committed as: the run a ``--keep`` is scoped to."""
        with self._lock:
            rows = self._db.execute(
                "SELECT manifest_id FROM jobs WHERE status=? AND manifest_id IS NOT NULL", (DONE,)
            ).fetchall()
        return frozenset(r["manifest_id"] for r in rows)

    def record_destination(self, repository_url: str, endpoint_url: str | None) -> None:
        """Where this queue's jobs go, for ``ckpt-sync status`` in another shell: the repository URL and
        the store's endpoint where it is not the cloud's own (an S3-compatible store, an emulator).
        Never credentials: a provider URL holds none, and an endpoint's user info and query are cut."""
        self.set("repository", repository_url)
        self.set("endpoint_url", _without_credentials(endpoint_url) if endpoint_url else "")

    def destination(self) -> tuple[str | None, str | None]:
        """The (repository URL, endpoint URL or None) the last worker on this queue recorded."""
        return self.get_value("repository"), self.get_value("endpoint_url") or None

    def set(self, key: str, value: str) -> None:
        with self._writing() as db:
            db.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, value))

    def get_value(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
        return row["value"] if row else None
