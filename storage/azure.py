"""`AzureBlob` storage with azure-storage-blob (contract §3).

URIs: `https://<account>.blob.core.windows.net/<container>/<folder>/` (any `<account>.blob.<...>`
host, so sovereign clouds work too), and for emulators and custom hosts the account as the first
path segment: `http://127.0.0.1:10000/<account>/<container>/<folder>/` (Azurite's layout).

Credentials: account name (`CredentialsName`) + account key (`CredentialsSecret`, base64); none
for a public container.

Large files are uploaded as blocks (`max_block_size`) in parallel (`max_concurrency`) once they
exceed `max_single_put_size` (env `VIPE_AZURE_SINGLE_PUT_SIZE`, `VIPE_AZURE_BLOCK_SIZE`), and
downloaded in parallel ranged chunks. The SDK's own retry policy makes `sdk_attempts` attempts per
request; what still fails is raised as a StorageError marked retryable for `Storage.retrying`.

Egress policy (`storage.egress`): with a restricted one, the client gets a transport of its own
(requests with guarded connection pools, no proxy from the environment) whose connections go
only to admitted addresses, redirects included; a refusal is a StorageError(kind='denied')
naming the field and the rule.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path
from typing import ClassVar
from urllib.parse import unquote, urlparse

from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import BlobPrefix, ContainerClient, ContentSettings, ExponentialRetry

from storage.base import (
    CancelCheck,
    ErrorKind,
    Progress,
    ProgressRelay,
    RemoteFile,
    Storage,
    StorageError,
    StorageLocation,
    content_type,
    env_int,
    run_cancellable,
    safe_name,
    safe_relative_path,
)
from storage.egress import EgressDenied, guarded_requests_session

log = logging.getLogger(__name__)

MiB = 1 << 20

_ACCOUNT_HOST = re.compile(r"^(?P<account>[a-z0-9]{3,24})\.blob\.")
_DENIED_CODES = {
    "AuthenticationFailed",
    "AuthorizationFailure",
    "AuthorizationPermissionMismatch",
    "InsufficientAccountPermissions",
    "AccountIsDisabled",
    "InvalidAuthenticationInfo",
}


class AzureBlobStorage(Storage):
    """A folder (name prefix) of an Azure Blob Storage container."""

    provider = "AzureBlob"
    max_single_put_size: ClassVar[int] = env_int("VIPE_AZURE_SINGLE_PUT_SIZE", 64 * MiB)
    max_block_size: ClassVar[int] = env_int("VIPE_AZURE_BLOCK_SIZE", 8 * MiB)
    max_concurrency: ClassVar[int] = 4
    # Attempts per request made by the SDK's retry policy (1 = no SDK retry), and its backoff.
    sdk_attempts: ClassVar[int] = 3
    sdk_backoff_seconds: ClassVar[int] = 2
    timeout_seconds: ClassVar[float] = 60.0
    list_page_size: ClassVar[int] = 5000

    def __init__(self, location: StorageLocation):
        super().__init__(location)
        self.account_url, self.account, self.container, self.prefix = _parse(location.uri)
        self._client: ContainerClient | None = None
        self._lock = threading.Lock()

    def describe(self) -> str:
        return f"{self.provider} {self.account_url}/{self.container}/{self.prefix}"

    def client(self) -> ContainerClient:
        """The container client, created on first use."""
        with self._lock:
            if self._client is None:
                loc = self.location
                credential = None
                if loc.credentials_name and loc.credentials_secret:
                    credential = AzureNamedKeyCredential(
                        loc.credentials_name, loc.credentials_secret
                    )
                self._client = ContainerClient(
                    self.account_url,
                    self.container,
                    credential=credential,
                    retry_policy=ExponentialRetry(
                        initial_backoff=self.sdk_backoff_seconds,
                        increment_base=3,
                        retry_total=max(0, self.sdk_attempts - 1),
                        random_jitter_range=1,
                    ),
                    connection_timeout=self.timeout_seconds,
                    read_timeout=self.timeout_seconds,
                    max_single_put_size=self.max_single_put_size,
                    max_block_size=self.max_block_size,
                    max_single_get_size=self.max_single_put_size,
                    max_chunk_get_size=self.max_block_size,
                    **self._egress_transport(),
                )
            return self._client

    def _egress_transport(self) -> dict[str, RequestsTransport]:
        """With a restricted egress policy, a transport whose connections go only to admitted
        addresses (the SDK's own otherwise)."""
        policy = self.location.egress
        if not policy.restricted:
            return {}
        from urllib3.util.retry import Retry

        session = guarded_requests_session(
            policy,
            self.location.field,
            # As the SDK's own adapter: its retry policy retries, not urllib3.
            max_retries=Retry(total=False, redirect=False, raise_on_status=False),
        )
        transport = RequestsTransport(
            session=session,
            session_owner=True,
            connection_timeout=self.timeout_seconds,
            read_timeout=self.timeout_seconds,
        )
        return {"transport": transport}

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def blob_name(self, name: str) -> str:
        return self.prefix + name

    # -- operations --------------------------------------------------------------------------

    def list_files(self) -> list[RemoteFile]:
        files = []
        try:
            items = self.client().walk_blobs(
                name_starts_with=self.prefix or None,
                delimiter="/",  # files directly in the folder, not in sub-folders
                results_per_page=self.list_page_size,
            )
            for item in items:
                if isinstance(item, BlobPrefix):
                    continue
                name = item.name[len(self.prefix) :]
                if name:
                    files.append(RemoteFile(name, int(item.size or 0)))
        except Exception as error:
            raise self._error("cannot list the folder", error) from None
        return files

    def check_access(self) -> None:
        try:  # the first page of one blob is enough to prove the container answers
            pages = (
                self.client()
                .list_blobs(name_starts_with=self.prefix or None, results_per_page=1)
                .by_page()
            )
            next(pages, None)
        except Exception as error:
            raise self._error("cannot list the folder", error) from None

    def download_file(
        self,
        name: str,
        target: Path,
        progress: Progress | None = None,
        cancel: CancelCheck | None = None,
    ) -> None:
        """Chunked; a cancel is noticed within CANCEL_TICK even while a chunk stalls
        (run_cancellable): the transfer stops at its next chunk, its partial file is removed."""
        blob = self.client().get_blob_client(self.blob_name(safe_name(name)))
        partial = target.with_name(f".{target.name}.partial")
        relay = ProgressRelay(0, progress)

        def download() -> None:
            with open(partial, "wb") as file:
                # Ranged chunks in parallel; a chunk whose stream breaks is fetched again.
                stream = blob.download_blob(
                    max_concurrency=self.max_concurrency, progress_hook=relay.report
                )
                relay.total = stream.size
                stream.readinto(file)

        try:
            run_cancellable(
                download,
                cancel,
                abandoned=lambda _succeeded: partial.unlink(missing_ok=True),
            )
            os.replace(partial, target)
        except Exception as error:
            partial.unlink(missing_ok=True)
            relay.reraise()
            raise self._error(f"cannot download {name}", error) from None
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        if progress:
            progress(relay.total, relay.total)

    def upload_file(
        self,
        source: Path,
        name: str,
        progress: Progress | None = None,
        cancel: CancelCheck | None = None,
    ) -> None:
        """Blocks; a cancel is noticed within CANCEL_TICK even while a block stalls
        (run_cancellable): the transfer stops at its next block, its staged blocks are never
        committed (Azure drops them), and a blob that lands late after the rollback is deleted
        again (Storage.landed_late)."""
        blob = self.client().get_blob_client(self.blob_name(safe_relative_path(name)))
        size = source.stat().st_size
        relay = ProgressRelay(size, progress)

        def upload() -> None:
            with open(source, "rb") as file:
                # Above max_single_put_size: staged blocks in parallel, committed at the end, so
                # readers never see a half-written blob.
                blob.upload_blob(
                    file,
                    length=size,
                    overwrite=True,
                    max_concurrency=self.max_concurrency,
                    content_settings=ContentSettings(content_type=content_type(name)),
                    progress_hook=relay.report,
                )

        try:
            run_cancellable(
                upload,
                cancel,
                abandoned=lambda succeeded: self.landed_late(name) if succeeded else None,
            )
        except Exception as error:
            relay.reraise()
            raise self._error(f"cannot upload {name}", error) from None
        if progress:
            progress(size, size)

    def exists(self, name: str) -> bool:
        return name in self.existing([name])

    def existing(self, names: list[str]) -> set[str]:
        """One listing of everything under the folder (sub-folders too), not one request a
        name."""
        wanted = set(names)
        try:
            blobs = self.client().list_blobs(
                name_starts_with=self.prefix or None, results_per_page=self.list_page_size
            )
            return {n for blob in blobs if (n := blob.name[len(self.prefix) :]) in wanted}
        except ResourceNotFoundError:
            return set()  # no container yet: nothing there
        except Exception as error:
            raise self._error("cannot list the folder", error) from None

    def delete_file(self, name: str) -> None:
        blob = self.client().get_blob_client(self.blob_name(safe_relative_path(name)))
        try:
            blob.delete_blob()
        except ResourceNotFoundError:
            return  # already gone (or no container): nothing to delete
        except Exception as error:
            raise self._error(f"cannot delete {name}", error) from None

    # -- errors ------------------------------------------------------------------------------

    def _error(self, what: str, error: BaseException) -> StorageError:
        return self.failure(what, *_classify(error))


def _parse(uri: str) -> tuple[str, str, str, str]:
    """(account URL, account, container, prefix ending in '/' or '')."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise StorageError(f"AzureBlob: {parsed.scheme}:// is not an http(s) URI", "invalid")
    if parsed.username or parsed.password:
        raise StorageError(
            "AzureBlob: credentials belong in CredentialsName/CredentialsSecret, not in the URI",
            "invalid",
        )
    segments = [s for s in unquote(parsed.path).split("/") if s]
    origin = f"{parsed.scheme}://{parsed.netloc}"
    if match := _ACCOUNT_HOST.match(parsed.hostname.lower()):
        account, account_url = match["account"], origin
    else:  # emulator / custom host: the account is the first path segment
        if not segments:
            raise StorageError(f"AzureBlob: {uri} names no account", "invalid")
        account = segments.pop(0)
        account_url = f"{origin}/{account}"
    if not segments:
        raise StorageError(f"AzureBlob: {uri} names no container", "invalid")
    container, folder = segments[0], segments[1:]
    for part in folder:
        if part in (".", ".."):
            raise StorageError(f"AzureBlob: refusing the folder in {uri}: '.' or '..'", "invalid")
    prefix = "/".join(folder) + "/" if folder else ""
    return account_url, account, container, prefix


def _classify(error: BaseException) -> tuple[ErrorKind, bool, str]:
    """(kind, retryable, reason) for an exception out of the Azure SDK."""
    if isinstance(error, EgressDenied):
        return "denied", False, str(error)
    code = getattr(error, "error_code", None) or ""
    # The SDK hands a StorageErrorCode (a str enum): its value reads "AuthorizationFailure",
    # its format() "StorageErrorCode.AUTHORIZATION_FAILURE".
    code = str(getattr(code, "value", code))
    status = getattr(error, "status_code", None) or 0
    label = f"{code or type(error).__name__}" + (f" (HTTP {status})" if status else "")
    if isinstance(error, ClientAuthenticationError) or code in _DENIED_CODES or status == 403:
        return "denied", False, f"access denied: {label}"
    if isinstance(error, ResourceNotFoundError) or status == 404:
        return "missing", False, f"not found: {label}"
    if isinstance(error, ServiceRequestError | ServiceResponseError):
        return "unreachable", True, f"connection failed: {type(error).__name__}"
    if isinstance(error, HttpResponseError):
        if status >= 500 or status in (408, 429) or not status:
            return "unreachable", True, f"service error: {label}"
        return "invalid", False, f"refused: {label}"
    if isinstance(error, AzureError | OSError):
        return "unreachable", True, f"connection failed: {type(error).__name__}"
    if isinstance(error, ValueError):  # e.g. an account key that is not base64
        return "denied", False, "the account key is not valid base64"
    return "unreachable", False, f"unexpected failure: {type(error).__name__}"
