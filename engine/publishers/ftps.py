"""`Ftps` publisher **(vipe name)**: each event becomes a JSON file in an FTP(S) folder.

The fields are a storage object's (`UriPath` `ftp://`, `ftpes://` or `ftps://`,
`CredentialsName`, `CredentialsSecret`, `CredentialsProtection`); the upload goes through the
`Ftps` storage provider (`storage.ftps`: TLS verification, `VIPE_FTPS_CA_FILE`, upload under a
temporary name and rename, so a reader never sees a half-written file, and the egress policy:
a refusal names `MessagePublishers[i].UriPath` and gives up on the publisher at once).

File name: `<UTC timestamp>_<event name>.json`, the timestamp as `20261128T174812.123Z` (basic
ISO 8601, millisecond precision: safe in a file name, and sorting the names sorts the events).
Events often share a millisecond (JobCreated and a Warning, back to back), so the time in a name
is made strictly increasing per job: an event whose millisecond is not after the previous file's
is named one millisecond after it. A suffix such as `-2` would not do: `…123Z-2_Warning` sorts
*before* `…123Z_JobCreated`, since '-' < '_'. The body keeps the event's own `Timestamp`. A
retry rewrites the same name, so a message is never stored twice under two names.
"""

from __future__ import annotations

import datetime
import tempfile
from pathlib import Path

from engine.job import MessagePublisher
from engine.publishers.base import (
    Message,
    Publisher,
    PublisherConfigError,
    PublisherError,
    PublisherSecrets,
)
from storage import StorageError, StorageLocation, open_storage
from storage.base import Storage
from storage.egress import UNRESTRICTED, EgressPolicy
from storage.ftps import FtpsStorage


def file_time(epoch_ms: int) -> str:
    """`20261128T174812.123Z` for a time in milliseconds since the epoch."""
    moment = datetime.datetime.fromtimestamp(epoch_ms / 1000, datetime.UTC)
    return moment.strftime("%Y%m%dT%H%M%S") + f".{epoch_ms % 1000:03d}Z"


def epoch_ms(timestamp: str) -> int:
    """An event's ISO 8601 Timestamp in milliseconds since the epoch (now if unreadable)."""
    try:
        moment = datetime.datetime.fromisoformat(timestamp)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.UTC)
    except (TypeError, ValueError):
        moment = datetime.datetime.now(datetime.UTC)
    return round(moment.timestamp() * 1000)


def _safe_event_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-." else "_" for c in name)
    return cleaned or "Event"


class FtpsPublisher(Publisher):
    """Writes each event as `<timestamp>_<event>.json` into an FTP(S) folder."""

    type = "Ftps"

    def __init__(
        self,
        spec: MessagePublisher,
        secrets: PublisherSecrets,
        index: int = 0,
        *,
        egress: EgressPolicy = UNRESTRICTED,
    ):
        super().__init__(spec, secrets, index, egress=egress)
        location = StorageLocation(
            provider="Ftps",
            uri=spec.uri_path or "",
            credentials_name=spec.credentials_name,
            credentials_secret=secrets.credentials_secret,
            egress=egress,
            field=self.field("UriPath"),
        )
        try:
            storage = open_storage(location)
        except StorageError as error:
            raise PublisherConfigError("UriPath", str(error)) from None
        assert isinstance(storage, FtpsStorage)  # the class registered for provider "Ftps"
        # An instance attribute: the storage class's own default is meant for big files.
        storage.timeout_seconds = self.timeout_seconds
        self.storage: Storage = storage
        self._last_ms = 0
        self._current: tuple[int, str] | None = None  # (sequence, file name) being delivered
        self._folder: tempfile.TemporaryDirectory[str] | None = None

    def describe(self) -> str:
        return self.storage.describe()

    def file_name(self, message: Message) -> str:
        """The name of the message's file; the same for every attempt of one message."""
        if self._current is not None and self._current[0] == message.sequence:
            return self._current[1]
        stamp = max(epoch_ms(message.timestamp), self._last_ms + 1)
        self._last_ms = stamp
        name = f"{file_time(stamp)}_{_safe_event_name(message.name)}.json"
        self._current = (message.sequence, name)
        return name

    def publish(self, message: Message) -> None:
        name = self.file_name(message)
        if self._folder is None:
            self._folder = tempfile.TemporaryDirectory(prefix="vipe-ftps-events-")
        source = Path(self._folder.name) / "event.json"
        source.write_bytes(message.body)
        try:
            self.storage.upload_file(source, name)
        except StorageError as error:
            # Not retryable here means login refused, no permission, untrusted certificate or a
            # bad folder: the same for every later event.
            raise PublisherError(
                str(error), retryable=error.retryable, fatal=not error.retryable
            ) from None
        finally:
            source.unlink(missing_ok=True)

    def close(self) -> None:
        try:
            self.storage.close()
        finally:
            if self._folder is not None:
                self._folder.cleanup()
                self._folder = None
