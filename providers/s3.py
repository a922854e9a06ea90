"""Amazon S3 and S3-compatible stores (``s3://bucket/prefix``), through boto3.

Credentials and region come from boto3's standard chain (environment, shared config and
credentials files, SSO, container and instance roles); ``AWS_ENDPOINT_URL`` (or
``AWS_ENDPOINT_URL_S3``, or the ``endpoint_url`` option / ``--endpoint-url``) points at an
S3-compatible store or an emulator. botocore's own retries are switched off: the tenacity wrapper
(providers/retry.py) owns the retry budget, so ``--retry-attempts`` means what it says.

``put_if_absent`` is a PutObject with ``If-None-Match: *`` (S3 since 2024, moto, MinIO). A store
that answers 501 to it, or (probed once on a custom endpoint) silently ignores it, gets the
check-then-put fallback described in docs/PROVIDERS.md.
"""

from __future__ import annotations

import base64
import threading
import zlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import boto3
import botocore.exceptions as bx
from botocore.config import Config
from urllib3.exceptions import HTTPError as Urllib3Error

from ckpt_sync.errors import NotFound, PermanentStorageError, StorageError, TransientStorageError

from .base import ObjectInfo
from .object_store import (
    DEFAULT_CONNECTION,
    LIST_PAGE_SIZE,
    ConditionalWriteUnsupported,
    Connection,
    ObjectStoreProvider,
    attempt_timeouts,
    one_line,
    parse_url,
)

_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "RequestLimitExceeded",
    "TooManyRequests",
    "TooManyRequestsException",
    "BandwidthLimitExceeded",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "ServiceUnavailable",
    "OperationAborted",
    "ConditionalRequestConflict",  # a concurrent conditional write on the same key: retry decides it
    "PriorRequestNotComplete",
    "IDPCommunicationError",
}
_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "AuthorizationHeaderMalformed",
    "InvalidSecurity",
}
_DENIED_CODES = {"AccessDenied", "AllAccessDisabled", "AccountProblem", "Forbidden", "403"}
_NO_KEY_CODES = {"NoSuchKey", "404", "NotFound"}
_CREDENTIAL_HINT = (
    "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), AWS_PROFILE, or an instance/container role"
)


class S3Provider(ObjectStoreProvider):
    scheme = "s3"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        profile: str | None = None,
        connection: Connection = DEFAULT_CONNECTION,
    ) -> None:
        super().__init__(bucket, prefix, None)
        config = Config(
            max_pool_connections=connection.pool_connections,
            connect_timeout=connection.connect_timeout,
            read_timeout=connection.read_timeout,
            retries={"total_max_attempts": 1},  # one try per call: tenacity owns retries
            parameter_validation=False,  # so a body can be a view of a reusable buffer (see request_body)
            tcp_keepalive=True,
            # No CRC32 of every body on top of ours over TLS (botocore >= 1.36 computes one per PutObject
            # and checks one per GetObject by default): every chunk is a Fernet token whose HMAC is
            # checked on every read, sizes are checked at the commit, and TLS protects the bytes in
            # flight. The signature leaves the body out (UNSIGNED-PAYLOAD, as botocore does for
            # streamed uploads over TLS): a SHA-256 of every body would cost ~1 CPU s per GiB pushed.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"payload_signing_enabled": False},
        )
        try:
            session = boto3.session.Session(profile_name=profile, region_name=region)
            # endpoint_url=None lets botocore apply AWS_ENDPOINT_URL(_S3) and the profile's endpoint_url
            self._s3 = session.client("s3", endpoint_url=endpoint_url or None, config=config)
            # Over plain HTTP nothing else guards the bytes in flight: a CRC32 of each body
            # (x-amz-checksum-crc32, which the store checks before it keeps the object) does, at half
            # the cost of signing it: a body damaged on the way is refused and sent again, never
            # stored to be found bad at the next read. (Computed here: botocore's own takes views for files.)
            self._crc_bodies = urlparse(self._s3.meta.endpoint_url).scheme != "https"
            self._session, self._endpoint_url, self._config = session, endpoint_url or None, config
            self._timeouts = (connection.connect_timeout, connection.read_timeout)
            self._short: dict[tuple[float, float], Any] = {}  # clients with shorter timeouts, by (connect, read)
            self._short_lock = threading.Lock()
        except (bx.ProfileNotFound, bx.PartialCredentialsError, bx.InvalidConfigError) as err:
            raise PermanentStorageError(f"{self.url}: AWS configuration problem ({one_line(err)}): fix it") from None
        except ValueError as err:  # botocore rejects a malformed endpoint URL here
            raise PermanentStorageError(
                f"{self.url}: bad S3 endpoint ({one_line(err)}): fix --endpoint-url / AWS_ENDPOINT_URL"
            ) from None
        resolved = self._s3.meta.endpoint_url
        host = urlparse(resolved).hostname or ""
        self._use_endpoint(None if host.endswith((".amazonaws.com", ".amazonaws.com.cn")) else resolved)
        self._page = LIST_PAGE_SIZE

    @property
    def _c(self) -> Any:
        """The client for this attempt: botocore fixes timeouts per client, so an attempt with less of
        its retry budget left than the read timeout gets a client with shorter ones (a few, cached)."""
        timeouts = attempt_timeouts(*self._timeouts)
        if timeouts == self._timeouts:
            return self._s3
        with self._short_lock:
            client = self._short.get(timeouts)
            if client is None:
                config = self._config.merge(Config(connect_timeout=timeouts[0], read_timeout=timeouts[1]))
                client = self._session.client("s3", endpoint_url=self._endpoint_url, config=config)
                self._short[timeouts] = client
            return client

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        profile: str | None = None,
        **options: Any,
    ) -> S3Provider:
        """Build from ``s3://bucket/prefix``; options this store does not know are ignored."""
        bucket, prefix = parse_url(url, "s3", "bucket")
        return cls(
            bucket, prefix, endpoint_url=endpoint_url, region=region, profile=profile, connection=Connection.of(options)
        )

    # --- error classification --------------------------------------------------------------------

    def classify(self, err: Exception, op: str, key: str = "") -> StorageError:
        """Map a boto/botocore/urllib3 exception to NotFound / Permanent / Transient, one line, no secrets."""
        what = self.where(key)
        if isinstance(err, bx.ClientError):
            e = err.response.get("Error", {})
            code = str(e.get("Code", ""))
            status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if code == "NoSuchBucket":
                return PermanentStorageError(self._missing_container())
            if code in _NO_KEY_CODES and op != "list":
                return NotFound(f"{what} does not exist")
            if code in _CREDENTIAL_CODES:
                return PermanentStorageError(
                    f"the S3 credentials were rejected for {what} ({code}): {_CREDENTIAL_HINT}"
                )
            if code in _DENIED_CODES or status == 403:
                return PermanentStorageError(
                    f"access denied to {what} ({code or status}): check the credentials and that they may "
                    f"list, read, write and delete in bucket {self.container!r}"
                )
            if code in ("PermanentRedirect", "301") or status == 301:
                return PermanentStorageError(
                    f"bucket {self.container!r} is in another region ({what}): set AWS_REGION or AWS_DEFAULT_REGION"
                )
            if code in _TRANSIENT_CODES or status in (408, 429) or status >= 500:
                return TransientStorageError(f"{op} {what}: {status} {code} {one_line(e.get('Message', ''))}".strip())
            return PermanentStorageError(f"{op} {what} failed: {status} {code}: {one_line(e.get('Message', ''))}")
        if isinstance(err, bx.NoCredentialsError | bx.CredentialRetrievalError | bx.UnauthorizedSSOTokenError):
            return PermanentStorageError(
                f"no usable AWS credentials for {self.url} ({one_line(err)}): {_CREDENTIAL_HINT}"
            )
        if isinstance(err, bx.SSLError) and "CERTIFICATE_VERIFY_FAILED" in str(err):
            return PermanentStorageError(
                f"TLS certificate of the S3 endpoint not trusted ({what}): fix the endpoint or AWS_CA_BUNDLE"
            )
        if isinstance(err, bx.EndpointConnectionError):
            return TransientStorageError(f"cannot reach the S3 endpoint for {what}: check the endpoint and network")
        if isinstance(err, bx.ConnectTimeoutError | bx.ReadTimeoutError):
            return TransientStorageError(f"{op} {what}: timed out ({type(err).__name__})")
        if isinstance(err, bx.ParamValidationError):
            detail = one_line(" ".join(str(err).split()))
            return PermanentStorageError(f"{op} {what}: invalid request ({detail}); check the bucket name")
        if isinstance(err, bx.HTTPClientError | bx.IncompleteReadError | bx.ResponseStreamingError | Urllib3Error):
            # class name only: botocore's messages repeat the whole request URL
            return TransientStorageError(f"{op} {what}: connection failed ({type(err).__name__})")
        if isinstance(err, OSError):
            return TransientStorageError(f"{op} {what}: {one_line(err)}")
        if isinstance(err, bx.BotoCoreError):
            return PermanentStorageError(f"{op} {what}: {one_line(err)}")
        raise err

    # --- Provider --------------------------------------------------------------------------------

    def _body(self, data: bytes | bytearray | memoryview) -> dict[str, Any]:
        body = request_body(data)
        if not self._crc_bodies:
            return {"Body": body}
        crc = zlib.crc32(body).to_bytes(4, "big")
        return {"Body": body, "ChecksumCRC32": base64.b64encode(crc).decode()}

    def _put(self, name: str, data: bytes | bytearray | memoryview, key: str) -> None:
        try:
            self._c.put_object(Bucket=self.container, Key=name, **self._body(data))
        except Exception as err:
            raise self.classify(err, "put", key) from err

    def _create_only(self, name: str, data: bytes | bytearray | memoryview, key: str) -> bool:
        try:
            self._c.put_object(Bucket=self.container, Key=name, IfNoneMatch="*", **self._body(data))
            return True
        except bx.ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code == "PreconditionFailed" or status == 412:
                return False
            if code == "NotImplemented" or status == 501:
                raise ConditionalWriteUnsupported from err
            raise self.classify(err, "put_if_absent", key) from err
        except Exception as err:
            raise self.classify(err, "put_if_absent", key) from err

    def _get(self, name: str, start: int, length: int | None, key: str) -> bytes:
        kw: dict[str, str] = {}
        if length is not None:
            kw["Range"] = f"bytes={start}-{start + length - 1}"
        elif start:
            kw["Range"] = f"bytes={start}-"
        try:
            resp = self._c.get_object(Bucket=self.container, Key=name, **kw)
            return resp["Body"].read()  # botocore checks the length read against Content-Length
        except bx.ClientError as err:
            if err.response.get("Error", {}).get("Code") == "InvalidRange":
                return b""  # start at or past the end
            raise self.classify(err, "get", key) from err
        except Exception as err:
            raise self.classify(err, "get", key) from err

    def size(self, key: str) -> int | None:
        try:
            return int(self._c.head_object(Bucket=self.container, Key=self._name(key))["ContentLength"])
        except Exception as err:
            classified = self.classify(err, "size", key)
            if isinstance(classified, NotFound):
                return None
            raise classified from err

    def _list(self, full_prefix: str) -> Iterator[ObjectInfo]:
        pages = self._c.get_paginator("list_objects_v2").paginate(
            Bucket=self.container, Prefix=full_prefix, PaginationConfig={"PageSize": self._page}
        )
        try:
            for page in pages:
                for obj in page.get("Contents", ()):
                    yield ObjectInfo(obj["Key"], int(obj["Size"]), obj["LastModified"].timestamp())
        except Exception as err:
            raise self.classify(err, "list", full_prefix[len(self._base) :]) from err

    def _delete(self, name: str, key: str) -> None:
        try:
            self._c.delete_object(Bucket=self.container, Key=name)  # S3 deletes of missing keys succeed
        except Exception as err:
            classified = self.classify(err, "delete", key)
            if not isinstance(classified, NotFound):
                raise classified from err

    def check(self) -> None:
        """One listing call: fails on a missing bucket, rejected credentials or no list permission."""
        try:
            self._c.list_objects_v2(Bucket=self.container, Prefix=self._base, MaxKeys=1)
        except Exception as err:
            raise self.classify(err, "check") from err

    def create_container(self) -> bool:
        """Create the bucket (in the client's region) unless it exists; True when this call made it."""
        try:
            self.check()
            return False
        except PermanentStorageError as err:
            if self._missing_container() != str(err):
                raise
        region = self._s3.meta.region_name
        where = {} if region in (None, "us-east-1") else {"CreateBucketConfiguration": {"LocationConstraint": region}}
        try:
            self._s3.create_bucket(Bucket=self.container, **where)
        except bx.ClientError as err:
            if err.response.get("Error", {}).get("Code") == "BucketAlreadyOwnedByYou":
                return False
            raise self.classify(err, "create bucket") from err
        except Exception as err:
            raise self.classify(err, "create bucket") from err
        return True

    def close(self) -> None:
        self._s3.close()
        for client in self._short.values():
            client.close()


def request_body(data: bytes | bytearray | memoryview) -> bytes | bytearray | memoryview:
    """The body to hand botocore: the caller's buffer itself, never a copy. A token is a view of a
    reusable buffer sized for the largest chunk, so it is mostly a part of it; botocore's parameter
    check would refuse a view (it takes bytes, bytearray or files), so the client skips that check
    (``parameter_validation=False``: every parameter is built here), and signing, length and the
    socket all take any bytes-like object. Copying each token cost ~0.3 CPU s per GiB pushed."""
    if isinstance(data, memoryview) and not data.contiguous:
        return data.tobytes()
    return data
