"""`AmazonS3` and `S3Compatible` storage with boto3 (contract §3).

URIs:
- AmazonS3, virtual-hosted: `https://<bucket>.s3.<region>.amazonaws.com/<folder>/` (also
  `<bucket>.s3.amazonaws.com`, `<bucket>.s3-<region>.amazonaws.com`), path style
  `https://s3.<region>.amazonaws.com/<bucket>/<folder>/`, or `s3://<bucket>/<folder>/`.
- S3Compatible, path style with an explicit endpoint: `https://<host>[:port]/<bucket>/<folder>/`
  (`http://` for local servers).

Credentials: access key id + secret; `RoleArnToAssume` (STS AssumeRole, with the keys when given,
else with the node's own credentials); or, when neither is given, boto3's default chain (env,
shared config, instance/container role).

Endpoint override (tests, VPC endpoints, LocalStack/moto): `VIPE_S3_ENDPOINT_URL`, else boto3's own
`AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`, makes AmazonS3 talk path style to that endpoint; the
bucket, folder and region still come from the URI. STS uses `VIPE_STS_ENDPOINT_URL` when set (boto3
itself honours `AWS_ENDPOINT_URL_STS` / `AWS_ENDPOINT_URL`).

Transfers go through boto3's managed transfer: large files are uploaded in parallel multipart
parts (`multipart_threshold`, `multipart_chunksize`; env `VIPE_S3_MULTIPART_THRESHOLD`,
`VIPE_S3_MULTIPART_CHUNKSIZE`) and downloaded in ranged parts straight to disk. botocore's
`standard` retry mode retries throttling, 5xx and connection errors `sdk_attempts` times in total;
what still fails is raised as a StorageError marked retryable for `Storage.retrying`.

Egress policy (`storage.egress`): with a restricted one, the endpoint of each client (S3, and STS
for a role) is checked when the client is made, and the client's connections go only to
admitted addresses (botocore's connection pools are swapped for guarded ones; with a proxy from
the environment the proxy's address is what the connect-time check sees). A refusal is a
StorageError(kind='denied') naming the field and the rule.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import uuid
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote, urlparse

import boto3
import botocore.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

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
from storage.egress import EgressDenied, guard_botocore_client

log = logging.getLogger(__name__)

MiB = 1 << 20
# <bucket>.s3.<region>.amazonaws.com, <bucket>.s3-<region>.amazonaws.com, dualstack, China.
_VIRTUAL_HOST = re.compile(
    r"^(?P<bucket>[a-z0-9][a-z0-9.-]*)\.s3[.-](?:dualstack\.)?(?P<region>[a-z]{2}(?:-[a-z]+)+-\d)"
    r"\.amazonaws\.com(?:\.cn)?$"
)
_VIRTUAL_HOST_GLOBAL = re.compile(r"^(?P<bucket>[a-z0-9][a-z0-9.-]*)\.s3\.amazonaws\.com$")
_PATH_HOST = re.compile(
    r"^s3(?:[.-](?:dualstack\.)?(?P<region>[a-z]{2}(?:-[a-z]+)+-\d))?\.amazonaws\.com(?:\.cn)?$"
)

_DENIED_CODES = {
    "AccessDenied",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidToken",
    "TokenRefreshRequired",
    "AccountProblem",
    "UnrecognizedClientException",
    "AuthFailure",
}
_MISSING_CODES = {"NoSuchBucket", "NoSuchKey", "NotFound", "404", "NoSuchUpload"}
_TRANSIENT_CODES = {
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "BadDigest",  # a body corrupted in transit
    "IncompleteBody",
}


class S3Storage(Storage):
    """A folder (key prefix) of an Amazon S3 bucket."""

    provider = "AmazonS3"
    # Managed-transfer settings; S3 itself requires parts of at least 5 MiB (boto3 enforces it).
    multipart_threshold: ClassVar[int] = env_int("VIPE_S3_MULTIPART_THRESHOLD", 64 * MiB)
    multipart_chunksize: ClassVar[int] = env_int("VIPE_S3_MULTIPART_CHUNKSIZE", 16 * MiB)
    max_concurrency: ClassVar[int] = 4
    # botocore standard retry mode: attempts in total for one request (1 = no SDK retry).
    sdk_attempts: ClassVar[int] = 3
    timeout_seconds: ClassVar[float] = 60.0
    list_page_size: ClassVar[int] = 1000

    def __init__(self, location: StorageLocation):
        super().__init__(location)
        self.bucket, self.prefix, self.region, self.endpoint = self._parse(location.uri)
        self._client: Any = None
        self._lock = threading.Lock()
        self._multipart: dict[str, str] = {}  # key -> UploadId of the multipart upload begun

    # -- URI ---------------------------------------------------------------------------------

    def _parse(self, uri: str) -> tuple[str, str, str | None, str | None]:
        """(bucket, key prefix ending in '/' or '', region or None, endpoint URL or None)."""
        parsed = urlparse(uri)
        if parsed.username or parsed.password:
            raise StorageError(
                f"{self.provider}: credentials belong in CredentialsName/"
                "CredentialsSecret, not in the URI",
                "invalid",
            )
        host = (parsed.hostname or "").lower()
        path = unquote(parsed.path)
        endpoint = _override_endpoint()
        if parsed.scheme == "s3":
            bucket, folder = host, path
            region = None
        elif parsed.scheme == "https" and (match := _VIRTUAL_HOST.match(host)):
            bucket, region, folder = match["bucket"], match["region"], path
        elif parsed.scheme == "https" and (match := _VIRTUAL_HOST_GLOBAL.match(host)):
            bucket, region, folder = match["bucket"], "us-east-1", path
        elif parsed.scheme == "https" and (match := _PATH_HOST.match(host)):
            bucket, _, folder = path.lstrip("/").partition("/")
            region = match["region"] or "us-east-1"
        else:
            raise StorageError(
                f"AmazonS3: {_redact(uri)} is not an S3 URI "
                "(https://<bucket>.s3.<region>.amazonaws.com/<folder>/ or s3://<bucket>/<folder>/)",
                "invalid",
            )
        region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        return _check_bucket(self.provider, bucket, uri), _prefix(folder), region, endpoint

    def describe(self) -> str:
        return f"{self.provider} {_redact(self.location.uri)}"

    # -- client ------------------------------------------------------------------------------

    def _config(self, addressing_style: str) -> Config:
        return Config(
            retries={"mode": "standard", "total_max_attempts": max(1, self.sdk_attempts)},
            connect_timeout=self.timeout_seconds,
            read_timeout=self.timeout_seconds,
            signature_version="s3v4",
            s3={"addressing_style": addressing_style},
            max_pool_connections=max(10, self.max_concurrency * 2),
        )

    def client(self) -> Any:
        """The boto3 S3 client, created (and the role assumed) on first use."""
        with self._lock:
            if self._client is None:
                try:
                    session = self._session()
                    client = session.client(
                        "s3",
                        endpoint_url=self.endpoint,
                        config=self._config("path" if self.endpoint else "virtual"),
                    )
                    self._hold_to_egress(client, self.location.field)
                    self._client = client
                except Exception as error:
                    raise self._error("cannot connect", error) from None
            return self._client

    def _session(self) -> boto3.Session:
        loc = self.location
        keys: dict[str, str] = {}
        if loc.credentials_name and loc.credentials_secret:
            keys = {
                "aws_access_key_id": loc.credentials_name,
                "aws_secret_access_key": loc.credentials_secret,
            }
        session = boto3.Session(region_name=self.region, **keys)
        if not loc.role_arn:
            return session
        # AssumeRole once per provider instance; RoleSessionDurationInSeconds must cover the job.
        sts = session.client(
            "sts",
            endpoint_url=os.environ.get("VIPE_STS_ENDPOINT_URL") or None,
            config=Config(
                retries={"mode": "standard", "total_max_attempts": max(1, self.sdk_attempts)},
                connect_timeout=self.timeout_seconds,
                read_timeout=self.timeout_seconds,
            ),
        )
        folder_field = self.location.field.rpartition(".")[0]
        self._hold_to_egress(sts, f"{folder_field}.RoleArnToAssume (STS)".lstrip("."))
        answer = sts.assume_role(
            RoleArn=loc.role_arn,
            RoleSessionName=f"vipe-{uuid.uuid4().hex[:16]}",
            DurationSeconds=loc.role_session_seconds,
        )
        credentials = answer["Credentials"]
        log.info("%s: assumed role %s", self.describe(), loc.role_arn)
        return boto3.Session(
            region_name=self.region,
            aws_access_key_id=credentials["AccessKeyId"],
            aws_secret_access_key=credentials["SecretAccessKey"],
            aws_session_token=credentials["SessionToken"],
        )

    def _hold_to_egress(self, client: Any, what: str) -> None:
        """Hold a new botocore client to the location's egress policy: its endpoint is checked
        now (a refusal before any request), and its connections go only to admitted addresses
        (the connect-time check, against DNS answers that change)."""
        policy = self.location.egress
        if policy.restricted:
            policy.check_url(client.meta.endpoint_url, what)
            guard_botocore_client(client, policy, what)

    def _transfer_config(self) -> TransferConfig:
        return TransferConfig(
            multipart_threshold=self.multipart_threshold,
            multipart_chunksize=self.multipart_chunksize,
            max_concurrency=self.max_concurrency,
            use_threads=self.max_concurrency > 1,
        )

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # -- operations --------------------------------------------------------------------------

    def key(self, name: str) -> str:
        return self.prefix + name

    def list_files(self) -> list[RemoteFile]:
        client = self.client()
        files = []
        try:
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket,
                Prefix=self.prefix,
                Delimiter="/",  # files directly in the folder, not in sub-folders
                PaginationConfig={"PageSize": self.list_page_size},
            )
            for page in pages:
                for item in page.get("Contents", []):
                    name = item["Key"][len(self.prefix) :]
                    if name:  # "folder/" itself: a folder marker object
                        files.append(RemoteFile(name, int(item["Size"])))
        except Exception as error:
            raise self._error("cannot list the folder", error) from None
        return files

    def check_access(self) -> None:
        try:  # one key is enough to prove the bucket answers these credentials
            self.client().list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        except Exception as error:
            raise self._error("cannot list the folder", error) from None

    def download_file(
        self,
        name: str,
        target: Path,
        progress: Progress | None = None,
        cancel: CancelCheck | None = None,
    ) -> None:
        """A cancel is noticed within CANCEL_TICK even while the transfer stalls
        (run_cancellable); the transfer itself stops at its next progress callback, and a file
        it completes late is removed."""
        run_cancellable(
            lambda: self._download(name, target, progress),
            cancel,
            abandoned=lambda succeeded: target.unlink(missing_ok=True) if succeeded else None,
        )

    def _download(self, name: str, target: Path, progress: Progress | None) -> None:
        key = self.key(safe_name(name))
        client = self.client()
        try:
            size = int(client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except Exception as error:
            raise self._error(f"cannot read {name}", error) from None
        relay = ProgressRelay(size, progress)
        try:
            # Ranged, parallel GETs written to a temporary file that is renamed at the end;
            # a part whose stream breaks is fetched again.
            client.download_file(
                self.bucket, key, str(target), Callback=relay.add, Config=self._transfer_config()
            )
        except Exception as error:
            relay.reraise()
            raise self._error(f"cannot download {name}", error) from None
        relay.reraise()
        if progress:
            progress(size, size)

    def upload_file(
        self,
        source: Path,
        name: str,
        progress: Progress | None = None,
        cancel: CancelCheck | None = None,
    ) -> None:
        """A cancel is noticed within CANCEL_TICK even while the upload stalls
        (run_cancellable): its multipart upload, if any, is aborted at once, the transfer stops
        at its next progress callback, and an object that lands late after the rollback is
        deleted again (Storage.landed_late)."""
        key = self.key(safe_relative_path(name))
        multipart = source.stat().st_size >= self.multipart_threshold
        if multipart:
            self._note_multipart_uploads()
        run_cancellable(
            lambda: self._upload(source, name, progress),
            cancel,
            interrupt=(lambda: self._abort_multipart(key)) if multipart else None,
            abandoned=lambda succeeded: self.landed_late(name) if succeeded else None,
        )

    def _note_multipart_uploads(self) -> None:
        """Remember the UploadId of each multipart upload this client begins (by key), so that
        a cancel can abort exactly its own."""

        def noted(parsed: dict[str, Any], **_: Any) -> None:
            if "UploadId" in parsed and "Key" in parsed:
                with self._lock:
                    self._multipart[parsed["Key"]] = parsed["UploadId"]

        self.client().meta.events.register(
            "after-call.s3.CreateMultipartUpload", noted, unique_id=f"vipe-mpu-{id(self)}"
        )

    def _abort_multipart(self, key: str) -> None:
        """Abort this upload's multipart upload of `key`, cancelled: its parts are not kept
        (and billed), and a part still in flight fails now."""
        with self._lock:
            upload_id = self._multipart.pop(key, None)
        if upload_id is not None:
            self.client().abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            log.info("%s: aborted the multipart upload of %s", self.describe(), key)

    def _upload(self, source: Path, name: str, progress: Progress | None) -> None:
        key = self.key(safe_relative_path(name))
        client = self.client()
        size = source.stat().st_size
        relay = ProgressRelay(size, progress)
        try:
            # Multipart above the threshold, parts in parallel; a failed multipart upload is
            # aborted by boto3 so no orphaned parts are billed.
            client.upload_file(
                str(source),
                self.bucket,
                key,
                ExtraArgs={"ContentType": content_type(name)},
                Callback=relay.add,
                Config=self._transfer_config(),
            )
        except Exception as error:
            relay.reraise()
            raise self._error(f"cannot upload {name}", error) from None
        relay.reraise()
        if progress:
            progress(size, size)

    def exists(self, name: str) -> bool:
        return name in self.existing([name])

    def existing(self, names: list[str]) -> set[str]:
        """One listing of everything under the folder (sub-folders too), not one HEAD a name."""
        wanted = set(names)
        found = set()
        try:
            pages = (
                self.client()
                .get_paginator("list_objects_v2")
                .paginate(
                    Bucket=self.bucket,
                    Prefix=self.prefix,
                    PaginationConfig={"PageSize": self.list_page_size},
                )
            )
            for page in pages:
                for item in page.get("Contents", []):
                    name = item["Key"][len(self.prefix) :]
                    if name in wanted:
                        found.add(name)
        except Exception as error:
            raise self._error("cannot list the folder", error) from None
        return found

    def delete_file(self, name: str) -> None:
        key = self.key(safe_relative_path(name))
        try:
            self.client().delete_object(Bucket=self.bucket, Key=key)  # missing: 204 too
        except Exception as error:
            raise self._error(f"cannot delete {name}", error) from None

    # -- errors ------------------------------------------------------------------------------

    def _error(self, what: str, error: BaseException) -> StorageError:
        return self.failure(what, *_classify(error))


class S3CompatibleStorage(S3Storage):
    """A folder of a bucket on any S3-compatible server (MinIO, Ceph, Wasabi, moto, ...),
    addressed path style: `https://<host>[:port]/<bucket>/<folder>/`."""

    provider = "S3Compatible"

    def _parse(self, uri: str) -> tuple[str, str, str | None, str | None]:
        parsed = urlparse(uri)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise StorageError(
                f"S3Compatible: {_redact(uri)} is not http(s)://<host>[:port]/<bucket>/<folder>/",
                "invalid",
            )
        if parsed.username or parsed.password:
            raise StorageError(
                f"{self.provider}: credentials belong in CredentialsName/"
                "CredentialsSecret, not in the URI",
                "invalid",
            )
        bucket, _, folder = unquote(parsed.path).lstrip("/").partition("/")
        endpoint = f"{parsed.scheme}://{parsed.netloc}"
        # SigV4 needs a region; most S3-compatible servers accept us-east-1.
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        return _check_bucket(self.provider, bucket, uri), _prefix(folder), region, endpoint

    def _config(self, addressing_style: str) -> Config:
        config = super()._config("path")
        # Only send checksums when the operation requires them: older S3-compatible servers
        # reject the CRC trailers that boto3 adds by default.
        return config.merge(
            Config(
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            )
        )


def _override_endpoint() -> str | None:
    return (
        os.environ.get("VIPE_S3_ENDPOINT_URL")
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or None
    )


def _check_bucket(provider: str, bucket: str, uri: str) -> str:
    if not bucket or "/" in bucket:
        raise StorageError(f"{provider}: {_redact(uri)} names no bucket", "invalid")
    return bucket


def _prefix(folder: str) -> str:
    folder = folder.strip("/")
    if not folder:
        return ""
    for part in folder.split("/"):
        if part in (".", ".."):
            raise StorageError(f"refusing the folder {folder!r}: '.' or '..' in it", "invalid")
    return folder + "/"


def _redact(uri: str) -> str:
    """The URI without any user:password@ part."""
    parsed = urlparse(uri)
    if parsed.username is None and parsed.password is None:
        return uri
    netloc = parsed.hostname or ""
    if parsed.port:
        netloc += f":{parsed.port}"
    return parsed._replace(netloc=netloc).geturl()


def _classify(error: BaseException) -> tuple[ErrorKind, bool, str]:
    """(kind, retryable, reason) for an exception out of boto3/botocore/s3transfer.

    boto3 wraps upload failures (S3UploadFailedError) and s3transfer wraps exhausted retries
    (RetriesExceededError), so the chain of causes is searched for the first known error; an
    egress refusal anywhere in it (botocore wraps it in HTTPClientError) is what counts."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and len(chain) < 8 and current not in chain:
        chain.append(current)
        current = (
            getattr(current, "last_exception", None) or current.__cause__ or current.__context__
        )
    for candidate in chain:
        if isinstance(candidate, EgressDenied):
            return "denied", False, str(candidate)
    for candidate in chain:
        known = _classify_one(candidate)
        if known is not None:
            return known
    return "unreachable", False, f"unexpected failure: {type(error).__name__}"


def _classify_one(error: BaseException) -> tuple[ErrorKind, bool, str] | None:
    if isinstance(error, botocore.exceptions.ClientError):
        info = error.response.get("Error", {})
        code = str(info.get("Code") or "")
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        reason = f"{code or 'error'} (HTTP {status})" if status else code
        if code in _DENIED_CODES or status in (401, 403):
            return "denied", False, f"access denied: {reason}"
        if code in _MISSING_CODES or status == 404:
            return "missing", False, f"not found: {reason}"
        if code in _TRANSIENT_CODES or status >= 500 or status == 429:
            return "unreachable", True, f"service error: {reason}"
        return "invalid", False, f"refused: {reason}"
    if isinstance(
        error,
        botocore.exceptions.NoCredentialsError
        | botocore.exceptions.PartialCredentialsError
        | botocore.exceptions.NoAuthTokenError,
    ):
        return "denied", False, "no AWS credentials: give keys or a role, or configure the node"
    if isinstance(error, botocore.exceptions.SSLError):
        return "unreachable", False, f"TLS failure: {type(error).__name__}"
    if isinstance(
        error,
        botocore.exceptions.EndpointConnectionError
        | botocore.exceptions.ConnectionError
        | botocore.exceptions.HTTPClientError
        | botocore.exceptions.ResponseStreamingError
        | botocore.exceptions.IncompleteReadError,
    ):
        return "unreachable", True, f"connection failed: {type(error).__name__}"
    if isinstance(error, botocore.exceptions.ParamValidationError):
        return "invalid", False, "invalid request parameters"
    if type(error).__name__ == "RetriesExceededError":
        return "unreachable", True, "connection failed repeatedly"
    if isinstance(error, OSError):
        return "unreachable", True, f"connection failed: {type(error).__name__}"
    return None
