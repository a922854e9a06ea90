"""``--bwlimit``: bytes moved over any stretch of time stay within the rate (plus the bucket's burst).

Throughput is measured from the bytes and the times the limiter itself lets calls through, never by
asserting how long the whole test takes: a slow machine only makes the measured rate lower.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from ckpt_sync.providers import open_provider
from ckpt_sync.providers.bwlimit import BandwidthLimitedProvider, TokenBucket, shared_bucket
from ckpt_sync.providers.local import LocalProvider
from ckpt_sync.providers.retry import RetryingProvider

KiB = 1024


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_token_bucket_pays_at_most_rate_times_elapsed_plus_burst_in_any_window():
    clock = FakeClock()
    rate, burst = 1000.0, 500.0
    bucket = TokenBucket(rate, burst, clock=clock, sleep=clock.sleep)
    start = clock.now
    paid = []  # (time the call was let through, bytes)
    for i, n in enumerate([100, 2000, 50, 50, 700, 3000, 10, 10, 10, 999] * 3):
        if i % 7 == 3:
            clock.now += 2.0  # idle: earns at most `burst` of credit
        bucket.take(n)
        paid.append((clock.now, n))
    assert sum(n for _, n in paid) <= rate * (clock.now - start)  # starts empty: no initial burst
    for i in range(len(paid)):
        for j in range(i, len(paid)):
            window = paid[j][0] - paid[i][0]
            moved = sum(n for _, n in paid[i : j + 1])
            assert moved <= rate * window + burst + paid[i][1], (i, j)


def test_token_bucket_is_not_a_no_op():
    clock = FakeClock()
    bucket = TokenBucket(1000.0, clock=clock, sleep=clock.sleep)
    waited = sum(bucket.take(1000) for _ in range(5))
    assert waited == pytest.approx(5.0)


def _timed_puts(
    provider: BandwidthLimitedProvider, threads: int, per_thread: int, size: int
) -> list[tuple[float, int]]:
    """Put from several threads at once; return (monotonic time the put started its transfer, bytes)."""
    log: list[tuple[float, int]] = []
    lock = threading.Lock()
    real_put = provider.inner.put

    def recording_put(key: str, data: bytes) -> None:
        with lock:
            log.append((time.monotonic(), len(data)))
        real_put(key, data)

    provider.inner.put = recording_put  # type: ignore[method-assign]

    def worker(t: int) -> None:
        for i in range(per_thread):
            provider.put(f"chunks/{t}-{i}", bytes(size))

    ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sorted(log)


def test_concurrent_uploads_share_one_limit_measured_bytes_over_time(tmp_path):
    rate = 256 * KiB
    bucket = TokenBucket(rate)
    created = time.monotonic()
    provider = BandwidthLimitedProvider(LocalProvider(tmp_path / "repo", fsync=False), bucket)
    log = _timed_puts(provider, threads=4, per_thread=4, size=32 * KiB)  # 512 KiB: about 2 s at the limit
    assert len(log) == 16
    total = 0
    for t, n in log:
        total += n
        # Every byte handed to the store by time t was paid for at `rate` since the bucket was made.
        assert total <= rate * (t - created) + 1, (total, t - created)
    # And over any window between two transfers: rate x window + one burst + the first call's bytes.
    for i in range(len(log)):
        for j in range(i + 1, len(log)):
            moved = sum(n for _, n in log[i : j + 1])
            assert moved <= rate * (log[j][0] - log[i][0]) + bucket.burst + log[i][1]


def test_downloads_pay_too(tmp_path):
    clock = FakeClock()
    bucket = TokenBucket(1000.0, clock=clock, sleep=clock.sleep)
    inner = LocalProvider(tmp_path / "repo", fsync=False)
    inner.put("a", bytes(3000))
    provider = BandwidthLimitedProvider(inner, bucket)
    assert len(provider.get("a")) == 3000
    assert len(provider.get("a", 0, 2000)) == 2000
    assert clock.now - 100.0 == pytest.approx(5.0)


def test_open_provider_puts_the_limit_below_the_retries_and_shares_one_bucket(tmp_path):
    a = open_provider(str(tmp_path / "a"), bwlimit=1 << 20)
    b = open_provider(str(tmp_path / "b"), bwlimit=1 << 20)
    assert isinstance(a, RetryingProvider) and isinstance(a.inner, BandwidthLimitedProvider)
    assert a.inner.bucket is b.inner.bucket is shared_bucket(1 << 20)
    assert not isinstance(open_provider(str(tmp_path / "c")).inner, BandwidthLimitedProvider)


def test_push_with_bwlimit_reports_throughput_within_the_limit(tmp_path, cli, key, repo_url):
    import os

    src = tmp_path / "ckpt.pt"
    src.write_bytes(os.urandom(1536 * KiB))
    rate = 512 * KiB
    proc = cli("push", str(src), "--to", repo_url, "--bwlimit", "512K", "--chunk-size", "256K", "--json", check=True)
    stats = json.loads(proc.stdout)[0]["stats"]
    assert stats["bytes_sent"] >= 1536 * KiB
    # Measured by the tool itself: bytes sent over the push's own duration (one second of burst allowed).
    assert stats["bytes_sent"] <= rate * stats["seconds"] + rate, stats


def test_pull_honours_the_limit_from_the_config_file(tmp_path, cli, key, repo_url):
    import os

    src = tmp_path / "ckpt.pt"
    src.write_bytes(os.urandom(1024 * KiB))
    cli("push", str(src), "--to", repo_url, check=True)
    cfg = tmp_path / "ckpt-sync.toml"
    cfg.write_text('bwlimit = "256K"\n')
    started = time.monotonic()
    out = cli("pull", "--latest", "--from", repo_url, "--to", str(tmp_path / "out"), "--config", str(cfg), check=True)
    elapsed = time.monotonic() - started
    assert Path(tmp_path / "out" / "ckpt.pt").read_bytes() == src.read_bytes()
    # 1 MiB at 256 KiB/s, from an empty bucket, cannot arrive in under 4 s (a lower bound: never flaky).
    assert elapsed >= 1024 / 256, out.stdout


def test_a_bounded_read_pays_for_the_bytes_that_came_back_not_the_bound(tmp_path):
    class CountingBucket(TokenBucket):
        paid = 0

        def take(self, n: int) -> float:
            self.paid += n
            return 0.0

    inner = LocalProvider(tmp_path / "repo", fsync=False)
    inner.put("manifests/m", b"x" * 1000)
    bucket = CountingBucket(256 * KiB)
    provider = BandwidthLimitedProvider(inner, bucket)
    # Size-checked reads ask for up to the largest object allowed (e.g. 32 MiB for a manifest).
    assert provider.get("manifests/m", 0, 32 * 1024 * KiB) == b"x" * 1000
    assert bucket.paid == 1000
