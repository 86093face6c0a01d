"""The storage provider contract: list a folder, download and upload files, delete.

A provider is constructed from a `StorageLocation` (secrets already decrypted by the caller) and
raises only `StorageError`, whose `kind` tells the engine which FinalError code applies
(unreachable, denied, missing). Folder operations are written once here on top of the four
file operations each provider implements.
"""

from __future__ import annotations

import logging
import os
import posixpath
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from storage.egress import UNRESTRICTED, EgressPolicy

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (bytes done, bytes total)
CancelCheck = Callable[[], None]  # raises to stop a transfer between chunks
ErrorKind = Literal["unreachable", "denied", "missing", "invalid"]

MANIFEST_SUFFIXES = (".mpd", ".m3u8")

CONTENT_TYPES = {
    ".mpd": "application/dash+xml",
    ".m3u8": "application/vnd.apple.mpegurl",
    ".m4s": "video/iso.segment",
    ".mp4": "video/mp4",
    ".m4a": "audio/mp4",
    ".ts": "video/mp2t",
    ".vtt": "text/vtt",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".json": "application/json",
    ".tar": "application/x-tar",
}


def content_type(name: str) -> str:
    return CONTENT_TYPES.get(posixpath.splitext(name)[1].lower(), "application/octet-stream")


class StorageError(Exception):
    """A storage operation failed. The message names the provider and location, never a secret.

    kind: `unreachable` (host down, timeouts), `denied` (credentials, permissions), `missing`
    (bucket/container/folder/file absent, or an empty input folder), `invalid` (a bad URI or name).
    """

    def __init__(self, message: str, kind: ErrorKind = "unreachable", *, retryable: bool = False):
        super().__init__(message)
        self.kind = kind
        self.retryable = retryable


@dataclass(frozen=True)
class StorageLocation:
    """Where a storage provider reads or writes: the job's storage object, secrets in clear."""

    provider: str
    uri: str
    credentials_name: str | None = None
    credentials_secret: str | None = None
    role_arn: str | None = None
    role_session_seconds: int = 3600
    # The server's policy (engine.policy): where connections may go, and for `Local` the
    # folders a location must lie in (None: anywhere, the operator's own trust).
    egress: EgressPolicy = UNRESTRICTED
    local_roots: tuple[Path, ...] | None = None
    # The job field that names this location (e.g. `ContentAcquisition.UriPath`), for the
    # messages of egress refusals.
    field: str = "UriPath"

    def __repr__(self) -> str:  # never show the secret
        return f"StorageLocation({self.provider}, {self.uri})"


@dataclass(frozen=True)
class RemoteFile:
    name: str  # file name within the folder (a single path component)
    size: int


def safe_name(name: str) -> str:
    """A file name from storage, refused when it could escape the work folder."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise StorageError(f"refusing the file name {name!r}: not a single file name", "invalid")
    return name


def safe_relative_path(path: str) -> str:
    """A relative output path such as `dash/video_1.m4s`: every component a safe name."""
    if path.startswith("/") or not path:
        raise StorageError(f"refusing the path {path!r}: not a relative path", "invalid")
    for part in path.split("/"):
        safe_name(part)
    return path


def env_int(name: str, default: int) -> int:
    """An integer setting from the environment (e.g. a multipart threshold)."""
    value = os.environ.get(name)
    return int(value) if value else default


class TransferStopped(Exception):
    """Raised inside an SDK's transfer thread to abort it when the progress callback raised."""


class ProgressRelay:
    """A progress hook for SDKs that report from their worker threads: forwards (done, total)
    to the caller's callback under a lock, and keeps an exception it raised (a cancellation)
    so that `reraise()` raises it again in the calling thread."""

    def __init__(self, total: int, progress: Progress | None):
        self.total = total
        self.progress = progress
        self.done = 0
        self.error: BaseException | None = None
        self._lock = threading.Lock()

    def report(self, done: int, _total: int | None = None) -> None:
        """Bytes done so far (absolute); the shape of Azure's `progress_hook`."""
        self._advance(lambda _: done)

    def add(self, increment: int) -> None:
        """Bytes done since the last call (negative when a part is sent again)."""
        self._advance(lambda done: done + increment)

    def _advance(self, to: Callable[[int], int]) -> None:
        with self._lock:
            if self.error is not None:
                raise TransferStopped()
            self.done = max(0, min(self.total, to(self.done)))
            if self.progress:
                try:
                    self.progress(self.done, self.total)
                except BaseException as error:  # re-raised in the caller by reraise()
                    self.error = error
                    raise TransferStopped() from None

    def reraise(self) -> None:
        if self.error is not None:
            raise self.error


class Storage(ABC):
    """One folder of one storage provider."""

    provider: ClassVar[str]
    # Transient failures are retried this many times in total, with exponential backoff.
    attempts: ClassVar[int] = 4
    backoff_seconds: ClassVar[float] = 0.5

    def __init__(self, location: StorageLocation):
        self.location = location

    def describe(self) -> str:
        return f"{self.provider} {self.location.uri}"

    def failure(self, what: str, kind: ErrorKind, retryable: bool, reason: str) -> StorageError:
        """A StorageError naming the provider, the location and what failed; the secret is
        masked should a library ever have put it into the reason."""
        message = f"{self.describe()}: {what}: {reason}"
        secret = self.location.credentials_secret
        if secret and secret in message:
            message = message.replace(secret, "***")
        return StorageError(message, kind, retryable=retryable)

    # -- the four operations every provider implements -------------------------------------

    @abstractmethod
    def list_files(self) -> list[RemoteFile]:
        """The files directly in the folder (not sub-folders). A missing folder raises
        StorageError(kind='missing')."""

    @abstractmethod
    def download_file(self, name: str, target: Path, progress: Progress | None = None) -> None:
        """Download one file of the folder to `target`."""

    @abstractmethod
    def upload_file(self, source: Path, name: str, progress: Progress | None = None) -> None:
        """Upload `source` as `name` (a relative path, may contain sub-folders)."""

    @abstractmethod
    def delete_file(self, name: str) -> None:
        """Delete `name` (a relative path); deleting a missing file is not an error."""

    def check_access(self) -> None:
        """Raise StorageError when the folder cannot be reached or read with these credentials.
        Providers whose listing is paged override this to read one small page only."""
        self.list_files()

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    # -- folder operations, written once ----------------------------------------------------

    def retrying(self, what: str, action: Callable[[], object]) -> object:
        """Run `action`, retrying StorageErrors marked retryable with backoff and a bound."""
        for attempt in range(1, self.attempts + 1):
            try:
                return action()
            except StorageError as error:
                if not error.retryable or attempt == self.attempts:
                    raise
                delay = self.backoff_seconds * 2 ** (attempt - 1)
                log.warning(
                    "%s: %s failed (%s); retry %d in %.1fs",
                    self.describe(),
                    what,
                    error,
                    attempt,
                    delay,
                )
                time.sleep(delay)
        raise AssertionError("unreachable")

    def download_folder(
        self,
        target: Path,
        progress: Progress | None = None,
        cancel: CancelCheck | None = None,
    ) -> list[Path]:
        """Download every file of the folder into `target`; an empty or missing folder raises
        StorageError(kind='missing')."""
        files = self.retrying("listing", self.list_files)  # a 503 or reset is transient here too
        if not files:
            raise StorageError(f"{self.describe()}: the folder holds no files", "missing")
        target.mkdir(parents=True, exist_ok=True)
        total = sum(f.size for f in files)
        done = 0
        paths = []
        for remote in sorted(files, key=lambda f: f.name):
            if cancel:
                cancel()
            path = target / safe_name(remote.name)
            base = done

            def report(current: int, _total: int, base: int = base) -> None:
                if cancel:
                    cancel()
                if progress:
                    progress(base + current, total)

            self.retrying(
                f"download of {remote.name}",
                lambda r=remote, p=path: self.download_file(r.name, p, report),
            )
            done += remote.size
            if progress:
                progress(done, total)
            paths.append(path)
        return paths

    def upload_folder(
        self,
        source: Path,
        progress: Progress | None = None,
        cancel: CancelCheck | None = None,
    ) -> list[str]:
        """Upload every file under `source` (sub-folders kept), manifests last, so a reader never
        sees a manifest that points at a missing file. If anything fails (or is cancelled), the
        files already uploaded are deleted again before the error is raised."""
        files = sorted(p for p in source.rglob("*") if p.is_file())
        ordered = [p for p in files if not is_manifest(p.name)] + [
            p for p in files if is_manifest(p.name)
        ]
        total = sum(p.stat().st_size for p in ordered)
        done = 0
        uploaded: list[str] = []
        in_flight: list[str] = []  # the file being uploaded when a failure or cancel hits
        try:
            for path in ordered:
                if cancel:
                    cancel()
                name = safe_relative_path(path.relative_to(source).as_posix())
                in_flight = [name]
                base = done

                def report(current: int, _total: int, base: int = base) -> None:
                    if progress:
                        progress(base + current, total)

                self.retrying(
                    f"upload of {name}", lambda p=path, n=name: self.upload_file(p, n, report)
                )
                uploaded.append(name)
                in_flight = []
                done += path.stat().st_size
                if progress:
                    progress(done, total)
        except BaseException:
            # The file in flight may have landed although its upload raised (a cancel after the
            # last byte, a lost response), so it is removed too.
            self.delete_files([*reversed(uploaded), *in_flight])
            raise
        return uploaded

    def delete_files(self, names: Iterable[str]) -> None:
        """Best-effort removal (used to roll back a failed publish): manifests go first."""
        names = list(names)
        ordered = [n for n in names if is_manifest(n)] + [n for n in names if not is_manifest(n)]
        for name in ordered:
            try:
                self.delete_file(name)
            except StorageError as error:
                log.error(
                    "%s: could not remove %s after a failed publish: %s",
                    self.describe(),
                    name,
                    error,
                )


def is_manifest(name: str) -> bool:
    return name.lower().endswith(MANIFEST_SUFFIXES)
