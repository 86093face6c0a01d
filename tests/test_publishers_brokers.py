"""Publishers against real destinations on 127.0.0.1: the machine's RabbitMQ (plain, and
amqps through a TLS front), SQS in moto's server mode, FTP and FTPS (pyftpdlib), and a webhook
receiver (http.server). Each gets a job's sequence of events from an `EventEmitter`."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import socket
import time
import uuid
from typing import Any

import pytest
from publisher_helpers import (
    EXTERNAL,
    RABBIT,
    TlsFront,
    as_json,
    check_events,
    check_no_secret,
    emit_job_events,
    job_dict,
    rabbit_publisher,
    receive_all,
    start_webhook,
)

from engine.events import EventEmitter
from engine.publishers import Publisher, RetryPolicy, open_hub
from engine.validation import validate_job

FAST = RetryPolicy(attempts=3, initial_delay=0.05, max_delay=0.2)
HOOK_SECRET = "hmac-Key-for-webhooks-42"


@pytest.fixture(autouse=True)
def short_timeouts(monkeypatch):
    monkeypatch.setattr(Publisher, "timeout_seconds", 5.0)


def publish_sequence(job, service_key=None, policy: RetryPolicy = FAST):
    """Emit a job's events into a hub for `job`'s publishers; close it. -> (events, all ok)."""
    job_id = str(uuid.uuid4())
    hub = open_hub(job, service_key, job_id=job_id, policy=policy)
    emitter = EventEmitter(job_id, "tenant-1", EXTERNAL, [hub])
    emit_job_events(emitter)
    ok = hub.close(timeout=30)
    return emitter.history, ok


def make_job(tmp_path, *publishers: dict[str, Any]):
    return validate_job(job_dict(tmp_path, list(publishers))).job


# ------------------------------------------------------------------------------ RabbitMQ


def test_rabbitmq_declares_a_missing_queue_durable_and_delivers_in_order(
    rabbitmq, tmp_path, caplog
):
    queue = rabbitmq.new_name()
    job = make_job(tmp_path, rabbit_publisher(queue))
    with caplog.at_level(logging.DEBUG, logger="engine.publishers"):
        sent, ok = publish_sequence(job)
    assert ok
    messages = rabbitmq.read(queue)
    check_events([m.event for m in messages], sent)
    for message, event in zip(messages, sent, strict=True):
        props = message.properties
        assert props.type == event["MessageType"]
        assert props.content_type == "application/json"
        assert props.delivery_mode == 2  # persistent
        assert props.app_id == "vipe"
        assert props.message_id.startswith(event["JobId"])
    assert len({m.properties.message_id for m in messages}) == len(messages)
    assert rabbitmq.is_durable(queue)
    check_no_secret([raw for m in messages for raw in m.raw()] + [caplog.text], job.secrets)


def test_rabbitmq_uses_an_existing_queue_as_it_is(rabbitmq, tmp_path):
    queue = rabbitmq.new_name()
    # Arguments the publisher would not choose itself: declaring it again with others fails.
    rabbitmq.declare(queue, durable=False, arguments={"x-max-length": 1000})
    job = make_job(tmp_path, rabbit_publisher(queue))
    sent, ok = publish_sequence(job)
    assert ok
    check_events([m.event for m in rabbitmq.read(queue)], sent)
    assert not rabbitmq.is_durable(queue)


def test_rabbitmq_wrong_password_gives_up_at_once_without_leaking_it(rabbitmq, tmp_path, caplog):
    queue = rabbitmq.new_name()
    job = make_job(tmp_path, rabbit_publisher(queue, CredentialsSecret="wrong-Password-77"))
    with caplog.at_level(logging.WARNING, logger="engine.publishers"):
        _, ok = publish_sequence(job)
    assert not ok
    assert "login refused" in caplog.text and "giving up on this publisher" in caplog.text
    assert "wrong-Password-77" not in caplog.text


def test_rabbitmq_amqps_verifies_the_broker_certificate(
    rabbitmq, tmp_path, tls_files, monkeypatch, caplog
):
    front = TlsFront(tls_files.cert_file, tls_files.key_file, (RABBIT["host"], RABBIT["port"]))
    try:
        queue = rabbitmq.new_name()
        job = make_job(tmp_path, rabbit_publisher(queue, Protocol="amqps", Port=front.port))
        # Not trusted: the system store does not know the test CA.
        monkeypatch.delenv("VIPE_AMQP_CA_FILE", raising=False)
        with caplog.at_level(logging.WARNING, logger="engine.publishers"):
            _, ok = publish_sequence(job)
        assert not ok
        assert "TLS certificate not trusted" in caplog.text
        assert "VIPE_AMQP_CA_FILE" in caplog.text
        # Trusted through VIPE_AMQP_CA_FILE: delivered over TLS.
        monkeypatch.setenv("VIPE_AMQP_CA_FILE", str(tls_files.ca_file))
        sent, ok = publish_sequence(job)
        assert ok
        check_events([m.event for m in rabbitmq.read(queue)], sent)
    finally:
        front.close()


def test_rabbitmq_reconnects_after_the_broker_drops_the_connection(rabbitmq, tmp_path):
    """A connection the broker closed (as after missed heartbeats) is replaced at once."""
    queue = rabbitmq.new_name()
    job = make_job(tmp_path, rabbit_publisher(queue))
    hub = open_hub(job, None, job_id="job-r", policy=FAST)
    (publisher,) = hub.publishers
    emitter = EventEmitter("job-r", "tenant-1", EXTERNAL, [hub])
    emitter.emit("JobCreated")
    deadline = time.monotonic() + 5
    while hub.stats()[0]["Delivered"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    # End the TCP stream under the idle connection, as a broker or a NAT box would.
    publisher._connection._impl._transport._sock.shutdown(socket.SHUT_RDWR)
    emitter.emit("JobSuccess")
    assert hub.close(timeout=10)
    check_events([m.event for m in rabbitmq.read(queue)], emitter.history)


def test_rabbitmq_queue_deleted_during_the_job_is_declared_again(rabbitmq, tmp_path, caplog):
    """Messages are mandatory and confirmed: one that no queue takes is not silently lost but
    retried, after the queue was checked (and declared) again."""
    queue = rabbitmq.new_name()
    job = make_job(tmp_path, rabbit_publisher(queue))
    hub = open_hub(job, None, job_id="job-d", policy=FAST)
    emitter = EventEmitter("job-d", "tenant-1", EXTERNAL, [hub])
    emitter.emit("JobCreated")
    deadline = time.monotonic() + 5
    while hub.stats()[0]["Delivered"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    rabbitmq.delete(queue)  # an operator cleans up while the job runs
    emitter.emit("EncodingProgress", Progress=50)
    emitter.emit("JobSuccess")
    with caplog.at_level(logging.WARNING, logger="engine.publishers"):
        assert hub.close(timeout=10)
    assert "not routed to a queue" in caplog.text
    check_events([m.event for m in rabbitmq.read(queue)], emitter.history[1:])
    assert rabbitmq.is_durable(queue)


# ------------------------------------------------------------------------------ SQS (moto)


def sqs_job(tmp_path, moto_server, queue_url: str, secret: str | None = None):
    return make_job(
        tmp_path,
        {
            "Type": "AmazonSqs",
            "QueueUrl": queue_url,
            "Region": moto_server.region,
            "CredentialsName": moto_server.access_key,
            "CredentialsSecret": secret or moto_server.secret_key,
        },
    )


def test_sqs_fifo_queue_gets_every_event_in_order(moto_server, sqs_endpoint, tmp_path, caplog):
    name = f"vipe-{uuid.uuid4().hex[:10]}.fifo"
    url = sqs_endpoint.create_queue(QueueName=name, Attributes={"FifoQueue": "true"})["QueueUrl"]
    job = sqs_job(tmp_path, moto_server, url)
    with caplog.at_level(logging.DEBUG, logger="engine.publishers"):
        sent, ok = publish_sequence(job)
    assert ok
    messages = receive_all(sqs_endpoint, url, len(sent))
    check_events([json.loads(m["Body"]) for m in messages], sent)
    for message, event in zip(messages, sent, strict=True):
        assert message["MessageAttributes"]["MessageType"] == {
            "StringValue": event["MessageType"],
            "DataType": "String",
        }
        assert message["Attributes"]["MessageGroupId"] == event["JobId"]
    check_no_secret([json.dumps(m) for m in messages] + [caplog.text], job.secrets)


def test_sqs_standard_queue_gets_every_event(moto_server, sqs_endpoint, tmp_path):
    url = sqs_endpoint.create_queue(QueueName=f"vipe-{uuid.uuid4().hex[:10]}")["QueueUrl"]
    job = sqs_job(tmp_path, moto_server, url)
    sent, ok = publish_sequence(job)
    assert ok
    received = [m["Body"] for m in receive_all(sqs_endpoint, url, len(sent))]
    # A standard queue promises no order (use a FIFO queue for that): compare as sets.
    canonical = sorted(json.dumps(e, sort_keys=True) for e in as_json(sent))
    assert sorted(json.dumps(json.loads(b), sort_keys=True) for b in received) == canonical


def test_sqs_wrong_secret_key_gives_up_without_leaking_it(
    moto_server, sqs_endpoint, tmp_path, caplog
):
    url = sqs_endpoint.create_queue(QueueName=f"vipe-{uuid.uuid4().hex[:10]}")["QueueUrl"]
    job = sqs_job(tmp_path, moto_server, url, secret="not-The-Secret-Key-1234567890")
    with caplog.at_level(logging.WARNING, logger="engine.publishers"):
        _, ok = publish_sequence(job)
    assert not ok
    assert "giving up on this publisher" in caplog.text
    assert "not-The-Secret-Key-1234567890" not in caplog.text


# ------------------------------------------------------------------------------ FTP / FTPS

FILE_NAME = re.compile(r"^\d{8}T\d{6}\.\d{3}Z_([A-Za-z]+)\.json$")


@pytest.mark.parametrize("mode", ["ftp_plain", "ftp_explicit", "ftp_implicit"])
def test_ftps_writes_one_sortable_file_per_event(
    request, mode, tls_files, monkeypatch, tmp_path, caplog
):
    server = request.getfixturevalue(mode)
    monkeypatch.setenv("VIPE_FTPS_CA_FILE", str(tls_files.ca_file))
    folder = f"events-{uuid.uuid4().hex[:8]}"
    job = make_job(
        tmp_path,
        {
            "Type": "Ftps",
            "UriPath": server.uri(folder),
            "CredentialsName": server.user,
            "CredentialsSecret": server.password,
        },
    )
    with caplog.at_level(logging.DEBUG, logger="engine.publishers"):
        sent, ok = publish_sequence(job)
    assert ok
    files = sorted((server.root / folder).iterdir())
    names = [f.name for f in files]
    assert len(names) == len(sent), names  # nothing overwritten, no partial files left
    assert [FILE_NAME.match(n).group(1) for n in names] == [e["MessageType"] for e in sent]
    check_events([json.loads(f.read_bytes()) for f in files], sent)
    check_no_secret([f.read_bytes() for f in files] + names + [caplog.text], job.secrets)


# ------------------------------------------------------------------------------ webhook


def webhook_job(tmp_path, url: str, secret: str | None = HOOK_SECRET):
    spec: dict[str, Any] = {"Type": "Webhook", "Url": url}
    if secret:
        spec["CredentialsSecret"] = secret
    return make_job(tmp_path, spec)


def test_webhook_posts_signed_events_in_order(webhook, tmp_path, caplog):
    job = webhook_job(tmp_path, webhook.url)
    with caplog.at_level(logging.DEBUG, logger="engine.publishers"):
        sent, ok = publish_sequence(job)
    assert ok
    check_events(webhook.events(), sent)
    for delivery, event in zip(webhook.deliveries, sent, strict=True):
        assert delivery.path == "/hooks/vipe?token=abc"
        assert delivery.headers["Content-Type"].startswith("application/json")
        assert delivery.headers["X-Vipe-Event"] == event["MessageType"]
        # The receiver's check: HMAC-SHA256 of the raw body, keyed with the shared secret.
        expected = hmac.new(HOOK_SECRET.encode(), delivery.body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(delivery.headers["X-Vipe-Signature"], f"sha256={expected}")
    raw = [d.body for d in webhook.deliveries] + [json.dumps(d.headers) for d in webhook.deliveries]
    check_no_secret([*raw, caplog.text], job.secrets)
    assert "token=abc" not in caplog.text  # the query may hold a token: not logged


def test_webhook_signature_detects_a_changed_body(webhook, tmp_path):
    job = webhook_job(tmp_path, webhook.url)
    publish_sequence(job)
    delivery = webhook.deliveries[0]
    forged = delivery.body.replace(b"JobCreated", b"JobSuccess")
    digest = hmac.new(HOOK_SECRET.encode(), forged, hashlib.sha256).hexdigest()
    assert delivery.headers["X-Vipe-Signature"] != f"sha256={digest}"


def test_webhook_503_twice_then_200_gets_every_event_once_in_order(tmp_path):
    receiver = start_webhook(statuses=[503, 503])
    try:
        job = webhook_job(tmp_path, receiver.url)
        sent, ok = publish_sequence(job)
        assert ok
        check_events(receiver.events(), sent)
        assert [status for status, _ in receiver.attempts[:3]] == [503, 503, 200]
        assert len(receiver.attempts) == len(sent) + 2
    finally:
        receiver.stop()


def test_webhook_4xx_is_not_retried_and_the_next_event_goes_out(tmp_path, caplog):
    receiver = start_webhook(statuses=[200, 422])
    try:
        job = webhook_job(tmp_path, receiver.url, secret=None)
        with caplog.at_level(logging.WARNING, logger="engine.publishers"):
            sent, ok = publish_sequence(job)
        assert not ok
        check_events(receiver.events(), [e for i, e in enumerate(sent) if i != 1])
        assert len(receiver.attempts) == len(sent)  # the 422 was not repeated
        assert "answered 422" in caplog.text
        assert "X-Vipe-Signature" not in receiver.attempts[0][1].headers  # no secret, no sig
    finally:
        receiver.stop()


def test_webhook_timeout_is_retried_and_the_delivery_id_marks_the_repeat(tmp_path, monkeypatch):
    monkeypatch.setattr(Publisher, "timeout_seconds", 0.5)
    receiver = start_webhook(delays=[1.2])  # the first answer comes after the client gave up
    try:
        job = webhook_job(tmp_path, receiver.url)
        sent, ok = publish_sequence(job)
        assert ok
        ids = [d.headers["X-Vipe-Delivery"] for d in receiver.deliveries]
        assert ids[0] == ids[1]  # at least once: the receiver saw the first event twice
        unique = {i: d for i, d in zip(ids, receiver.deliveries, strict=True)}
        check_events([d.event for d in unique.values()], sent)
    finally:
        receiver.stop()


def test_webhook_redirect_is_not_followed(tmp_path, caplog):
    receiver = start_webhook(statuses=[307])
    try:
        job = webhook_job(tmp_path, receiver.url)
        with caplog.at_level(logging.WARNING, logger="engine.publishers"):
            _, ok = publish_sequence(job)
        assert not ok
        assert len(receiver.attempts) == 1
        assert "redirects are not followed" in caplog.text
    finally:
        receiver.stop()
