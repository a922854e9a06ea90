"""S3 over TLS, against moto's server with a self-signed certificate (trusted through AWS_CA_BUNDLE, as
a user of a private endpoint would): the request signature leaves chunk bodies out there (TLS and
each chunk's HMAC protect them, see providers/s3.py), and over plain HTTP it still covers them.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import servers as harness
from ckpt_sync.providers.s3 import S3Provider

if TYPE_CHECKING:
    from conftest import Cloud

pytestmark = pytest.mark.s3


def _self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


@pytest.fixture(scope="module")
def tls_moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(https endpoint URL, its certificate) of a private moto server over TLS."""
    folder = tmp_path_factory.mktemp("moto-tls")
    cert, key = _self_signed(folder)
    port = harness.free_port()
    log = (folder / "moto.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port), "-c", str(cert), "-k", str(key)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"https://127.0.0.1:{port}"
    context = ssl.create_default_context(cafile=str(cert))
    try:
        for _ in range(600):  # until it answers (a start-up wait, no timing is asserted)
            if proc.poll() is not None:
                pytest.fail(f"moto over TLS exited at start: {(folder / 'moto.log').read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{url}/moto-api/", context=context, timeout=2).close()
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.1)
        else:
            pytest.fail("moto over TLS did not answer")
        yield url, cert
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture
def tls_env(tls_moto: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> str:
    """The standard AWS variables pointing at the TLS server; returns its URL."""
    url, cert = tls_moto
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    monkeypatch.setenv("AWS_CA_BUNDLE", str(cert))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", harness.MOTO_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", harness.MOTO_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return url


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
