"""Azure Blob Storage (``az://container/prefix``), through azure-storage-blob.

Credentials, first match wins:

1. ``AZURE_STORAGE_CONNECTION_STRING`` (account key or SAS; this is also how Azurite is reached);
2. an account URL (``endpoint_url`` option / ``--endpoint-url``, ``AZURE_STORAGE_ACCOUNT_URL``, or
   ``https://$AZURE_STORAGE_ACCOUNT.blob.core.windows.net``) with ``AZURE_STORAGE_KEY`` or
   ``AZURE_STORAGE_SAS_TOKEN``, else ``DefaultAzureCredential`` when azure-identity is installed
   (environment, workload/managed identity, Azure CLI login).

The SDK's own retry policy is off (``retry_total=0``): the tenacity wrapper owns the budget.
``put_if_absent`` is an upload with ``overwrite=False`` (the SDK sends ``If-None-Match: *``),
which Azure and Azurite both honour atomically.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import requests
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    DecodeError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import BlobServiceClient, ContainerClient
from urllib3.util.retry import Retry

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

try:  # the adapter azure-core itself mounts (larger socket blocks); fall back to the plain one
    from azure.core.pipeline.transport._requests_basic import BiggerBlockSizeHTTPAdapter as _Adapter
except ImportError:  # pragma: no cover - depends on the azure-core version
    from requests.adapters import HTTPAdapter as _Adapter

_CREDENTIAL_HINT = (
    "set AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT with AZURE_STORAGE_KEY / "
    "AZURE_STORAGE_SAS_TOKEN, or sign in for DefaultAzureCredential (pip install azure-identity)"
)
_REJECTED_CODES = {"AuthenticationFailed", "InvalidAuthenticationInfo", "NoAuthenticationInformation"}


def _code(err: HttpResponseError) -> str:
    code = getattr(err, "error_code", None)
    return str(getattr(code, "value", code) or "")


def _parse_connection_string(conn: str) -> dict[str, str]:
    parts = (p.partition("=") for p in conn.split(";") if p.strip())
    return {k.strip(): v.strip() for k, _, v in parts}


class AzureBlobProvider(ObjectStoreProvider):
    scheme = "az"
    noun = "container"

    def __init__(
        self,
        container: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        connection: Connection = DEFAULT_CONNECTION,
    ) -> None:
        self.url = f"az://{container}/{prefix}" if prefix else f"az://{container}"  # for messages below
        session = requests.Session()
        adapter = _Adapter(
            pool_connections=connection.pool_connections,
            pool_maxsize=connection.pool_connections,
            max_retries=Retry(total=False, redirect=False, raise_on_status=False),
        )
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        transport = RequestsTransport(
            session=session,
            session_owner=True,
            connection_timeout=connection.connect_timeout,
            read_timeout=connection.read_timeout,
        )
        client_kw: dict[str, Any] = {"transport": transport, "retry_total": 0}
        try:
            self._service = self._service_client(endpoint_url, client_kw)
        except ValueError as err:  # malformed connection string or account URL
            raise PermanentStorageError(
                f"{self.url}: the Azure connection settings are malformed ({one_line(err)}): "
                "fix AZURE_STORAGE_CONNECTION_STRING or the account URL"
            ) from None
        host = urlparse(self._service.url).hostname or ""
        custom = None if ".blob.core." in host else self._service.url
        super().__init__(container, prefix, custom)
        self._container: ContainerClient = self._service.get_container_client(container)
        self._timeouts = (connection.connect_timeout, connection.read_timeout)

    def _per_call(self) -> dict[str, float]:
        """This attempt's transport timeouts (capped by what is left of its retry budget)."""
        connect, read = attempt_timeouts(*self._timeouts)
        return {"connection_timeout": connect, "read_timeout": read}

    def _service_client(self, endpoint_url: str | None, kw: dict[str, Any]) -> BlobServiceClient:
        conn = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        if conn and not endpoint_url:
            return BlobServiceClient.from_connection_string(conn, **kw)
        credential: Any
        if conn:  # an explicit endpoint wins, with the connection string's credential
            fields = _parse_connection_string(conn)
            if fields.get("SharedAccessSignature"):
                credential = fields["SharedAccessSignature"]
            elif fields.get("AccountKey"):
                credential = {"account_name": fields.get("AccountName", ""), "account_key": fields["AccountKey"]}
            else:
                credential = None
            return BlobServiceClient(endpoint_url, credential=credential, **kw)
        account = os.environ.get("AZURE_STORAGE_ACCOUNT")
        account_url = (
            endpoint_url
            or os.environ.get("AZURE_STORAGE_ACCOUNT_URL")
            or (f"https://{account}.blob.core.windows.net" if account else None)
        )
        if not account_url:
            raise PermanentStorageError(f"no Azure storage account configured for {self.url}: {_CREDENTIAL_HINT}")
        if os.environ.get("AZURE_STORAGE_KEY"):
            name = account or (urlparse(account_url).hostname or "").split(".")[0]
            credential = {"account_name": name, "account_key": os.environ["AZURE_STORAGE_KEY"]}
        elif os.environ.get("AZURE_STORAGE_SAS_TOKEN"):
            credential = os.environ["AZURE_STORAGE_SAS_TOKEN"]
        else:
            try:
                from azure.identity import DefaultAzureCredential
            except ImportError:
                raise PermanentStorageError(f"no Azure credentials for {self.url}: {_CREDENTIAL_HINT}") from None
            credential = DefaultAzureCredential()
        return BlobServiceClient(account_url, credential=credential, **kw)

    # --- error classification --------------------------------------------------------------------

    def classify(self, err: Exception, op: str, key: str = "") -> StorageError:
        """Map an azure-core exception to NotFound / Permanent / Transient, one line, no secrets."""
        what = self.where(key)
        if isinstance(err, ResourceNotFoundError):
            if _code(err) == "ContainerNotFound":
                return PermanentStorageError(self._missing_container())
            return NotFound(f"{what} does not exist")
        if isinstance(err, ClientAuthenticationError) or (
            isinstance(err, HttpResponseError) and err.status_code in (401, 403)
        ):
            code = _code(err) if isinstance(err, HttpResponseError) else ""
            if code in _REJECTED_CODES or not isinstance(err, HttpResponseError) or err.status_code == 401:
                return PermanentStorageError(
                    f"the Azure credentials were rejected for {what} ({code or 'no usable credential'}): "
                    f"{_CREDENTIAL_HINT}"
                )
            return PermanentStorageError(
                f"access denied to {what} ({code or err.status_code}): check the account key or SAS, or give the "
                f"identity the 'Storage Blob Data Contributor' role on container {self.container!r}"
            )
        if isinstance(err, ServiceRequestError) and "Connection refused" in str(err):
            return TransientStorageError(f"cannot reach the Azure endpoint for {what}: check the endpoint and network")
        if isinstance(err, ServiceRequestError | ServiceResponseError | DecodeError):
            # connection refused/reset, timeouts (their *TimeoutError subclasses), truncated bodies
            return TransientStorageError(f"{op} {what}: connection failed ({one_line(err)})")
        if isinstance(err, HttpResponseError):
            status, code = err.status_code or 0, _code(err)
            if status in (408, 429) or status >= 500 or code in ("ServerBusy", "OperationTimedOut", "InternalError"):
                return TransientStorageError(f"{op} {what}: {status} {code}".strip())
            return PermanentStorageError(f"{op} {what} failed: {status} {code}: {one_line(err.reason or '')}")
        if isinstance(err, AzureError | OSError | requests.RequestException):
            return TransientStorageError(f"{op} {what}: {one_line(err)}")
        raise err

    # --- Provider --------------------------------------------------------------------------------

    def _upload(self, name: str, data: bytes | bytearray | memoryview, *, overwrite: bool) -> None:
        # One Put Blob up to the SDK's single-put size (64 MiB): the object appears whole or not at all.
        # bytes only: the SDK takes a bytearray for an iterable of ints (one copy, ~1 ms per 8 MiB).
        body = data if isinstance(data, bytes) else bytes(data)
        self._container.upload_blob(name, body, overwrite=overwrite, **self._per_call())

    def _put(self, name: str, data: bytes | bytearray | memoryview, key: str) -> None:
        try:
            self._upload(name, data, overwrite=True)
        except Exception as err:
            raise self.classify(err, "put", key) from err

    def _create_only(self, name: str, data: bytes | bytearray | memoryview, key: str) -> bool:
        try:
            self._upload(name, data, overwrite=False)
            return True
        except (ResourceExistsError, ResourceModifiedError):  # 409 BlobAlreadyExists / 412 ConditionNotMet
            return False
        except Exception as err:
            raise self.classify(err, "put_if_absent", key) from err

    def _get(self, name: str, start: int, length: int | None, key: str) -> bytes:
        try:
            return self._container.download_blob(
                name, offset=start if (start or length) else None, length=length, **self._per_call()
            ).readall()
        except HttpResponseError as err:
            if err.status_code == 416:
                return b""  # start at or past the end
            raise self.classify(err, "get", key) from err
        except Exception as err:
            raise self.classify(err, "get", key) from err

    def size(self, key: str) -> int | None:
        try:
            return int(self._container.get_blob_client(self._name(key)).get_blob_properties(**self._per_call()).size)
        except Exception as err:
            classified = self.classify(err, "size", key)
            if isinstance(classified, NotFound):
                return None
            raise classified from err

    def _list(self, full_prefix: str) -> Iterator[ObjectInfo]:
        try:
            pages = self._container.list_blobs(
                name_starts_with=full_prefix, results_per_page=LIST_PAGE_SIZE, **self._per_call()
            )
            for blob in pages:
                yield ObjectInfo(blob.name, int(blob.size), blob.last_modified.timestamp())
        except Exception as err:
            raise self.classify(err, "list", full_prefix[len(self._base) :]) from err

    def _delete(self, name: str, key: str) -> None:
        try:
            self._container.delete_blob(name, **self._per_call())
        except Exception as err:
            classified = self.classify(err, "delete", key)
            if not isinstance(classified, NotFound):
                raise classified from err

    def check(self) -> None:
        """One listing call: fails on a missing container, rejected credentials or no list permission."""
        try:
            listing = self._container.list_blobs(name_starts_with=self._base, results_per_page=1, **self._per_call())
            next(iter(listing.by_page()), None)
        except Exception as err:
            raise self.classify(err, "check") from err

    def create_container(self) -> bool:
        """Create the container unless it exists; True when this call made it."""
        try:
            self._container.create_container()
        except ResourceExistsError:
            return False
        except Exception as err:
            raise self.classify(err, "create container") from err
        return True

    def close(self) -> None:
        self._service.close()
