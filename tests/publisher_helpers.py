"""Helpers for the message publisher tests: a webhook receiver, RabbitMQ queues, an AMQPS
(TLS) front for the local RabbitMQ, a fake Service Bus transport, jobs and event sequences.

- `WebhookReceiver`: http.server on 127.0.0.1 in a thread, one request at a time (so the order of
  arrival is the order of sending); answers from a script (`statuses`, `delays`), then 200.
- `RabbitQueues` (fixture `rabbitmq`): the machine's RabbitMQ at 127.0.0.1:5672 (guest/guest);
  unique queue names, deleted after the test. Skipped when no broker runs there, unless
  `VIPE_REQUIRE_RABBITMQ=1`.
- `TlsFront`: a TLS-terminating TCP front (certificate from `servers.make_tls_files`) that
  forwards to the plain AMQP port, so that `amqps` with certificate verification is tested
  against the real broker.
- `FakeServiceBus`: replaces `ServiceBusClient.from_connection_string`; its sender records the
  real `ServiceBusMessage`s (there is no local Service Bus server).

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from engine.events import EventEmitter

LOCALHOST = "127.0.0.1"
BASE_FIELDS = ("JobId", "TenantId", "ExternalId", "ExternalType", "ExternalProvider")
EXTERNAL = ("movie-42", "Movie", "cms-7")


# ------------------------------------------------------------------------------ events


def emit_job_events(emitter: EventEmitter) -> None:
    """A job's worth of events, as the pipeline sends them (including two in one millisecond
    and a Warning between progress events)."""
    emitter.emit(
        "JobCreated",
        ContentAcquisitionProvider="Local",
        ContentAcquisitionUriPath="file:///data/in/movie-42/",
        MessagePublisherTypes=["RabbitMQ"],
        Warnings=[],
    )
    emitter.warning("UnknownProperty", "Foo: unknown property, ignored")
    emitter.emit("AcquisitionProgress", Progress=100, BytesDone=2048, BytesTotal=2048)
    emitter.emit("ContentAcquired", FilesCount=1, BytesCount=2048)
    emitter.emit("ContentMapped", VideoFile="source.mp4", AudioFiles=[], IgnoredFiles=[])
    emitter.emit("VideoEncodingStarted", Renditions=1, Encoder="libx264")
    for percent in (10, 50, 100):
        emitter.emit("EncodingProgress", Progress=percent)
    emitter.emit("EncodingFinished", Streams=[{"Type": "Video", "Width": 160, "Height": 90}])
    emitter.emit("ContentPublished", Location="file:///data/out/", FilesCount=4, BytesCount=9)
    emitter.emit("JobSuccess", Durations={"Encoding": 0.5, "Überprüfung": 0.1})


def as_json(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events as a receiver sees them: through JSON."""
    return [json.loads(json.dumps(e, default=str)) for e in events]


def check_events(
    received: list[dict[str, Any]], sent: list[dict[str, Any]], where: str = ""
) -> None:
    """Every event arrived once, in order, unchanged, with the base fields."""
    names = [e.get("MessageType") for e in received]
    assert names == [e["MessageType"] for e in sent], where
    assert received == as_json(sent), where
    for event in received:
        for name in (*BASE_FIELDS, "MessageType", "Timestamp"):
            assert name in event, f"{where}: {name} missing from {event.get('MessageType')}"
        assert event["Timestamp"].endswith("+00:00"), where


def check_no_secret(raw: list[bytes | str], secrets: list[str]) -> None:
    """No secret of the job appears in any of the raw messages (bodies, headers, attributes)."""
    assert secrets, "the job under test should hold secrets"
    for item in raw:
        text = item.decode("utf-8", "replace") if isinstance(item, bytes) else item
        for secret in secrets:
            assert secret not in text, "a secret of the job reached a destination"


# ------------------------------------------------------------------------------ jobs


def job_dict(root: Path, publishers: list[dict[str, Any]]) -> dict[str, Any]:
    """A tiny job: Local in/out under `root`, one 160x90 rung, OptimizeFor Speed."""
    return {
        "ExternalId": EXTERNAL[0],
        "ExternalType": EXTERNAL[1],
        "ExternalProvider": EXTERNAL[2],
        "ContentAcquisition": {"Provider": "Local", "UriPath": (root / "in").as_uri() + "/"},
        "MediaMappings": {"VideoStreamExpression": r"^.*\.mp4$"},
        "ContentProcessing": {
            "OutputFormat": ["Cmaf"],
            "OptimizeFor": "Speed",
            "VideoRepresentations": [{"Width": 160, "Height": 90, "BitrateInKbps": 150}],
        },
        "ContentPublishing": {"Provider": "Local", "UriPath": (root / "out").as_uri() + "/"},
        "MessagePublishers": publishers,
    }


def dead_port() -> int:
    """A port on 127.0.0.1 where nothing listens."""
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------------------ webhook


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """Records POSTs; answers `statuses` in turn (then 200), sleeping `delays` in turn first."""

    server: HTTPServer
    statuses: list[int] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)  # answered 2xx
    attempts: list[tuple[int, Delivery]] = field(default_factory=list)  # every request
    thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.server.server_address[1]}/hooks/vipe?token=abc"

    def events(self) -> list[dict[str, Any]]:
        return [d.event for d in self.deliveries]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_webhook(statuses: list[int] | None = None, delays: list[float] | None = None):
    receiver: WebhookReceiver

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            delivery = Delivery(self.path, dict(self.headers.items()), body)
            if receiver.delays:
                time.sleep(receiver.delays.pop(0))
            status = receiver.statuses.pop(0) if receiver.statuses else 200
            receiver.attempts.append((status, delivery))
            if 200 <= status < 300:
                receiver.deliveries.append(delivery)
            payload = b'{"ok": true}' if status < 300 else b'{"error": "try later"}'
            with contextlib.suppress(OSError):  # the client may have given up (timeout test)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

    server = HTTPServer((LOCALHOST, 0), Handler)
    receiver = WebhookReceiver(server, list(statuses or []), list(delays or []))
    receiver.thread = threading.Thread(target=server.serve_forever, daemon=True)
    receiver.thread.start()
    return receiver


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    receiver = start_webhook()
    yield receiver
    receiver.stop()


# ------------------------------------------------------------------------------ RabbitMQ

RABBIT = {"host": LOCALHOST, "port": 5672, "user": "guest", "password": "guest"}


def rabbit_connection():
    import pika

    return pika.BlockingConnection(
        pika.ConnectionParameters(
            RABBIT["host"],
            RABBIT["port"],
            credentials=pika.PlainCredentials(RABBIT["user"], RABBIT["password"]),
            connection_attempts=1,
            socket_timeout=3,
        )
    )


@dataclass
class AmqpMessage:
    properties: Any
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)

    def raw(self) -> list[bytes | str]:
        """Everything a consumer gets: body and every property as text."""
        props = self.properties
        return [self.body, repr(props.__dict__)]


class RabbitQueues:
    """Unique queue names on the local broker; every name handed out is deleted afterwards."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def new_name(self) -> str:
        name = f"vipe-test-{uuid.uuid4().hex[:12]}"
        self.names.append(name)
        return name

    def declare(self, name: str, **options: Any) -> None:
        connection = rabbit_connection()
        try:
            connection.channel().queue_declare(name, **options)
        finally:
            connection.close()

    def read(self, name: str) -> list[AmqpMessage]:
        """Every message now in the queue, in order (taken off the queue)."""
        connection = rabbit_connection()
        try:
            channel = connection.channel()
            messages = []
            while True:
                method, properties, body = channel.basic_get(name, auto_ack=True)
                if method is None:
                    return messages
                messages.append(AmqpMessage(properties, body))
        finally:
            connection.close()

    def is_durable(self, name: str) -> bool:
        """Redeclaring with other durability fails with 406, which tells which one it is."""
        import pika.exceptions

        connection = rabbit_connection()
        try:
            connection.channel().queue_declare(name, durable=True)
            return True
        except pika.exceptions.ChannelClosedByBroker as error:
            assert error.reply_code == 406
            return False
        finally:
            if connection.is_open:
                connection.close()

    def delete(self, name: str) -> None:
        connection = rabbit_connection()
        try:
            connection.channel().queue_delete(name)
        finally:
            connection.close()

    def delete_all(self) -> None:
        connection = rabbit_connection()
        try:
            channel = connection.channel()
            for name in self.names:
                channel.queue_delete(name)
        finally:
            connection.close()


@pytest.fixture
def rabbitmq() -> Iterator[RabbitQueues]:
    try:
        rabbit_connection().close()
    except Exception as error:
        reason = f"no RabbitMQ at {LOCALHOST}:5672 ({type(error).__name__})"
        if os.environ.get("VIPE_REQUIRE_RABBITMQ") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    queues = RabbitQueues()
    yield queues
    queues.delete_all()


def rabbit_publisher(queue: str, **fields: Any) -> dict[str, Any]:
    return {
        "Type": "RabbitMQ",
        "Protocol": "amqp",
        "Host": RABBIT["host"],
        "Port": RABBIT["port"],
        "VirtualHost": "/",
        "Queue": queue,
        "CredentialsName": RABBIT["user"],
        "CredentialsSecret": RABBIT["password"],
        **fields,
    }


class TlsFront:
    """Accepts TLS on 127.0.0.1 and forwards the plain bytes to an upstream port."""

    def __init__(self, cert_file: Path, key_file: Path, upstream: tuple[str, int]):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(cert_file), str(key_file))
        self.upstream = upstream
        self.listener = socket.create_server((LOCALHOST, 0))
        self.port = self.listener.getsockname()[1]
        self.handshake_failures = 0
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(10)
        try:
            secure = self.context.wrap_socket(client, server_side=True)
        except (ssl.SSLError, OSError):
            self.handshake_failures += 1
            client.close()
            return
        upstream = socket.create_connection(self.upstream, timeout=10)
        try:
            while not self._stop.is_set():
                ready = (
                    [secure]
                    if secure.pending()
                    else select.select([secure, upstream], [], [], 0.5)[0]
                )
                for sock in ready:
                    try:
                        data = sock.recv(65536)
                    except ssl.SSLWantReadError:
                        continue
                    if not data:
                        return
                    (upstream if sock is secure else secure).sendall(data)
        except OSError:
            return
        finally:
            for sock in (secure, upstream):
                with contextlib.suppress(OSError):
                    sock.close()

    def close(self) -> None:
        self._stop.set()
        self.listener.close()


# ------------------------------------------------------------------------------ SQS (moto)


def receive_all(client, queue_url: str, count: int, timeout: float = 15) -> list[dict]:
    """Take `count` messages off the queue (deleting each batch: FIFO groups stay locked while
    their messages are in flight)."""
    messages: list[dict] = []
    deadline = time.monotonic() + timeout
    while len(messages) < count and time.monotonic() < deadline:
        batch = client.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            MessageAttributeNames=["All"],
            AttributeNames=["All"],
            WaitTimeSeconds=1,
        ).get("Messages", [])
        for message in batch:
            client.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
        messages += batch
    return messages


@pytest.fixture
def sqs_endpoint(moto_server, monkeypatch):
    """The publishers talk to moto (`VIPE_SQS_ENDPOINT_URL`); returns a client for the test."""
    monkeypatch.setenv("VIPE_SQS_ENDPOINT_URL", moto_server.endpoint)
    return moto_server.client("sqs")


# ------------------------------------------------------------------------------ Service Bus


class FakeServiceBus:
    """Stands in for the Service Bus transport: `from_connection_string` returns a client whose
    queue sender records the `ServiceBusMessage`s it is given. `failures` lists what the next
    sends do, in turn: an exception to raise, or None to succeed."""

    def __init__(self, failures: list[BaseException | None] | None = None):
        self.failures = list(failures or [])
        self.connection_strings: list[str] = []
        self.client_options: list[dict[str, Any]] = []
        self.queue_names: list[str] = []
        self.sent: list[Any] = []  # ServiceBusMessage
        self.send_calls = 0
        self.closed = 0

    def from_connection_string(self, conn_str: str, **options: Any) -> Any:
        self.connection_strings.append(conn_str)
        self.client_options.append(options)
        bus = self

        class Sender:
            def send_messages(self, message: Any, timeout: float | None = None) -> None:
                bus.send_calls += 1
                failure = bus.failures.pop(0) if bus.failures else None
                if failure is not None:
                    raise failure
                bus.sent.append(message)

            def close(self) -> None:
                bus.closed += 1

        class Client:
            def get_queue_sender(self, queue_name: str) -> Sender:
                bus.queue_names.append(queue_name)
                return Sender()

            def close(self) -> None:
                bus.closed += 1

        return Client()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(b"".join(m.body)) for m in self.sent]


def install_fake_service_bus(monkeypatch: pytest.MonkeyPatch, bus: FakeServiceBus) -> None:
    from azure.servicebus import ServiceBusClient

    monkeypatch.setattr(
        ServiceBusClient, "from_connection_string", staticmethod(bus.from_connection_string)
    )


SERVICE_BUS_KEY = "c2VydmljZS1idXMta2V5LW5vdC1yZWFs/Zm9yLXRlc3RzLW9ubHk="


def service_bus_connection(entity_path: str | None = None) -> str:
    text = (
        "Endpoint=sb://vipe-test.servicebus.windows.net/;"
        f"SharedAccessKeyName=send;SharedAccessKey={SERVICE_BUS_KEY}"
    )
    return text + (f";EntityPath={entity_path}" if entity_path else "")
