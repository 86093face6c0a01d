"""Job events (contract §8): the base fields on every event, throttled progress events."""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

EventSink = Callable[[dict[str, Any]], None]

PHASES = (
    "Pre-Validation",
    "Acquisition",
    "Media Mapping",
    "Encoding",
    "DRM + Packaging",
    "Image Extraction",
    "Publishing",
)


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

    def set_external(self, external_id: str, external_type: str, external_provider: str) -> None:
        self.base.update(
            ExternalId=external_id, ExternalType=external_type, ExternalProvider=external_provider
        )

    def emit(self, message_type: str, **fields: Any) -> dict[str, Any]:
        event = {**self.base, "MessageType": message_type, "Timestamp": utc_now(), **fields}
        self.history.append(event)
        for sink in self.sinks:
            try:
                sink(event)
            except Exception:
                log.exception(
                    "job %s: an event sink failed for %s", self.base["JobId"], message_type
                )
        return event

    def progress(self, message_type: str, percent: float, **fields: Any) -> None:
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
        self.emit("Warning", Code=code, Message=message)
