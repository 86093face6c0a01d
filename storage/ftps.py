"""`Ftps` storage with the standard library's ftplib (contract §3).

URIs: `ftp://host[:port]/<folder>/` plain FTP (port 21), `ftpes://host[:port]/<folder>/` explicit
TLS (AUTH TLS on port 21), `ftps://host[:port]/<folder>/` implicit TLS (TLS from the first byte,
port 990). As with curl, the folder is relative to the login directory; start it with `%2F` for
an absolute path (`ftp://host/%2Fsrv/media/`).

Always passive mode and binary transfers; with TLS the data connections are protected too
(PBSZ 0 / PROT P). The server certificate is verified against the system's trust store; to trust
a private CA (or a self-signed server certificate), point `VIPE_FTPS_CA_FILE` at its PEM file.

Downloads resume with REST after a broken data connection (as long as the last attempt made
progress) and are checked against the file's size; uploads create the folders they need.

Egress policy (`storage.egress`): the control connection goes only to an admitted address of the
host, and the data connections only to that same address (the address in a PASV reply is
ignored); a refusal is a StorageError(kind='denied') naming the field and the rule.
"""

from __future__ import annotations

import contextlib
import ftplib
import functools
import logging
import os
import posixpath
import socket
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, ClassVar, TypeVar
from urllib.parse import unquote, urlparse

from storage.base import (
    CANCEL_TICK,
    CancelCheck,
    ErrorKind,
    Progress,
    RemoteFile,
    Storage,
    StorageError,
    StorageLocation,
    pause,
    safe_name,
    safe_relative_path,
)
from storage.egress import UNRESTRICTED, EgressDenied, EgressPolicy

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_PORTS = {"ftp": 21, "ftpes": 21, "ftps": 990}


class EgressFTP(ftplib.FTP):
    """ftplib.FTP held to an egress policy (`egress`, set before connecting; `egress_what` is
    the job field named by a refusal): the control connection goes to a checked address of the
    host. Passive data connections go to the control connection's peer (the address in a PASV
    reply is ignored, as ftplib does by default), and that address is checked again."""

    egress: EgressPolicy = UNRESTRICTED
    egress_what: str = "UriPath"
    trust_server_pasv_ipv4_address = False  # never connect where a PASV reply points

    def connect(
        self,
        host: str = "",
        port: int = 0,
        timeout: float = -999,
        source_address: tuple[str, int] | None = None,
    ) -> str:
        """ftplib's connect, with the socket from the egress policy."""
        if host:
            self.host = host
        if port > 0:
            self.port = port
        if timeout != -999:
            self.timeout = timeout
        if source_address is not None:
            self.source_address = source_address
        sys.audit("ftplib.connect", self, self.host, self.port)
        sock = self.egress.create_connection(
            (self.host, self.port), self.timeout, self.source_address, what=self.egress_what
        )
        try:
            self.sock = self.secure(sock)
        except BaseException:
            sock.close()
            raise
        self.af = self.sock.family
        self.file = self.sock.makefile("r", encoding=self.encoding)
        self.welcome = self.getresp()
        return self.welcome

    def secure(self, sock: socket.socket) -> socket.socket:
        """The control socket as the greeting is read over it (plain here)."""
        return sock

    def makepasv(self) -> tuple[str, int]:
        host, port = super().makepasv()
        self.egress.check_host(host, port, self.egress_what)
        return host, port


class EgressFTP_TLS(EgressFTP, ftplib.FTP_TLS):
    """FTP with explicit TLS (AUTH TLS), held to an egress policy."""


class ImplicitFTP_TLS(EgressFTP_TLS):
    """FTP over implicit TLS: the control connection is TLS from the first byte, so the socket
    is wrapped at connect, before the server's greeting is read (ftplib only knows AUTH TLS)."""

    def secure(self, sock: socket.socket) -> socket.socket:
        return self.context.wrap_socket(sock, server_hostname=self.host)


class _ShortTransfer(Exception):
    """The data connection ended before the whole file arrived."""


class FtpsStorage(Storage):
    """A folder on an FTP server, plain or over TLS."""

    provider = "Ftps"
    timeout_seconds: float = 60.0  # an instance may set its own (the FTPS publisher does)
    block_size: ClassVar[int] = 256 * 1024
    # Resumes of one download after broken connections, and how many of them in a row may
    # add no byte before the download is handed back to Storage.retrying.
    max_resumes: ClassVar[int] = 20
    max_stalls: ClassVar[int] = 2

    def __init__(self, location: StorageLocation):
        super().__init__(location)
        parsed = urlparse(location.uri)
        self.scheme = parsed.scheme.lower()
        if self.scheme not in DEFAULT_PORTS or not parsed.hostname:
            raise StorageError(
                "Ftps: the URI must be ftp://, ftpes:// or ftps://host[:port]/folder/", "invalid"
            )
        if parsed.username or parsed.password:
            raise StorageError(
                "Ftps: credentials belong in CredentialsName/CredentialsSecret, not in the URI",
                "invalid",
            )
        self.host = parsed.hostname
        try:
            self.port = parsed.port or DEFAULT_PORTS[self.scheme]
        except ValueError:
            raise StorageError("Ftps: the URI has an invalid port", "invalid") from None
        raw = parsed.path
        absolute = raw.upper().startswith("/%2F")  # RFC 1738: %2F marks an absolute path
        folder = unquote(raw[4:] if absolute else raw).strip("/")
        for part in folder.split("/"):
            if part in (".", ".."):
                raise StorageError("Ftps: refusing a folder with '.' or '..' in it", "invalid")
        _check_line(folder)
        self.folder = ("/" + folder) if absolute else folder
        self._ftp: ftplib.FTP | None = None
        self._made_dirs: set[str] = set()

    def describe(self) -> str:
        folder = self.folder if self.folder.startswith("/") else "/" + self.folder
        return f"{self.provider} {self.scheme}://{self.host}:{self.port}{folder}"

    # -- connection --------------------------------------------------------------------------

    def _context(self) -> ssl.SSLContext:
        cafile = os.environ.get("VIPE_FTPS_CA_FILE") or None
        return ssl.create_default_context(cafile=cafile)  # verifies certificate and host name

    def connection(self) -> ftplib.FTP:
        """The logged-in control connection, opened on first use and after a failure."""
        if self._ftp is not None:
            return self._ftp
        if self.scheme == "ftp":
            ftp: EgressFTP = EgressFTP(timeout=self.timeout_seconds, encoding="utf-8")
        elif self.scheme == "ftpes":
            ftp = EgressFTP_TLS(
                context=self._context(), timeout=self.timeout_seconds, encoding="utf-8"
            )
        else:
            ftp = ImplicitFTP_TLS(
                context=self._context(), timeout=self.timeout_seconds, encoding="utf-8"
            )
        ftp.egress = self.location.egress
        ftp.egress_what = self.location.field
        try:
            ftp.connect(self.host, self.port)
            user = self.location.credentials_name or "anonymous"
            # FTP_TLS.login sends AUTH TLS first for ftpes://; implicit TLS is secured already.
            ftp.login(user, self.location.credentials_secret or "")
            if isinstance(ftp, ftplib.FTP_TLS):
                ftp.prot_p()  # protect the data connections too
            ftp.set_pasv(True)
            ftp.voidcmd("TYPE I")
        except BaseException:
            _quietly_close(ftp)
            raise
        self._ftp = ftp
        return ftp

    def close(self) -> None:
        ftp, self._ftp = self._ftp, None
        if ftp is None:
            return
        with contextlib.suppress(OSError, EOFError, ftplib.Error):
            ftp.quit()
        _quietly_close(ftp)

    def _reset(self) -> None:
        """Drop the control connection after a failure; the next operation reconnects."""
        ftp, self._ftp = self._ftp, None
        if ftp is not None:
            _quietly_close(ftp)

    def path(self, name: str) -> str:
        _check_line(name)
        return posixpath.join(self.folder, name) if self.folder else name

    # -- operations --------------------------------------------------------------------------

    def list_files(self) -> list[RemoteFile]:
        try:
            ftp = self.connection()
            try:
                entries = list(ftp.mlsd(self.folder, facts=["type", "size"]))
            except ftplib.error_perm as error:
                if not str(error).startswith(("500", "501", "502", "504")):
                    raise
                return self._list_without_mlsd(ftp)  # an old server without MLSD
        except Exception as error:
            self._reset()
            raise self._error("cannot list the folder", error, perm="missing") from None
        return [
            RemoteFile(name, int(facts.get("size") or 0))
            for name, facts in entries
            if facts.get("type", "").lower() == "file"
        ]

    def _list_without_mlsd(self, ftp: ftplib.FTP) -> list[RemoteFile]:
        files = []
        names = ftp.nlst(self.folder)
        ftp.voidcmd("TYPE I")
        for entry in names:
            name = posixpath.basename(entry.rstrip("/"))
            try:
                size = ftp.size(self.path(name))
            except ftplib.error_perm:
                continue  # a folder (SIZE refuses) or unreadable
            files.append(RemoteFile(name, int(size or 0)))
        return files

    def download_file(
        self,
        name: str,
        target: Path,
        progress: Progress | None = None,
        cancel: CancelCheck | None = None,
    ) -> None:
        path = self.path(safe_name(name))
        partial = target.with_name(f".{target.name}.partial")
        try:
            self._download(path, partial, progress, cancel)
            os.replace(partial, target)
        except Exception as error:
            partial.unlink(missing_ok=True)
            self._reset()
            raise self._error(f"cannot download {name}", error, perm="missing") from None
        except BaseException:
            partial.unlink(missing_ok=True)
            self._reset()
            raise

    def _download(
        self, path: str, partial: Path, progress: Progress | None, cancel: CancelCheck | None
    ) -> None:
        ftp = self.connection()
        ftp.voidcmd("TYPE I")  # listing switched to ASCII, where servers refuse SIZE
        total: int | None
        try:
            total = int(ftp.size(path) or 0)
        except ftplib.error_perm as error:
            if not str(error).startswith(("500", "502", "504")):
                raise  # 550: no such file
            total = None  # a server without SIZE: no length check, no resume
        done = 0
        resumes = stalls = 0
        with open(partial, "wb") as file:
            while True:
                before = done

                def write(block: bytes) -> None:
                    nonlocal done
                    if cancel:
                        cancel()
                    file.write(block)
                    done += len(block)
                    if progress:
                        progress(done, done if total is None else total)

                try:
                    ftp = self.connection()
                    self._retrieve(ftp, f"RETR {path}", write, done or None, cancel)
                    if total is not None and done != total:
                        raise _ShortTransfer(f"{done} of {total} bytes")
                    return
                except (OSError, EOFError, ftplib.error_temp, ftplib.error_reply, _ShortTransfer):
                    # Resume (REST) from what the partial file holds. Nothing received yet: hand
                    # over to Storage.retrying, nothing is lost. Attempts that add no byte end
                    # the resuming after `max_stalls` in a row.
                    stalls = 0 if done > before else stalls + 1
                    if (
                        not done
                        or total is None
                        or resumes >= self.max_resumes
                        or stalls > self.max_stalls
                    ):
                        raise
                    resumes += 1
                    log.warning("%s: %s broke at %d bytes; resuming", self.describe(), path, done)
                    pause(self.backoff_seconds * stalls, cancel)
                    self._reset()
                    file.flush()
                    file.truncate(done)
                    file.seek(done)

    def upload_file(
        self,
        source: Path,
        name: str,
        progress: Progress | None = None,
        cancel: CancelCheck | None = None,
    ) -> None:
        """Upload under a temporary name, then rename: a broken transfer leaves a partial file
        on the server, which must never be a half-written manifest under its real name."""
        name = safe_relative_path(name)
        path = self.path(name)
        folder, base = posixpath.split(path)
        temporary = (
            posixpath.join(folder, f".{base}.vipe-partial") if folder else f".{base}.vipe-partial"
        )
        total = source.stat().st_size
        done = 0

        def sent(block: bytes) -> None:
            nonlocal done
            if cancel:
                cancel()
            done += len(block)
            if progress:
                progress(done, total)

        try:
            ftp = self.connection()
            self._make_dirs(ftp, folder)
            with open(source, "rb") as file:
                self._store(ftp, f"STOR {temporary}", file, sent, cancel)
            self._rename(ftp, temporary, path)
        except Exception as error:
            self._reset()
            self._remove_quietly(temporary)
            raise self._error(f"cannot upload {name}", error, perm="denied") from None
        except BaseException:
            self._reset()
            self._remove_quietly(temporary)
            raise

    # -- data connections: short timeouts, so that a stalled transfer still sees a cancel ------

    def _retrieve(
        self,
        ftp: ftplib.FTP,
        command: str,
        write: Callable[[bytes], None],
        rest: int | None,
        cancel: CancelCheck | None,
    ) -> None:
        """ftplib's retrbinary, but while the data connection stalls `cancel` is called every
        CANCEL_TICK; `timeout_seconds` without a byte is still a timeout."""
        ftp.voidcmd("TYPE I")
        with ftp.transfercmd(command, rest) as conn:
            tick = self._tick(conn, cancel)
            while block := _patient(
                lambda: conn.recv(self.block_size), tick, self.timeout_seconds, cancel
            ):
                write(block)
            conn.settimeout(self.timeout_seconds)
            if isinstance(conn, ssl.SSLSocket):
                conn.unwrap()
        ftp.voidresp()

    def _store(
        self,
        ftp: ftplib.FTP,
        command: str,
        file: BinaryIO,
        sent: Callable[[bytes], None],
        cancel: CancelCheck | None,
    ) -> None:
        """ftplib's storbinary, with the same short timeouts as `_retrieve`. A send that timed
        out sent nothing (TLS: SSL_write is retried with the same bytes, as OpenSSL needs)."""
        ftp.voidcmd("TYPE I")
        with ftp.transfercmd(command) as conn:
            tick = self._tick(conn, cancel)
            while block := file.read(self.block_size):
                view = memoryview(block)
                while view:
                    send = functools.partial(conn.send, view)
                    count = _patient(send, tick, self.timeout_seconds, cancel)
                    view = view[count:]
                sent(block)
            conn.settimeout(self.timeout_seconds)
            if isinstance(conn, ssl.SSLSocket):
                conn.unwrap()
        ftp.voidresp()

    def _tick(self, conn: socket.socket, cancel: CancelCheck | None) -> float:
        tick = min(CANCEL_TICK, self.timeout_seconds) if cancel else self.timeout_seconds
        conn.settimeout(tick)
        return tick

    @staticmethod
    def _rename(ftp: ftplib.FTP, source: str, target: str) -> None:
        try:
            ftp.rename(source, target)
        except ftplib.error_perm:
            # Some servers refuse to rename over an existing file: delete it first.
            with contextlib.suppress(ftplib.error_perm):
                ftp.delete(target)
            ftp.rename(source, target)

    def _remove_quietly(self, path: str) -> None:
        """Best effort, on a fresh connection: the old one may be what broke."""
        try:
            self.connection().delete(path)
        except ftplib.error_perm:
            pass  # 550: never created (or not ours to delete)
        except (OSError, EOFError, ftplib.Error, EgressDenied) as error:
            log.warning("%s: could not remove %s: %s", self.describe(), path, type(error).__name__)
            self._reset()

    def _make_dirs(self, ftp: ftplib.FTP, folder: str) -> None:
        """Create `folder` and its parents (MKD answers 550 for one that exists)."""
        if not folder or folder in self._made_dirs:
            return
        current = "/" if folder.startswith("/") else ""
        for part in folder.strip("/").split("/"):
            current = posixpath.join(current, part) if current else part
            if current in self._made_dirs:
                continue
            try:
                ftp.mkd(current)
            except ftplib.error_perm as error:
                if not str(error).startswith("550"):
                    raise
            self._made_dirs.add(current)

    def exists(self, name: str) -> bool:
        path = self.path(safe_relative_path(name))
        try:
            ftp = self.connection()
            ftp.voidcmd("TYPE I")  # servers refuse SIZE in ASCII mode
            ftp.size(path)
            return True
        except ftplib.error_perm as error:
            if str(error).startswith("550"):
                return False  # no such file (or a folder)
            self._reset()
            raise self._error(f"cannot look at {name}", error, perm="denied") from None
        except Exception as error:
            self._reset()
            raise self._error(f"cannot look at {name}", error, perm="denied") from None

    def delete_file(self, name: str) -> None:
        path = self.path(safe_relative_path(name))
        try:
            ftp = self.connection()
            try:
                ftp.delete(path)
            except ftplib.error_perm as error:
                if not str(error).startswith("550"):
                    raise
                try:  # 550: missing (fine) or not allowed (not fine)
                    ftp.voidcmd("TYPE I")
                    ftp.size(path)
                except ftplib.error_perm:
                    return
                raise
        except Exception as error:
            self._reset()
            raise self._error(f"cannot delete {name}", error, perm="denied") from None

    # -- errors ------------------------------------------------------------------------------

    def _error(self, what: str, error: BaseException, *, perm: ErrorKind) -> StorageError:
        return self.failure(what, *_classify(error, perm))


def _classify(error: BaseException, perm: ErrorKind) -> tuple[ErrorKind, bool, str]:
    """(kind, retryable, reason); `perm` is the kind a 550 reply means for this operation
    (missing when reading, denied when writing)."""
    if isinstance(error, EgressDenied):
        return "denied", False, str(error)
    if isinstance(error, ssl.SSLCertVerificationError):
        return (
            "unreachable",
            False,
            f"TLS certificate not trusted ({error.verify_message}); "
            "set VIPE_FTPS_CA_FILE to trust a private CA",
        )
    if isinstance(error, ftplib.error_perm):
        reply = _reply(error)
        code = reply[:3]
        if code in ("530", "532", "331", "332"):
            return "denied", False, f"login refused: {reply}"
        if code == "550":
            return perm, False, f"refused: {reply}"
        if code in ("552", "553"):
            return "denied", False, f"refused: {reply}"
        return "invalid", False, f"refused: {reply}"
    if isinstance(error, ftplib.error_temp):  # 4xx: 421 busy, 425/426 data connection, 450/451
        return "unreachable", True, f"temporary failure: {_reply(error)}"
    if isinstance(error, _ShortTransfer):
        return "unreachable", True, f"transfer cut short ({error})"
    if isinstance(error, ssl.SSLError) and not isinstance(
        error, ssl.SSLEOFError | ssl.SSLZeroReturnError
    ):
        return "unreachable", False, f"TLS failure: {error.reason or type(error).__name__}"
    if isinstance(error, TimeoutError | socket.timeout):
        return "unreachable", True, "timed out"
    if isinstance(error, OSError | EOFError | ftplib.error_reply | ftplib.error_proto):
        return "unreachable", True, f"connection failed: {type(error).__name__}"
    if isinstance(error, ValueError):
        return "invalid", False, "invalid name"
    return "unreachable", False, f"unexpected failure: {type(error).__name__}"


def _patient(action: Callable[[], T], tick: float, limit: float, cancel: CancelCheck | None) -> T:
    """`action` (one recv or send on a socket whose timeout is `tick`), tried again after each
    timeout until `limit` seconds passed without progress; `cancel` is called at each one."""
    waited = 0.0
    while True:
        try:
            return action()
        except TimeoutError:
            waited += tick
            if cancel:
                cancel()
            if waited >= limit:
                raise


def _reply(error: BaseException) -> str:
    return str(error).strip().splitlines()[0][:200] if str(error).strip() else "no reply"


def _check_line(text: str) -> None:
    """A name sent on the control connection must not smuggle in another command."""
    if "\r" in text or "\n" in text:
        raise StorageError("Ftps: refusing a name with a line break in it", "invalid")


def _quietly_close(ftp: ftplib.FTP) -> None:
    with contextlib.suppress(OSError):
        ftp.close()
