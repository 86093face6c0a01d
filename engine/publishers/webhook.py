"""`Webhook` publisher **(extension)**: each event is POSTed as JSON to `Url`.

Headers: `Content-Type: application/json`, `X-Vipe-Event: <event name>`, `X-Vipe-Delivery:
<job id>-<sequence>` (the same on a retry, so that a receiver can drop repeats) and, when
`CredentialsSecret` is given, `X-Vipe-Signature: sha256=<hex HMAC-SHA256 of the raw body, keyed
with the UTF-8 bytes of the secret>`. A receiver checks the signature over the bytes it got,
before parsing them, with a constant-time comparison.

Answers: 2xx is delivered; 408, 429, 5xx, timeouts and connection failures are retried by the
hub; any other 4xx drops that one event (logged, not retried; the next event is sent).
Redirects are not followed: a POST that is redirected would be replayed to an address the job
did not name (and urllib would turn it into a GET), so a 3xx makes the hub give up on the
webhook, as an untrusted certificate does. HTTPS certificates are verified against the
system's trust store; `VIPE_WEBHOOK_CA_FILE` adds a private CA (tests, internal receivers).
With a restricted egress policy the POST goes only to an admitted address of the host; a refusal
gives up on the webhook at once, naming `MessagePublishers[i].Url` and the rule.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import os
import ssl
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from engine.job import MessagePublisher
from engine.publishers.base import (
    Message,
    Publisher,
    PublisherConfigError,
    PublisherError,
    PublisherSecrets,
)
from storage.egress import UNRESTRICTED, EgressDenied, EgressPolicy

SIGNATURE_HEADER = "X-Vipe-Signature"
EVENT_HEADER = "X-Vipe-Event"
DELIVERY_HEADER = "X-Vipe-Delivery"
RETRYABLE_STATUS = {408, 425, 429}


def signature(secret: str, body: bytes) -> str:
    """The `X-Vipe-Signature` value for `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookPublisher(Publisher):
    """POSTs each event to an HTTP(S) URL, signed with HMAC-SHA256 when a secret is given."""

    type = "Webhook"

    def __init__(
        self,
        spec: MessagePublisher,
        secrets: PublisherSecrets,
        index: int = 0,
        *,
        egress: EgressPolicy = UNRESTRICTED,
    ):
        super().__init__(spec, secrets, index, egress=egress)
        self.url = spec.url or ""
        parts = urlsplit(self.url)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise PublisherConfigError("Url", "must be an http:// or https:// URL with a host")
        if parts.username or parts.password:
            raise PublisherConfigError(
                "Url", "must not hold credentials; the body is signed with CredentialsSecret"
            )
        # Logged without the query: it may carry a token.
        port = f":{parts.port}" if parts.port else ""
        self._where = f"{parts.scheme.lower()}://{parts.hostname}{port}{parts.path or '/'}"
        cafile = os.environ.get("VIPE_WEBHOOK_CA_FILE") or None
        self._opener = self.egress.opener(
            self.field("Url"),
            context=ssl.create_default_context(cafile=cafile),
            redirects=False,  # a 3xx raises HTTPError with its status
        )

    def describe(self) -> str:
        return f"Webhook {self._where}"

    def publish(self, message: Message) -> None:
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "vipe",
            EVENT_HEADER: message.name,
            DELIVERY_HEADER: message.message_id,
        }
        if self.secrets.credentials_secret:
            headers[SIGNATURE_HEADER] = signature(self.secrets.credentials_secret, message.body)
        request = urllib.request.Request(
            self.url, data=message.body, headers=headers, method="POST"
        )
        try:
            with self._opener.open(request, timeout=self.timeout_seconds) as response:
                response.read()
                status = response.status
        except EgressDenied as error:
            raise PublisherError(f"{self.describe()}: {error}", fatal=True) from None
        except urllib.error.HTTPError as error:
            status = error.code
            error.close()
        except urllib.error.URLError as error:
            raise self._connection_error(error.reason) from None
        except (OSError, http.client.HTTPException) as error:
            raise self._connection_error(error) from None
        if 200 <= status < 300:
            return
        if 300 <= status < 400:
            raise PublisherError(
                f"{self.describe()}: answered {status}: redirects are not followed", fatal=True
            )
        retryable = status >= 500 or status in RETRYABLE_STATUS
        raise PublisherError(f"{self.describe()}: answered {status}", retryable=retryable)

    def _connection_error(self, reason: object) -> PublisherError:
        if isinstance(reason, ssl.SSLCertVerificationError):
            return PublisherError(
                f"{self.describe()}: TLS certificate not trusted ({reason.verify_message}); "
                "set VIPE_WEBHOOK_CA_FILE to trust a private CA",
                fatal=True,
            )
        if isinstance(reason, TimeoutError):
            return PublisherError(f"{self.describe()}: timed out", retryable=True)
        name = type(reason).__name__ if isinstance(reason, BaseException) else str(reason)
        return PublisherError(f"{self.describe()}: connection failed ({name})", retryable=True)
