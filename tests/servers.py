"""Real servers for protocol tests, on 127.0.0.1 and free ports, started and stopped by fixtures.

- `moto_server`: moto (S3, STS, IAM, SQS, ...) in a child process, with request signing enforced:
  `access_key`/`secret_key` belong to an IAM user allowed everything, `role_arn` to a role that
  may be assumed and may use S3. Wrong keys get SignatureDoesNotMatch/InvalidAccessKeyId.
- `azurite_server`: Azurite's blob service in a child process (in memory), the well-known
  `devstoreaccount1` account. Needs Node: the first test that uses it installs Azurite
  (`AZURITE_VERSION`, from npm) into the git-ignored `.tools/azurite`, once; or set
  `VIPE_AZURITE` to an `azurite-blob` executable.
- `ftp_plain`, `ftp_explicit`, `ftp_implicit`: pyftpdlib in a thread: `ftp://`, `ftpes://`
  (AUTH TLS required) and `ftps://` (implicit TLS), certificates from `tls_files` (a CA made in
  the test session; trust it with `VIPE_FTPS_CA_FILE=tls_files.ca_file`).
- `http_server`: a threaded file server with Basic auth, Range/If-Range and ETags.
- `FaultProxy`: a TCP proxy that forwards to a server and can drop a connection mid-transfer,
  answer HTTP errors, send a canned reply (e.g. FTP 421) or stall. `ftp_behind_proxy` puts an
  FTP server behind one (control and passive data ports alike, see its docstring).

conftest.py registers the fixtures (`pytest_plugins`); a test module imports only the helpers it
calls (`from servers import FaultProxy, s3_target`); tests/ is on sys.path through conftest.py.

When `VIPE_REQUIRE_TEST_SERVERS=1` (set by `.ci/run`), a server that cannot start fails the
test instead of skipping it.

PYTEST_DONT_REWRITE: test modules import helpers from here before loading it as a plugin.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import email.utils
import hashlib
import ipaddress
import json
import logging
import os
import re
import selectors
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlparse

import pytest

from storage.base import StorageLocation

REPO = Path(__file__).resolve().parent.parent
LOCALHOST = "127.0.0.1"
# A second loopback address: an FTP server there can sit behind a proxy on 127.0.0.1 that
# listens on the very same port numbers (see ftp_behind_proxy).
LOOPBACK_2 = "127.0.0.2"

# Azurite's documented development account; a public, well-known key, not a secret.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def _unavailable(reason: str) -> None:
    """Skip the test, or fail it when CI demands every server."""
    if os.environ.get("VIPE_REQUIRE_TEST_SERVERS") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def free_port(host: str = LOCALHOST) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------------------ TLS material


@dataclass(frozen=True)
class TlsFiles:
    """A CA and a server certificate it signed, for 127.0.0.1, 127.0.0.2 and localhost."""

    ca_file: Path  # the CA certificate (PEM): what a client trusts
    cert_file: Path  # server certificate (PEM)
    key_file: Path  # server private key (PEM)


def make_tls_files(folder: Path) -> TlsFiles:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vipe test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address(LOCALHOST)),
                    x509.IPAddress(ipaddress.ip_address(LOOPBACK_2)),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    files = TlsFiles(folder / "ca.pem", folder / "server.pem", folder / "server-key.pem")
    files.ca_file.write_bytes(ca_cert.public_bytes(pem))
    files.cert_file.write_bytes(cert.public_bytes(pem))
    files.key_file.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return files


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


# ------------------------------------------------------------------------------ moto (S3, STS)

# Runs in the child process. moto checks signatures against the decoded URL, which fails for
# any query or key with '/', spaces or non-ASCII characters; handing it the raw request URI
# (which is what the client signed) makes its signature check exact.
_MOTO_LAUNCHER = r"""
import logging, sys, threading
logging.getLogger("werkzeug").setLevel(logging.ERROR)
from werkzeug.serving import make_server
from moto.iam import access_control
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

local = threading.local()
original_init = access_control.IAMRequestBase.__init__

def init_with_raw_uri(self, account_id, method, path, *args, **kwargs):
    original_init(self, account_id, method, getattr(local, "raw_uri", None) or path,
                  *args, **kwargs)

access_control.IAMRequestBase.__init__ = init_with_raw_uri
app = DomainDispatcherApplication(create_backend_app)

def remember_raw_uri(environ, start_response):
    local.raw_uri = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    return app(environ, start_response)

server = make_server(sys.argv[1], int(sys.argv[2]), remember_raw_uri, threaded=True)
threading.Thread(target=server.serve_forever, daemon=True).start()
print(server.server_address[1], flush=True)
sys.stdin.read()  # the parent closing stdin (or dying) ends the server
"""

_ALLOW_ALL = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}


@dataclass
class MotoServer:
    """moto in a child process; every request must be signed with a known key."""

    endpoint: str
    process: subprocess.Popen
    access_key: str = ""
    secret_key: str = ""
    role_arn: str = ""
    region: str = "us-east-1"

    def client(self, service: str, **overrides: Any) -> Any:
        """A boto3 client for this server, signed with the allowed user's keys."""
        import boto3
        from botocore.config import Config

        options: dict[str, Any] = {
            "endpoint_url": self.endpoint,
            "region_name": self.region,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
            "config": Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        }
        options.update(overrides)
        return boto3.client(service, **options)

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"vipe-{uuid.uuid4().hex[:12]}"
        self.client("s3").create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def start_moto(host: str = LOCALHOST, port: int = 0, enforce_auth: bool = True) -> MotoServer:
    """Start moto, create an IAM user with keys and a role, then (unless told otherwise)
    enforce authentication: every request must be signed with `access_key`/`secret_key`."""
    process = subprocess.Popen(
        [sys.executable, "-c", _MOTO_LAUNCHER, host, str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = process.stdout.readline()
    if not line.strip().isdigit():
        process.kill()
        raise RuntimeError("moto server did not start")
    server = MotoServer(f"http://{host}:{int(line)}", process)
    try:
        # Set-up while authentication is still off (any keys are accepted).
        iam = server.client("iam", aws_access_key_id="setup", aws_secret_access_key="setup")
        iam.create_user(UserName="vipe")
        iam.put_user_policy(
            UserName="vipe", PolicyName="all", PolicyDocument=json.dumps(_ALLOW_ALL)
        )
        key = iam.create_access_key(UserName="vipe")["AccessKey"]
        server.access_key, server.secret_key = key["AccessKeyId"], key["SecretAccessKey"]
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}
            ],
        }
        role = iam.create_role(RoleName="vipe-role", AssumeRolePolicyDocument=json.dumps(trust))
        iam.put_role_policy(
            RoleName="vipe-role", PolicyName="all", PolicyDocument=json.dumps(_ALLOW_ALL)
        )
        server.role_arn = role["Role"]["Arn"]
        if not enforce_auth:
            return server
        # From now on every request needs a valid signature.
        request = urllib.request.Request(
            f"{server.endpoint}/moto-api/reset-auth",
            data=b"0",
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        urllib.request.urlopen(request, timeout=10).read()
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    try:
        server = start_moto()
    except (ImportError, RuntimeError) as error:
        _unavailable(f"moto server cannot start: {error}")
    yield server
    server.stop()


# ------------------------------------------------------------------------------ Azurite


AZURITE_VERSION = "3.35.0"  # the emulator the tests run (.ci/run installs it through here)
AZURITE_PREFIX = REPO / ".tools/azurite"


def install_azurite() -> None:
    """Install Azurite `AZURITE_VERSION` into `.tools/azurite` with npm, unless that version is
    there. A lock file serialises concurrent test processes; only the first one installs."""
    import fcntl

    package = AZURITE_PREFIX / "node_modules/azurite/package.json"

    def installed() -> bool:
        try:
            return json.loads(package.read_text()).get("version") == AZURITE_VERSION
        except (OSError, ValueError):
            return False

    if installed():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise FileNotFoundError("npm not found: Azurite cannot be installed (install Node.js)")
    AZURITE_PREFIX.mkdir(parents=True, exist_ok=True)
    with open(AZURITE_PREFIX / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if installed():  # another process installed it while this one waited
            return
        try:
            result = subprocess.run(
                [npm, "install", "--prefix", str(AZURITE_PREFIX), "--no-audit", "--no-fund",
                 "--silent", f"azurite@{AZURITE_VERSION}"],
                capture_output=True, text=True, timeout=600, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired as error:
            raise RuntimeError(f"npm install azurite@{AZURITE_VERSION} timed out") from error
        if result.returncode != 0 or not installed():
            raise RuntimeError(f"npm install azurite@{AZURITE_VERSION} failed: {result.stderr}")


def azurite_executable() -> str | None:
    """The `azurite-blob` to run: `VIPE_AZURITE`, else the one in `.tools/azurite` (installed
    there first when npm is available), else one on PATH."""
    if not os.environ.get("VIPE_AZURITE"):
        with contextlib.suppress(FileNotFoundError):  # no npm: PATH may still have one
            install_azurite()
    candidates = [
        os.environ.get("VIPE_AZURITE"),
        str(AZURITE_PREFIX / "node_modules/.bin/azurite-blob"),
        shutil.which("azurite-blob"),
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@dataclass
class AzuriteServer:
    """Azurite's blob service in a child process, data in memory."""

    blob_endpoint: str  # http://127.0.0.1:<port>
    process: subprocess.Popen
    account: str = AZURITE_ACCOUNT
    key: str = AZURITE_KEY

    @property
    def account_url(self) -> str:
        return f"{self.blob_endpoint}/{self.account}"

    def service_client(self) -> Any:
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient(
            self.account_url,
            credential={"account_name": self.account, "account_key": self.key},
        )

    def create_container(self, name: str | None = None) -> str:
        name = name or f"vipe-{uuid.uuid4().hex[:12]}"
        self.service_client().create_container(name)
        return name

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def start_azurite(host: str = LOCALHOST, port: int = 0) -> AzuriteServer:
    executable = azurite_executable()
    if executable is None:
        raise FileNotFoundError("azurite-blob not found (needs npm, or set VIPE_AZURITE)")
    process = subprocess.Popen(
        [
            executable,
            "--blobHost",
            host,
            "--blobPort",
            str(port),
            "--inMemoryPersistence",
            "--disableTelemetry",
            "--skipApiVersionCheck",  # the SDK may be newer than the emulator
            "--loose",
            "--silent",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 30
    endpoint = None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if match := re.search(r"listens on (http://\S+?)/?\s*$", line):
            endpoint = match[1]
            break
    if endpoint is None:
        process.kill()
        raise RuntimeError("Azurite did not start")
    # Keep reading its output so that it never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()
    return AzuriteServer(endpoint, process)


@pytest.fixture(scope="session")
def azurite_server() -> Iterator[AzuriteServer]:
    try:
        server = start_azurite()
    except (OSError, RuntimeError) as error:
        _unavailable(f"Azurite cannot start: {error}")
    yield server
    server.stop()


# ------------------------------------------------------------------------------ FTP(S)


@dataclass
class FtpServer:
    """pyftpdlib serving `root` in a thread; `mode` is the URI scheme it speaks."""

    mode: str  # ftp, ftpes or ftps
    host: str
    port: int
    root: Path
    user: str
    password: str
    _server: Any = None
    commands: list[tuple[str, str]] = field(default_factory=list)  # (command, argument); PASS ***
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def uri(self, folder: str, host: str | None = None, port: int | None = None) -> str:
        return f"{self.mode}://{host or self.host}:{port or self.port}/{quote(folder)}/"

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)


def _ftp_handler_classes() -> dict[str, type]:
    from pyftpdlib.handlers import FTPHandler, TLS_FTPHandler

    class ImplicitTLSHandler(TLS_FTPHandler):
        """Implicit FTPS: TLS from the first byte, the greeting sent over it."""

        def handle(self) -> None:
            self.secure_connection(self.ssl_context)
            super().handle()

    return {"ftp": FTPHandler, "ftpes": TLS_FTPHandler, "ftps": ImplicitTLSHandler}


def start_ftp(
    mode: str,
    root: Path,
    *,
    tls: TlsFiles | None = None,
    user: str = "vipe",
    password: str = "ftp-Secret-4711",
    host: str = LOCALHOST,
    port: int = 0,
    passive_ports: list[int] | None = None,
) -> FtpServer:
    """Start an FTP server (`ftp`, `ftpes` or `ftps` = implicit TLS) in a thread."""
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.ioloop import IOLoop
    from pyftpdlib.servers import FTPServer

    root.mkdir(parents=True, exist_ok=True)
    authorizer = DummyAuthorizer()
    authorizer.add_user(user, password, str(root), perm="elradfmwMT")
    attributes: dict[str, Any] = {
        "authorizer": authorizer,
        "banner": "vipe test FTP",
        "passive_ports": passive_ports,
        "permit_foreign_addresses": True,
        "timeout": 60,
        "auth_failed_timeout": 0.05,  # pyftpdlib waits 3 s before answering a wrong password
    }
    if mode != "ftp":
        if tls is None:
            raise ValueError(f"{mode} needs TLS files")
        attributes.update(
            certfile=str(tls.cert_file),
            keyfile=str(tls.key_file),
            ssl_context=None,  # per class: each server builds its own
            tls_control_required=True,
            tls_data_required=True,
        )
    base = _ftp_handler_classes()[mode]
    commands: list[tuple[str, str]] = []

    def process_command(self: Any, command: str, *args: Any, **kwargs: Any) -> Any:
        commands.append((command, "***" if command == "PASS" else (args[0] if args else "")))
        return base.process_command(self, command, *args, **kwargs)

    attributes["process_command"] = process_command
    handler = type(f"Handler_{mode}", (base,), attributes)
    ioloop = IOLoop()
    server = FTPServer((host, port), handler, ioloop=ioloop)
    ftp = FtpServer(mode, host, server.address[1], root, user, password, server, commands)
    # A line per command otherwise; a handler of its own stops pyftpdlib adding a stderr one.
    ftp_logger = logging.getLogger("pyftpdlib")
    ftp_logger.setLevel(logging.WARNING)
    if not ftp_logger.handlers:
        ftp_logger.addHandler(logging.NullHandler())

    def serve() -> None:
        try:
            while not ftp._stop.is_set():
                ioloop.loop(timeout=0.05, blocking=False)
        finally:
            server.close_all()

    ftp._thread = threading.Thread(target=serve, name=f"ftp-{mode}", daemon=True)
    ftp._thread.start()
    return ftp


@pytest.fixture(scope="session")
def ftp_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ftp-root")


@pytest.fixture(scope="session")
def ftp_plain(ftp_root) -> Iterator[FtpServer]:
    server = start_ftp("ftp", ftp_root)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ftp_explicit(ftp_root, tls_files) -> Iterator[FtpServer]:
    server = start_ftp("ftpes", ftp_root, tls=tls_files)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ftp_implicit(ftp_root, tls_files) -> Iterator[FtpServer]:
    server = start_ftp("ftps", ftp_root, tls=tls_files)
    yield server
    server.stop()


def ftp_behind_proxy(
    mode: str, root: Path, tls: TlsFiles | None = None, passive_count: int = 6
) -> tuple[FtpServer, FaultProxy]:
    """An FTP server on 127.0.0.2 behind a FaultProxy on 127.0.0.1, data connections included.

    A passive-mode reply names a port that the client connects to directly (ftplib takes the
    host from the control connection, ignoring the address in the reply), so the proxy listens
    on 127.0.0.1 at the very port numbers the server uses on 127.0.0.2, for the control port
    and a small fixed set of passive ports. Connect to `server.uri(folder, host="127.0.0.1")`.
    Skips where 127.0.0.2 cannot be bound (it can on Linux).
    """
    try:
        with socket.socket() as probe:
            probe.bind((LOOPBACK_2, 0))
    except OSError:
        _unavailable("127.0.0.2 is not a usable loopback address here")
    proxy = FaultProxy()
    ports = proxy.mirror(LOOPBACK_2, 1 + passive_count)
    server = start_ftp(mode, root, tls=tls, host=LOOPBACK_2, port=ports[0], passive_ports=ports[1:])
    return server, proxy


# ------------------------------------------------------------------------------ HTTP files


class _FileHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _FileServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _plain(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        data = text.encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _serve(self, body: bool) -> None:
        self.server.requests.append((self.command, self.path, dict(self.headers)))
        if self.server.expected_auth and self.headers.get("Authorization") != (
            self.server.expected_auth
        ):
            self._plain(401, "unauthorized", {"WWW-Authenticate": 'Basic realm="vipe"'})
            return
        relative = unquote(urlparse(self.path).path).lstrip("/")
        path = (self.server.root / relative).resolve()
        if self.server.root not in path.parents or not path.is_file():
            self._plain(404, "not found")
            return
        stat = path.stat()
        size = stat.st_size
        etag = f'"{stat.st_mtime_ns:x}-{size:x}"'
        start, end = 0, size - 1
        status = 200
        wanted = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if wanted and (not if_range or if_range == etag):
            match = re.fullmatch(r"bytes=(\d*)-(\d*)", wanted.strip())
            if match and (match[1] or match[2]):
                if match[1]:
                    start = int(match[1])
                    end = min(int(match[2]), size - 1) if match[2] else size - 1
                else:
                    start, end = max(0, size - int(match[2])), size - 1
                if start >= size or start > end:
                    self._plain(416, "range not satisfiable", {"Content-Range": f"bytes */{size}"})
                    return
                status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", email.utils.formatdate(stat.st_mtime, usegmt=True))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if not body:
            return
        with open(path, "rb") as file:
            file.seek(start)
            left = end - start + 1
            while left > 0 and (chunk := file.read(min(64 * 1024, left))):
                self.wfile.write(chunk)
                left -= len(chunk)


class _FileServer(ThreadingHTTPServer):
    daemon_threads = True
    root: Path
    expected_auth: str | None
    requests: list

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up mid-response (cancel and fault tests) are expected here.
        if not isinstance(sys.exc_info()[1], ConnectionError | ssl.SSLError | TimeoutError):
            super().handle_error(request, client_address)


@dataclass
class HttpServer:
    """Serves the files under `root`; Basic auth when a user is set."""

    root: Path
    host: str
    port: int
    scheme: str
    user: str | None
    password: str | None
    _server: _FileServer

    def url(self, relative: str, port: int | None = None) -> str:
        return f"{self.scheme}://{self.host}:{port or self.port}/{quote(relative)}"

    @property
    def requests(self) -> list:
        """(method, path, headers) of every request so far."""
        return self._server.requests

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def start_http(
    root: Path,
    *,
    user: str | None = "vipe",
    password: str | None = "http-Secret-0815",
    tls: TlsFiles | None = None,
    host: str = LOCALHOST,
) -> HttpServer:
    root.mkdir(parents=True, exist_ok=True)
    server = _FileServer((host, 0), _FileHandler)
    server.root = root.resolve()
    server.requests = []
    server.expected_auth = None
    if user is not None and password is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        server.expected_auth = f"Basic {token}"
    scheme = "http"
    if tls is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls.cert_file, tls.key_file)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
    ).start()
    return HttpServer(root, host, server.server_address[1], scheme, user, password, server)


@pytest.fixture(scope="session")
def http_server(tmp_path_factory) -> Iterator[HttpServer]:
    server = start_http(tmp_path_factory.mktemp("http-root"))
    yield server
    server.stop()


# ------------------------------------------------------------------------------ fault proxy


@dataclass
class _Fault:
    kind: str  # drop, stall, http, reply
    times: int | None  # None: every time
    after_bytes: int = 0
    direction: str = "down"  # down: server -> client, up: client -> server
    seconds: float = 0.0
    status: int = 503
    reply: bytes = b""
    fired: int = 0

    def take(self) -> bool:
        if self.times is not None and self.fired >= self.times:
            return False
        self.fired += 1
        return True


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of a server, injecting faults when told to.

    `forward(host, port)` returns the port to connect to instead. Faults (each for `times`
    connections, None = all):
    - `drop(after_bytes, direction)`: cut the connection (TCP reset) once that many bytes went
      through in that direction (`down` = server to client, `up` = client to server);
    - `http_error(status)`: answer a new connection's first request with that status and close,
      without involving the server;
    - `reply(data)`: send `data` on a new connection and close (an FTP `421 ...` greeting);
    - `stall(after_bytes, seconds, direction)`: stop forwarding after that many bytes, then
      close after `seconds` (the client's timeout should fire first).
    `connections` counts accepted connections, `forwarded` the bytes passed on per direction;
    each fault's `fired` counts its uses.
    """

    def __init__(self) -> None:
        self._listeners: list[socket.socket] = []
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._sockets: set[socket.socket] = set()
        self.connections = 0
        self.forwarded = {"up": 0, "down": 0}  # bytes passed on, all connections together

    # -- routes -------------------------------------------------------------------------------

    def forward(self, upstream_host: str, upstream_port: int, listen_port: int = 0) -> int:
        listener = socket.create_server((LOCALHOST, listen_port))
        self._listeners.append(listener)
        threading.Thread(
            target=self._accept, args=(listener, (upstream_host, upstream_port)), daemon=True
        ).start()
        return listener.getsockname()[1]

    def mirror(self, upstream_host: str, count: int) -> list[int]:
        """Listen on `count` free ports, each forwarding to the same port on `upstream_host`."""
        ports = []
        while len(ports) < count:
            port = free_port()
            try:
                with socket.socket() as probe:  # must be free on the upstream address too
                    probe.bind((upstream_host, port))
                ports.append(self.forward(upstream_host, port, listen_port=port))
            except OSError:
                continue
        return ports

    # -- faults -------------------------------------------------------------------------------

    def _add(self, fault: _Fault) -> _Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def drop(self, after_bytes: int, direction: str = "down", times: int | None = 1) -> _Fault:
        return self._add(_Fault("drop", times, after_bytes=after_bytes, direction=direction))

    def stall(
        self,
        after_bytes: int = 0,
        seconds: float = 10.0,
        direction: str = "down",
        times: int | None = 1,
    ) -> _Fault:
        return self._add(
            _Fault("stall", times, after_bytes=after_bytes, direction=direction, seconds=seconds)
        )

    def http_error(self, status: int = 503, times: int | None = 1) -> _Fault:
        return self._add(_Fault("http", times, status=status))

    def reply(self, data: bytes, times: int | None = 1) -> _Fault:
        return self._add(_Fault("reply", times, reply=data))

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def close(self) -> None:
        self._closed.set()
        for listener in self._listeners:
            with contextlib.suppress(OSError):
                listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            _abort(sock)

    # -- machinery ----------------------------------------------------------------------------

    def _accept(self, listener: socket.socket, upstream: tuple[str, int]) -> None:
        while not self._closed.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._sockets.add(client)
            threading.Thread(target=self._serve, args=(client, upstream), daemon=True).start()

    def _first_fault(self, kinds: tuple[str, ...]) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.kind in kinds and fault.take():
                    return fault
        return None

    def _transfer_fault(self, direction: str, sent: int, incoming: int) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if (
                    fault.kind in ("drop", "stall")
                    and fault.direction == direction
                    and sent + incoming > fault.after_bytes
                    and fault.take()
                ):
                    return fault
        return None

    def _serve(self, client: socket.socket, upstream_address: tuple[str, int]) -> None:
        upstream = None
        try:
            canned = self._first_fault(("http", "reply"))
            if canned is not None:
                if canned.kind == "http":
                    _answer_http(client, canned.status)
                else:
                    client.sendall(canned.reply)
                    time.sleep(0.05)
                client.close()
                return
            upstream = socket.create_connection(upstream_address, timeout=10)
            upstream.settimeout(None)
            with self._lock:
                self._sockets.add(upstream)
            self._pipe(client, upstream)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    with self._lock:
                        self._sockets.discard(sock)
                    with contextlib.suppress(OSError):
                        sock.close()

    def _pipe(self, client: socket.socket, upstream: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(client, selectors.EVENT_READ, "up")
        selector.register(upstream, selectors.EVENT_READ, "down")
        counts = {"up": 0, "down": 0}
        open_sides = 2
        while open_sides and not self._closed.is_set():
            for key, _ in selector.select(timeout=0.2):
                direction = key.data
                source = key.fileobj
                target = upstream if direction == "up" else client
                try:
                    data = source.recv(65536)
                except OSError:
                    _abort(client)
                    _abort(upstream)
                    return
                if not data:  # half-close: pass the FIN on
                    selector.unregister(source)
                    open_sides -= 1
                    with contextlib.suppress(OSError):
                        target.shutdown(socket.SHUT_WR)
                    continue
                fault = self._transfer_fault(direction, counts[direction], len(data))
                if fault is not None:
                    keep = max(0, fault.after_bytes - counts[direction])
                    with contextlib.suppress(OSError):
                        target.sendall(data[:keep])
                    if fault.kind == "stall":
                        self._closed.wait(fault.seconds)
                    _abort(client)
                    _abort(upstream)
                    return
                try:
                    target.sendall(data)
                except OSError:
                    _abort(client)
                    _abort(upstream)
                    return
                counts[direction] += len(data)
                with self._lock:
                    self.forwarded[direction] += len(data)


def _abort(sock: socket.socket) -> None:
    """Close with a TCP reset, as a dropped connection looks to the peer."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


def _answer_http(client: socket.socket, status: int) -> None:
    """Read one HTTP request (head and body) and answer `status` with Connection: close."""
    client.settimeout(5)
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = client.recv(65536)
        if not chunk:
            return
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("expect", "").lower() != "100-continue":  # else: answer before the body
        if headers.get("transfer-encoding", "").lower() == "chunked":
            rest = _read_chunked(client, rest)
        else:
            left = int(headers.get("content-length", "0") or 0) - len(rest)
            while left > 0:
                chunk = client.recv(min(65536, left))
                if not chunk:
                    break
                left -= len(chunk)
    body = (
        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ServiceUnavailable</Code>'
        b"<Message>injected by FaultProxy</Message></Error>"
    )
    reason = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}
    client.sendall(
        f"HTTP/1.1 {status} {reason.get(status, 'Error')}\r\nContent-Type: application/xml\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )


def _read_chunked(client: socket.socket, buffer: bytes) -> bytes:
    """Consume a chunked request body (and its trailers)."""

    def fill(needed: bytes | int) -> None:
        nonlocal buffer
        while (needed not in buffer) if isinstance(needed, bytes) else (len(buffer) < needed):
            chunk = client.recv(65536)
            if not chunk:
                raise OSError("connection closed")
            buffer += chunk

    while True:
        fill(b"\r\n")
        line, _, buffer = buffer.partition(b"\r\n")
        size = int(line.split(b";")[0] or b"0", 16)
        if size == 0:
            while True:  # trailers up to an empty line
                fill(b"\r\n")
                line, _, buffer = buffer.partition(b"\r\n")
                if not line:
                    return buffer
        fill(size + 2)
        buffer = buffer[size + 2 :]


@pytest.fixture
def fault_proxy() -> Iterator[FaultProxy]:
    proxy = FaultProxy()
    yield proxy
    proxy.close()


# ------------------------------------------------------------------------------ storage targets


@dataclass
class Target:
    """A fresh, empty folder on one server: the StorageLocation a provider gets, plus raw access
    to the same folder (not through the provider) for the test's checks."""

    location: StorageLocation
    put: Callable[[str, bytes], None]  # write a file (relative name) into the folder
    get: Callable[[str], bytes]  # read a file back
    names: Callable[[], set[str]]  # every file under the folder, relative names, recursive
    content_type: Callable[[str], str] | None = None
    parts: Callable[[str], int] | None = None  # multipart parts / committed blocks of a file

    def sub(self, folder: str) -> StorageLocation:
        """The location of a sub-folder."""
        uri = self.location.uri
        return replace(self.location, uri=uri.rstrip("/") + "/" + quote(folder) + "/")


def unique_folder() -> str:
    # A space and a non-ASCII letter in every folder name, so every test exercises quoting.
    return f"job {uuid.uuid4().hex[:10]} é"


def s3_target(
    moto: MotoServer,
    bucket: str,
    *,
    provider: str = "S3Compatible",
    endpoint: str | None = None,
    folder: str | None = None,
    secret: str | None = None,
) -> Target:
    """A folder of `bucket`; AmazonS3 needs VIPE_S3_ENDPOINT_URL pointing at moto."""
    folder = folder if folder is not None else unique_folder()
    if provider == "AmazonS3":
        uri = f"https://{bucket}.s3.{moto.region}.amazonaws.com/{quote(folder)}/"
    else:
        uri = f"{endpoint or moto.endpoint}/{bucket}/{quote(folder)}/"
    location = StorageLocation(
        provider, uri, moto.access_key, secret if secret is not None else moto.secret_key
    )
    client = moto.client("s3")
    prefix = folder + "/" if folder else ""

    def put(name: str, data: bytes) -> None:
        client.put_object(Bucket=bucket, Key=prefix + name, Body=data)

    def get(name: str) -> bytes:
        return client.get_object(Bucket=bucket, Key=prefix + name)["Body"].read()

    def names() -> set[str]:
        found = set()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            found |= {item["Key"][len(prefix) :] for item in page.get("Contents", [])}
        return found

    def content_type(name: str) -> str:
        return client.head_object(Bucket=bucket, Key=prefix + name)["ContentType"]

    def parts(name: str) -> int:
        etag = client.head_object(Bucket=bucket, Key=prefix + name)["ETag"].strip('"')
        return int(etag.split("-")[1]) if "-" in etag else 1  # multipart ETags end in -<parts>

    return Target(location, put, get, names, content_type, parts)


def azure_target(
    azurite: AzuriteServer,
    container: str,
    *,
    endpoint: str | None = None,
    folder: str | None = None,
    key: str | None = None,
) -> Target:
    folder = folder if folder is not None else unique_folder()
    uri = f"{endpoint or azurite.blob_endpoint}/{azurite.account}/{container}/{quote(folder)}/"
    location = StorageLocation(
        "AzureBlob", uri, azurite.account, key if key is not None else azurite.key
    )
    client = azurite.service_client().get_container_client(container)
    prefix = folder + "/" if folder else ""

    def put(name: str, data: bytes) -> None:
        client.upload_blob(prefix + name, data, overwrite=True)

    def get(name: str) -> bytes:
        return client.download_blob(prefix + name).readall()

    def names() -> set[str]:
        return {blob.name[len(prefix) :] for blob in client.list_blobs(name_starts_with=prefix)}

    def content_type(name: str) -> str:
        return (
            client.get_blob_client(prefix + name)
            .get_blob_properties()
            .content_settings["content_type"]
        )

    def parts(name: str) -> int:
        committed, _ = client.get_blob_client(prefix + name).get_block_list("committed")
        return max(1, len(committed))

    return Target(location, put, get, names, content_type, parts)


def ftp_target(
    server: FtpServer,
    *,
    host: str | None = None,
    port: int | None = None,
    folder: str | None = None,
    password: str | None = None,
) -> Target:
    folder = folder if folder is not None else unique_folder()
    location = StorageLocation(
        "Ftps",
        server.uri(folder, host=host, port=port),
        server.user,
        password if password is not None else server.password,
    )
    return _folder_target(location, server.root / folder)


def local_target(root: Path, folder: str | None = None) -> Target:
    folder = folder if folder is not None else unique_folder()
    path = root / folder
    return _folder_target(StorageLocation("Local", path.as_uri() + "/"), path)


def _folder_target(location: StorageLocation, path: Path) -> Target:
    def put(name: str, data: bytes) -> None:
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)

    def names() -> set[str]:
        if not path.exists():
            return set()
        return {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}

    return Target(location, put, lambda name: (path / name).read_bytes(), names)


def fast_storage_settings(monkeypatch: pytest.MonkeyPatch, timeout: float = 5.0) -> None:
    """Short backoffs and timeouts, small multipart thresholds, no SDK-internal retries (so that
    `Storage.retrying` is what a test sees), for storage tests that must stay quick."""
    from storage.azure import AzureBlobStorage
    from storage.base import Storage
    from storage.ftps import FtpsStorage
    from storage.http import HttpStorage
    from storage.s3 import S3Storage

    monkeypatch.setattr(Storage, "backoff_seconds", 0.01)
    monkeypatch.setattr(S3Storage, "multipart_threshold", 1 << 20)
    monkeypatch.setattr(S3Storage, "multipart_chunksize", 5 << 20)  # S3's minimum part size
    monkeypatch.setattr(S3Storage, "sdk_attempts", 1)
    monkeypatch.setattr(S3Storage, "timeout_seconds", timeout)
    monkeypatch.setattr(AzureBlobStorage, "max_single_put_size", 1 << 20)
    monkeypatch.setattr(AzureBlobStorage, "max_block_size", 256 << 10)
    monkeypatch.setattr(AzureBlobStorage, "sdk_attempts", 1)
    monkeypatch.setattr(AzureBlobStorage, "timeout_seconds", timeout)
    monkeypatch.setattr(FtpsStorage, "timeout_seconds", timeout)
    monkeypatch.setattr(HttpStorage, "timeout_seconds", timeout)
