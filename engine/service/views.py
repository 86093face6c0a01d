"""What `GET /Job/{JobId}` answers, built from a stored job and its events."""

from __future__ import annotations

import datetime
import json
from typing import Any

from engine.events import EventType
from engine.service.store import JobRow, Store


def job_view(store: Store, row: JobRow) -> dict[str, Any]:
    """`GET /Job/{JobId}`: state, phase, progress, events so far, outputs."""
    events = store.events(row.id)
    key_ids = [item["KeyId"] for item in json.loads(row.key_ids or "[]")]
    view: dict[str, Any] = {
        "JobId": row.id,
        "TenantId": row.tenant_id,
        "ExternalId": row.external_id,
        "ExternalType": row.external_type,
        "ExternalProvider": row.external_provider,
        "State": row.state,
        "Phase": row.phase,
        "Progress": row.progress,
        "CancelRequested": row.cancel_requested,
        "CreatedTime": _iso(row.created_at),
        "StartTime": _iso(row.started_at),
        "FinishedTime": _iso(row.finished_at),
        "Attempts": row.attempts,
        "Encoder": row.encoder,
        "Queue": row.queue,
        "Worker": row.worker,
        "Job": json.loads(row.summary),
        "Events": events,
        "Outputs": _outputs(events),
    }
    if len(key_ids) == 1:
        view["KeyId"] = key_ids[0]
    elif key_ids:
        view["KeyIds"] = key_ids
    if row.error_code is not None:
        view["ErrorCode"] = row.error_code
        view["ErrorMessage"] = row.error_message
    return view


def _outputs(events: list[dict[str, Any]]) -> dict[str, Any]:
    """What the job produced so far: streams, published location and manifests, images."""
    outputs: dict[str, Any] = {}
    for event in events:
        kind = event.get("MessageType")
        if kind == EventType.ENCODING_FINISHED:
            outputs["Streams"] = event.get("Streams", [])
        elif kind == EventType.CONTENT_PUBLISHED:
            for name in ("Location", "FilesCount", "BytesCount", "Manifests"):
                outputs[name] = event.get(name)
        elif kind == EventType.IMAGES_EXTRACTED:
            outputs["Images"] = {"Path": event.get("Path"), "Images": event.get("Images", [])}
    return outputs


def _iso(moment: datetime.datetime | None) -> str | None:
    return moment.isoformat(timespec="milliseconds") if moment else None
