"""S3 over TLS, against moto's server with a self-signed certificate (trusted through AWS_CA_BUNDLE, as
a user of a private endpoint would): the request signature leaves chunk bodies out there (TLS and
each chunk's HMAC protect them, see providers/s3.py), and over plain HTTP it still covers them.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from ckpt_sync.providers.s3 import S3Provider

if TYPE_CHECKING:
    from conftest import Cloud

pytestmark = pytest.mark.s3


def _signed_body_hashes(provider: S3Provider) -> list[str]:
    """Every PutObject's X-Amz-Content-SHA256 header as sent (after signing), in order."""
    seen: list[str] = []

    def capture(request: Any, **_: Any) -> None:
        value = request.headers["X-Amz-Content-SHA256"]
        seen.append(value.decode() if isinstance(value, bytes) else value)

    provider._s3.meta.events.register("before-send.s3.PutObject", capture)
    return seen


def _put_and_read_back(provider: S3Provider) -> tuple[bytes, list[str]]:
    provider.create_container()
    seen = _signed_body_hashes(provider)
    body = bytearray(os.urandom(3 << 20))
    provider.put("chunks/ab/body", body)
    provider.put("chunks/ab/view", memoryview(body)[5:])
    assert provider.get("chunks/ab/body") == body
    assert provider.get("chunks/ab/view") == body[5:]
    return bytes(body), seen


def test_over_tls_bodies_are_left_out_of_the_signature(tls_env: str) -> None:
    provider = S3Provider("bench-tls-sig", "repo", endpoint_url=tls_env)
    _, seen = _put_and_read_back(provider)
    assert seen == ["UNSIGNED-PAYLOAD", "UNSIGNED-PAYLOAD"]


def test_over_plain_http_the_signature_still_covers_each_body(cloud_factory: Callable[[str], Cloud]) -> None:
    cloud = cloud_factory("s3")
    provider = S3Provider(cloud.new_bucket(), "repo")
    assert provider._s3.meta.endpoint_url.startswith("http://")
    body, seen = _put_and_read_back(provider)
    assert seen == [hashlib.sha256(body).hexdigest(), hashlib.sha256(body[5:]).hexdigest()]


def test_push_and_pull_over_tls_with_a_private_ca(
    tls_env: str, cli: Callable[..., subprocess.CompletedProcess[str]], key: str, tmp_path: Path,
    torch_checkpoint: Callable[..., Path],
) -> None:  # fmt: skip
    S3Provider("bench-tls-e2e", "", endpoint_url=tls_env).create_container()
    ckpt = torch_checkpoint(tmp_path / "ckpt" / "checkpoint_s1_300.pt", seed=3, step=300)
    url = "s3://bench-tls-e2e/runs/tls"
    cli("push", str(ckpt), "--to", url, "--chunk-size", "256K", check=True)
    cli("pull", "--latest", "--from", url, "--to", str(tmp_path / "fresh"), check=True)
    assert (tmp_path / "fresh" / ckpt.name).read_bytes() == ckpt.read_bytes()
    assert cli("verify", "--read-data", "--from", url, check=True).returncode == 0
