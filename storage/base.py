"""The storage provider contract: list a folder, download and upload files, delete.

A provider is constructed from a `StorageLocation` (secrets already decrypted by the caller) and
raises only `StorageError`, whose `kind` tells the engine which FinalError code applies
(unreachable, denied, missing). Folder operations are written once here on top of the four
file operations each provider implements.
"""

from __future__ import annotations

import functools
import logging
import os
import posixpath
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, TypeVar

from storage.egress import UNRESTRICTED, EgressPolicy

log = logging.getLogger(__name__)

T = TypeVar("T")

Progress = Callable[[int, int], None]  # (bytes done, bytes total)
CancelCheck = Callable[[], None]  # raises to stop a transfer between chunks
ErrorKind = Literal["unreachable", "denied", "missing", "invalid"]

MANIFEST_SUFFIXES = (".mpd", ".m3u8")

# How often a waiting transfer, retry or backoff calls the cancel check (seconds).
CANCEL_TICK = 0.2

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
    local_excluded: tuple[Path, ...] = ()  # never reachable, even inside a root (data folder)
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


def pause(seconds: float, cancel: CancelCheck | None) -> None:
    """Sleep `seconds` (a retry backoff), calling `cancel` every CANCEL_TICK: a cancel ends the
    wait with the exception `cancel` raises."""
    deadline = time.monotonic() + seconds
    while True:
        if cancel:
            cancel()
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(CANCEL_TICK, left))


def run_cancellable(
    action: Callable[[], T],
    cancel: CancelCheck | None,
    *,
    interrupt: Callable[[], None] | None = None,
    abandoned: Callable[[bool], None] | None = None,
) -> T:
    """Run a blocking transfer (an SDK call, a socket read that may stall) so that a cancel is
    noticed within CANCEL_TICK: `action` runs in a helper thread while this thread calls
    `cancel`. When `cancel` raises, that exception is raised here at once; `interrupt` (if any)
    is started on a thread of its own to make the helper stop sooner (shut its socket down,
    abort a multipart upload: it may block, nobody waits for it), and the helper is left to end
    on its own (its progress callback raising the cancel, or its own timeout). When it does end,
    `abandoned(succeeded)` runs in the helper thread to undo what arrived too late (delete an
    object that landed after all, remove a partial file). Without `cancel`, `action` simply runs
    here. An exception `action` raises is raised here."""
    if cancel is None:
        return action()
    cancel()
    outcome: list[tuple[bool, object]] = []
    finished = threading.Event()
    lock = threading.Lock()
    given_up = False

    def work() -> None:
        nonlocal given_up
        succeeded = False
        try:
            outcome.append((True, action()))
            succeeded = True
        except BaseException as error:  # handed to the waiting thread, or dropped if it left
            outcome.append((False, error))
        with lock:
            finished.set()
            late = given_up
        if late and abandoned is not None:
            try:
                abandoned(succeeded)
            except Exception as error:  # best effort: nobody is waiting any more
                log.warning("clean-up after a cancelled transfer failed: %s", error)

    threading.Thread(target=work, name="vipe-transfer", daemon=True).start()
    while not finished.wait(CANCEL_TICK):
        try:
            cancel()
        except BaseException:
            with lock:
                given_up = not finished.is_set()
            if given_up and interrupt is not None:
                threading.Thread(
                    target=_quietly, args=(interrupt,), name="vipe-interrupt", daemon=True
                ).start()
            raise
    succeeded, value = outcome[0]
    if not succeeded:
        assert isinstance(value, BaseException)
        raise value
    return value  # type: ignore[return-value]  # action's own result


def _quietly(action: Callable[[], None]) -> None:
    try:
        action()
    except Exception as error:  # the helper then ends with its own timeout
        log.debug("could not interrupt a cancelled transfer: %s", error)


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
        # Names this instance's uploads created (nothing was there before): the only names a
        # rollback of this job may delete. `rolled_back`: the names a rollback removed, so that
        # an upload landing late (after a cancel) is removed again.
        self.created: list[str] = []
        self.rolled_back: set[str] = set()
        self._rollback_lock = threading.Lock()

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
    def download_file(
        self,
        name: str,
        target: Path,
        progress: Progress | None = None,
        cancel: CancelCheck | None = None,
    ) -> None:
        """Download one file of the folder to `target`. `cancel` is called at least about once a
        second, stalled or not; the exception it raises aborts the transfer and is raised."""

    @abstractmethod
    def upload_file(
        self,
        source: Path,
        name: str,
        progress: Progress | None = None,
        cancel: CancelCheck | None = None,
    ) -> None:
        """Upload `source` as `name` (a relative path, may contain sub-folders); `cancel` as for
        download_file."""

    # A storage that can share a file instead of copying it (Local: a hard link on the same
    # file system) overrides these two. They are used only where the caller promises that
    # nobody writes into the file in place afterwards (`shared=True` of download_folder and
    # upload_folder: a job's input and its package): a shared file changes wherever it is.
    def download_shared_file(
        self,
        name: str,
        target: Path,
        progress: Progress | None = None,
        cancel: CancelCheck | None = None,
    ) -> None:
        """download_file, where `target` may become the stored file itself."""
        self.download_file(name, target, progress, cancel)

    def upload_shared_file(
        self,
        source: Path,
        name: str,
        progress: Progress | None = None,
        cancel: CancelCheck | None = None,
    ) -> None:
        """upload_file, where the stored file may become `source` itself."""
        self.upload_file(source, name, progress, cancel)

    @abstractmethod
    def delete_file(self, name: str) -> None:
        """Delete `name` (a relative path); deleting a missing file is not an error."""

    @abstractmethod
    def exists(self, name: str) -> bool:
        """Whether an object `name` (a relative path) is there now."""

    def existing(self, names: list[str]) -> set[str]:
        """Those of `names` that are there now (before an upload: what a rollback must spare).
        Providers with a cheap recursive listing override this to list once."""
        return {name for name in names if self.exists(name)}

    def check_access(self) -> None:
        """Raise StorageError when the folder cannot be reached or read with these credentials.
        Providers whose listing is paged override this to read one small page only."""
        self.list_files()

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    # -- folder operations, written once ----------------------------------------------------

    def retrying(self, what: str, action: Callable[[], T], cancel: CancelCheck | None = None) -> T:
        """Run `action`, retrying StorageErrors marked retryable with backoff and a bound; the
        backoff waits call `cancel` every CANCEL_TICK."""
        for attempt in range(1, self.attempts + 1):
            if cancel:
                cancel()
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
                pause(delay, cancel)
        raise AssertionError("unreachable")

    def download_folder(
        self,
        target: Path,
        progress: Progress | None = None,
        cancel: CancelCheck | None = None,
        *,
        shared: bool = False,
    ) -> list[Path]:
        """Download every file of the folder into `target`; an empty or missing folder raises
        StorageError(kind='missing'). `shared`: the caller only reads the files (and removes
        them), never writes into one, so they may be the stored files themselves
        (download_shared_file)."""
        # a 503 or reset is transient here too
        files = self.retrying("listing", lambda: run_cancellable(self.list_files, cancel), cancel)
        if not files:
            raise StorageError(f"{self.describe()}: the folder holds no files", "missing")
        target.mkdir(parents=True, exist_ok=True)
        download = self.download_shared_file if shared else self.download_file
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
                functools.partial(download, remote.name, path, report, cancel),
                cancel,
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
        plan: Callable[[list[str]], None] | None = None,
        *,
        shared: bool = False,
    ) -> list[str]:
        """Upload every file under `source` (sub-folders kept), manifests last, so a reader never
        sees a manifest that points at a missing file.

        `plan` is told the names this upload will create (those not there before), before the
        first byte is written: a caller that records them can roll the upload back even after
        its process died in the middle of it.

        If anything fails (or is cancelled), the upload is rolled back before the error is
        raised: the files it created are deleted again. Objects that were there before it
        started are never deleted (the folder may hold another job's files): an object this
        upload overwrote cannot be restored, so it is left with the new content, and a warning
        names it. Which names were there is read once, before the first upload.

        `shared`: nobody writes into the files under `source` in place after the upload (they
        are only removed), so the stored files may be these files themselves
        (upload_shared_file)."""
        files = sorted(p for p in source.rglob("*") if p.is_file())
        ordered = [p for p in files if not is_manifest(p.name)] + [
            p for p in files if is_manifest(p.name)
        ]
        names = [safe_relative_path(p.relative_to(source).as_posix()) for p in ordered]
        before = self.retrying(
            "check of the existing files",
            lambda: run_cancellable(functools.partial(self.existing, names), cancel),
            cancel,
        )
        if plan is not None:
            plan([name for name in names if name not in before])
        upload = self.upload_shared_file if shared else self.upload_file
        total = sum(p.stat().st_size for p in ordered)
        done = 0
        uploaded: list[str] = []
        in_flight: list[str] = []  # the file being uploaded when a failure or cancel hits
        try:
            for path, name in zip(ordered, names, strict=True):
                if cancel:
                    cancel()
                in_flight = [name]
                base = done

                def report(current: int, _total: int, base: int = base) -> None:
                    if cancel:
                        cancel()
                    if progress:
                        progress(base + current, total)

                self.retrying(
                    f"upload of {name}",
                    functools.partial(upload, path, name, report, cancel),
                    cancel,
                )
                uploaded.append(name)
                if name not in before:
                    self.created.append(name)
                in_flight = []
                done += path.stat().st_size
                if progress:
                    progress(done, total)
        except BaseException:
            overwritten = [n for n in [*uploaded, *in_flight] if n in before]
            if overwritten:
                log.warning(
                    "%s: rolling back; %d file(s) that were there before are left as this "
                    "upload overwrote them (first: %s)",
                    self.describe(),
                    len(overwritten),
                    overwritten[0],
                )
            # The file in flight may have landed although its upload raised (a cancel after the
            # last byte, a lost response), so it is removed too, unless it was there before.
            created = [n for n in uploaded if n not in before]
            self.rollback([*reversed(created), *(n for n in in_flight if n not in before)])
            raise
        return uploaded

    def rollback(self, names: Iterable[str]) -> None:
        """Delete `names`, objects this job created, after a failed or cancelled publish (best
        effort, manifests first); an upload of one of them that lands later is removed then."""
        names = list(names)
        with self._rollback_lock:
            self.rolled_back.update(names)
        self.delete_files(names)
        with self._rollback_lock:
            self.created = [n for n in self.created if n not in self.rolled_back]

    def landed_late(self, name: str) -> None:
        """An upload of `name` that a cancel stopped waiting for completed after all: removed
        again when the rollback already took `name` away (else the rollback still will)."""
        with self._rollback_lock:
            rolled_back = name in self.rolled_back
        if rolled_back:
            log.warning("%s: %s landed after the rollback; removing it", self.describe(), name)
            self.delete_files([name])

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
