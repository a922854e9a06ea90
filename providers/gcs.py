"""Google Cloud Storage (``gs://bucket/prefix``), through google-cloud-storage.

Credentials are Application Default Credentials (``GOOGLE_APPLICATION_CREDENTIALS``, ``gcloud auth
application-default login``, the metadata server). ``STORAGE_EMULATOR_HOST`` points the client at
an emulator with anonymous credentials; the ``endpoint_url`` option / ``--endpoint-url`` sets
another API endpoint (with ADC). The library's own retries are off (``retry=None`` on every call):
the tenacity wrapper owns the budget.

``put_if_absent`` is an upload with ``if_generation_match=0``, atomic on GCS. gcp-storage-emulator
ignores preconditions: on an emulator this is detected once by a probe and put_if_absent falls
back to check-then-put (docs/PROVIDERS.md).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import requests
from google.api_core import exceptions as gx
from google.auth import exceptions as gauth
from google.auth.credentials import AnonymousCredentials
from google.auth.transport.requests import AuthorizedSession
from google.cloud import storage
from google.cloud.storage import exceptions as media_errors
from urllib3.exceptions import HTTPError as Urllib3Error

from ckpt_sync.errors import NotFound, PermanentStorageError, StorageError, TransientStorageError

from .base import ObjectInfo
from .object_store import (
    DEFAULT_CONNECTION,
    LIST_PAGE_SIZE,
    Connection,
    ObjectStoreProvider,
    attempt_timeouts,
    one_line,
)

_CREDENTIAL_HINT = (
    "set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, or run "
    "'gcloud auth application-default login', or run on a VM with a service account"
)
_TRANSIENT = (
    gx.TooManyRequests,
    gx.InternalServerError,
    gx.BadGateway,
    gx.ServiceUnavailable,
    gx.GatewayTimeout,
    gx.DeadlineExceeded,
)


def _as_url(endpoint: str) -> str:
    """STORAGE_EMULATOR_HOST (and an endpoint) is often given as host:port."""
    return endpoint if "://" in endpoint else f"http://{endpoint}"


class GCSProvider(ObjectStoreProvider):
    scheme = "gs"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        connection: Connection = DEFAULT_CONNECTION,
    ) -> None:
        emulator = os.environ.get("STORAGE_EMULATOR_HOST")
        endpoint = endpoint_url or emulator
        super().__init__(bucket, prefix, _as_url(endpoint) if endpoint else None)
        try:
            # The emulator is anonymous, also when an endpoint names it (`status` passes back what a watch recorded).
            if emulator and (not endpoint_url or self.endpoint == _as_url(emulator).rstrip("/")):
                credentials, project = AnonymousCredentials(), os.environ.get("GOOGLE_CLOUD_PROJECT", "ckpt-sync")
            else:
                import google.auth

                credentials, project = google.auth.default(
                    scopes=["https://www.googleapis.com/auth/devstorage.read_write"]
                )
        except gauth.GoogleAuthError as err:
            raise PermanentStorageError(
                f"no usable Google credentials for {self.url} ({one_line(err)}): {_CREDENTIAL_HINT}"
            ) from None
        session = AuthorizedSession(credentials)
        adapter = requests.adapters.HTTPAdapter(
            pool_connections=connection.pool_connections, pool_maxsize=connection.pool_connections
        )
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        options = {"api_endpoint": self.endpoint} if self.endpoint else None
        self._client = storage.Client(project=project, credentials=credentials, _http=session, client_options=options)
        self._bucket = self._client.bucket(bucket)
        self._timeout = (connection.connect_timeout, connection.read_timeout)
        self._bucket_seen = False  # set once the bucket is known to exist (see _not_found)

    def _t(self) -> tuple[float, float]:
        """This attempt's (connect, read) timeouts, capped by what is left of its retry budget."""
        return attempt_timeouts(*self._timeout)

    # --- error classification --------------------------------------------------------------------

    def classify(self, err: Exception, op: str, key: str = "") -> StorageError:
        """Map google-api-core / google-auth / requests exceptions to NotFound / Permanent / Transient."""
        what = self.where(key)
        if isinstance(err, gx.NotFound):
            return self._not_found(key)
        if isinstance(err, gx.Unauthorized | gauth.DefaultCredentialsError) or (
            isinstance(err, gauth.RefreshError) and not getattr(err, "retryable", False)
        ):
            return PermanentStorageError(f"the Google credentials were rejected for {what}: {_CREDENTIAL_HINT}")
        if isinstance(err, gx.Forbidden):
            return PermanentStorageError(
                f"access denied to {what} (403): give the credentials' principal the 'Storage Object Admin' "
                f"role on bucket {self.container!r}"
            )
        if isinstance(err, _TRANSIENT) or (
            isinstance(err, gx.GoogleAPICallError) and ((err.code or 0) >= 500 or err.code in (408, 429))
        ):
            return TransientStorageError(f"{op} {what}: {err.code} {type(err).__name__}")
        if isinstance(err, gx.GoogleAPICallError):
            return PermanentStorageError(f"{op} {what} failed: {err.code} {one_line(err.message)}")
        if isinstance(err, media_errors.InvalidResponse):
            status = getattr(getattr(err, "response", None), "status_code", 0) or 0
            if status in (408, 429) or status >= 500:
                return TransientStorageError(f"{op} {what}: {status}")
            return PermanentStorageError(f"{op} {what} failed: {status} {one_line(err)}")
        if isinstance(err, requests.ConnectionError) and "Connection refused" in str(err):
            return TransientStorageError(f"cannot reach the GCS endpoint for {what}: check the endpoint and network")
        if isinstance(
            err, requests.RequestException | gauth.TransportError | media_errors.DataCorruption | Urllib3Error | OSError
        ):
            return TransientStorageError(f"{op} {what}: {one_line(err)}")
        if isinstance(err, gauth.GoogleAuthError):
            return PermanentStorageError(f"Google credentials problem for {what} ({one_line(err)}): {_CREDENTIAL_HINT}")
        raise err

    def _not_found(self, key: str) -> StorageError:
        """GCS (and its emulator) answer 404 for a missing object and a missing bucket alike: tell them apart."""
        if not self._bucket_seen:
            try:
                next(iter(self._client.list_blobs(self._bucket, max_results=1, retry=None, timeout=self._t())), None)
            except gx.NotFound:
                return PermanentStorageError(self._missing_container())
            except Exception as err:
                return self.classify(err, "check")
            self._bucket_seen = True
        return NotFound(f"{self.where(key)} does not exist")

    # --- Provider --------------------------------------------------------------------------------

    def _upload(self, name: str, data: bytes | bytearray | memoryview, generation: int | None) -> None:
        self._bucket.blob(name).upload_from_string(
            data if isinstance(data, bytes) else bytes(data),  # the library takes bytes or str only
            content_type="application/octet-stream",
            if_generation_match=generation,
            retry=None,
            timeout=self._t(),
        )

    def _put(self, name: str, data: bytes | bytearray | memoryview, key: str) -> None:
        try:
            self._upload(name, data, None)
        except Exception as err:
            raise self.classify(err, "put", key) from err

    def _create_only(self, name: str, data: bytes | bytearray | memoryview, key: str) -> bool:
        try:
            self._upload(name, data, 0)
            return True
        except gx.PreconditionFailed:
            return False
        except Exception as err:
            raise self.classify(err, "put_if_absent", key) from err

    def _get(self, name: str, start: int, length: int | None, key: str) -> bytes:
        end = start + length - 1 if length is not None else None
        try:
            return self._bucket.blob(name).download_as_bytes(
                start=start or None, end=end, retry=None, timeout=self._t()
            )
        except gx.RequestRangeNotSatisfiable:
            return b""  # start at or past the end
        except Exception as err:
            raise self.classify(err, "get", key) from err

    def size(self, key: str) -> int | None:
        try:
            blob = self._bucket.get_blob(self._name(key), retry=None, timeout=self._t())
        except Exception as err:
            raise self.classify(err, "size", key) from err
        return None if blob is None else int(blob.size)

    def _list(self, full_prefix: str) -> Iterator[ObjectInfo]:
        try:
            for blob in self._client.list_blobs(
                self._bucket, prefix=full_prefix, page_size=LIST_PAGE_SIZE, retry=None, timeout=self._t()
            ):
                yield ObjectInfo(blob.name, int(blob.size), blob.updated.timestamp() if blob.updated else 0.0)
        except gx.NotFound:
            raise PermanentStorageError(self._missing_container()) from None
        except Exception as err:
            raise self.classify(err, "list", full_prefix[len(self._base) :]) from err

    def _delete(self, name: str, key: str) -> None:
        try:
            self._bucket.blob(name).delete(retry=None, timeout=self._t())
        except gx.NotFound:
            pass
        except Exception as err:
            raise self.classify(err, "delete", key) from err

    def check(self) -> None:
        """One listing call: fails on a missing bucket, rejected credentials or no list permission."""
        try:
            next(iter(self._client.list_blobs(self._bucket, max_results=1, retry=None, timeout=self._t())), None)
        except gx.NotFound:
            raise PermanentStorageError(self._missing_container()) from None
        except Exception as err:
            raise self.classify(err, "check") from err
        self._bucket_seen = True

    def create_container(self) -> bool:
        """Create the bucket (in the client's project) unless it exists; True when this call made it."""
        try:
            self._client.create_bucket(self.container, retry=None, timeout=self._timeout)
        except gx.Conflict:
            return False
        except Exception as err:
            raise self.classify(err, "create bucket") from err
        self._bucket_seen = True
        return True

    def close(self) -> None:
        self._client.close()
