"""Message publishers held to the egress policy (`build_publishers`/`open_hub` with `egress`).

With a restricted policy a publisher aimed at a loopback listener is refused before it connects
(the listener sees no connection): a fatal PublisherError naming `MessagePublishers[i].<field>`
and the rule, so the hub gives up on it at once. A network that admits 127.0.0.0/8 lets the same
publishers deliver to real servers. Without `egress` nothing changes (the other publisher tests
run that way).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from egress_helpers import RULE, Listener
from publisher_helpers import (
    EXTERNAL,
    FakeServiceBus,
    check_events,
    emit_job_events,
    install_fake_service_bus,
    job_dict,
    rabbit_publisher,
    receive_all,
)

from engine.events import EventEmitter
from engine.publishers import (
    Message,
    Publisher,
    PublisherError,
    RetryPolicy,
    build_publishers,
    open_hub,
)
from engine.validation import validate_job
from storage.egress import UNRESTRICTED, EgressPolicy

RESTRICTED = EgressPolicy(restricted=True)
LOOPBACK_ALLOWED = EgressPolicy.from_cidrs(["127.0.0.0/8"])
FAST = RetryPolicy(attempts=3, initial_delay=0.05, max_delay=0.2)
MESSAGE = Message("job-1", 1, "JobCreated", "2026-01-01T00:00:00+00:00", b'{"MessageType":"X"}')


@pytest.fixture(autouse=True)
def short_timeouts(monkeypatch):
    monkeypatch.setattr(Publisher, "timeout_seconds", 5.0)


@pytest.fixture
def listener():
    server = Listener()
    yield server
    server.close()


def job_with(tmp_path, *publishers: dict[str, Any]):
    return validate_job(job_dict(tmp_path, list(publishers))).job


def refused_publish(publisher: Publisher, field: str, rule: str = "loopback") -> None:
    with pytest.raises(PublisherError) as caught:
        publisher.publish(MESSAGE)
    error = caught.value
    assert error.fatal and not error.retryable, str(error)
    assert f"MessagePublishers[0].{field}: " in str(error), str(error)
    assert f"is {rule}; {RULE}" in str(error) or f"which is {rule}; {RULE}" in str(error)


def publish_all(job, egress: EgressPolicy) -> tuple[list[dict[str, Any]], bool]:
    job_id = str(uuid.uuid4())
    hub = open_hub(job, None, job_id=job_id, policy=FAST, egress=egress)
    emitter = EventEmitter(job_id, "tenant-1", EXTERNAL, [hub])
    emit_job_events(emitter)
    return emitter.history, hub.close(timeout=30)


def test_publishers_are_unrestricted_unless_told(tmp_path):
    job = job_with(tmp_path, {"Type": "Webhook", "Url": "http://127.0.0.1:9/"})
    assert [p.egress for p in build_publishers(job, None)] == [UNRESTRICTED]
    assert [p.egress for p in build_publishers(job, None, RESTRICTED)] == [RESTRICTED]


# ------------------------------------------------------------------------------ webhook


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "2130706433", "0x7f.1", "127.1", "[::ffff:127.0.0.1]", "localhost"]
)
def test_webhook_to_a_loopback_listener_is_refused(listener, host, tmp_path):
    job = job_with(tmp_path, {"Type": "Webhook", "Url": f"http://{host}:{listener.port}/hook"})
    (publisher,) = build_publishers(job, None, RESTRICTED)
    refused_publish(publisher, "Url")
    assert listener.seen() == 0


def test_webhook_refused_through_the_hub_gives_up_at_once(listener, tmp_path):
    job = job_with(tmp_path, {"Type": "Webhook", "Url": f"http://127.0.0.1:{listener.port}/h"})
    _, ok = publish_all(job, RESTRICTED)
    assert not ok
    assert listener.seen() == 0


def test_webhook_to_the_metadata_address_is_refused(tmp_path):
    job = job_with(tmp_path, {"Type": "Webhook", "Url": "http://169.254.169.254/latest/"})
    (publisher,) = build_publishers(job, None, RESTRICTED)
    refused_publish(publisher, "Url", "link-local")


def test_webhook_allowed_with_an_admitting_network(webhook, tmp_path):
    job = job_with(tmp_path, {"Type": "Webhook", "Url": webhook.url})
    sent, ok = publish_all(job, LOOPBACK_ALLOWED)
    assert ok
    check_events(webhook.events(), sent)


# ------------------------------------------------------------------------------ RabbitMQ


def test_rabbitmq_to_a_loopback_listener_is_refused(listener, tmp_path):
    spec = rabbit_publisher("vipe-events", Host="127.0.0.1", Port=listener.port)
    (publisher,) = build_publishers(job_with(tmp_path, spec), None, RESTRICTED)
    refused_publish(publisher, "Host")
    assert listener.seen() == 0


def test_rabbitmq_allowed_with_an_admitting_network(rabbitmq, tmp_path):
    queue = rabbitmq.new_name()
    sent, ok = publish_all(job_with(tmp_path, rabbit_publisher(queue)), LOOPBACK_ALLOWED)
    assert ok
    check_events([m.event for m in rabbitmq.read(queue)], sent)


# ------------------------------------------------------------------------------ SQS


def test_sqs_to_a_loopback_listener_is_refused(listener, monkeypatch, tmp_path):
    monkeypatch.setenv("VIPE_SQS_ENDPOINT_URL", f"http://127.0.0.1:{listener.port}")
    spec = {
        "Type": "AmazonSqs",
        "QueueUrl": "https://sqs.us-east-1.amazonaws.com/123456789012/vipe-events",
        "CredentialsName": "AKIAEXAMPLE",
        "CredentialsSecret": "sqs-Secret-Value-42",
    }
    (publisher,) = build_publishers(job_with(tmp_path, spec), None, RESTRICTED)
    refused_publish(publisher, "QueueUrl")
    assert listener.seen() == 0


def test_sqs_allowed_with_an_admitting_network(sqs_endpoint, moto_server, tmp_path):
    queue_url = sqs_endpoint.create_queue(QueueName=f"vipe-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    spec = {
        "Type": "AmazonSqs",
        "QueueUrl": queue_url,
        "Region": moto_server.region,
        "CredentialsName": moto_server.access_key,
        "CredentialsSecret": moto_server.secret_key,
    }
    sent, ok = publish_all(job_with(tmp_path, spec), LOOPBACK_ALLOWED)
    assert ok
    messages = receive_all(sqs_endpoint, queue_url, len(sent))
    received = sorted((json.loads(m["Body"]) for m in messages), key=lambda e: e["Timestamp"])
    assert sorted(e["MessageType"] for e in received) == sorted(e["MessageType"] for e in sent)


# ------------------------------------------------------------------------------ Ftps


def test_ftps_publisher_to_a_loopback_listener_is_refused(listener, tmp_path):
    spec = {
        "Type": "Ftps",
        "UriPath": f"ftp://127.0.0.1:{listener.port}/events/",
        "CredentialsName": "vipe",
        "CredentialsSecret": "ftp-Secret-4711",
    }
    (publisher,) = build_publishers(job_with(tmp_path, spec), None, RESTRICTED)
    try:
        refused_publish(publisher, "UriPath")
    finally:
        publisher.close()
    assert listener.seen() == 0


def test_ftps_publisher_allowed_with_an_admitting_network(ftp_plain, tmp_path):
    folder = f"events-{uuid.uuid4().hex[:8]}"
    spec = {
        "Type": "Ftps",
        "UriPath": ftp_plain.uri(folder),
        "CredentialsName": ftp_plain.user,
        "CredentialsSecret": ftp_plain.password,
    }
    sent, ok = publish_all(job_with(tmp_path, spec), LOOPBACK_ALLOWED)
    assert ok
    files = sorted((ftp_plain.root / folder).glob("*.json"))
    check_events([json.loads(f.read_bytes()) for f in files], sent)


# ------------------------------------------------------------------------------ Service Bus


def test_service_bus_to_a_loopback_namespace_is_refused_before_the_sdk(monkeypatch, tmp_path):
    bus = FakeServiceBus()
    install_fake_service_bus(monkeypatch, bus)
    connection = "Endpoint=sb://127.0.0.1/;SharedAccessKeyName=send;SharedAccessKey=a2V5"
    spec = {"Type": "AzureServiceBusQueue", "Connection": connection, "Queue": "vipe-events"}
    (publisher,) = build_publishers(job_with(tmp_path, spec), None, RESTRICTED)
    refused_publish(publisher, "Connection")
    assert bus.connection_strings == []  # the SDK was never asked to connect
    (allowed,) = build_publishers(job_with(tmp_path, spec), None, LOOPBACK_ALLOWED)
    allowed.publish(MESSAGE)
    assert len(bus.sent) == 1
