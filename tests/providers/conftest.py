"""Fixtures for the provider tests: real local servers (session-wide), and per-test buckets on them.

Servers already started by hand or by CI (``python tests/servers.py start``) are reused and left
running; otherwise each server is started the first time a test needs it, in this session's temp
folder on free ports, and stopped when the session ends. Every test gets its own bucket, so
sessions sharing servers never see each other's objects.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: servers.py, faultproxy.py
import servers as harness
from ckpt_sync.providers import Provider, open_provider

SCHEMES = {"s3": "s3", "azure": "az", "gcs": "gs"}
# Settings from the developer's own shell that would point the SDKs somewhere else.
FOREIGN_ENV = (
    "AWS_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_ACCOUNT",
    "AZURE_STORAGE_ACCOUNT_URL",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "STORAGE_EMULATOR_HOST",
    "GOOGLE_APPLICATION_CREDENTIALS",
)


class ServerPool:
    """Starts each kind of server at most once per session; reuses ones recorded in .servers/."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.shared = harness.running()
        self.started: dict[str, harness.Running] = {}

    def get(self, kind: str) -> harness.Running:
        if kind in self.shared:
            return self.shared[kind]
        if kind not in self.started:
            self.started[kind] = harness.start([kind], self.state, prefer_default_ports=False)[kind]
        return self.started[kind]

    def stop(self) -> None:
        # By the processes we hold, not the state file: pytest may prune old temp folders meanwhile.
        for server in self.started.values():
            harness.terminate(server)


@pytest.fixture(scope="session")
def server_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerPool]:
    pool = ServerPool(tmp_path_factory.mktemp("servers"))
    try:
        yield pool
    finally:
        pool.stop()


@dataclass
class Cloud:
    """One running server and plain SDK access to it, for setting up and inspecting what providers did."""

    kind: str
    server: harness.Running
    buckets: list[str] = field(default_factory=list)

    @property
    def scheme(self) -> str:
        return SCHEMES[self.kind]

    @property
    def env(self) -> dict[str, str]:
        return self.server.env

    def url(self, bucket: str, prefix: str = "repo") -> str:
        return f"{self.scheme}://{bucket}/{prefix}" if prefix else f"{self.scheme}://{bucket}"

    @cached_property
    def sdk(self) -> Any:
        env = self.env
        if self.kind == "s3":
            import boto3

            return boto3.client(
                "s3",
                endpoint_url=env["AWS_ENDPOINT_URL"],
                aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                region_name=env["AWS_DEFAULT_REGION"],
            )
        if self.kind == "azure":
            from azure.storage.blob import BlobServiceClient

            return BlobServiceClient.from_connection_string(env["AZURE_STORAGE_CONNECTION_STRING"])
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project="test",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": env["STORAGE_EMULATOR_HOST"]},
        )

    def new_bucket(self) -> str:
        name = f"t-{uuid.uuid4().hex[:16]}"
        if self.kind == "s3":
            self.sdk.create_bucket(Bucket=name)
        elif self.kind == "azure":
            self.sdk.create_container(name)
        else:
            self.sdk.create_bucket(name)
        self.buckets.append(name)
        return name

    def read(self, bucket: str, key: str) -> bytes:
        if self.kind == "s3":
            return self.sdk.get_object(Bucket=bucket, Key=key)["Body"].read()
        if self.kind == "azure":
            return self.sdk.get_container_client(bucket).download_blob(key).readall()
        return self.sdk.bucket(bucket).blob(key).download_as_bytes()

    def write(self, bucket: str, key: str, data: bytes) -> None:
        if self.kind == "s3":
            self.sdk.put_object(Bucket=bucket, Key=key, Body=data)
        elif self.kind == "azure":
            self.sdk.get_container_client(bucket).upload_blob(key, data, overwrite=True)
        else:
            self.sdk.bucket(bucket).blob(key).upload_from_string(data)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        if self.kind == "s3":
            pages = self.sdk.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            return sorted(o["Key"] for p in pages for o in p.get("Contents", ()))
        if self.kind == "azure":
            return sorted(b.name for b in self.sdk.get_container_client(bucket).list_blobs(name_starts_with=prefix))
        return sorted(b.name for b in self.sdk.list_blobs(bucket, prefix=prefix))

    def pages_at(self, bucket: str, prefix: str, size: int) -> int:
        """How many pages the store itself answers a listing in, at ``size`` per page."""
        if self.kind == "s3":
            pages = self.sdk.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": size}
            )
            return sum(1 for _ in pages)
        if self.kind == "azure":
            cc = self.sdk.get_container_client(bucket)
            return sum(1 for _ in cc.list_blobs(name_starts_with=prefix, results_per_page=size).by_page())
        return sum(1 for _ in self.sdk.list_blobs(bucket, prefix=prefix, page_size=size).pages)

    def drop_buckets(self) -> None:
        """Empty and remove this test's buckets, so long sessions do not pile objects up in the servers."""
        for bucket in self.buckets:
            try:
                if self.kind == "s3":
                    keys = self.keys(bucket)
                    for i in range(0, len(keys), 1000):
                        batch = [{"Key": k} for k in keys[i : i + 1000]]
                        self.sdk.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
                    self.sdk.delete_bucket(Bucket=bucket)
                elif self.kind == "azure":
                    self.sdk.delete_container(bucket)
                else:  # the emulator rewrites its whole object index per call: force-delete small buckets only
                    self.sdk.bucket(bucket).delete(force=True)
            except Exception:  # best effort: a test may have broken its bucket on purpose
                pass
        self.buckets.clear()


def _clean_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name in FOREIGN_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata probing on a dev box
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def cloud_factory(server_pool: ServerPool, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], Cloud]]:
    """``cloud_factory("s3")``: the server for that store, its env exported (as a user would), SDK access."""
    made: list[Cloud] = []

    def make(kind: str) -> Cloud:
        c = Cloud(kind, server_pool.get(kind))
        _clean_env(monkeypatch, c.env)
        made.append(c)
        return c

    yield make
    for c in made:
        c.drop_buckets()


@pytest.fixture(scope="module")
def tls_moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment of a private moto server over TLS (servers.moto_over_tls), for one module."""
    with harness.moto_over_tls(tmp_path_factory.mktemp("moto-tls")) as env:
        yield env


@pytest.fixture
def tls_env(tls_moto: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    """That server's environment exported (as a user would, nothing foreign left); returns its URL."""
    _clean_env(monkeypatch, tls_moto)
    return tls_moto["AWS_ENDPOINT_URL"]


CLOUD_PARAMS = [
    pytest.param("s3", marks=pytest.mark.s3),
    pytest.param("azure", marks=pytest.mark.azure),
    pytest.param("gcs", marks=pytest.mark.gcs),
]


@pytest.fixture(params=CLOUD_PARAMS)
def cloud(request: pytest.FixtureRequest, cloud_factory: Callable[[str], Cloud]) -> Cloud:
    """Each cloud store in turn, its server running and its standard environment variables set."""
    return cloud_factory(request.param)


@dataclass
class Store:
    """A provider under test, and how to get one whose bucket (or folder) is unusable."""

    kind: str
    provider: Provider
    unusable: Callable[[], Provider]
    cloud: Cloud | None = None
    bucket: str | None = None


@pytest.fixture(params=[pytest.param("file"), *CLOUD_PARAMS])
def store(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    cloud_factory: Callable[[str], Cloud],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Store]:
    """Every provider in turn, built through the scheme registry exactly as the CLI builds it (no retries)."""
    kind = request.param
    if kind == "file":
        _clean_env(monkeypatch, {})
        blocker = tmp_path / "not-a-folder"
        blocker.write_bytes(b"")
        s = Store(
            kind,
            open_provider((tmp_path / "repo").as_uri(), retry=None),
            lambda: open_provider(str(blocker), retry=None),
        )
    else:
        c = cloud_factory(kind)
        bucket = c.new_bucket()
        missing = f"missing-{uuid.uuid4().hex[:12]}"
        s = Store(
            kind,
            open_provider(c.url(bucket), retry=None),
            lambda: open_provider(c.url(missing), retry=None),
            c,
            bucket,
        )
    try:
        yield s
    finally:
        s.provider.close()


@pytest.fixture
def small_retry_budget() -> list[str]:
    """CLI options for a retry budget small enough to exhaust quickly."""
    return ["--retry-attempts", "3", "--retry-time", "20"]


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused at once)."""
    return harness.free_port()


@pytest.fixture
def new_repo_url(tmp_path: Path, cloud_factory: Callable[[str], Cloud]) -> Callable[[str], str]:
    """``new_repo_url("file" | "s3" | ...)``: the URL of a fresh, empty repository on that store."""
    made = 0

    def make(kind: str) -> str:
        nonlocal made
        made += 1
        if kind == "file":
            return (tmp_path / f"repo{made}").as_uri()
        c = cloud_factory(kind)
        return c.url(c.new_bucket())

    return make


@pytest.fixture(params=[pytest.param("file"), pytest.param("s3", marks=pytest.mark.s3)])
def any_repo_url(request: pytest.FixtureRequest, new_repo_url: Callable[[str], str]) -> str:
    """A fresh repository on the local store, then on S3 (moto): the verbs behave the same on both."""
    return new_repo_url(request.param)
