"""Cancellation: a token the orchestrator checks between frames and file transfers."""

from __future__ import annotations

import threading

from engine.errors import Cancelled


class CancelToken:
    """Set from any thread (an API request, Ctrl-C, a store flag); checked by the job."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = "the job was cancelled"

    def cancel(self, reason: str | None = None) -> None:
        if reason:
            self.reason = reason
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise Cancelled if cancellation was requested."""
        if self._event.is_set():
            raise Cancelled(self.reason)

    def wait(self, seconds: float) -> bool:
        return self._event.wait(seconds)
