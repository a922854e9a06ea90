"""Metrics and health: scraped over HTTP from a real ``watch --once`` process, and in-process for the
counters that need a scripted store (retries by reason, failures, an unreachable repository)."""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from ckpt_sync.providers.faults import FaultyProvider
from ckpt_sync.providers.local import LocalProvider
from ckpt_sync.providers.retry import RetryingProvider, RetryPolicy
from helpers import json_events, manifest_ids, start_cli, wait_until
from prometheus_client.parser import text_string_to_metric_families

from ckpt_sync.format.chunking import ChunkPolicy
from ckpt_sync.format.keys import load_keyring
from ckpt_sync.format.repository import Repository
from ckpt_sync.service.daemon import WatchOptions, run_watch
from ckpt_sync.service.metrics import MetricsServer, retry_reason
from ckpt_sync.service.queue import JobQueue

KiB = 1024


def scrape(port: int) -> dict[str, float]:
    """``name{label="v",...}`` -> value, for every sample the endpoint serves."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def get(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_scraping_a_real_watch_once_run_sees_the_counters_move(tmp_path, key, repo_url, repo_dir):
    ck = tmp_path / "ck"
    ck.mkdir()
    for name in ("checkpoint_run_100.pt", "checkpoint_run_200.pt"):
        (ck / name).write_bytes(os.urandom(768 * KiB))
    log = tmp_path / "watch.log"
    proc = start_cli(
        *("watch", str(ck), "--to", repo_url, "--once", "--settle", "0.1", "--keep", "0"),
        *("--metrics-addr", "127.0.0.1:0", "--workers", "1", "--chunk-size", "128K", "--log-format", "json"),
        put_delay=1.0,  # each 128 KiB chunk upload takes 1 s: about 6 s per checkpoint, long enough to watch
        log_file=log,
    )
    scrapes: list[dict[str, float]] = []
    health: list[int] = []
    try:
        port = wait_until(lambda: json_events(log, "metrics_listening"), "the metrics server")[0]["port"]
        while proc.poll() is None:
            try:
                scrapes.append(scrape(port))
                health.append(get(port, "/healthz")[0])
                time.sleep(0.1)
            except (urllib.error.URLError, ConnectionError):
                break  # the run finished and the server closed between two scrapes
    finally:
        assert proc.wait(timeout=300) == 0, log.read_text()
    assert len(manifest_ids(repo_dir)) == 2
    committed = [s["ckpt_sync_checkpoints_committed_total"] for s in scrapes]
    sent = [s["ckpt_sync_bytes_sent_total"] for s in scrapes]
    assert committed[0] == 0 and sent[0] == 0, "the first scrape came after a commit: the run was too quick to watch"
    assert max(committed) >= 1, "no scrape saw a commit"
    assert committed == sorted(committed) and sent == sorted(sent)  # counters only go up
    moved = next(s for s in scrapes if s["ckpt_sync_checkpoints_committed_total"] >= 1)
    assert moved["ckpt_sync_bytes_read_total"] >= 768 * KiB
    assert moved["ckpt_sync_bytes_sent_total"] >= 768 * KiB
    assert moved["ckpt_sync_chunks_new_total"] >= 6
    assert moved["ckpt_sync_last_success_timestamp_seconds"] > 0
    assert 0 <= moved["ckpt_sync_newest_checkpoint_age_seconds"] < 3600
    assert max(s["ckpt_sync_queue_depth"] for s in scrapes) >= 1
    assert moved["ckpt_sync_worker_alive"] == 1 and moved["ckpt_sync_repository_up"] == 1
    # 503 only while starting (before the watch loop first turns), then healthy for the rest of the run.
    assert health[health.index(200) :] == [200] * (len(health) - health.index(200))


def _repo(tmp_path: Path, faulty: FaultyProvider) -> Repository:
    provider = RetryingProvider(faulty, RetryPolicy(attempts=3, max_seconds=30, initial_wait=0.01, max_wait=0.02))
    return Repository.open(provider, load_keyring(), create=True)


def test_retries_dedup_and_health_in_process(tmp_path, key):
    faulty = FaultyProvider(LocalProvider(tmp_path / "repo", fsync=False))
    repo = _repo(tmp_path, faulty)
    queue = JobQueue(tmp_path / "state")
    ck = tmp_path / "ck"
    ck.mkdir()
    shared = os.urandom(512 * KiB)
    (ck / "a.pt").write_bytes(shared + os.urandom(128 * KiB))
    server = MetricsServer("127.0.0.1", 0, repo, queue, probe_every=3600).start()
    try:
        faulty.fail_next("put", "before", times=2)  # two connection resets, then the put goes through
        opts = WatchOptions(
            root=ck, once=True, settle=0.05, keep=None, policy=ChunkPolicy(chunk_size=128 * KiB, min_size=64 * KiB)
        )
        assert run_watch(repo, queue, opts, threading.Event(), server.hooks) == 0
        (ck / "b.pt").write_bytes(shared + os.urandom(128 * KiB))  # same first 512 KiB: deduplicated
        assert run_watch(repo, queue, opts, threading.Event(), server.hooks) == 0
        m = scrape(server.port)
        assert m["ckpt_sync_checkpoints_committed_total"] == 2
        assert m['ckpt_sync_storage_retries_total{operation="put",reason="connection"}'] == 2
        assert m["ckpt_sync_chunks_deduplicated_total"] >= 3
        assert m['ckpt_sync_failures_total{outcome="gave_up"}'] == 0
        assert get(server.port, "/healthz")[0] == 200

        faulty.break_store()  # the store goes away: readiness fails, liveness does not
        server.probe()
        status, body = get(server.port, "/healthz")
        assert status == 503 and not body["reachable"] and "unreachable" in body["reason"]
        assert get(server.port, "/livez")[0] == 200
        assert scrape(server.port)["ckpt_sync_repository_up"] == 0

        faulty.broken = False  # back, but every upload now fails: the job stays queued for the next run
        faulty.fail_next("put", "before", times=1000)
        (ck / "c.pt").write_bytes(os.urandom(64 * KiB))
        failing = WatchOptions(root=ck, once=True, settle=0.05, keep=None, once_attempts=1)
        assert run_watch(repo, queue, failing, threading.Event(), server.hooks) == 1
        assert scrape(server.port)['ckpt_sync_failures_total{outcome="retrying"}'] == 1
        assert queue.counts()["pending"] == 1

        server.hooks.on_tick(False)  # the worker thread died
        status, body = get(server.port, "/livez")
        assert status == 503 and "stopped" in body["worker"]
    finally:
        server.close()
        queue.close()


def test_health_is_503_until_the_watch_loop_has_turned(tmp_path, key):
    repo = _repo(tmp_path, FaultyProvider(LocalProvider(tmp_path / "repo", fsync=False)))
    queue = JobQueue(tmp_path / "state")
    server = MetricsServer("127.0.0.1", 0, repo, queue, probe_every=3600).start()
    try:
        assert get(server.port, "/healthz") == (
            503,
            {"ok": False, "worker": "starting", "repository": repo.url, "reachable": True, "reason": "starting"},
        )
        server.hooks.on_tick(True)
        assert get(server.port, "/healthz")[0] == 200
    finally:
        server.close()
        queue.close()


def test_retry_reasons_are_a_small_fixed_set():
    from ckpt_sync.errors import TransientStorageError as T

    assert retry_reason(T("put s3://b/k: 503 SlowDown Please reduce your request rate")) == "throttled"
    assert retry_reason(T("put az://c/k: 429 ServerBusy")) == "throttled"
    assert retry_reason(T("get s3://b/k: timed out (ReadTimeoutError)")) == "timeout"
    assert retry_reason(T("put gs://b/k: 502 BadGateway")) == "server_error"
    assert retry_reason(T("cannot reach the S3 endpoint for s3://b: check the endpoint and network")) == "connection"
    assert retry_reason(T("something new")) == "other"


def test_a_busy_metrics_port_is_one_line_and_exit_2(tmp_path, cli, key, repo_url):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        ck = tmp_path / "ck"
        ck.mkdir()
        proc = cli("watch", str(ck), "--to", repo_url, "--once", "--metrics-addr", f"127.0.0.1:{port}")
    assert proc.returncode == 2
    assert f"ckpt-sync: error: cannot serve metrics on 127.0.0.1:{port}" in proc.stderr
    assert "Traceback" not in proc.stderr
