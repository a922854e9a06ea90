"""Each cloud provider sorts its SDK's exceptions into NotFound / permanent / transient (unit tests:
the exceptions are built in process, as the SDKs raise them, so every case runs without a server).
The real-server suites show the same classes arising from real responses."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import requests
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from botocore import exceptions as bx
from botocore.stub import Stubber
from ckpt_sync.providers.azure import AzureBlobProvider
from ckpt_sync.providers.gcs import GCSProvider
from ckpt_sync.providers.s3 import S3Provider
from google.api_core import exceptions as gx
from google.auth import exceptions as gauth

from ckpt_sync.errors import NotFound, PermanentStorageError, StorageError, TransientStorageError

SECRET = "c2VjcmV0LWtleS1tYXRlcmlhbC1kby1ub3QtbGVhaw=="
DEAD = "http://127.0.0.1:9"  # nothing is contacted: clients are only constructed


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> S3Provider:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return S3Provider("bkt", "run", endpoint_url=DEAD)


@pytest.fixture
def azure(monkeypatch: pytest.MonkeyPatch) -> AzureBlobProvider:
    monkeypatch.setenv(
        "AZURE_STORAGE_CONNECTION_STRING",
        f"DefaultEndpointsProtocol=http;AccountName=acct;AccountKey={SECRET};BlobEndpoint={DEAD}/acct;",
    )
    return AzureBlobProvider("ctr", "run")


@pytest.fixture
def gcs(monkeypatch: pytest.MonkeyPatch) -> GCSProvider:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", DEAD)
    return GCSProvider("bkt", "run")


def s3_error(code: str, status: int, message: str = "") -> bx.ClientError:
    return bx.ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject"
    )


def azure_error(cls: type[HttpResponseError], status: int, code: str, message: str = "failed") -> HttpResponseError:
    err = cls(message=message)
    err.status_code = status
    err.error_code = code
    return err


S3_CASES: list[tuple[str, Callable[[], Exception], type[StorageError]]] = [
    ("no such key", lambda: s3_error("NoSuchKey", 404), NotFound),
    ("no such bucket", lambda: s3_error("NoSuchBucket", 404), PermanentStorageError),
    ("access denied", lambda: s3_error("AccessDenied", 403), PermanentStorageError),
    ("bad key id", lambda: s3_error("InvalidAccessKeyId", 403), PermanentStorageError),
    ("bad signature", lambda: s3_error("SignatureDoesNotMatch", 403), PermanentStorageError),
    ("expired token", lambda: s3_error("ExpiredToken", 400), PermanentStorageError),
    ("wrong region", lambda: s3_error("PermanentRedirect", 301), PermanentStorageError),
    ("bad request", lambda: s3_error("InvalidArgument", 400), PermanentStorageError),
    ("slow down", lambda: s3_error("SlowDown", 503), TransientStorageError),
    ("throttled", lambda: s3_error("ThrottlingException", 400), TransientStorageError),
    ("429", lambda: s3_error("TooManyRequests", 429), TransientStorageError),
    ("internal error", lambda: s3_error("InternalError", 500), TransientStorageError),
    ("502 with no code", lambda: s3_error("", 502), TransientStorageError),
    ("request timeout", lambda: s3_error("RequestTimeout", 400), TransientStorageError),
    ("conditional conflict", lambda: s3_error("ConditionalRequestConflict", 409), TransientStorageError),
    ("connection refused", lambda: bx.EndpointConnectionError(endpoint_url=DEAD), TransientStorageError),
    ("connect timeout", lambda: bx.ConnectTimeoutError(endpoint_url=DEAD), TransientStorageError),
    ("read timeout", lambda: bx.ReadTimeoutError(endpoint_url=DEAD), TransientStorageError),
    ("reset", lambda: bx.ConnectionClosedError(endpoint_url=DEAD), TransientStorageError),
    ("truncated body", lambda: bx.IncompleteReadError(actual_bytes=1, expected_bytes=2), TransientStorageError),
    ("no credentials", lambda: bx.NoCredentialsError(), PermanentStorageError),
]


@pytest.mark.parametrize(("name", "make", "expected"), S3_CASES, ids=[c[0] for c in S3_CASES])
def test_s3_errors_are_classified(s3: S3Provider, name: str, make: Callable[[], Exception], expected: type) -> None:
    check(s3.classify(make(), "get", "chunks/ab/abc"), expected, s3.url)


AZURE_CASES: list[tuple[str, Callable[[], Exception], type[StorageError]]] = [
    ("blob not found", lambda: azure_error(ResourceNotFoundError, 404, "BlobNotFound"), NotFound),
    (
        "container not found",
        lambda: azure_error(ResourceNotFoundError, 404, "ContainerNotFound"),
        PermanentStorageError,
    ),
    (
        "bad key",
        lambda: azure_error(
            ClientAuthenticationError, 403, "AuthenticationFailed", f"Server failed to authenticate. MAC {SECRET}"
        ),
        PermanentStorageError,
    ),
    (
        "no permission",
        lambda: azure_error(HttpResponseError, 403, "AuthorizationPermissionMismatch"),
        PermanentStorageError,
    ),
    ("server busy", lambda: azure_error(HttpResponseError, 503, "ServerBusy"), TransientStorageError),
    ("timed out", lambda: azure_error(HttpResponseError, 500, "OperationTimedOut"), TransientStorageError),
    ("429", lambda: azure_error(HttpResponseError, 429, ""), TransientStorageError),
    ("bad request", lambda: azure_error(HttpResponseError, 400, "InvalidHeaderValue"), PermanentStorageError),
    ("refused", lambda: ServiceRequestError("[Errno 111] Connection refused"), TransientStorageError),
    ("reset", lambda: ServiceResponseError("Connection reset by peer"), TransientStorageError),
]


@pytest.mark.parametrize(("name", "make", "expected"), AZURE_CASES, ids=[c[0] for c in AZURE_CASES])
def test_azure_errors_are_classified(
    azure: AzureBlobProvider, name: str, make: Callable[[], Exception], expected: type
) -> None:
    check(azure.classify(make(), "get", "chunks/ab/abc"), expected, azure.url)


GCS_CASES: list[tuple[str, Callable[[], Exception], type[StorageError]]] = [
    ("forbidden", lambda: gx.Forbidden("denied"), PermanentStorageError),
    ("unauthorized", lambda: gx.Unauthorized("bad token"), PermanentStorageError),
    ("bad request", lambda: gx.BadRequest("nope"), PermanentStorageError),
    ("429", lambda: gx.TooManyRequests("slow down"), TransientStorageError),
    ("503", lambda: gx.ServiceUnavailable("later"), TransientStorageError),
    ("500", lambda: gx.InternalServerError("oops"), TransientStorageError),
    ("refused", lambda: requests.ConnectionError("Connection refused"), TransientStorageError),
    ("read timeout", lambda: requests.ReadTimeout("read timed out"), TransientStorageError),
    ("no ADC", lambda: gauth.DefaultCredentialsError("no credentials"), PermanentStorageError),
    ("refresh rejected", lambda: gauth.RefreshError(f"invalid_grant {SECRET}"), PermanentStorageError),
    ("auth transport", lambda: gauth.TransportError("metadata server unreachable"), TransientStorageError),
]


@pytest.mark.parametrize(("name", "make", "expected"), GCS_CASES, ids=[c[0] for c in GCS_CASES])
def test_gcs_errors_are_classified(gcs: GCSProvider, name: str, make: Callable[[], Exception], expected: type) -> None:
    check(gcs.classify(make(), "get", "chunks/ab/abc"), expected, gcs.url)


def check(err: StorageError, expected: type, url: str) -> None:
    assert type(err) is expected
    text = str(err)
    assert url in text and "\n" not in text and len(text) < 400
    assert SECRET not in text


def test_s3_sdk_errors_surface_from_provider_calls_classified(s3: S3Provider) -> None:
    """Through the real client call path (botocore's Stubber answers instead of the network)."""
    with Stubber(s3._s3) as stub:
        stub.add_client_error("get_object", "SlowDown", http_status_code=503)
        stub.add_client_error("get_object", "NoSuchKey", http_status_code=404)
        stub.add_client_error("put_object", "AccessDenied", http_status_code=403)
        stub.add_client_error("put_object", "PreconditionFailed", http_status_code=412)
        stub.add_client_error("head_object", "404", http_status_code=404)
        with pytest.raises(TransientStorageError):
            s3.get("config")
        with pytest.raises(NotFound):
            s3.get("config")
        with pytest.raises(PermanentStorageError, match="access denied"):
            s3.put("config", b"x")
        s3.atomic_put_if_absent = True  # skip the endpoint probe: this stub answers one call
        assert s3.put_if_absent("manifests/1", b"x") is False
        assert s3.size("missing") is None


def test_a_store_that_rejects_if_none_match_falls_back_to_check_then_put(s3: S3Provider) -> None:
    with Stubber(s3._s3) as stub:
        stub.add_client_error("put_object", "NotImplemented", http_status_code=501)  # the probe's first write
        stub.add_client_error("delete_object", "NoSuchKey", http_status_code=404)  # probe clean-up
        stub.add_client_error("head_object", "404", http_status_code=404)  # the real key: absent
        stub.add_response("put_object", {}, None)  # so a plain put
        stub.add_response("head_object", {"ContentLength": 1}, None)  # now present
        assert s3.put_if_absent("manifests/1", b"x") is True
        assert s3.atomic_put_if_absent is False
        assert s3.put_if_absent("manifests/1", b"y") is False
        stub.assert_no_pending_responses()
