"""The publisher hub (order, asynchrony, retries, giving up, close), the registry, building
publishers from a job (decrypting protected secrets) and the pieces of single publishers that
need no server (Ftps file names, the Service Bus message through a fake transport)."""

from __future__ import annotations

import importlib
import json
import logging
import sys
import threading
import time
from typing import Any

import pytest
from publisher_helpers import (
    EXTERNAL,
    FakeServiceBus,
    check_events,
    emit_job_events,
    install_fake_service_bus,
    job_dict,
    service_bus_connection,
)

from drm.credentials import ServiceKey, encrypt_for_certificate
from engine.errors import JobValidationError
from engine.events import EventEmitter
from engine.job import MessagePublisher, PublisherType
from engine.publishers import (
    REGISTRY,
    Message,
    Publisher,
    PublisherError,
    PublisherHub,
    PublisherSecrets,
    RetryPolicy,
    build_publishers,
    open_hub,
    publisher_class,
)
from engine.publishers.ftps import epoch_ms, file_time
from engine.validation import validate_job

FAST = RetryPolicy(attempts=3, initial_delay=0.02, max_delay=0.05)
SECRET = "hook-Secret-0815"


class Transient(PublisherError):
    def __init__(self, text: str = "broker away") -> None:
        super().__init__(text, retryable=True)


class ScriptedPublisher(Publisher):
    """Records what it is given; raises the scripted errors first (None: succeed)."""

    type = "Scripted"

    def __init__(
        self,
        script: list[BaseException | None] | None = None,
        *,
        always: BaseException | None = None,
        pause: float = 0.0,
        block: threading.Event | None = None,
        secret: str | None = SECRET,
        name: str = "Scripted test destination",
    ) -> None:
        spec = MessagePublisher(type=PublisherType.Webhook, url="http://127.0.0.1/")
        super().__init__(spec, PublisherSecrets(credentials_secret=secret))
        self.script = list(script or [])
        self.always = always
        self.pause = pause
        self.block = block
        self.calls: list[tuple[int, float]] = []  # (sequence, monotonic time) of every attempt
        self.delivered: list[Message] = []
        self.closed = False
        self.name = name

    def describe(self) -> str:
        return self.name

    def publish(self, message: Message) -> None:
        self.calls.append((message.sequence, time.monotonic()))
        if self.block is not None:
            self.block.wait(30)
        if self.pause:
            time.sleep(self.pause)
        if self.always is not None:
            raise self.always
        if self.script:
            error = self.script.pop(0)
            if error is not None:
                raise error
        self.delivered.append(message)

    def close(self) -> None:
        self.closed = True


def emitter_with(hub: PublisherHub) -> EventEmitter:
    return EventEmitter("job-1", "tenant-1", EXTERNAL, [hub])


def delivered_events(publisher: ScriptedPublisher) -> list[dict[str, Any]]:
    return [json.loads(m.body) for m in publisher.delivered]


# ------------------------------------------------------------------------------ the hub


def test_events_are_delivered_in_order_without_blocking_the_job():
    slow = ScriptedPublisher(pause=0.1)  # delivering all in line would take over a second
    hub = PublisherHub([slow], policy=FAST)
    emitter = emitter_with(hub)
    started = time.monotonic()
    emit_job_events(emitter)
    emitting = time.monotonic() - started
    assert emitting < 0.5, "hub(event) must only queue: the slow destination is not waited for"
    assert hub.close(timeout=10)
    check_events(delivered_events(slow), emitter.history)
    assert [m.sequence for m in slow.delivered] == list(range(1, len(emitter.history) + 1))
    assert len({m.message_id for m in slow.delivered}) == len(slow.delivered)
    assert slow.closed


def test_transient_failures_are_retried_with_backoff_and_order_is_kept():
    policy = RetryPolicy(attempts=4, initial_delay=0.05, max_delay=1.0)
    flaky = ScriptedPublisher([Transient(), Transient(), None, Transient(), None])
    hub = PublisherHub([flaky], policy=policy)
    emitter = emitter_with(hub)
    emit_job_events(emitter)
    assert hub.close(timeout=10)
    check_events(delivered_events(flaky), emitter.history)
    first = [t for sequence, t in flaky.calls if sequence == 1]
    assert len(first) == 3
    assert first[1] - first[0] >= 0.05 and first[2] - first[1] >= 0.1  # exponential
    assert hub.stats()[0]["Delivered"] == len(emitter.history)


def test_a_dead_publisher_is_given_up_after_the_bound_and_the_others_continue(caplog):
    dead = ScriptedPublisher(always=Transient("connection refused"), name="dead")
    alive = ScriptedPublisher(name="alive")
    hub = PublisherHub([dead, alive], policy=FAST, job_id="job-1")
    emitter = emitter_with(hub)
    with caplog.at_level(logging.WARNING, logger="engine.publishers"):
        emit_job_events(emitter)
        assert not hub.close(timeout=10)
    check_events(delivered_events(alive), emitter.history)
    # The first event was tried `attempts` times, then the hub gave up on that publisher.
    assert [sequence for sequence, _ in dead.calls] == [1] * FAST.attempts
    stats = {s["Publisher"]: s for s in hub.stats()}
    assert stats["dead"]["GivenUp"] and not stats["alive"]["GivenUp"]
    assert stats["alive"]["Delivered"] == len(emitter.history)
    assert "giving up on this publisher" in caplog.text
    assert "job job-1:" in caplog.text
    assert dead.closed and alive.closed


def test_a_permanent_failure_drops_that_event_only(caplog):
    picky = ScriptedPublisher([None, PublisherError("answered 400")])
    hub = PublisherHub([picky], policy=FAST)
    emitter = emitter_with(hub)
    with caplog.at_level(logging.WARNING, logger="engine.publishers"):
        emit_job_events(emitter)
        assert not hub.close(timeout=10)
    expected = [e for i, e in enumerate(emitter.history) if i != 1]
    check_events(delivered_events(picky), expected)
    assert [s for s, _ in picky.calls].count(2) == 1  # not retried
    assert "refused Warning #2 (not retried): answered 400" in caplog.text


def test_an_unexpected_exception_counts_as_transient():
    buggy = ScriptedPublisher([RuntimeError("socket went away"), None])
    hub = PublisherHub([buggy], policy=FAST)
    emitter = emitter_with(hub)
    emit_job_events(emitter)
    assert hub.close(timeout=10)
    check_events(delivered_events(buggy), emitter.history)


def test_close_stops_retrying_at_its_deadline(caplog):
    patient = RetryPolicy(attempts=10, initial_delay=5.0, max_delay=30.0)
    dead = ScriptedPublisher(always=Transient())
    hub = PublisherHub([dead], policy=patient)
    emitter = emitter_with(hub)
    emit_job_events(emitter)
    time.sleep(0.05)  # the first attempt failed; the lane now waits 5 s
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="engine.publishers"):
        assert not hub.close(timeout=0.5)
    assert time.monotonic() - started < 2.5  # not the 5 s backoff
    assert "no time left" in caplog.text
    assert hub.stats()[0]["Undelivered"] == len(emitter.history)


def test_close_returns_when_a_send_hangs(caplog):
    release = threading.Event()
    stuck = ScriptedPublisher(block=release)
    hub = PublisherHub([stuck], policy=FAST)
    hub({"JobId": "job-1", "MessageType": "JobCreated", "Timestamp": "2026-11-28T17:48:12Z"})
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="engine.publishers"):
        assert not hub.close(timeout=0.3)
    assert time.monotonic() - started < 2.0
    assert "still busy at close" in caplog.text
    release.set()


def test_events_after_close_are_dropped_and_close_is_idempotent(caplog):
    publisher = ScriptedPublisher()
    hub = PublisherHub([publisher], policy=FAST)
    assert hub.close(timeout=5)
    with caplog.at_level(logging.WARNING, logger="engine.publishers"):
        hub({"JobId": "job-1", "MessageType": "Late", "Timestamp": "2026-11-28T17:48:12Z"})
    assert "Late after close" in caplog.text
    assert hub.close(timeout=5)
    assert publisher.delivered == []


def test_a_hub_without_publishers_is_a_harmless_sink():
    with PublisherHub([], policy=FAST) as hub:
        emit_job_events(emitter_with(hub))
    assert hub.close() and hub.stats() == []


def test_secrets_are_masked_in_events_and_in_log_lines(caplog):
    leaky_error = Transient(f"server said: bad key {SECRET}")
    publisher = ScriptedPublisher([leaky_error, None])
    hub = PublisherHub([publisher], policy=FAST, secrets=["Other-Secret-123"])
    with caplog.at_level(logging.DEBUG, logger="engine.publishers"):
        hub(
            {
                "JobId": "job-1",
                "MessageType": "Warning",
                "Timestamp": "2026-11-28T17:48:12.000+00:00",
                "Message": f"oops {SECRET} and Other-Secret-123",
                "Nested": [{"Key": SECRET}],
            }
        )
        assert hub.close(timeout=5)
    body = publisher.delivered[0].body.decode()
    assert SECRET not in body and "Other-Secret-123" not in body
    assert json.loads(body)["Nested"] == [{"Key": "***"}]
    assert "held a secret of the job; it is masked" in caplog.text
    assert SECRET not in caplog.text and "Other-Secret-123" not in caplog.text
    assert "bad key ***" in caplog.text


def test_retry_policy_delays_and_environment(monkeypatch):
    policy = RetryPolicy(attempts=5, initial_delay=0.5, max_delay=3.0)
    assert [policy.delay(n) for n in range(1, 5)] == [0.5, 1.0, 2.0, 3.0]
    monkeypatch.setenv("VIPE_PUBLISH_ATTEMPTS", "2")
    monkeypatch.setenv("VIPE_PUBLISH_BACKOFF_SECONDS", "0.01")
    monkeypatch.setenv("VIPE_PUBLISH_MAX_BACKOFF_SECONDS", "0.02")
    assert RetryPolicy.from_env() == RetryPolicy(attempts=2, initial_delay=0.01, max_delay=0.02)
    default = RetryPolicy()
    assert sum(default.delay(n) for n in range(1, default.attempts)) < 90  # bounded


# ------------------------------------------------------------------------------ registry


def test_every_contract_type_has_a_publisher_class():
    assert set(REGISTRY) == {t.value for t in PublisherType}
    for type_name in REGISTRY:
        cls = publisher_class(type_name)
        assert issubclass(cls, Publisher)
        assert cls.type == type_name
        assert cls.__name__.endswith("Publisher")


def test_a_missing_sdk_names_the_extra_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "azure.servicebus", None)  # import now fails
    monkeypatch.delitem(sys.modules, "engine.publishers.servicebus", raising=False)
    with pytest.raises(PublisherError) as caught:
        publisher_class("AzureServiceBusQueue")
    assert str(caught.value).startswith("AzureServiceBusQueue needs `pip install vipe[publishers]`")
    job = validate_job(
        job_dict(
            tmp_path,
            [{"Type": "AzureServiceBusQueue", "Connection": service_bus_connection("events")}],
        )
    ).job
    with pytest.raises(JobValidationError) as invalid:
        build_publishers(job, None)
    assert invalid.value.errors[0].field == "MessagePublishers[0].Type"
    assert "pip install vipe[publishers]" in invalid.value.errors[0].message


def test_unknown_type_is_a_clear_error():
    with pytest.raises(PublisherError, match="no message publisher of type 'Kafka'"):
        publisher_class("Kafka")


# ------------------------------------------------------------------------------ building


@pytest.fixture(scope="module")
def service_key(tmp_path_factory) -> ServiceKey:
    return ServiceKey.load_or_create(tmp_path_factory.mktemp("data"))


def encrypted_job(tmp_path, service_key: ServiceKey, tamper: str | None = None):
    certificate = service_key.certificate_base64
    hook = encrypt_for_certificate(SECRET, certificate)
    connection = encrypt_for_certificate(service_bus_connection("events"), certificate)
    if tamper == "CredentialsSecret":
        hook = tampered(hook)
    if tamper == "Connection":
        connection = tampered(connection)
    publishers = [
        {"Type": "Webhook", "Url": "http://127.0.0.1:9/"},
        {
            "Type": "Webhook",
            "Url": "http://127.0.0.1:9/hook",
            "CredentialsSecret": hook,
            "CredentialsProtection": "Encrypted",
        },
        {
            "Type": "AzureServiceBusQueue",
            "Connection": connection,
            "CredentialsProtection": "Encrypted",
        },
    ]
    return validate_job(job_dict(tmp_path, publishers)).job, hook, connection


def tampered(ciphertext: str) -> str:
    import base64

    raw = bytearray(base64.b64decode(ciphertext))
    raw[len(raw) // 2] ^= 0x5A
    return base64.b64encode(bytes(raw)).decode()


def test_encrypted_secrets_are_decrypted_when_publishers_are_built(tmp_path, service_key):
    job, _, _ = encrypted_job(tmp_path, service_key)
    plain, hook, bus = build_publishers(job, service_key)
    assert plain.secrets.credentials_secret is None
    assert hook.secrets.credentials_secret == SECRET
    assert bus.secrets.connection == service_bus_connection("events")
    assert bus.queue_name == "events"
    assert SECRET not in repr(hook) and SECRET not in repr(hook.secrets)
    hub = open_hub(job, service_key, policy=FAST)
    try:
        assert SECRET in hub.redactor.secrets  # masked should it ever appear in an event
        assert service_bus_connection("events") in hub.redactor.secrets
    finally:
        hub.close(timeout=1)


@pytest.mark.parametrize("field", ["CredentialsSecret", "Connection"])
def test_a_tampered_secret_fails_naming_the_field_and_nothing_secret(tmp_path, service_key, field):
    job, hook, connection = encrypted_job(tmp_path, service_key, tamper=field)
    with pytest.raises(JobValidationError) as caught:
        build_publishers(job, service_key)
    index = 1 if field == "CredentialsSecret" else 2
    assert caught.value.errors[0].field == f"MessagePublishers[{index}].{field}"
    assert "does not decrypt" in caught.value.errors[0].message
    text = str(caught.value)
    for value in (SECRET, service_bus_connection("events"), hook, connection, *job.secrets):
        assert value not in text


def test_an_encrypted_secret_without_a_service_key_is_refused(tmp_path, service_key):
    job, _, _ = encrypted_job(tmp_path, service_key)
    with pytest.raises(JobValidationError) as caught:
        build_publishers(job, None)
    assert caught.value.errors[0].field == "MessagePublishers[1].CredentialsSecret"


@pytest.mark.parametrize(
    ("publisher", "field", "words"),
    [
        ({"Type": "Webhook", "Url": "http://user:pw@127.0.0.1/"}, "Url", "credentials"),
        (
            {
                "Type": "AzureServiceBusQueue",
                "Connection": "Endpoint=sb://x/;SharedAccessKeyName=no-key",
                "Queue": "events",
            },
            "Connection",
            "not a Service Bus connection string",
        ),
        (
            {
                "Type": "AzureServiceBusQueue",
                "Connection": service_bus_connection("events"),
                "Queue": "other",
            },
            "Queue",
            "EntityPath",
        ),
    ],
)
def test_unusable_fields_are_reported_with_their_path(tmp_path, publisher, field, words):
    job = validate_job(job_dict(tmp_path, [publisher])).job
    with pytest.raises(JobValidationError) as caught:
        build_publishers(job, None)
    assert caught.value.errors[0].field == f"MessagePublishers[0].{field}"
    assert words in caught.value.errors[0].message
    assert "pw@" not in str(caught.value) and "no-key" not in str(caught.value)


# ------------------------------------------------------------------------------ Ftps names


def test_ftps_file_names_sort_in_event_order_and_never_collide(tmp_path):
    assert file_time(epoch_ms("2026-11-28T17:48:12.123+00:00")) == "20261128T174812.123Z"
    assert file_time(epoch_ms("2026-11-28T18:48:12.123+01:00")) == "20261128T174812.123Z"
    job = validate_job(
        job_dict(tmp_path, [{"Type": "Ftps", "UriPath": "ftp://127.0.0.1:9/events/"}])
    ).job
    (publisher,) = build_publishers(job, None)
    stamps = ["2026-11-28T17:48:12.123+00:00"] * 3 + [
        "2026-11-28T17:48:12.124+00:00",
        "2026-11-28T17:48:13.000+00:00",
    ]
    names = [
        publisher.file_name(Message("job-1", n, event, stamp, b"{}"))
        for n, (event, stamp) in enumerate(
            zip(
                ["JobCreated", "Warning", "AcquisitionProgress", "ContentAcquired", "X"],
                stamps,
                strict=True,
            ),
            start=1,
        )
    ]
    assert names == [
        "20261128T174812.123Z_JobCreated.json",
        "20261128T174812.124Z_Warning.json",
        "20261128T174812.125Z_AcquisitionProgress.json",
        "20261128T174812.126Z_ContentAcquired.json",
        "20261128T174813.000Z_X.json",
    ]
    assert sorted(names) == names
    # A retry of the same message keeps its name (no second file).
    again = publisher.file_name(Message("job-1", 5, "X", stamps[-1], b"{}"))
    assert again == names[-1]


# ------------------------------------------------------------------------------ Service Bus


def service_bus_job(tmp_path, **fields: Any):
    spec = {"Type": "AzureServiceBusQueue", "Connection": service_bus_connection(), **fields}
    return validate_job(job_dict(tmp_path, [spec])).job


def test_service_bus_messages_through_a_fake_transport(monkeypatch, tmp_path):
    bus = FakeServiceBus()
    install_fake_service_bus(monkeypatch, bus)
    job = service_bus_job(tmp_path, Queue="vipe-events")
    hub = open_hub(job, None, policy=FAST)
    emitter = emitter_with(hub)
    emit_job_events(emitter)
    assert hub.close(timeout=10)
    check_events(bus.events(), emitter.history)
    assert bus.connection_strings == [service_bus_connection()]
    assert bus.client_options == [{"retry_total": 0}]  # the hub does the retrying
    assert bus.queue_names == ["vipe-events"]
    for message, event in zip(bus.sent, emitter.history, strict=True):
        assert message.subject == event["MessageType"]
        assert message.content_type == "application/json"
        assert message.message_id.startswith("job-1-")
    assert len({m.message_id for m in bus.sent}) == len(bus.sent)


def test_service_bus_entity_path_names_the_queue(monkeypatch, tmp_path):
    bus = FakeServiceBus()
    install_fake_service_bus(monkeypatch, bus)
    spec = {"Type": "AzureServiceBusQueue", "Connection": service_bus_connection("from-path")}
    job = validate_job(job_dict(tmp_path, [spec])).job
    hub = open_hub(job, None, policy=FAST)
    hub({"JobId": "j", "MessageType": "JobCreated", "Timestamp": "2026-11-28T17:48:12Z"})
    assert hub.close(timeout=5)
    assert bus.queue_names == ["from-path"]


def test_service_bus_retries_transient_errors_and_drops_an_oversized_message(
    monkeypatch, tmp_path, caplog
):
    from azure.servicebus.exceptions import (
        MessageSizeExceededError,
        ServiceBusConnectionError,
        ServiceBusServerBusyError,
    )

    bus = FakeServiceBus(
        [
            ServiceBusConnectionError(message="link detached"),
            ServiceBusServerBusyError(message="busy"),
            None,  # the first event gets through on its third attempt
            MessageSizeExceededError(message="too big"),  # the second is dropped, alone
        ]
    )
    install_fake_service_bus(monkeypatch, bus)
    job = service_bus_job(tmp_path, Queue="vipe-events")
    hub = open_hub(job, None, policy=RetryPolicy(attempts=4, initial_delay=0.01))
    emitter = emitter_with(hub)
    with caplog.at_level(logging.WARNING, logger="engine.publishers"):
        emit_job_events(emitter)
        assert not hub.close(timeout=10)
    expected = [e for i, e in enumerate(emitter.history) if i != 1]
    check_events(bus.events(), expected)
    assert "refused Warning #2 (not retried): the message is too large" in caplog.text
    assert len(bus.connection_strings) == 3  # a fresh client after each connection failure
    for secret in job.secrets:
        assert secret not in caplog.text


def test_service_bus_refusing_the_credentials_ends_that_publisher(monkeypatch, tmp_path, caplog):
    from azure.servicebus.exceptions import ServiceBusAuthorizationError

    bus = FakeServiceBus([ServiceBusAuthorizationError(message="Unauthorized: no Send claim")])
    install_fake_service_bus(monkeypatch, bus)
    job = service_bus_job(tmp_path, Queue="vipe-events")
    hub = open_hub(job, None, policy=FAST)
    with caplog.at_level(logging.WARNING, logger="engine.publishers"):
        emit_job_events(emitter_with(hub))
        assert not hub.close(timeout=10)
    assert bus.send_calls == 1  # not retried, and no later event tried either
    assert "ServiceBusAuthorizationError; giving up on this publisher" in caplog.text
    assert hub.stats()[0]["GivenUp"]


def test_publisher_modules_import_lazily():
    # The registry imports a module only when its type is used: engine.publishers itself
    # pulls in no SDK.
    module = importlib.import_module("engine.publishers")
    assert "pika" not in module.__dict__ and "boto3" not in module.__dict__
