"""Message publishers (contract §8): the `Publisher` contract and the `PublisherHub`.

A `Publisher` delivers one message to one destination and raises `PublisherError` when it
cannot, marked `retryable` for transient faults (a dead port, a timeout, a 5xx, a throttle) and
not for permanent ones (a refused login, a 4xx, an unknown queue).

The `PublisherHub` is an event sink (`hub(event)`) that hands each event to every publisher
without ever blocking or failing the job:

- Delivery is asynchronous: `hub(event)` serialises the event and queues it; it never waits on
  the network. Each publisher has its own lane (a queue and a daemon thread), so that a dead
  destination backing off does not delay the others.
- Order is kept per job and publisher: a lane delivers one message at a time, and retries a
  message before it moves on to the next.
- A retryable failure is retried with exponential backoff (`RetryPolicy`). When a message still
  fails after the last attempt, the hub gives up on that publisher for the rest of the job (the
  remaining messages would only arrive out of order, with a gap): that is logged as an error,
  and every other publisher continues. A permanent failure of one message (a webhook's 4xx)
  drops that message (logged) and the lane goes on with the next; a permanent failure of the
  destination (`fatal`: login refused, unknown queue, untrusted certificate) makes the hub give
  up on that publisher at once, instead of meeting the same refusal for every event.
- `hub.close(timeout)` at the end of a job flushes what it can within `timeout` and reports.

Delivery is at least once: a message whose acknowledgement was lost is sent again. Each message
carries a stable id (`Message.message_id`: job id and sequence number) where the destination has
a place for it (AMQP message-id, Service Bus message id, SQS FIFO deduplication id, the
`X-Vipe-Delivery` header of a webhook), so that a consumer can drop repeats.

No secret reaches a destination or a log line: every string of an event is searched for the
job's secrets (ciphertexts and clear values) and masked, and the text of every error is scrubbed
the same way before it is logged.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from engine.job import MessagePublisher
from storage.egress import UNRESTRICTED, EgressPolicy

log = logging.getLogger(__name__)

MASK = "***"
# Shorter secrets are not masked inside events: replacing every "ab" would garble the messages,
# and validation already refuses such weak secrets where it can.
MIN_MASKED_LENGTH = 4


class PublisherError(Exception):
    """A message could not be delivered. The text names the destination, never a secret.

    `retryable`: a transient fault, worth another attempt after a pause. `fatal`: a permanent
    fault of the destination itself (login refused, queue unknown, certificate not trusted),
    which every later message would meet too: the hub gives up on the publisher at once.
    """

    def __init__(self, message: str, *, retryable: bool = False, fatal: bool = False):
        super().__init__(message)
        self.retryable = retryable
        self.fatal = fatal and not retryable


class PublisherConfigError(PublisherError):
    """A publisher's fields do not make a usable destination (found when it is built)."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class PublisherSecrets:
    """A publisher's secrets in clear (decrypted when the job protects them)."""

    credentials_secret: str | None = None
    connection: str | None = None

    def __repr__(self) -> str:  # never show a secret
        return "PublisherSecrets(***)"

    def values(self) -> list[str]:
        return [s for s in (self.credentials_secret, self.connection) if s]


@dataclass(frozen=True)
class Message:
    """One event, serialised once for every publisher."""

    job_id: str
    sequence: int  # 1-based position of the event among the job's events in this hub
    name: str  # the event name (MessageType)
    timestamp: str  # the event's Timestamp (UTC, ISO 8601)
    body: bytes  # the event as UTF-8 JSON

    @property
    def message_id(self) -> str:
        """Stable across retries, unique per job and event: lets a consumer drop repeats."""
        return f"{self.job_id}-{self.sequence:06d}"


def _float_env(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, "") or default)
    except ValueError:
        log.warning("%s is not a number; using %s", name, default)
        return default


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a message is retried before the hub gives up on a publisher.

    Attempt n (1-based) that fails is followed by a pause of
    `min(initial_delay * multiplier ** (n - 1), max_delay)`. The defaults try a message 8 times
    over about a minute (0.5, 1, 2, 4, 8, 16, 30 s): long enough to ride out a broker restart,
    short enough not to hold a finished job for long. `from_env` reads
    `VIPE_PUBLISH_ATTEMPTS`, `VIPE_PUBLISH_BACKOFF_SECONDS` and `VIPE_PUBLISH_MAX_BACKOFF_SECONDS`.
    """

    attempts: int = 8
    initial_delay: float = 0.5
    max_delay: float = 30.0
    multiplier: float = 2.0

    def delay(self, attempt: int) -> float:
        return min(self.initial_delay * self.multiplier ** (attempt - 1), self.max_delay)

    @classmethod
    def from_env(cls) -> RetryPolicy:
        default = cls()
        return cls(
            attempts=max(1, int(_float_env("VIPE_PUBLISH_ATTEMPTS", default.attempts))),
            initial_delay=_float_env("VIPE_PUBLISH_BACKOFF_SECONDS", default.initial_delay),
            max_delay=_float_env("VIPE_PUBLISH_MAX_BACKOFF_SECONDS", default.max_delay),
        )


class Redactor:
    """Masks the job's secrets in event values and in error texts."""

    def __init__(self, secrets: Iterable[str]):
        # Longest first, so that a secret containing another one is masked whole.
        self.secrets = sorted(
            {s for s in secrets if s and len(s) >= MIN_MASKED_LENGTH}, key=len, reverse=True
        )
        self._all = sorted({s for s in secrets if s}, key=len, reverse=True)

    def text(self, value: str) -> str:
        """For log lines: every secret masked, however short."""
        for secret in self._all:
            if secret in value:
                value = value.replace(secret, MASK)
        return value

    def event(self, value: Any) -> tuple[Any, bool]:
        """A copy of an event value with secrets masked, and whether anything was masked."""
        if isinstance(value, str):
            masked = value
            for secret in self.secrets:
                if secret in masked:
                    masked = masked.replace(secret, MASK)
            return masked, masked is not value
        if isinstance(value, dict):
            changed = False
            copy: dict[Any, Any] = {}
            for key, item in value.items():
                new_key, key_changed = self.event(key) if isinstance(key, str) else (key, False)
                copy[new_key], item_changed = self.event(item)
                changed = changed or key_changed or item_changed
            return copy, changed
        if isinstance(value, list | tuple):
            items = [self.event(item) for item in value]
            return [item for item, _ in items], any(changed for _, changed in items)
        return value, False


def describe_error(error: BaseException) -> str:
    """A short text for a log line: a PublisherError's own text, else the exception's type and
    first line (the hub masks secrets in it before logging)."""
    text = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
    if isinstance(error, PublisherError):
        return text or type(error).__name__
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class Publisher(ABC):
    """One event destination of a job (one entry of `MessagePublishers`).

    Built from the job's object and the secrets in clear; connects lazily on the first message
    and reconnects after a failure. Called from one thread only (its lane in the hub). Every
    connection keeps to `egress` (storage.egress); a refusal is a fatal PublisherError naming
    the field and the rule.
    """

    type: ClassVar[str]
    # Seconds a connection attempt or a send may take before it counts as a (retryable) failure;
    # `VIPE_PUBLISH_TIMEOUT_SECONDS`, read when this module is imported.
    timeout_seconds: ClassVar[float] = _float_env("VIPE_PUBLISH_TIMEOUT_SECONDS", 15.0)

    def __init__(
        self,
        spec: MessagePublisher,
        secrets: PublisherSecrets,
        index: int = 0,
        *,
        egress: EgressPolicy = UNRESTRICTED,
    ):
        self.spec = spec
        self.secrets = secrets
        self.index = index  # position in MessagePublishers, for messages
        self.egress = egress

    def field(self, name: str) -> str:
        """The JSON path of one of this publisher's fields, e.g. `MessagePublishers[0].Url`."""
        return f"MessagePublishers[{self.index}].{name}"

    @abstractmethod
    def describe(self) -> str:
        """The destination for log lines: type, host, queue or path; never a secret."""

    @abstractmethod
    def publish(self, message: Message) -> None:
        """Deliver one message, or raise PublisherError (retryable or not)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections. Must not raise."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


def serialize(event: dict[str, Any]) -> bytes:
    """The message body: the event as compact UTF-8 JSON."""
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"), default=str).encode()


_STOP = object()


class _Lane:
    """One publisher's queue and delivery thread."""

    def __init__(self, hub: PublisherHub, publisher: Publisher):
        self.hub = hub
        self.publisher = publisher
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.wake = threading.Event()
        self.deadline: float | None = None
        self.enqueued = 0
        self.delivered = 0
        self.failed = 0  # dropped after a permanent failure, or the one the hub gave up on
        self.given_up = False
        self.abandoned = False  # close's deadline passed before everything was sent
        self.thread = threading.Thread(
            target=self._run,
            name=f"vipe-publisher-{publisher.type}-{publisher.index}",
            daemon=True,  # a destination stuck in a network call never keeps the process alive
        )

    @property
    def undelivered(self) -> int:
        return self.enqueued - self.delivered - self.failed

    def put(self, message: Message) -> None:
        self.enqueued += 1
        self.queue.put(message)

    def _run(self) -> None:
        try:
            while True:
                message = self.queue.get()
                if message is _STOP:
                    return
                if self.given_up or self.abandoned:
                    continue  # counted as undelivered
                if self.deadline is not None and time.monotonic() >= self.deadline:
                    self._abandon()
                    continue
                self._deliver(message)
        finally:
            try:
                self.publisher.close()
            except Exception as error:  # close must not raise, but a bug must not leak either
                self.hub.warn("closing %s failed: %s", self.publisher, describe_error(error))

    def _deliver(self, message: Message) -> None:
        policy = self.hub.policy
        for attempt in range(1, policy.attempts + 1):
            try:
                self.publisher.publish(message)
            except Exception as error:
                retryable = not isinstance(error, PublisherError) or error.retryable
                # The publisher's text usually starts with its destination, named already.
                reason = describe_error(error).removeprefix(f"{self.publisher.describe()}: ")
                if not retryable:
                    self.failed += 1
                    if getattr(error, "fatal", False):
                        self.given_up = True
                        self.hub.error(
                            "%s refused %s #%d: %s; giving up on this publisher for the rest "
                            "of the job",
                            self.publisher.describe(),
                            message.name,
                            message.sequence,
                            reason,
                        )
                    else:
                        self.hub.warn(
                            "%s refused %s #%d (not retried): %s",
                            self.publisher.describe(),
                            message.name,
                            message.sequence,
                            reason,
                        )
                    return
                if attempt == policy.attempts:
                    self.failed += 1
                    self.given_up = True
                    self.hub.error(
                        "%s: %s #%d failed %d times (%s); giving up on this publisher for the "
                        "rest of the job",
                        self.publisher.describe(),
                        message.name,
                        message.sequence,
                        attempt,
                        reason,
                    )
                    return
                delay = policy.delay(attempt)
                self.hub.warn(
                    "%s: %s #%d failed (%s); attempt %d of %d in %.2fs",
                    self.publisher.describe(),
                    message.name,
                    message.sequence,
                    reason,
                    attempt + 1,
                    policy.attempts,
                    delay,
                )
                if not self._sleep(delay):
                    self._abandon()
                    return
            else:
                self.delivered += 1
                return

    def _sleep(self, delay: float) -> bool:
        """Pause before a retry; False when close's deadline comes first (no time to retry)."""
        end = time.monotonic() + delay
        while True:
            now = time.monotonic()
            deadline = self.deadline
            if deadline is not None and end > deadline:
                return False
            if now >= end:
                return True
            self.wake.wait(end - now)  # close() wakes us to look at its deadline
            self.wake.clear()

    def _abandon(self) -> None:
        if not self.abandoned:
            self.abandoned = True
            self.hub.error(
                "%s: no time left to deliver the remaining events (close timeout)",
                self.publisher.describe(),
            )


class PublisherHub:
    """Delivers a job's events to its publishers, asynchronously, in order, with retries.

    Use it as the job's event sink (`run_job(job, on_event=hub)` or `EventEmitter` sinks) and
    call `close(timeout)` once the job has ended (or use it as a context manager). It never
    raises into the job: failures are logged with the job id, and summed up by `close`.
    """

    def __init__(
        self,
        publishers: Iterable[Publisher],
        *,
        job_id: str = "",
        secrets: Iterable[str] = (),
        policy: RetryPolicy | None = None,
    ):
        self.job_id = job_id
        self.policy = policy or RetryPolicy.from_env()
        publishers = list(publishers)
        self.redactor = Redactor(
            [*secrets, *(value for p in publishers for value in p.secrets.values())]
        )
        self._lanes = [_Lane(self, publisher) for publisher in publishers]
        self._lock = threading.Lock()  # sequence numbers and enqueueing stay in one order
        self._sequence = 0
        self._closed = False
        self._masked_warned: set[str] = set()
        for lane in self._lanes:
            lane.thread.start()

    @property
    def publishers(self) -> list[Publisher]:
        return [lane.publisher for lane in self._lanes]

    # -- logging with the job id and without secrets ------------------------------------------

    def _log(self, level: int, template: str, *args: Any) -> None:
        if log.isEnabledFor(level):
            text = template % tuple(a.describe() if isinstance(a, Publisher) else a for a in args)
            log.log(level, "job %s: %s", self.job_id or "-", self.redactor.text(text))

    def warn(self, template: str, *args: Any) -> None:
        self._log(logging.WARNING, template, *args)

    def error(self, template: str, *args: Any) -> None:
        self._log(logging.ERROR, template, *args)

    # -- the sink -----------------------------------------------------------------------------

    def __call__(self, event: dict[str, Any]) -> None:
        """Queue one event for every publisher; returns at once and never raises."""
        try:
            self._enqueue(event)
        except Exception as error:  # a sink must never fail the job
            self.error("could not queue an event: %s", describe_error(error))

    def _enqueue(self, event: dict[str, Any]) -> None:
        name = str(event.get("MessageType", ""))
        if not self.job_id:
            self.job_id = str(event.get("JobId", ""))
        masked, changed = self.redactor.event(event)
        if changed and name not in self._masked_warned:
            # An upstream bug put a secret into an event; say so once (without the secret).
            self._masked_warned.add(name)
            self.warn("a %s event held a secret of the job; it is masked", name)
        body = serialize(masked)
        with self._lock:
            if self._closed:
                self.warn("%s after close: not published", name)
                return
            self._sequence += 1
            message = Message(
                job_id=str(event.get("JobId", self.job_id)),
                sequence=self._sequence,
                name=name,
                timestamp=str(event.get("Timestamp", "")),
                body=body,
            )
            for lane in self._lanes:
                lane.put(message)

    # -- the end ------------------------------------------------------------------------------

    def close(self, timeout: float | None = 30.0) -> bool:
        """Flush what can be delivered within `timeout` seconds (None: until every publisher
        has delivered or given up), stop the lanes and close the publishers.

        Returns True when every event reached every publisher. Calling it again only reports.
        """
        with self._lock:
            first = not self._closed
            self._closed = True
        if first:
            deadline = None if timeout is None else time.monotonic() + timeout
            for lane in self._lanes:
                lane.deadline = deadline
                lane.queue.put(_STOP)
                lane.wake.set()
            for lane in self._lanes:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                lane.thread.join(remaining)
            for lane in self._lanes:
                self._report(lane)
        return all(
            not lane.thread.is_alive() and lane.delivered == lane.enqueued for lane in self._lanes
        )

    def _report(self, lane: _Lane) -> None:
        publisher = lane.publisher.describe()
        if lane.thread.is_alive():
            self.error(
                "%s still busy at close (a send that does not return); %d of %d events delivered",
                publisher,
                lane.delivered,
                lane.enqueued,
            )
        elif lane.delivered == lane.enqueued:
            self._log(logging.INFO, "%s: all %d events delivered", publisher, lane.enqueued)
        else:
            self.error(
                "%s: %d of %d events delivered, %d refused, %d not sent",
                publisher,
                lane.delivered,
                lane.enqueued,
                lane.failed,
                lane.undelivered,
            )

    def stats(self) -> list[dict[str, Any]]:
        """Per publisher: what was queued, delivered, refused or given up, and not sent."""
        return [
            {
                "Publisher": lane.publisher.describe(),
                "Type": lane.publisher.type,
                "Enqueued": lane.enqueued,
                "Delivered": lane.delivered,
                "Failed": lane.failed,
                "Undelivered": lane.undelivered,
                "GivenUp": lane.given_up,
            }
            for lane in self._lanes
        ]

    def __enter__(self) -> PublisherHub:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
