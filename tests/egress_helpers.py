"""Helpers for the egress policy tests.

- `Listener`: a TCP listener that only counts the connections it is offered (accepts, closes):
  a refused destination must never see one.
- `TinyHttp`: an HTTP(S) server with fixed answers per path (files, redirects) that records the
  requests and, with TLS, the server name (SNI) each client asked for.
- `fake_resolver`: answers chosen names with chosen addresses, as a hostile DNS server would,
  counting the lookups (other names go to the real resolver).

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

LOCALHOST = "127.0.0.1"
RULE = "allowed only with --allow-network"


class Listener:
    """Counts the TCP connections offered on `host:port` (port 0: a free one)."""

    def __init__(self, host: str = LOCALHOST, port: int = 0):
        self.sock = socket.create_server((host, port))
        self.sock.settimeout(0.05)
        self.host = host
        self.port: int = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            client.close()

    def seen(self, settle: float = 0.3) -> int:
        """Connections offered so far, after a moment for one in flight to arrive."""
        time.sleep(settle)
        return self.connections

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


Answer = tuple[int, dict[str, str], bytes]  # status, headers, body


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        status, headers, body = self.server.answers.get(
            self.path.split("?")[0], (404, {}, b"not found")
        )
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    answers: dict[str, Answer]
    requests: list[str]


class TinyHttp:
    """Fixed answers per path; `server_names` holds the SNI of each TLS handshake."""

    def __init__(self, host: str = LOCALHOST, tls: Any = None, port: int = 0):
        self.server = _Server((host, port), _Handler)
        self.server.answers = {}
        self.server.requests = []
        self.server_names: list[str | None] = []
        self.scheme = "http"
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(tls.cert_file, tls.key_file)

            def remember(_sock: Any, name: str | None, _context: Any) -> None:
                self.server_names.append(name)

            context.sni_callback = remember
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.port: int = self.server.server_address[1]
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    @property
    def requests(self) -> list[str]:
        return self.server.requests

    def file(self, path: str, body: bytes) -> None:
        self.server.answers[path] = (200, {"Content-Type": "application/octet-stream"}, body)

    def redirect(self, path: str, location: str, status: int = 302) -> None:
        self.server.answers[path] = (status, {"Location": location}, b"")

    def url(self, path: str, host: str = LOCALHOST) -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def fake_resolver(
    monkeypatch: pytest.MonkeyPatch, answers: dict[str, Callable[[int], list[str]]]
) -> dict[str, int]:
    """Make `socket.getaddrinfo` answer each name in `answers` with the addresses the function
    returns for the lookup's number (0, 1, ...); returns the lookup count per name."""
    real = socket.getaddrinfo
    counts = dict.fromkeys(answers, 0)

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in answers:
            return real(host, port, *args, **kwargs)
        number = counts[name]
        counts[name] += 1
        result = []
        for address in answers[name](number):
            result += real(address, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
        return result

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return counts


def can_bind(address: str) -> bool:
    try:
        with socket.socket() as probe:
            probe.bind((address, 0))
    except OSError:
        return False
    return True
