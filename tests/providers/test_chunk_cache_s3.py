"""pull --chunk-cache on S3 (moto): four processes of one host pulling the same checkpoint at once
read it from the store about once between them, counted by a byte-counting proxy in front of the
store (without the cache: once each)."""

from __future__ import annotations

import os
import sys

import pytest
from faultproxy import FaultProxy
from helpers import run_together

from ckpt_sync import api
from ckpt_sync.api import open_repository

MiB = 1 << 20


def pull_four_at_once(url: str, proxy: FaultProxy, to, *extra: str) -> list[dict]:
    env = {**os.environ, "AWS_ENDPOINT_URL": proxy.url}
    pull = [sys.executable, "-m", "ckpt_sync.cli", "pull", "ckpt.pt", "--repo", url]
    return run_together([[*pull, "--to", str(to / f"p{i}"), "--json", *extra] for i in range(4)], env)


@pytest.mark.s3
def test_four_processes_pulling_one_checkpoint_through_a_chunk_cache_read_it_from_s3_about_once(
    cloud_factory, key, tmp_path
):
    s3 = cloud_factory("s3")
    url = s3.url(s3.new_bucket())
    src = tmp_path / "ckpt.pt"
    src.write_bytes(os.urandom(24 * MiB))
    api.push(src, repo=url, chunk_size=2 * MiB)
    repo = open_repository(url)
    (m,) = repo.manifests()
    sizes = repo.list_chunks()
    stored = sum(sizes[c] for c in m.chunk_ids())

    with FaultProxy(s3.server.port) as proxy:
        cached = pull_four_at_once(url, proxy, tmp_path / "cached", "--chunk-cache", str(tmp_path / "cache"))
        cached_bytes = proxy.bytes_down
    with FaultProxy(s3.server.port) as proxy:
        pull_four_at_once(url, proxy, tmp_path / "plain")
        plain_bytes = proxy.bytes_down
    figures = (
        f"with the cache {cached_bytes / stored:.2f}x, without {plain_bytes / stored:.2f}x of {stored / MiB:.1f} MiB"
    )
    print(figures)
    assert sum(r["chunk_cache"]["fetched"] for r in cached) == len(m.chunk_ids())
    assert cached_bytes <= 1.3 * stored, figures
    assert plain_bytes >= 3.5 * stored, figures
    for where in ("cached", "plain"):
        for i in range(4):
            assert (tmp_path / where / f"p{i}" / "ckpt.pt").read_bytes() == src.read_bytes()
