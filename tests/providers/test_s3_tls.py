"""S3 over TLS, against moto's server with a self-signed certificate (trusted through AWS_CA_BUNDLE, as
a user of a private endpoint would): the request signature leaves chunk bodies out (TLS and each
chunk's HMAC protect them, see providers/s3.py); over plain HTTP each body carries a CRC32 the store
checks before it keeps the object, so a body damaged on the way is refused, not stored.
"""

from __future__ import annotations

import base64
import os
import subprocess
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from ckpt_sync.providers.s3 import S3Provider

if TYPE_CHECKING:
    from conftest import Cloud

pytestmark = pytest.mark.s3


def _header(request: Any, name: str) -> str | None:
    value = request.headers.get(name)
    return value.decode() if isinstance(value, bytes) else value


def _signed_body_hashes(provider: S3Provider) -> list[tuple[str | None, str | None]]:
    """Every PutObject's X-Amz-Content-SHA256 and x-amz-checksum-crc32 headers as sent, in order."""
    seen: list[tuple[str | None, str | None]] = []

    def capture(request: Any, **_: Any) -> None:
        seen.append((_header(request, "X-Amz-Content-SHA256"), _header(request, "x-amz-checksum-crc32")))

    provider._s3.meta.events.register("before-send.s3.PutObject", capture)
    return seen


def _put_and_read_back(provider: S3Provider) -> tuple[bytes, list[tuple[str | None, str | None]]]:
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
    assert seen == [("UNSIGNED-PAYLOAD", None), ("UNSIGNED-PAYLOAD", None)]


def _crc(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def test_over_plain_http_each_body_carries_its_crc32(cloud_factory: Callable[[str], Cloud]) -> None:
    """Not the signature (a SHA-256 of every body, twice the CPU): a CRC32 the store checks."""
    cloud = cloud_factory("s3")
    provider = S3Provider(cloud.new_bucket(), "repo")
    assert provider._s3.meta.endpoint_url.startswith("http://")
    body, seen = _put_and_read_back(provider)
    assert seen == [("UNSIGNED-PAYLOAD", _crc(body)), ("UNSIGNED-PAYLOAD", _crc(body[5:]))]
    assert _crc(body) != _crc(body[:-1] + bytes([body[-1] ^ 1]))  # one flipped bit changes it


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
