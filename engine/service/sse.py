"""Server-Sent Events of jobs: `GET /Job/{JobId}/events` and `GET /events` (the tenant's).

Each stored job event goes out as one SSE message whose `data` is exactly the body the
publishers send (contract §8) and whose `id` is its number in the store, so that a client that
reconnects with `Last-Event-ID` continues where it stopped. A second kind, `event: job`, carries
the job's summary (state, phase, progress, encoder, times; job_summary)
whenever it changes: a state is not an event of the contract, and the console shows it. The job
stream ends with `event: end` once the job is final and its last event sent; the tenant stream
starts at the tenant's newest event (and the jobs changed in the last seconds) and runs until the
client leaves or `max_seconds` pass (clients reconnect). A comment line keeps idle streams open
through proxies.

Authentication is the API's own: the `Authorization` header. Browsers' EventSource cannot send
headers, so the console reads the stream with fetch() and parses it itself (engine/service/
console/static/sse.js). That keeps credentials out of URLs (and so out of access logs and
history) and needs no second, short-lived token type with its own expiry and revocation.

Nothing blocks the API's shared thread pool: a stream is an async generator on the event loop
that polls the store every `poll_seconds` with short reads in worker threads bounded by their
own limiter (`threads`), and each tenant may hold at most `max_per_tenant` streams at once
(429 beyond), so one tenant's open tabs cannot take the server's connections or threads.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.to_thread
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy import func, select
from starlette.types import Receive, Scope, Send

from engine.service.store import CANCELLED, FAILED, SUCCEEDED, EventRow, JobRow, Store

log = logging.getLogger(__name__)

FINAL_STATES = (SUCCEEDED, FAILED, CANCELLED)
TENANT_BATCH = 500  # events read per poll of a tenant stream
RECENT_SECONDS = 10.0  # a new tenant stream first sends the jobs changed this recently
OVERLAP_SECONDS = 5.0  # re-read job rows this far back (clocks of workers on other nodes)


class _Stream(StreamingResponse):
    """A streaming answer that frees its tenant slot however it ends (even unstarted)."""

    def __init__(self, body: AsyncIterator[str], release: Callable[[], None]):
        super().__init__(
            body,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


class EventStreams:
    """The SSE streams of one API: the per-tenant bound and the store polling."""

    def __init__(
        self,
        store: Store,
        *,
        max_per_tenant: int = 8,
        poll_seconds: float = 0.25,
        keepalive_seconds: float = 15.0,
        max_seconds: float = 600.0,
        threads: int = 4,
    ):
        self.store = store
        self.max_per_tenant = max_per_tenant
        self.poll_seconds = poll_seconds
        self.keepalive_seconds = keepalive_seconds
        self.max_seconds = max_seconds
        self.threads = threads
        self.open: dict[str, int] = {}
        self._limiter: anyio.CapacityLimiter | None = None

    # -- answers -------------------------------------------------------------------------

    def job_response(self, request: Request, tenant_id: str, job_id: str) -> Response:
        """The SSE answer of one job (the caller checked it is the tenant's)."""
        return self._response(tenant_id, self._job_stream(job_id, _last_event_id(request)))

    async def tenant_response(self, request: Request, tenant_id: str) -> Response:
        """The SSE answer of all the tenant's jobs: from `Last-Event-ID`, else from the
        tenant's newest event now (read before the answer starts, so that nothing stored
        after the client saw the headers is missed)."""
        last_id = _last_event_id(request)
        if last_id <= 0:
            last_id = await self._read(self._newest_event, tenant_id)
        return self._response(tenant_id, self._tenant_stream(tenant_id, last_id))

    def _response(self, tenant_id: str, body: AsyncIterator[str]) -> Response:
        if self.open.get(tenant_id, 0) >= self.max_per_tenant:
            log.info("tenant %s: event stream refused (%d open)", tenant_id, self.max_per_tenant)
            return JSONResponse(
                {"Message": f"Too many event streams: at most {self.max_per_tenant} per tenant"},
                status_code=429,
                headers={"Retry-After": "5"},
            )
        self.open[tenant_id] = self.open.get(tenant_id, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.open[tenant_id] -= 1
                if not self.open[tenant_id]:
                    del self.open[tenant_id]

        return _Stream(body, release)

    # -- streams -------------------------------------------------------------------------

    async def _job_stream(self, job_id: str, last_id: int) -> AsyncIterator[str]:
        yield "retry: 2000\n\n"
        started = last_sent = time.monotonic()
        shown: tuple[Any, ...] | None = None
        final_polls = 0
        while time.monotonic() - started < self.max_seconds:
            events, row = await self._read(self._job_read, job_id, last_id)
            chunk = []
            for event_id, body in events:
                chunk.append(f"id: {event_id}\ndata: {body}\n\n")
                last_id = event_id
            if row is None:  # deleted meanwhile
                chunk.append("event: end\ndata: {}\n\n")
                yield "".join(chunk)
                return
            summary = _summary(row)
            if _signature(summary) != shown:
                shown = _signature(summary)
                chunk.append(f"event: job\ndata: {json.dumps(summary)}\n\n")
            # final, and no event came in two polls: the stream has said everything
            final_polls = final_polls + 1 if row.state in FINAL_STATES and not events else 0
            if final_polls >= 2:
                chunk.append("event: end\ndata: {}\n\n")
            if chunk:
                last_sent = time.monotonic()
                yield "".join(chunk)
                if final_polls >= 2:
                    return
            elif time.monotonic() - last_sent > self.keepalive_seconds:
                last_sent = time.monotonic()
                yield ": keepalive\n\n"
            await asyncio.sleep(self.poll_seconds)

    async def _tenant_stream(self, tenant_id: str, last_id: int) -> AsyncIterator[str]:
        yield "retry: 2000\n\n"
        now = datetime.datetime.now(datetime.UTC)
        since = now - datetime.timedelta(seconds=RECENT_SECONDS)
        shown: dict[str, tuple[Any, ...]] = {}
        started = last_sent = time.monotonic()
        while time.monotonic() - started < self.max_seconds:
            polled_at = datetime.datetime.now(datetime.UTC)
            events, rows = await self._read(self._tenant_read, tenant_id, last_id, since)
            since = polled_at - datetime.timedelta(seconds=OVERLAP_SECONDS)
            chunk = []
            for event_id, body in events:
                chunk.append(f"id: {event_id}\ndata: {body}\n\n")
                last_id = event_id
            for row in rows:
                summary = _summary(row)
                if shown.get(row.id) != _signature(summary):
                    shown[row.id] = _signature(summary)
                    chunk.append(f"event: job\ndata: {json.dumps(summary)}\n\n")
            if len(shown) > 10_000:  # bound the memory of a long stream of a busy tenant
                shown.clear()
            if chunk:
                last_sent = time.monotonic()
                yield "".join(chunk)
            elif time.monotonic() - last_sent > self.keepalive_seconds:
                last_sent = time.monotonic()
                yield ": keepalive\n\n"
            if len(events) < TENANT_BATCH:
                await asyncio.sleep(self.poll_seconds)

    # -- store reads (in worker threads of the streams' own limiter) ----------------------

    async def _read(self, function: Callable[..., Any], *args: Any) -> Any:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.threads)
        return await anyio.to_thread.run_sync(function, *args, limiter=self._limiter)

    def _job_read(self, job_id: str, after: int) -> tuple[list[tuple[int, str]], JobRow | None]:
        with self.store.reading() as session:
            events = session.execute(
                select(EventRow.id, EventRow.body)
                .where(EventRow.job_id == job_id, EventRow.id > after)
                .order_by(EventRow.id)
                .limit(TENANT_BATCH)
            ).all()
            row = session.get(JobRow, job_id)
            return [(int(i), str(b)) for i, b in events], row

    def _newest_event(self, tenant_id: str) -> int:
        with self.store.reading() as session:
            newest = session.scalar(
                select(func.max(EventRow.id))
                .join(JobRow, JobRow.id == EventRow.job_id)
                .where(JobRow.tenant_id == tenant_id)
            )
            return int(newest or 0)

    def _tenant_read(
        self, tenant_id: str, after: int, since: datetime.datetime
    ) -> tuple[list[tuple[int, str]], list[JobRow]]:
        with self.store.reading() as session:
            events = session.execute(
                select(EventRow.id, EventRow.body)
                .join(JobRow, JobRow.id == EventRow.job_id)
                .where(JobRow.tenant_id == tenant_id, EventRow.id > after)
                .order_by(EventRow.id)
                .limit(TENANT_BATCH)
            ).all()
            rows = list(
                session.scalars(
                    select(JobRow)
                    .where(JobRow.tenant_id == tenant_id, JobRow.updated_at >= since)
                    .order_by(JobRow.updated_at)
                )
            )
            return [(int(i), str(b)) for i, b in events], rows


def job_summary(row: JobRow) -> dict[str, Any]:
    """One row of the jobs list: what the console shows, nothing secret."""

    def iso(moment: Any) -> str | None:
        return moment.isoformat(timespec="milliseconds") if moment else None

    summary: dict[str, Any] = {
        "JobId": row.id,
        "ExternalId": row.external_id,
        "ExternalType": row.external_type,
        "State": row.state,
        "Phase": row.phase,
        "Progress": row.progress,
        "Encoder": row.encoder,
        "CreatedTime": iso(row.created_at),
        "StartTime": iso(row.started_at),
        "FinishedTime": iso(row.finished_at),
        "UpdatedTime": iso(row.updated_at),
    }
    if row.error_code is not None:
        summary["ErrorCode"] = row.error_code
    return summary


def _summary(row: JobRow) -> dict[str, Any]:
    return job_summary(row)


def _signature(summary: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(summary.get(k) for k in ("State", "Phase", "Progress", "Encoder", "ErrorCode"))


def _last_event_id(request: Request) -> int:
    """The `Last-Event-ID` a reconnecting client sends (0 when none or not a number)."""
    try:
        return max(0, int(request.headers.get("last-event-id", "0")))
    except ValueError:
        return 0


__all__ = ["EventStreams", "job_summary"]
