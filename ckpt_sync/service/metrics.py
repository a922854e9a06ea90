"""Prometheus metrics and health endpoints for ``ckpt-sync watch --metrics-addr HOST:PORT``.

Counts come in through observers only: the watch's hooks (a commit, a failed upload, a turn of the
main loop) and the retry wrapper's observer list, so the sync core and the providers know nothing
about metrics. Each server has its own registry, so several in one process (tests) never collide.

Endpoints: ``/metrics`` (Prometheus text format); ``/healthz`` 200 while the worker loop is alive and
the repository was reachable at its last check (readiness); ``/livez`` 200 while the worker loop is
alive, whatever the store does (liveness: restarting the sidecar does not fix a store outage).
"""

from __future__ import annotations

import errno
import json
import logging
import math
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from ..errors import ConfigError
from ..format.manifest import Manifest
from ..format.repository import Repository
from ..providers import retry as retry_module
from ..transfer.counters import TransferStats
from .daemon import WatchHooks
from .queue import PENDING, RUNNING, Job, JobQueue

log = logging.getLogger("ckpt_sync.metrics")

PROBE_EVERY = 30.0  # seconds between repository reachability checks
STALL_AFTER = 60.0  # the main loop turns every 0.2 s; this long without a turn means it is stuck

_REASONS = (  # first match wins; a bounded set of label values, whatever the SDK says
    ("throttled", re.compile(r"\b429\b|throttl|slow ?down|server ?busy|too ?many ?requests", re.I)),
    ("timeout", re.compile(r"time(d)? ?out|\b408\b|stall", re.I)),
    ("server_error", re.compile(r"\b5\d\d\b|internal ?error|service ?unavailable", re.I)),
    ("connection", re.compile(r"connect|reset|refused|cannot reach|broken pipe|lost response|incomplete", re.I)),
)


def retry_reason(err: BaseException | None) -> str:
    """A short, bounded label for why a storage call was retried."""
    text = f"{type(err).__name__}: {err}" if err else ""
    if err is not None and isinstance(err.__cause__, TimeoutError):
        return "timeout"
    for reason, pattern in _REASONS:
        if pattern.search(text):
            return reason
    return "other"


def manifest_time(manifest_id: str) -> float | None:
    """Commit time from a manifest id (milliseconds since the epoch, then random bits)."""
    head = manifest_id.split("-", 1)[0]
    return int(head) / 1000 if head.isdigit() else None


class SyncMetrics:
    """The metric families, and the observer methods that move them."""

    def __init__(self, queue: JobQueue | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.bytes_read = Counter(
            "ckpt_sync_bytes_read", "Plaintext bytes of committed checkpoints read from disk", registry=r
        )
        self.bytes_new = Counter(
            "ckpt_sync_bytes_new", "Plaintext bytes in chunks the repository did not have yet", registry=r
        )
        self.bytes_sent = Counter(
            "ckpt_sync_bytes_sent", "Encrypted bytes uploaded for committed checkpoints", registry=r
        )
        self.chunks_new = Counter(
            "ckpt_sync_chunks_new", "Chunks uploaded because the repository lacked them", registry=r
        )
        self.chunks_deduplicated = Counter(
            "ckpt_sync_chunks_deduplicated", "Chunks skipped because the repository already had them", registry=r
        )
        self.committed = Counter("ckpt_sync_checkpoints_committed", "Checkpoints committed by this process", registry=r)
        self.failures = Counter(
            "ckpt_sync_failures",
            "Failed uploads (outcome: retrying later, or gave_up)",
            ["outcome"],
            registry=r,
        )
        self.retries = Counter(
            "ckpt_sync_storage_retries",
            "Storage calls retried after a transient error",
            ["operation", "reason"],
            registry=r,
        )
        self.last_success = Gauge(
            "ckpt_sync_last_success_timestamp_seconds",
            "Unix time of this process's last commit (0: none yet)",
            registry=r,
        )
        self.newest_age = Gauge(
            "ckpt_sync_newest_checkpoint_age_seconds",
            "Seconds since the newest checkpoint in the repository was committed (NaN: none)",
            registry=r,
        )
        self.repository_up = Gauge(
            "ckpt_sync_repository_up", "1 if the repository was reachable at its last check", registry=r
        )
        self.worker_alive = Gauge("ckpt_sync_worker_alive", "1 while the sync worker loop runs", registry=r)
        self.queue_depth = Gauge("ckpt_sync_queue_depth", "Checkpoints waiting for upload or uploading", registry=r)
        for outcome in ("retrying", "gave_up"):
            self.failures.labels(outcome)  # present (at 0) before the first failure
        self.newest_committed: float | None = None
        self.newest_age.set_function(
            lambda: time.time() - self.newest_committed if self.newest_committed is not None else math.nan
        )
        if queue is not None:
            self.queue_depth.set_function(lambda: _depth(queue))

    # --- observers -------------------------------------------------------------------------------

    def on_commit(self, _job: Job, manifest: Manifest, stats: TransferStats) -> None:
        self.committed.inc()
        self.bytes_read.inc(stats.bytes_read)
        self.bytes_new.inc(stats.bytes_new)
        self.bytes_sent.inc(stats.bytes_sent)
        self.chunks_new.inc(stats.chunks_new)
        self.chunks_deduplicated.inc(max(0, stats.chunks - stats.chunks_new))
        now = time.time()
        self.last_success.set(now)
        self.repository_up.set(1)
        committed = manifest_time(manifest.id) or now
        self.newest_committed = max(self.newest_committed or 0.0, committed)

    def on_failure(self, _job: Job, _message: str, gave_up: bool) -> None:
        self.failures.labels("gave_up" if gave_up else "retrying").inc()

    def on_retry(self, op: str, err: BaseException | None) -> None:
        self.retries.labels(op, retry_reason(err)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _depth(queue: JobQueue) -> float:
    try:
        c = queue.counts()
    except Exception:  # closed while shutting down
        return math.nan
    return c[PENDING] + c[RUNNING]


class MetricsServer:
    """Serves ``/metrics``, ``/healthz`` and ``/livez`` for one watch; probes the repository now and then."""

    def __init__(
        self, host: str, port: int, repo: Repository, queue: JobQueue, *, probe_every: float = PROBE_EVERY
    ) -> None:
        self.repo = repo
        self.metrics = SyncMetrics(queue)
        self.probe_every = probe_every
        self._last_tick: float | None = None
        self._alive = False
        self._reachable = True  # the watch opened the repository just before this started
        self._probe_error: str | None = None
        self._closed = threading.Event()
        self.metrics.repository_up.set(1)
        try:
            self._server = ThreadingHTTPServer((host, port), _handler(self))
        except OSError as err:
            hint = " (another process is using it)" if err.errno == errno.EADDRINUSE else ""
            raise ConfigError(f"cannot serve metrics on {host}:{port}: {err.strerror}{hint}") from None
        self._server.daemon_threads = True
        self.host, self.port = self._server.server_address[:2]
        self.hooks = WatchHooks(on_commit=self._on_commit, on_failure=self.metrics.on_failure, on_tick=self._on_tick)
        self._threads = [
            threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True),
            threading.Thread(target=self._probe_loop, name="metrics-probe", daemon=True),
        ]

    def start(self) -> MetricsServer:
        retry_module.RETRY_OBSERVERS.append(self.metrics.on_retry)
        for t in self._threads:
            t.start()
        log.info(
            "serving metrics on http://%s:%d/metrics (health: /healthz, /livez)",
            self.host,
            self.port,
            extra={"event": "metrics_listening", "host": self.host, "port": self.port},
        )
        return self

    def close(self) -> None:
        self._closed.set()
        if self.metrics.on_retry in retry_module.RETRY_OBSERVERS:
            retry_module.RETRY_OBSERVERS.remove(self.metrics.on_retry)
        self._server.shutdown()
        self._server.server_close()

    # --- health ----------------------------------------------------------------------------------

    def _on_commit(self, job: Job, manifest: Manifest, stats: TransferStats) -> None:
        self._reachable, self._probe_error = True, None
        self.metrics.on_commit(job, manifest, stats)

    def _on_tick(self, worker_alive: bool) -> None:
        self._last_tick = time.monotonic()
        self._alive = worker_alive
        self.metrics.worker_alive.set(1 if worker_alive else 0)

    def live(self) -> tuple[bool, str]:
        if self._last_tick is None:
            return False, "starting"
        if not self._alive:
            return False, "the sync worker thread has stopped"
        stalled = time.monotonic() - self._last_tick
        if stalled > STALL_AFTER:
            return False, f"the watch loop has not turned for {stalled:.0f}s"
        return True, "ok"

    def health(self) -> tuple[bool, dict[str, Any]]:
        live, why = self.live()
        ok = live and self._reachable
        reason = why if not live else "ok" if self._reachable else f"repository unreachable: {self._probe_error}"
        return ok, {
            "ok": ok,
            "worker": why,
            "repository": self.repo.url,
            "reachable": self._reachable,
            "reason": reason,
        }

    def probe(self) -> None:
        """List the repository's manifests: proves it is reachable and refreshes the newest commit's age."""
        try:
            ids = self.repo.manifest_ids()
        except Exception as err:
            self._reachable, self._probe_error = False, str(err)
            self.metrics.repository_up.set(0)
            log.warning("repository check failed: %s", err)
            return
        self._reachable, self._probe_error = True, None
        self.metrics.repository_up.set(1)
        times = [t for t in map(manifest_time, ids[:1]) if t is not None]
        if times:
            self.metrics.newest_committed = max(self.metrics.newest_committed or 0.0, times[0])

    def _probe_loop(self) -> None:
        while not self._closed.is_set():
            self.probe()
            self._closed.wait(self.probe_every)


def _handler(server: MetricsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, server.metrics.render(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                ok, body = server.health()
                self._send(200 if ok else 503, json.dumps(body).encode(), "application/json")
            elif path == "/livez":
                ok, why = server.live()
                self._send(200 if ok else 503, json.dumps({"ok": ok, "worker": why}).encode(), "application/json")
            elif path == "/":
                self._send(200, b"ckpt-sync watch: /metrics /healthz /livez\n", "text/plain")
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("metrics %s: " + format, self.client_address[0], *args)

    return Handler


def serve(address: tuple[str, int], repo: Repository, queue: JobQueue) -> MetricsServer:
    """Start serving for one watch; raises ConfigError when the address cannot be bound."""
    return MetricsServer(address[0], address[1], repo, queue).start()
