"""`Http` storage, input only (contract §3 extension): one file at an http(s) URL.

`https://host/path/file.mp4`, optionally with HTTP Basic credentials (`CredentialsName` and
`CredentialsSecret`). The "folder" holds exactly that one file, named after the last segment of
the URL path. The download streams to disk and, when the connection breaks after some progress,
resumes with a Range request (guarded by If-Range, so a file that changed meanwhile is fetched
again from the start). TLS certificates are verified against the system's trust store
(`SSL_CERT_FILE` is honoured); `VIPE_HTTP_CA_FILE` adds a private CA.

Connections go through the location's egress policy (`storage.egress`): with a restricted one,
every connection (redirects included) goes only to an admitted address, and a refusal is a
StorageError(kind='denied') that names the field and the rule.

Uploads and deletes raise StorageError(kind='invalid'): Http is input only.
"""

from __future__ import annotations

import base64
import http.client
import logging
import os
import re
import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import ClassVar
from urllib.parse import unquote, urlparse

from storage.base import (
    CancelCheck,
    ErrorKind,
    Progress,
    RemoteFile,
    Storage,
    StorageError,
    StorageLocation,
    pause,
    run_cancellable,
    safe_name,
)
from storage.egress import EgressDenied

log = logging.getLogger(__name__)

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class _ShortBody(Exception):
    """The response ended before the announced length."""


class HttpStorage(Storage):
    """One file on a web server, read-only."""

    provider = "Http"
    timeout_seconds: ClassVar[float] = 60.0
    chunk_size: ClassVar[int] = 1 << 20
    # Resumes of one download after broken connections, and how many of them in a row may
    # add no byte before the download is handed back to Storage.retrying.
    max_resumes: ClassVar[int] = 20
    max_stalls: ClassVar[int] = 2

    def __init__(self, location: StorageLocation):
        super().__init__(location)
        parsed = urlparse(location.uri)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise StorageError("Http: the URI must be http(s)://host/path/file", "invalid")
        if parsed.username or parsed.password:
            raise StorageError(
                "Http: credentials belong in CredentialsName/CredentialsSecret, not in the URI",
                "invalid",
            )
        self.url = parsed._replace(fragment="").geturl()
        self.name = unquote(parsed.path.rstrip("/").rsplit("/", 1)[-1]) if parsed.path else ""
        if not self.name:
            raise StorageError(f"Http: {self.url} does not name a file", "invalid")
        safe_name(self.name)  # the file lands in the work folder under this name
        self._opener = location.egress.opener(location.field, context=self._context())

    def describe(self) -> str:
        parsed = urlparse(self.url)
        return f"{self.provider} {parsed._replace(query='').geturl()}"  # a query may hold a token

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if cafile := os.environ.get("VIPE_HTTP_CA_FILE"):
            context.load_verify_locations(cafile=cafile)
        return context

    def _request(self, headers: dict[str, str]) -> http.client.HTTPResponse:
        request = urllib.request.Request(self.url, headers=headers)
        loc = self.location
        if loc.credentials_name is not None and loc.credentials_secret is not None:
            token = base64.b64encode(
                f"{loc.credentials_name}:{loc.credentials_secret}".encode()
            ).decode()
            # Unredirected: the credentials never follow a redirect to another host.
            request.add_unredirected_header("Authorization", f"Basic {token}")
        return self._opener.open(request, timeout=self.timeout_seconds)

    # -- operations --------------------------------------------------------------------------

    def list_files(self) -> list[RemoteFile]:
        """The one file with its size. A one-byte range GET instead of HEAD, because presigned
        URLs are often signed for GET only."""
        try:
            with self._request({"Range": "bytes=0-0", "Accept-Encoding": "identity"}) as answer:
                size = _total_size(answer)
        except Exception as error:
            raise self._error("cannot reach the file", error) from None
        return [RemoteFile(self.name, size or 0)]

    def download_file(
        self,
        name: str,
        target: Path,
        progress: Progress | None = None,
        cancel: CancelCheck | None = None,
    ) -> None:
        """The reads keep `timeout_seconds` as their stall limit, and a cancel is noticed
        within CANCEL_TICK all the same: the download runs in a helper thread
        (run_cancellable) that checks `cancel` at every chunk, and a cancel shuts the socket
        being read down, so that a stalled read ends at once. (A socket timeout of its own
        cannot do it: a file object over a socket refuses every read after one timed out.)"""
        if safe_name(name) != self.name:
            raise StorageError(f"{self.describe()}: holds no file named {name!r}", "missing")
        partial = target.with_name(f".{target.name}.partial")
        answers: list[http.client.HTTPResponse] = []  # the answer being read
        try:
            run_cancellable(
                lambda: self._download(partial, progress, cancel, answers),
                cancel,
                interrupt=lambda: _shut_down(answers),
                abandoned=lambda _succeeded: partial.unlink(missing_ok=True),
            )
            os.replace(partial, target)
        except Exception as error:
            partial.unlink(missing_ok=True)
            raise self._error(f"cannot download {name}", error) from None
        except BaseException:
            partial.unlink(missing_ok=True)
            raise

    def _download(
        self,
        partial: Path,
        progress: Progress | None,
        cancel: CancelCheck | None,
        answers: list[http.client.HTTPResponse],
    ) -> None:
        done = 0
        total: int | None = None
        validator: str | None = None  # ETag or Last-Modified of the first answer
        resumes = stalls = 0
        with open(partial, "wb") as file:
            while True:
                before = done
                headers = {"Accept-Encoding": "identity"}
                if done:
                    headers["Range"] = f"bytes={done}-"
                    if validator:
                        headers["If-Range"] = validator
                if cancel:
                    cancel()
                try:
                    with self._request(headers) as answer:
                        answers.append(answer)
                        if answer.status == 206:
                            start = _range_start(answer)
                            if start != done:
                                raise _ShortBody(f"the server resumed at {start}, not {done}")
                        elif done:  # 200: the range was ignored or the file changed: start over
                            done = before = 0
                            file.seek(0)
                            file.truncate()
                        if total is None or not done:
                            total = _total_size(answer)
                            validator = _strong_etag(answer) or answer.headers.get("Last-Modified")
                        # read1: whatever has arrived, so a reset loses little progress
                        while chunk := answer.read1(self.chunk_size):
                            if cancel:
                                cancel()
                            file.write(chunk)
                            done += len(chunk)
                            if progress:
                                progress(done, total or done)
                    if total is not None and done < total:
                        raise _ShortBody(f"{done} of {total} bytes")
                    return
                except (OSError, http.client.HTTPException, _ShortBody) as error:
                    if isinstance(error, urllib.error.HTTPError) and _classify(error)[0] != (
                        "unreachable"
                    ):
                        raise  # 401, 404, ...: resuming cannot help
                    # Resume (Range) from what the partial file holds. Nothing received yet:
                    # hand over to Storage.retrying, nothing is lost. Attempts that add no byte
                    # end the resuming after `max_stalls` in a row.
                    stalls = 0 if done > before else stalls + 1
                    if (
                        not done
                        or not total
                        or resumes >= self.max_resumes
                        or stalls > self.max_stalls
                    ):
                        raise
                    resumes += 1
                    log.warning("%s: broke at %d bytes; resuming", self.describe(), done)
                    pause(self.backoff_seconds * stalls, cancel)
                    file.flush()

    def upload_file(
        self,
        source: Path,
        name: str,
        progress: Progress | None = None,
        cancel: CancelCheck | None = None,
    ) -> None:
        raise StorageError(f"{self.describe()}: Http is input only", "invalid")

    def exists(self, name: str) -> bool:
        raise StorageError(f"{self.describe()}: Http is input only", "invalid")

    def delete_file(self, name: str) -> None:
        raise StorageError(f"{self.describe()}: Http is input only", "invalid")

    # -- errors ------------------------------------------------------------------------------

    def _error(self, what: str, error: BaseException) -> StorageError:
        return self.failure(what, *_classify(error))


def _shut_down(answers: list[http.client.HTTPResponse]) -> None:
    """Shut the socket of the answer being read down (a cancel), so that a read blocked on it
    returns now. Through a duplicate descriptor: shutdown acts on the connection itself, and
    closing the duplicate leaves the reader's descriptor to its owner."""
    if answers:
        with socket.socket(fileno=os.dup(answers[-1].fileno())) as sock:
            sock.shutdown(socket.SHUT_RDWR)


def _total_size(answer: http.client.HTTPResponse) -> int | None:
    if answer.status == 206:
        match = _CONTENT_RANGE.match(answer.headers.get("Content-Range", ""))
        if match and match[3] != "*":
            return int(match[3])
        return None
    length = answer.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def _range_start(answer: http.client.HTTPResponse) -> int:
    match = _CONTENT_RANGE.match(answer.headers.get("Content-Range", ""))
    return int(match[1]) if match else -1


def _strong_etag(answer: http.client.HTTPResponse) -> str | None:
    etag = answer.headers.get("ETag")
    return etag if etag and not etag.startswith("W/") else None  # If-Range needs a strong one


def _classify(error: BaseException) -> tuple[ErrorKind, bool, str]:
    if isinstance(error, EgressDenied):
        return "denied", False, str(error)
    if isinstance(error, urllib.error.HTTPError):
        status = error.code
        label = f"HTTP {status}"
        error.close()
        if status in (401, 403, 407):
            return "denied", False, f"access denied: {label}"
        if status in (404, 410):
            return "missing", False, f"not found: {label}"
        if status >= 500 or status in (408, 429):
            return "unreachable", True, f"server error: {label}"
        return "invalid", False, f"refused: {label}"
    if isinstance(error, urllib.error.URLError):  # wraps the connection failure
        reason = error.reason
        if isinstance(reason, ssl.SSLCertVerificationError):
            return "unreachable", False, f"TLS certificate not trusted ({reason.verify_message})"
        if isinstance(reason, ssl.SSLError):
            return "unreachable", False, "TLS failure"
        if isinstance(reason, BaseException):
            return _classify(reason)
        return "unreachable", True, "connection failed"
    if isinstance(error, ssl.SSLCertVerificationError):
        return "unreachable", False, f"TLS certificate not trusted ({error.verify_message})"
    if isinstance(error, TimeoutError):
        return "unreachable", True, "timed out"
    if isinstance(error, _ShortBody):
        return "unreachable", True, f"transfer cut short ({error})"
    if isinstance(error, OSError | http.client.HTTPException):
        return "unreachable", True, f"connection failed: {type(error).__name__}"
    return "unreachable", False, f"unexpected failure: {type(error).__name__}"
