"""`AmazonSqs` publisher **(vipe name)**: each event is one SQS message (boto3).

Fields: `QueueUrl`, `Region` (else the region in the queue URL, else `AWS_REGION` /
`AWS_DEFAULT_REGION`, else us-east-1), `CredentialsName`/`CredentialsSecret` (an access key id
and secret key; without them boto3's own chain: environment, profile, instance role).

The body is the event's JSON; the message attribute `MessageType` (String) holds the event name.
A FIFO queue (`….fifo`) gets `MessageGroupId` = the job id, so SQS keeps a job's events in
order, and `MessageDeduplicationId` = job id and sequence, so a retried send is not stored twice.
A standard queue does not promise order: consumers that need it use a FIFO queue (or sort by
`Timestamp`).

Endpoint: `VIPE_SQS_ENDPOINT_URL` when set (moto, LocalStack, ElasticMQ; the tests use it);
otherwise boto3 decides, which also honours `AWS_ENDPOINT_URL_SQS` and `AWS_ENDPOINT_URL`.
boto3's own retries are off: the hub retries with its backoff and bound.

Egress policy: with a restricted one, the client's connections go only to admitted addresses
(botocore's pools guarded, see `storage.egress`); a refusal gives up on the publisher at once,
naming `MessagePublishers[i].QueueUrl` and the rule. The queue URL's host is not where botocore
connects (the endpoint is), so it is the endpoint that is checked.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    PartialCredentialsError,
)

from engine.job import MessagePublisher
from engine.publishers.base import (
    Message,
    Publisher,
    PublisherConfigError,
    PublisherError,
    PublisherSecrets,
)
from storage.egress import UNRESTRICTED, EgressDenied, EgressPolicy, guard_botocore_client

_REGION_IN_HOST = re.compile(r"^sqs[.-]([a-z0-9-]+)\.amazonaws\.com", re.IGNORECASE)
# Error codes worth another attempt; any other 4xx (denied, no such queue, bad request) is not.
_RETRYABLE_CODES = {
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "ServiceUnavailable",
    "InternalError",
    "InternalFailure",
    "KmsThrottled",
    "AWS.SimpleQueueService.KmsThrottled",
    "RequestTimeout",
}

# Failures of the destination itself (every later message would meet them too).
_FATAL_CODES = {
    "AccessDenied",
    "AccessDeniedException",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
    "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDoesNotExist",
    "InvalidAddress",
}


class AmazonSqsPublisher(Publisher):
    """Sends each event to an Amazon SQS queue."""

    type = "AmazonSqs"

    def __init__(
        self,
        spec: MessagePublisher,
        secrets: PublisherSecrets,
        index: int = 0,
        *,
        egress: EgressPolicy = UNRESTRICTED,
    ):
        super().__init__(spec, secrets, index, egress=egress)
        self.queue_url = spec.queue_url or ""
        parts = urlsplit(self.queue_url)
        if parts.scheme.lower() not in ("https", "http") or not parts.hostname:
            raise PublisherConfigError("QueueUrl", "must be the queue's https:// URL")
        match = _REGION_IN_HOST.match(parts.hostname)
        self.region = (
            spec.region
            or (match.group(1) if match else None)
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
            or "us-east-1"
        )
        self.fifo = parts.path.rstrip("/").endswith(".fifo")
        self._client: Any = None

    def describe(self) -> str:
        return f"AmazonSqs {self.queue_url}"

    def client(self) -> Any:
        if self._client is None:
            options: dict[str, Any] = {
                "region_name": self.region,
                "config": Config(
                    connect_timeout=self.timeout_seconds,
                    read_timeout=self.timeout_seconds,
                    retries={"total_max_attempts": 1},
                ),
            }
            if os.environ.get("VIPE_SQS_ENDPOINT_URL"):
                options["endpoint_url"] = os.environ["VIPE_SQS_ENDPOINT_URL"]
            if self.spec.credentials_name:
                options["aws_access_key_id"] = self.spec.credentials_name
                options["aws_secret_access_key"] = self.secrets.credentials_secret
            # A session of its own: boto3's default session is not safe to share across threads.
            client = boto3.session.Session().client("sqs", **options)
            guard_botocore_client(client, self.egress, self.field("QueueUrl"))
            self._client = client
        return self._client

    def publish(self, message: Message) -> None:
        request: dict[str, Any] = {
            "QueueUrl": self.queue_url,
            "MessageBody": message.body.decode(),
            "MessageAttributes": {
                "MessageType": {"DataType": "String", "StringValue": message.name or "Event"}
            },
        }
        if self.fifo:
            request["MessageGroupId"] = message.job_id or "vipe"
            request["MessageDeduplicationId"] = message.message_id[-128:]
        try:
            self.client().send_message(**request)
        except EgressDenied as error:
            raise PublisherError(f"{self.describe()}: {error}", fatal=True) from None
        except ClientError as error:
            info = error.response.get("Error", {})
            code = str(info.get("Code", ""))
            status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            retryable = status >= 500 or code in _RETRYABLE_CODES
            text = str(info.get("Message", ""))[:200]
            raise PublisherError(
                f"{self.describe()}: {code or status} {text}".rstrip(),
                retryable=retryable,
                fatal=code in _FATAL_CODES or status in (401, 403),
            ) from None
        except (NoCredentialsError, PartialCredentialsError):
            raise PublisherError(f"{self.describe()}: no AWS credentials", fatal=True) from None
        except BotoCoreError as error:  # connection refused, timeouts, DNS
            if (refusal := _egress_refusal(error)) is not None:  # wrapped by botocore
                raise PublisherError(f"{self.describe()}: {refusal}", fatal=True) from None
            self._client = None
            raise PublisherError(
                f"{self.describe()}: {type(error).__name__}", retryable=True
            ) from None

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()


def _egress_refusal(error: BaseException) -> EgressDenied | None:
    """The egress refusal among the causes of a botocore error (HTTPClientError wraps it)."""
    current: BaseException | None = error
    for _ in range(8):
        if current is None or isinstance(current, EgressDenied):
            return current
        current = current.__cause__ or current.__context__
    return None
