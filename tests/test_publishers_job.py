"""A real (tiny) job through `run_job` with a `PublisherHub` as its event sink: RabbitMQ, SQS
(moto), FTP, a webhook and a Service Bus queue (fake transport) get every event in order, with
plain and with Encrypted credentials; a publisher at a dead port never fails the job."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mediagen import make_media
from publisher_helpers import (
    FakeServiceBus,
    RabbitQueues,
    WebhookReceiver,
    check_events,
    check_no_secret,
    dead_port,
    install_fake_service_bus,
    job_dict,
    rabbit_publisher,
    receive_all,
    service_bus_connection,
)

import engine.pipeline.runner
import engine.publishers
from drm.credentials import ServiceKey, encrypt_for_certificate
from engine.errors import JobValidationError
from engine.pipeline import run_job
from engine.publishers import Publisher, RetryPolicy, open_hub
from engine.validation import validate_job

FAST = RetryPolicy(attempts=3, initial_delay=0.05, max_delay=0.2)
HOOK_SECRET = "job-Hook-Secret-31337"


@pytest.fixture(autouse=True)
def short_timeouts(monkeypatch):
    monkeypatch.setattr(Publisher, "timeout_seconds", 5.0)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("publisher-job") / "source.mp4"
    return make_media(path, duration=2, width=160, height=90)


def job_root(tmp_path: Path, source: Path) -> Path:
    (tmp_path / "in").mkdir()
    shutil.copy(source, tmp_path / "in" / source.name)
    return tmp_path


@dataclass
class Destinations:
    """The four real destinations of one test, and how to read back what they got."""

    rabbit: RabbitQueues
    queue: str
    sqs: Any
    sqs_url: str
    moto: Any
    ftp: Any
    folder: str
    webhook: WebhookReceiver

    def publishers(self, protect=lambda secret: secret) -> list[dict[str, Any]]:
        protection = {} if protect("x") == "x" else {"CredentialsProtection": "Encrypted"}
        return [
            {
                **rabbit_publisher(self.queue),
                "CredentialsSecret": protect("guest"),
                **protection,
            },
            {
                "Type": "AmazonSqs",
                "QueueUrl": self.sqs_url,
                "Region": self.moto.region,
                "CredentialsName": self.moto.access_key,
                "CredentialsSecret": protect(self.moto.secret_key),
                **protection,
            },
            {
                "Type": "Ftps",
                "UriPath": self.ftp.uri(self.folder),
                "CredentialsName": self.ftp.user,
                "CredentialsSecret": protect(self.ftp.password),
                **protection,
            },
            {
                "Type": "Webhook",
                "Url": self.webhook.url,
                "CredentialsSecret": protect(HOOK_SECRET),
                **protection,
            },
        ]

    def received(self, count: int) -> dict[str, tuple[list[dict], list[bytes | str]]]:
        """Per destination: (events, raw messages with every header/attribute)."""
        amqp = self.rabbit.read(self.queue)
        sqs = receive_all(self.sqs, self.sqs_url, count)
        files = sorted((self.ftp.root / self.folder).iterdir())
        hooks = self.webhook.deliveries
        return {
            "RabbitMQ": ([m.event for m in amqp], [r for m in amqp for r in m.raw()]),
            "AmazonSqs": ([json.loads(m["Body"]) for m in sqs], [json.dumps(m) for m in sqs]),
            "Ftps": (
                [json.loads(f.read_bytes()) for f in files],
                [f.read_bytes() for f in files] + [f.name for f in files],
            ),
            "Webhook": (
                [d.event for d in hooks],
                [d.body for d in hooks] + [json.dumps(d.headers) for d in hooks],
            ),
        }


@pytest.fixture
def destinations(rabbitmq, moto_server, sqs_endpoint, ftp_plain, webhook) -> Destinations:
    name = f"vipe-job-{uuid.uuid4().hex[:10]}.fifo"
    url = sqs_endpoint.create_queue(QueueName=name, Attributes={"FifoQueue": "true"})["QueueUrl"]
    return Destinations(
        rabbit=rabbitmq,
        queue=rabbitmq.new_name(),
        sqs=sqs_endpoint,
        sqs_url=url,
        moto=moto_server,
        ftp=ftp_plain,
        folder=f"job-events-{uuid.uuid4().hex[:8]}",
        webhook=webhook,
    )


def run_with_hub(job: dict, root: Path, service_key: ServiceKey | None):
    """run_job, whose runner opens the job's own publisher hub (captured here, with short
    retries, to read its stats); `emitted` records what the job emitted, to compare."""
    job_id = str(uuid.uuid4())
    hubs = []

    def open_fast_hub(*args, **options):
        hubs.append(open_hub(*args, **{**options, "policy": FAST}))
        return hubs[-1]

    emitted: list[dict] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine.pipeline.runner, "open_hub", open_fast_hub)
        report = run_job(job, on_event=emitted.append, job_id=job_id, data_dir=root / "data")
    assert len(hubs) == 1, "the runner opens exactly one hub per job"
    delivered_all = hubs[0].close(timeout=30)  # closed by the runner already: only reports
    return report, emitted, hubs[0], delivered_all


def test_a_real_job_reaches_every_publisher_and_a_dead_one_fails_nothing(
    destinations, source, tmp_path, caplog
):
    root = job_root(tmp_path, source)
    dead = rabbit_publisher("nobody-listens", Port=dead_port())
    job = job_dict(root, [*destinations.publishers(), dead])
    with caplog.at_level(logging.INFO, logger="engine.publishers"):
        report, emitted, hub, delivered_all = run_with_hub(job, root, None)

    assert report["Success"], report
    names = [e["MessageType"] for e in emitted]
    assert names[0] == "JobCreated" and names[-1] == "JobSuccess"
    assert "EncodingFinished" in names and "ContentPublished" in names
    assert not delivered_all  # the dead one
    stats = hub.stats()
    assert [s["Delivered"] for s in stats[:4]] == [len(emitted)] * 4
    assert stats[4]["Delivered"] == 0 and stats[4]["GivenUp"]
    assert f"127.0.0.1:{job['MessagePublishers'][4]['Port']}" in caplog.text
    assert "giving up on this publisher" in caplog.text
    assert f"all {len(emitted)} events delivered" in caplog.text

    secrets = validate_job(job).job.secrets
    for destination, (events, raw) in destinations.received(len(emitted)).items():
        check_events(events, emitted, destination)
        check_no_secret(raw, secrets)
    check_no_secret([caplog.text], secrets)


def test_encrypted_credentials_decrypt_and_work(
    destinations, source, tmp_path, monkeypatch, caplog
):
    root = job_root(tmp_path, source)
    service_key = ServiceKey.load_or_create(root / "data")  # the data dir run_job uses too

    def protect(secret: str) -> str:
        return encrypt_for_certificate(secret, service_key.certificate_base64)

    bus = FakeServiceBus()
    install_fake_service_bus(monkeypatch, bus)
    service_bus = {
        "Type": "AzureServiceBusQueue",
        "Connection": protect(service_bus_connection("job-events")),
        "CredentialsProtection": "Encrypted",
    }
    job = job_dict(root, [*destinations.publishers(protect), service_bus])
    with caplog.at_level(logging.DEBUG, logger="engine.publishers"):
        report, emitted, _, delivered_all = run_with_hub(job, root, service_key)

    assert report["Success"], report
    assert delivered_all
    received = destinations.received(len(emitted))
    received["AzureServiceBusQueue"] = (bus.events(), [repr(m) for m in bus.sent])
    clear = ["guest", destinations.moto.secret_key, destinations.ftp.password, HOOK_SECRET]
    clear.append(service_bus_connection("job-events"))
    ciphertexts = validate_job(job).job.secrets
    for destination, (events, raw) in received.items():
        check_events(events, emitted, destination)
        check_no_secret(raw, clear + ciphertexts)
    check_no_secret([caplog.text], clear + ciphertexts)
    # The webhook was signed with the decrypted key.
    for delivery in destinations.webhook.deliveries:
        digest = hmac.new(HOOK_SECRET.encode(), delivery.body, hashlib.sha256).hexdigest()
        assert delivery.headers["X-Vipe-Signature"] == f"sha256={digest}"
    assert bus.connection_strings[0] == service_bus_connection("job-events")

    # One flipped byte in a ciphertext: refused before anything runs, naming the field only.
    sqs = job["MessagePublishers"][1]
    raw = bytearray(base64.b64decode(sqs["CredentialsSecret"]))
    raw[7] ^= 0x01
    sqs["CredentialsSecret"] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(JobValidationError) as caught:
        open_hub(validate_job(job).job, service_key)
    assert caught.value.errors[0].field == "MessagePublishers[1].CredentialsSecret"
    for value in [*clear, *validate_job(job).job.secrets]:
        assert value not in str(caught.value)
