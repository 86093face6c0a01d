"""Job events (contract §8): the phase and event names, the base fields on every event,
throttled progress events."""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any

log = logging.getLogger(__name__)

EventSink = Callable[[dict[str, Any]], None]


class Phase(StrEnum):
    """The phases of a job, in order (contract §10), as events and reports spell them."""

    PRE_VALIDATION = "Pre-Validation"
    ACQUISITION = "Acquisition"
    MEDIA_MAPPING = "Media Mapping"
    ENCODING = "Encoding"
    PACKAGING = "DRM + Packaging"
    IMAGE_EXTRACTION = "Image Extraction"
    PUBLISHING = "Publishing"


class EventType(StrEnum):
    """Every event's `MessageType` (contract §8)."""

    JOB_CREATED = "JobCreated"
    ACQUISITION_PROGRESS = "AcquisitionProgress"
    CONTENT_ACQUIRED = "ContentAcquired"
    CONTENT_MAPPED = "ContentMapped"
    CONTENT_PRE_PROCESSED = "ContentPreProcessed"
    VIDEO_ENCODING_STARTED = "VideoEncodingStarted"
    ENCODING_PROGRESS = "EncodingProgress"
    ENCODING_FINISHED = "EncodingFinished"
    IMAGES_EXTRACTED = "ImagesExtracted"
    PUBLISHING_PROGRESS = "PublishingProgress"
    CONTENT_PUBLISHED = "ContentPublished"
    JOB_SUCCESS = "JobSuccess"
    WARNING = "Warning"
    FINAL_ERROR = "FinalError"


# The phase each event belongs to (a FinalError names its own; a Warning any).
EVENT_PHASE: dict[EventType, Phase] = {
    EventType.JOB_CREATED: Phase.PRE_VALIDATION,
    EventType.ACQUISITION_PROGRESS: Phase.ACQUISITION,
    EventType.CONTENT_ACQUIRED: Phase.ACQUISITION,
    EventType.CONTENT_MAPPED: Phase.MEDIA_MAPPING,
    EventType.CONTENT_PRE_PROCESSED: Phase.MEDIA_MAPPING,
    EventType.VIDEO_ENCODING_STARTED: Phase.ENCODING,
    EventType.ENCODING_PROGRESS: Phase.ENCODING,
    EventType.ENCODING_FINISHED: Phase.PACKAGING,
    EventType.IMAGES_EXTRACTED: Phase.IMAGE_EXTRACTION,
    EventType.PUBLISHING_PROGRESS: Phase.PUBLISHING,
    EventType.CONTENT_PUBLISHED: Phase.PUBLISHING,
    EventType.JOB_SUCCESS: Phase.PUBLISHING,
}


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


class EventEmitter:
    """Builds events with the base fields and hands each to every sink, in order.

    A sink that raises is logged and skipped: event delivery never fails a job.
    """

    def __init__(
        self,
        job_id: str,
        tenant_id: str,
        external: tuple[str, str, str] = ("", "", ""),
        sinks: list[EventSink] | None = None,
    ):
        self.base = {
            "JobId": job_id,
            "TenantId": tenant_id,
            "ExternalId": external[0],
            "ExternalType": external[1],
            "ExternalProvider": external[2],
        }
        self.sinks = list(sinks or [])
        self.history: list[dict[str, Any]] = []
        self._last_progress: dict[str, tuple[float, int]] = {}

    def emit(self, message_type: EventType, **fields: Any) -> dict[str, Any]:
        event = {**self.base, "MessageType": str(message_type), "Timestamp": utc_now(), **fields}
        self.history.append(event)
        for sink in self.sinks:
            try:
                sink(event)
            except Exception:
                log.exception(
                    "job %s: an event sink failed for %s", self.base["JobId"], message_type
                )
        return event

    def progress(self, message_type: EventType, percent: float, **fields: Any) -> None:
        """Emit a progress event at most once per second and once per whole percent (100
        always goes out once)."""
        whole = int(max(0.0, min(100.0, percent)))
        now = time.monotonic()
        last_time, last_whole = self._last_progress.get(message_type, (-1e9, -1))
        if whole == last_whole or (whole < 100 and now - last_time < 1.0):
            return
        self._last_progress[message_type] = (now, whole)
        self.emit(message_type, Progress=whole, **fields)

    def warning(self, code: str, message: str) -> None:
        log.warning("job %s: %s", self.base["JobId"], message)
        self.emit(EventType.WARNING, Code=code, Message=message)
