"""Message publishers keyed by the job's `MessagePublishers[i].Type` (contract §8).

`build_publishers(job, service_key)` turns a job's `MessagePublishers` into `Publisher`s, with
their `Encrypted` secrets decrypted; `open_hub(job, service_key)` wraps them in a
`PublisherHub`, the event sink that delivers every event of the job to all of them. A type whose
SDK is not installed raises an error that names the extra to install, not an ImportError.

Wiring (one job): build the hub first thing in Pre-Validation, so that a secret that does not
decrypt fails the job (JobValidationError, FinalError 1001) before any work, and so that
JobCreated already goes to the publishers; close it after the last event:

    hub = open_hub(job, service_key, job_id=job_id)   # JobValidationError: bad secret, no SDK
    events.sinks.append(hub)                          # or run_job(..., on_event=hub)
    ...                                               # the job runs; hub(event) never blocks
    hub.close(timeout=30)                             # after JobSuccess / FinalError

The hub never raises into the job, and `close` returns whether every event reached every
publisher (failures are logged with the job id; `hub.stats()` has the counts).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

from engine.errors import JobValidationError
from engine.job import Job, MessagePublisher, Protection, PublisherType
from engine.publishers.base import (
    Message,
    Publisher,
    PublisherConfigError,
    PublisherError,
    PublisherHub,
    PublisherSecrets,
    RetryPolicy,
)
from engine.validation import FieldError
from storage.egress import UNRESTRICTED, EgressPolicy

if TYPE_CHECKING:
    from drm.credentials import ServiceKey

# Type -> (module, class, pip extra that installs its SDK or None)
REGISTRY: dict[str, tuple[str, str, str | None]] = {
    "RabbitMQ": ("engine.publishers.rabbitmq", "RabbitMQPublisher", "publishers"),
    "AzureServiceBusQueue": (
        "engine.publishers.servicebus",
        "AzureServiceBusQueuePublisher",
        "publishers",
    ),
    "AmazonSqs": ("engine.publishers.sqs", "AmazonSqsPublisher", "publishers"),
    "Ftps": ("engine.publishers.ftps", "FtpsPublisher", None),
    "Webhook": ("engine.publishers.webhook", "WebhookPublisher", None),
}


def publisher_class(type_name: str) -> type[Publisher]:
    """The class for a `Type`; PublisherError names the extra when its SDK is missing."""
    try:
        module_name, class_name, extra = REGISTRY[str(type_name)]
    except KeyError:
        raise PublisherError(f"no message publisher of type {type_name!r}") from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        hint = f"`pip install vipe[{extra}]`" if extra else "a dependency"
        raise PublisherError(f"{type_name} needs {hint} ({error.name} is missing)") from None
    return getattr(module, class_name)


def _clear(
    value: str | None,
    protection: Protection,
    service_key: ServiceKey | None,
    field: str,
) -> str | None:
    """A secret in clear; JobValidationError names `field` (never the value) if it does not
    decrypt."""
    if value is None or protection != Protection.Encrypted:
        return value
    if service_key is None:
        raise JobValidationError(
            [FieldError(field, "is Encrypted but this node has no service key")]
        )
    from drm.credentials import CredentialsError  # lazily: RSA only for Encrypted

    try:
        return service_key.decrypt(value, field)
    except CredentialsError as error:
        reason = str(error).removeprefix(f"{error.field}: ")
        raise JobValidationError([FieldError(error.field, reason)]) from None


def build_publisher(
    spec: MessagePublisher,
    service_key: ServiceKey | None,
    index: int = 0,
    egress: EgressPolicy = UNRESTRICTED,
) -> Publisher:
    """One publisher of the job, its secrets decrypted, its connections held to `egress`.
    Errors are JobValidationErrors that name `MessagePublishers[index].<field>`."""
    path = f"MessagePublishers[{index}]"
    secrets = PublisherSecrets(
        credentials_secret=_clear(
            spec.credentials_secret.get_secret_value() if spec.credentials_secret else None,
            spec.credentials_protection,
            service_key,
            f"{path}.CredentialsSecret",
        ),
        connection=_clear(
            spec.connection.get_secret_value() if spec.connection else None,
            spec.credentials_protection,
            service_key,
            f"{path}.Connection",
        ),
    )
    try:
        cls = publisher_class(str(spec.type))
    except PublisherError as error:
        raise JobValidationError([FieldError(f"{path}.Type", str(error))]) from None
    try:
        return cls(spec, secrets, index, egress=egress)
    except PublisherConfigError as error:
        raise JobValidationError([FieldError(f"{path}.{error.field}", error.reason)]) from None


def build_publishers(
    job: Job, service_key: ServiceKey | None, egress: EgressPolicy = UNRESTRICTED
) -> list[Publisher]:
    """The job's publishers, in the order of `MessagePublishers`, every connection held to
    `egress` (the server's policy; a refusal gives up on that publisher, naming the field).

    Raises JobValidationError (FinalError 1001) when a secret does not decrypt (the error names
    `MessagePublishers[i].CredentialsSecret` or `.Connection`, never the value) or when a type's
    SDK is not installed. Nothing connects here: publishers connect on their first message.
    """
    return [
        build_publisher(spec, service_key, index, egress)
        for index, spec in enumerate(job.message_publishers or [])
    ]


def open_hub(
    job: Job,
    service_key: ServiceKey | None,
    *,
    job_id: str = "",
    policy: RetryPolicy | None = None,
    extra_secrets: Iterable[str] = (),
    egress: EgressPolicy = UNRESTRICTED,
) -> PublisherHub:
    """A started `PublisherHub` for the job's publishers (an idle one when it has none), their
    connections held to `egress`.

    The hub masks every secret of the job (`Job.secrets`, and the publishers' decrypted ones)
    should one ever appear in an event; `extra_secrets` adds more (e.g. decrypted storage
    secrets).
    """
    return PublisherHub(
        build_publishers(job, service_key, egress),
        job_id=job_id,
        secrets=[*job.secrets, *extra_secrets],
        policy=policy,
    )


__all__ = [
    "REGISTRY",
    "Message",
    "Publisher",
    "PublisherConfigError",
    "PublisherError",
    "PublisherHub",
    "PublisherSecrets",
    "PublisherType",
    "RetryPolicy",
    "build_publisher",
    "build_publishers",
    "open_hub",
    "publisher_class",
]
