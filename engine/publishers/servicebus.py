"""`AzureServiceBusQueue` publisher: each event is one Service Bus message (azure-servicebus).

Fields: `Connection`, a connection string (`Endpoint=sb://<namespace>/;SharedAccessKeyName=…;
SharedAccessKey=…`, optionally `;EntityPath=<queue>`), and `Queue` **(vipe)** when the string
has no `EntityPath` (when both are given they must agree). With `CredentialsProtection:
Encrypted` the whole connection string is the ciphertext.

Message: the event's JSON as body, `content_type` application/json, `subject` = the event name,
`message_id` = job id and sequence (the same on a retry: with duplicate detection on the queue,
Service Bus drops a repeat itself). The SDK's own retries are off (`retry_total=0`): the hub
retries with its backoff and bound.

Egress policy: with a restricted one, the namespace host is resolved and checked each time the
sender is made; a refusal gives up on the publisher at once, naming
`MessagePublishers[i].Connection` and the rule. Limit: the SDK's AMQP transport resolves and
connects by itself (no hook for its socket), so an answer that changes between that check and
its connect is not seen.

Testing: there is no local Service Bus server on the test machines, so the tests replace the
SDK's transport at its boundary: `ServiceBusClient.from_connection_string` is monkeypatched to
return a fake client whose sender records the real `ServiceBusMessage` objects built here. The
message building, the connection-string handling, the error classification and the hub's
retries are tested that way; the AMQP wire itself is the SDK's (and Microsoft's tests').
"""

from __future__ import annotations

import contextlib
from typing import Any

from azure.servicebus import ServiceBusClient, ServiceBusMessage, parse_connection_string
from azure.servicebus import exceptions as sb_errors

from engine.job import MessagePublisher
from engine.publishers.base import (
    Message,
    Publisher,
    PublisherConfigError,
    PublisherError,
    PublisherSecrets,
)
from storage.egress import UNRESTRICTED, EgressDenied, EgressPolicy

AMQPS_PORT = 5671

# Failures of the destination that another attempt cannot fix.
_FATAL = (
    sb_errors.ServiceBusAuthenticationError,
    sb_errors.ServiceBusAuthorizationError,
    sb_errors.MessagingEntityNotFoundError,
    sb_errors.MessagingEntityDisabledError,
)


class AzureServiceBusQueuePublisher(Publisher):
    """Sends each event to an Azure Service Bus queue."""

    type = "AzureServiceBusQueue"

    def __init__(
        self,
        spec: MessagePublisher,
        secrets: PublisherSecrets,
        index: int = 0,
        *,
        egress: EgressPolicy = UNRESTRICTED,
    ):
        super().__init__(spec, secrets, index, egress=egress)
        connection = secrets.connection
        if not connection:
            raise PublisherConfigError("Connection", "required for an AzureServiceBusQueue")
        try:
            properties = parse_connection_string(connection)
        except (ValueError, TypeError):
            # The SDK's message does not echo the string; ours does not either.
            raise PublisherConfigError(
                "Connection",
                "is not a Service Bus connection string "
                "(Endpoint=sb://…;SharedAccessKeyName=…;SharedAccessKey=…)",
            ) from None
        entity = properties.entity_path
        if entity and spec.queue and spec.queue != entity:
            raise PublisherConfigError("Queue", "differs from the Connection string's EntityPath")
        queue_name = entity or spec.queue
        if not queue_name:
            raise PublisherConfigError(
                "Queue", "required when the Connection string has no EntityPath"
            )
        self.queue_name = queue_name
        self.namespace = properties.fully_qualified_namespace
        self._client: Any = None
        self._sender: Any = None

    def describe(self) -> str:
        return f"AzureServiceBusQueue {self.namespace} queue {self.queue_name}"

    def build_message(self, message: Message) -> ServiceBusMessage:
        return ServiceBusMessage(
            message.body,
            content_type="application/json",
            subject=message.name,
            message_id=message.message_id,
        )

    def sender(self) -> Any:
        if self._sender is None:
            if self.egress.restricted:
                self.egress.check_host(self.namespace, AMQPS_PORT, self.field("Connection"))
            self._client = ServiceBusClient.from_connection_string(
                self.secrets.connection or "", retry_total=0
            )
            self._sender = self._client.get_queue_sender(queue_name=self.queue_name)
        return self._sender

    def publish(self, message: Message) -> None:
        try:
            self.sender().send_messages(self.build_message(message), timeout=self.timeout_seconds)
        except EgressDenied as error:
            raise PublisherError(f"{self.describe()}: {error}", fatal=True) from None
        except _FATAL as error:
            self._reset()
            raise PublisherError(f"{self.describe()}: {type(error).__name__}", fatal=True) from None
        except sb_errors.MessageSizeExceededError:
            # This one message is too big; the next may well fit.
            raise PublisherError(f"{self.describe()}: the message is too large") from None
        except sb_errors.ServiceBusError as error:
            self._reset()
            raise PublisherError(
                f"{self.describe()}: {type(error).__name__}", retryable=True
            ) from None
        except (OSError, TimeoutError) as error:
            self._reset()
            raise PublisherError(
                f"{self.describe()}: {type(error).__name__}", retryable=True
            ) from None

    def _reset(self) -> None:
        sender, client = self._sender, self._client
        self._sender = self._client = None
        for closable in (sender, client):
            if closable is not None:
                with contextlib.suppress(Exception):  # already broken: nothing more to release
                    closable.close()

    def close(self) -> None:
        self._reset()
