"""`RabbitMQ` publisher: each event is one AMQP 0-9-1 message (pika).

Fields: `Protocol` (`amqp`, or `amqps` for TLS), `Host`, `Port` (default 5672, 5671 for amqps),
`VirtualHost` (default `/`), `Queue`, `CredentialsName`/`CredentialsSecret` (default
guest/guest, which RabbitMQ accepts only from localhost).

Message: published to the default exchange with routing key = `Queue`; properties `type` = the
event name, `content_type` application/json, `delivery_mode` 2 (persistent), `message_id` = job
id and sequence (the same on a retry: consumers can drop repeats), `timestamp`, `app_id` vipe.
The channel is in confirm mode and messages are `mandatory`: a message counts as delivered only
when the broker has confirmed it, and one that no queue took comes back as a failure and is
retried, instead of vanishing.

The queue: checked with a passive declare first. If it exists, it is used as it is (whatever its
arguments: quorum, classic, a length limit; declaring it ourselves with other arguments would
fail with PRECONDITION_FAILED). If it does not exist, it is declared durable (not exclusive, not
auto-delete), so that events published before a consumer starts are kept, and survive a broker
restart together with the persistent messages. A user that may not declare gets a clear error.

TLS (`amqps`): the broker's certificate and host name are verified against the system's trust
store; `VIPE_AMQP_CA_FILE` points at a PEM file of a private CA to trust (tests, in-house CAs).

Egress policy: with a restricted one, `Host` is resolved and checked here and pika is given the
admitted addresses (so it connects to exactly what was checked; TLS still verifies the name);
a refusal gives up on the publisher at once, naming `MessagePublishers[i].Host` and the rule.

A connection that sat idle may have been closed by the broker (missed heartbeats: pika's
blocking connection only answers them while it is called); a send on a reused connection that
fails at the connection level is therefore tried once more on a fresh connection right away.
"""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
import time

import pika
import pika.exceptions as amqp_errors

from engine.job import AmqpProtocol, MessagePublisher
from engine.publishers.base import (
    Message,
    Publisher,
    PublisherConfigError,
    PublisherError,
    PublisherSecrets,
)
from storage.egress import UNRESTRICTED, EgressDenied, EgressPolicy

# pika logs every failed connection several times over, with tracebacks, at ERROR (and chats at
# INFO); the hub logs one line per failure, with the job id. An application that set pika's
# level itself keeps it.
if logging.getLogger("pika").level == logging.NOTSET:
    logging.getLogger("pika").setLevel(logging.CRITICAL)

DEFAULT_PORTS = {AmqpProtocol.amqp: 5672, AmqpProtocol.amqps: 5671}
# Failures of the connection itself: worth one immediate retry on a fresh connection.
_CONNECTION_ERRORS = (
    amqp_errors.AMQPConnectionError,
    amqp_errors.StreamLostError,
    amqp_errors.ConnectionWrongStateError,
    amqp_errors.ChannelWrongStateError,
    OSError,
)


class RabbitMQPublisher(Publisher):
    """Publishes each event to a RabbitMQ queue through the default exchange."""

    type = "RabbitMQ"

    def __init__(
        self,
        spec: MessagePublisher,
        secrets: PublisherSecrets,
        index: int = 0,
        *,
        egress: EgressPolicy = UNRESTRICTED,
    ):
        super().__init__(spec, secrets, index, egress=egress)
        if not spec.host:
            raise PublisherConfigError("Host", "required for a RabbitMQ publisher")
        if not spec.queue:
            raise PublisherConfigError("Queue", "required for a RabbitMQ publisher")
        self.protocol = spec.protocol
        self.host = spec.host
        self.port = spec.port or DEFAULT_PORTS[spec.protocol]
        self.virtual_host = spec.virtual_host or "/"
        self.queue = spec.queue
        self._connection: pika.BlockingConnection | None = None
        self._channel = None

    def describe(self) -> str:
        vhost = "" if self.virtual_host == "/" else f" vhost {self.virtual_host}"
        return f"RabbitMQ {self.protocol}://{self.host}:{self.port}{vhost} queue {self.queue}"

    # -- connection ----------------------------------------------------------------------------

    def parameters(self, address: str | None = None) -> pika.ConnectionParameters:
        """The connection parameters, to `address` instead of `Host` when given."""
        options = {}
        if self.spec.credentials_name:
            options["credentials"] = pika.PlainCredentials(
                self.spec.credentials_name, self.secrets.credentials_secret or ""
            )
        if self.protocol == AmqpProtocol.amqps:
            cafile = os.environ.get("VIPE_AMQP_CA_FILE") or None
            context = ssl.create_default_context(cafile=cafile)  # verifies chain and host name
            options["ssl_options"] = pika.SSLOptions(context, server_hostname=self.host)
        return pika.ConnectionParameters(
            host=address or self.host,
            port=self.port,
            virtual_host=self.virtual_host,
            connection_attempts=1,  # the hub retries, with its backoff and bound
            socket_timeout=self.timeout_seconds,
            stack_timeout=self.timeout_seconds,
            blocked_connection_timeout=self.timeout_seconds,  # a broker in flow control
            client_properties={"connection_name": "vipe publisher"},
            **options,
        )

    def connection_parameters(self) -> list[pika.ConnectionParameters]:
        """One set per address the egress policy admits, in the resolver's order (pika tries
        them in turn); unrestricted, pika resolves `Host` itself as it always did."""
        if not self.egress.restricted:
            return [self.parameters()]
        addresses = self.egress.check_host(self.host, self.port, self.field("Host"))
        return [self.parameters(str(address)) for address in addresses]

    def channel(self):
        """The confirm-mode channel, connecting and checking the queue on first use."""
        if self._channel is not None and self._channel.is_open:
            return self._channel
        self._reset()
        connection = pika.BlockingConnection(self.connection_parameters())
        self._connection = connection
        try:
            channel = connection.channel()
            try:
                channel.queue_declare(self.queue, passive=True)
            except amqp_errors.ChannelClosedByBroker as error:
                if error.reply_code != 404:
                    raise
                # The passive check closed the channel; declare the queue on a new one.
                channel = connection.channel()
                channel.queue_declare(self.queue, durable=True)
            channel.confirm_delivery()
        except BaseException:
            self._reset()
            raise
        self._channel = channel
        return channel

    def _reset(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            with contextlib.suppress(Exception):  # already broken: nothing more to release
                connection.close()

    # -- publishing ----------------------------------------------------------------------------

    def publish(self, message: Message) -> None:
        reused = self._channel is not None and self._channel.is_open
        try:
            self._send(message)
        except _CONNECTION_ERRORS as error:
            self._reset()
            if not reused or self._permanent(error):
                raise self._error(error) from None
            try:
                self._send(message)  # the reused connection had gone stale: once more, fresh
            except Exception as again:
                self._reset()
                raise self._error(again) from None
        except Exception as error:
            self._reset()
            raise self._error(error) from None

    def _send(self, message: Message) -> None:
        properties = pika.BasicProperties(
            content_type="application/json",
            delivery_mode=pika.DeliveryMode.Persistent,
            type=message.name,
            message_id=message.message_id,
            timestamp=int(time.time()),
            app_id="vipe",
        )
        self.channel().basic_publish(
            exchange="",
            routing_key=self.queue,
            body=message.body,
            properties=properties,
            mandatory=True,
        )

    @staticmethod
    def _permanent(error: BaseException) -> bool:
        return isinstance(
            error,
            amqp_errors.ProbableAuthenticationError
            | amqp_errors.AuthenticationError
            | amqp_errors.ProbableAccessDeniedError,
        ) or "CERTIFICATE_VERIFY_FAILED" in repr(error)

    def _error(self, error: BaseException) -> PublisherError:
        where = self.describe()
        if isinstance(error, EgressDenied):
            return PublisherError(f"{where}: {error}", fatal=True)
        if isinstance(
            error, amqp_errors.ProbableAuthenticationError | amqp_errors.AuthenticationError
        ):
            return PublisherError(
                f"{where}: login refused (CredentialsName/CredentialsSecret)", fatal=True
            )
        if isinstance(error, amqp_errors.ProbableAccessDeniedError):
            return PublisherError(f"{where}: access to the virtual host refused", fatal=True)
        if "CERTIFICATE_VERIFY_FAILED" in repr(error):
            return PublisherError(
                f"{where}: TLS certificate not trusted; set VIPE_AMQP_CA_FILE to trust a "
                "private CA",
                fatal=True,
            )
        if isinstance(error, amqp_errors.ChannelClosedByBroker):
            text = f"{where}: the broker refused ({error.reply_code} {error.reply_text})"
            # 403 access refused, 406 precondition failed: asking again changes nothing.
            permanent = error.reply_code in (403, 406)
            return PublisherError(text, retryable=not permanent, fatal=permanent)
        if isinstance(error, amqp_errors.UnroutableError):
            return PublisherError(f"{where}: the message was not routed to a queue", retryable=True)
        if isinstance(error, amqp_errors.NackError):
            return PublisherError(f"{where}: the broker did not accept the message", retryable=True)
        if isinstance(error, amqp_errors.AMQPConnectionError | OSError):
            return PublisherError(f"{where}: cannot connect ({_reason(error)})", retryable=True)
        return PublisherError(f"{where}: {_reason(error)}", retryable=True)

    def close(self) -> None:
        self._reset()


def _reason(error: BaseException) -> str:
    """The innermost cause pika wraps a connection failure in, by type (its text may hold the
    broker's reply, never our credentials, but a type is all a log line needs)."""
    inner: object = error
    while isinstance(inner, amqp_errors.AMQPConnectionError) and inner.args:
        candidate = inner.args[0]
        if not isinstance(candidate, BaseException):
            break
        inner = candidate
    exceptions = getattr(inner, "exceptions", None)  # AMQPConnectionWorkflowFailed
    if exceptions:
        inner = exceptions[-1]
    return type(inner).__name__
