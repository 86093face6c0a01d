"""Helpers for the API tests: a real HTTPS server (uvicorn in a thread or `vipe serve` in a
subprocess) on 127.0.0.1, JWTs signed by a test key, tiny jobs, and waiting."""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from engine.service.api import ServerSettings, create_app, ensure_tls_certificate, uvicorn_config
from engine.service.auth import AuthSettings
from engine.service.tenants import TenantRegistry

REPO = Path(__file__).resolve().parent.parent
ISSUER = "https://id.vipe.test/"
AUDIENCE = "vipe-test"
PERMISSION = "Videos: Encode"
FINAL = ("Succeeded", "Failed", "Cancelled")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------------------------- JWT


@dataclass
class TokenIssuer:
    """An RSA key pair that signs test tokens; `public_pem` is what the server trusts."""

    folder: Path
    key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    kid: str = "test-key-1"

    @property
    def public_pem(self) -> Path:
        path = self.folder / "jwt-public.pem"
        if not path.exists():
            path.write_bytes(
                self.key.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )
        return path

    def token(
        self,
        tenant: str | None = "tenant-a",
        *,
        key: rsa.RSAPrivateKey | None = None,
        expires_in: float = 600,
        audience: str | None = AUDIENCE,
        issuer: str | None = ISSUER,
        permissions: Any = (PERMISSION,),
        algorithm: str = "RS256",
        **claims: Any,
    ) -> str:
        now = datetime.datetime.now(datetime.UTC)
        body: dict[str, Any] = {
            "sub": "user-1",
            "iat": now,
            "exp": now + datetime.timedelta(seconds=expires_in),
        }
        if tenant is not None:
            body["tenantId"] = tenant
        if audience is not None:
            body["aud"] = audience
        if issuer is not None:
            body["iss"] = issuer
        if permissions is not None:
            body["permissions"] = (
                list(permissions) if isinstance(permissions, tuple) else (permissions)
            )
        body.update(claims)
        return jwt.encode(body, key or self.key, algorithm=algorithm, headers={"kid": self.kid})

    def auth_settings(self) -> AuthSettings:
        return AuthSettings(jwt_public_key=self.public_pem, issuer=ISSUER, audience=AUDIENCE)


# ---------------------------------------------------------------------------------- servers


# The tenants a test server knows (a JWT must name one of them): the names the tests use.
TEST_TENANTS = ("tenant-a", "tenant-b", "tenant-load")


def known_tenants(data_dir: Path, *names: str) -> TenantRegistry:
    """The tenants registry of `data_dir` with `names` added (those missing)."""
    registry = TenantRegistry(data_dir)
    for name in names:
        if not registry.known(name):
            registry.add(name)
    return registry


class ApiServer:
    """`create_app` under uvicorn in a thread, with TLS, on a free loopback port; it knows
    the `TEST_TENANTS` and `tenants`."""

    def __init__(
        self, data_dir: Path, auth: AuthSettings, *, tenants: tuple[str, ...] = (), **settings: Any
    ):
        self.data_dir = data_dir
        known_tenants(data_dir, *TEST_TENANTS, *tenants)
        self.settings = ServerSettings(
            data_dir=data_dir, host="127.0.0.1", port=free_port(), auth=auth, **settings
        )
        self.cert, _ = ensure_tls_certificate(data_dir, "127.0.0.1")
        self.url = f"https://127.0.0.1:{self.settings.port}"
        self.app = None
        self._server = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ApiServer:
        import uvicorn

        self.app = create_app(self.settings)
        config = uvicorn_config(self.app, self.settings, log_config=None, access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the API server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.should_exit = True
        self._thread.join(30)

    @property
    def store(self):
        return self.app.state.store

    def client(self, authorization: str | None = None, **options: Any) -> httpx.Client:
        return api_client(self.url, self.cert, authorization, **options)

    def add_tenant(self, name: str) -> str:
        return TenantRegistry(self.data_dir).add(name)


def api_client(
    url: str, cert: Path, authorization: str | None = None, **options: Any
) -> httpx.Client:
    headers = {"Accept": "application/json"}
    if authorization:
        headers["Authorization"] = authorization
    context = ssl.create_default_context(cafile=str(cert))
    return httpx.Client(base_url=url, verify=context, headers=headers, timeout=30, **options)


class ServeProcess:
    """`python -m engine.cli serve` in a subprocess (for kill/restart tests)."""

    def __init__(self, data_dir: Path, port: int, public_key: Path, *extra: str):
        self.data_dir = data_dir
        self.port = port
        self.args = [
            sys.executable,
            "-m",
            "engine.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--jwt-public-key",
            str(public_key),
            "--jwt-issuer",
            ISSUER,
            "--jwt-audience",
            AUDIENCE,
            # The tests' jobs read and write under the temporary folder and reach their
            # servers on loopback: both refused by default.
            "--local-root",
            tempfile.gettempdir(),
            "--allow-network",
            "127.0.0.0/8",
            *extra,
        ]
        self.process: subprocess.Popen | None = None
        self.log = data_dir / f"serve-{port}.log"
        self.cert = data_dir / "tls-certificate.pem"
        self.url = f"https://127.0.0.1:{port}"

    def start(self, timeout: float = 60) -> ServeProcess:
        known_tenants(self.data_dir, *TEST_TENANTS)
        environment = dict(os.environ, PYTHONPATH=str(REPO))
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.args, stdout=log, stderr=subprocess.STDOUT, env=environment, cwd=REPO
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vipe serve exited: {self.log.read_text()[-3000:]}")
            if self.cert.exists():
                try:
                    with api_client(self.url, self.cert) as client:
                        if client.get("/health").status_code == 200:
                            return self
                except (httpx.HTTPError, ssl.SSLError):
                    pass
            time.sleep(0.1)
        raise RuntimeError(f"vipe serve did not answer: {self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: a crash, nothing cleaned up."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


# ------------------------------------------------------------------------------------ jobs


def tiny_job(source: Path, output: Path, **processing: Any) -> dict[str, Any]:
    """A Local job: every file of `source` in, one 160x90 rung, Speed, CMAF out."""
    content_processing: dict[str, Any] = {
        "OutputFormat": ["Cmaf"],
        "OptimizeFor": "Speed",
        "HardwareAcceleration": "None",
        "VideoRepresentations": [{"Width": 160, "Height": 90, "BitrateInKbps": 200}],
    }
    content_processing.update(processing)
    return {
        "ExternalId": f"ext-{uuid.uuid4().hex[:8]}",
        "ExternalType": "Movie",
        "ExternalProvider": "tests",
        "ContentAcquisition": {"Provider": "Local", "UriPath": source.as_uri() + "/"},
        "MediaMappings": {"VideoStreamExpression": r"^.*\.mp4$"},
        "ContentProcessing": content_processing,
        "ContentPublishing": {"Provider": "Local", "UriPath": output.as_uri() + "/"},
    }


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll until `predicate()` is truthy; its value, or AssertionError at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout} s")
        time.sleep(interval)


def job_state(client: httpx.Client, job_id: str) -> dict[str, Any]:
    answer = client.get(f"/Job/{job_id}")
    assert answer.status_code == 200, answer.text
    return answer.json()


def wait_final(client: httpx.Client, job_id: str, timeout: float = 60) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        view = job_state(client, job_id)
        return view if view["State"] in FINAL else None

    return wait_for(final, timeout, 0.1)


def event_types(view: dict[str, Any]) -> list[str]:
    return [event["MessageType"] for event in view["Events"]]


def folder_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@contextlib.contextmanager
def timer() -> Iterator[Callable[[], float]]:
    started = time.monotonic()
    yield lambda: time.monotonic() - started
