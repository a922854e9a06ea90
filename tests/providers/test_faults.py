"""Fault injection: pushes and pulls through a link that fails, stalls or dies.

Over the wire: a TCP proxy (tests/faultproxy.py) in front of the moto S3 server cuts or stalls a
fifth of the requests of the real ``ckpt-sync`` command. In process: providers/faults.py wraps
the local provider to script exact failures (a lost answer to the manifest write).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from ckpt_sync.providers import RetryingProvider, RetryPolicy
from ckpt_sync.providers.faults import FaultyProvider
from ckpt_sync.providers.local import LocalProvider
from faultproxy import FAULTS, FaultProxy

from ckpt_sync.api import open_repository
from ckpt_sync.format.chunking import ChunkPolicy
from ckpt_sync.format.keys import load_keyring
from ckpt_sync.format.repository import Repository
from ckpt_sync.transfer.push import push_path
from ckpt_sync.transfer.restore import pull

if TYPE_CHECKING:
    from conftest import Cloud

Cli = Callable[..., subprocess.CompletedProcess[str]]
MAKE = Callable[..., Path]


@pytest.fixture
def s3(cloud_factory: Callable[[str], Cloud]) -> Cloud:
    return cloud_factory("s3")


def error_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("ckpt-sync: error:")]


# --- over the wire -------------------------------------------------------------------------------


@pytest.mark.s3
def test_a_push_through_a_link_failing_a_fifth_of_requests_commits_once_and_pulls_back_identical(
    s3: Cloud, cli: Cli, key: str, tmp_path: Path, torch_checkpoint: MAKE
) -> None:
    bucket = s3.new_bucket()
    url = s3.url(bucket)
    ckpt = torch_checkpoint(tmp_path / "ckpt" / "checkpoint_s9_900.pt", hidden=384, step=900)  # ~5 MiB
    restored = tmp_path / "restored"
    with FaultProxy(s3.server.port, fault_rate=0.2, stall_seconds=0.3, seed=20) as proxy:
        env = {"AWS_ENDPOINT_URL": proxy.url}
        budget = ["--retry-attempts", "12", "--retry-time", "120"]
        pushed = cli("push", str(ckpt), "--to", url, "--chunk-size", "64K", *budget, env=env)
        assert pushed.returncode == 0, pushed.stderr
        assert len(s3.keys(bucket, "repo/manifests/")) == 1  # looked at directly, not through the proxy
        pulled = cli("pull", "--latest", "--from", url, "--to", str(restored), *budget, env=env)
        assert pulled.returncode == 0, pulled.stderr
    assert (restored / ckpt.name).read_bytes() == ckpt.read_bytes()
    assert len(s3.keys(bucket, "repo/chunks/")) > 50  # a multi-chunk push
    # The link really was bad: every kind of fault happened, about a fifth of all requests.
    assert all(proxy.counts[f] > 0 for f in FAULTS), proxy.counts
    assert proxy.injected >= 0.1 * proxy.counts["requests"], proxy.counts
    assert "retrying put" in pushed.stderr and "retrying get" in pulled.stderr


@pytest.mark.s3
def test_requests_that_hang_forever_are_cut_by_the_read_timeout_and_retried(
    s3: Cloud, key: str, tmp_path: Path, torch_checkpoint: MAKE
) -> None:
    bucket = s3.new_bucket()
    ckpt = torch_checkpoint(tmp_path / "ckpt" / "model.pt", hidden=192)  # ~1.3 MiB, ~20 chunks
    with FaultProxy(s3.server.port, fault_rate=0.2, faults=["stall"], stall_seconds=None, seed=3) as proxy:
        repo = open_repository(
            s3.url(bucket),
            create=True,
            retry=RetryPolicy(attempts=10, max_seconds=120, initial_wait=0.05),
            endpoint_url=proxy.url,
            read_timeout=0.5,  # only for this test: the default (60 s) suits real links
        )
        manifest, _ = push_path(repo, ckpt, policy=ChunkPolicy.of_size(65536))
        pull(repo, tmp_path / "restored")
        repo.provider.close()
    assert (tmp_path / "restored" / ckpt.name).read_bytes() == ckpt.read_bytes()
    assert s3.keys(bucket, "repo/manifests/") == [f"repo/manifests/{manifest.id}"]
    assert proxy.counts["stall"] > 0


@pytest.mark.s3
def test_a_store_that_dies_mid_push_ends_in_one_error_line_and_commits_nothing(
    s3: Cloud, cli: Cli, key: str, tmp_path: Path, torch_checkpoint: MAKE
) -> None:
    bucket = s3.new_bucket()
    url = s3.url(bucket)
    ckpt = torch_checkpoint(tmp_path / "ckpt" / "checkpoint_s9_900.pt", hidden=384, step=900)
    with FaultProxy(s3.server.port, down_after_bytes=1_000_000) as proxy:
        proc = cli(
            "push", str(ckpt), "--to", url, "--chunk-size", "64K", "--retry-attempts", "3", "--retry-time", "30",
            env={"AWS_ENDPOINT_URL": proxy.url},
        )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    (line,) = error_lines(proc)
    assert "gave up" in line and "after 3 attempts" in line and url in line
    assert proxy.down
    assert s3.keys(bucket, "repo/chunks/")  # it died part-way through the upload...
    assert s3.keys(bucket, "repo/manifests/") == []  # ...and nothing was committed


# --- in process, scripted ------------------------------------------------------------------------


def _repo_over(faulty: FaultyProvider) -> Repository:
    retry = RetryPolicy(attempts=10, max_seconds=60, initial_wait=0.001, max_wait=0.01)
    return Repository.open(RetryingProvider(faulty, retry), load_keyring(), create=True)


def test_a_lost_answer_to_the_manifest_write_still_commits_exactly_once(
    key: str, tmp_path: Path, torch_checkpoint: MAKE
) -> None:
    store = LocalProvider(tmp_path / "repo")
    faulty = FaultyProvider(store)
    repo = _repo_over(faulty)
    faulty.fail_next("put_if_absent", "after")  # the manifest lands, the answer does not
    ckpt = torch_checkpoint(tmp_path / "ckpt" / "model.pt")
    manifest, _ = push_path(repo, ckpt, policy=ChunkPolicy.of_size(65536))
    assert faulty.counts["fault:after"] == 1
    assert [i.key for i in store.list("manifests/")] == [f"manifests/{manifest.id}"]
    m, _ = pull(repo, tmp_path / "restored")
    assert m.id == manifest.id
    assert (tmp_path / "restored" / ckpt.name).read_bytes() == ckpt.read_bytes()


def test_a_provider_failing_a_fifth_of_all_calls_still_gives_one_commit_and_identical_bytes(
    key: str, tmp_path: Path, torch_checkpoint: MAKE
) -> None:
    store = LocalProvider(tmp_path / "repo")
    faulty = FaultyProvider(store, rate=0.2, modes=("before", "after", "stall"), stall_seconds=0.01, seed=11)
    repo = _repo_over(faulty)
    ckpt = torch_checkpoint(tmp_path / "ckpt" / "model.pt")
    push_path(repo, ckpt, policy=ChunkPolicy.of_size(65536))
    pull(repo, tmp_path / "restored")
    assert len(list(store.list("manifests/"))) == 1
    assert (tmp_path / "restored" / ckpt.name).read_bytes() == ckpt.read_bytes()
    assert all(faulty.counts[f"fault:{m}"] > 0 for m in ("before", "after", "stall")), faulty.counts
