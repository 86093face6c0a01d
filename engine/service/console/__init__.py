"""The web console of `vipe serve` (`/console`) and the API routes it needs.

The console is static HTML, CSS and JavaScript modules shipped in this package (`static/`):
no CDN, no build step, no framework. It signs in with a `Tenant-Auth` management key or a
bearer JWT kept in the tab's sessionStorage and sends it as the `Authorization` header on every
call, the event streams included (fetch() streaming, see engine.service.sse).

Routes added here (all but the static files need the same auth as the API):

- `GET /console`, `GET /console/{file}`: the page and its modules, with a strict
  Content-Security-Policy (scripts and styles only from this origin, no inline script or
  style attribute, no framing, no plugins); every job string is put in the page as text.
- `GET /Job?State=&Limit=`: the tenant's jobs, newest first (summaries, no events).
- `GET /Job/{JobId}/output/{name}`: a file of the job's published output, read-only, for the
  job's own tenant, only when it was published to `Local` storage, confined to the job's
  `ContentPublishing` folder under the server's policy (symlinks resolved; only media, manifest
  and image files). Lets the preview player play what the job wrote.
- `POST /Job/{JobId}/ClearKey`: the W3C ClearKey license for a `Base64Key` job (the job's own
  key, to its own tenant, who sent it): lets the browser's ClearKey CDM play the encrypted
  preview. Never shown in the page (the page shows key ids only).
- `GET /Job/{JobId}/events`, `GET /events`: Server-Sent Events (engine.service.sse).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select

from engine.service.auth import Principal
from engine.service.jobs import InvalidJob, JobService
from engine.service.sse import EventStreams, job_summary
from engine.service.store import STATES, JobRow, Store, TenantQueueFull

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"

# Scripts, styles, images and media only from this origin (images and media also from blob:
# URLs the player makes); no inline script or style, no eval, no framing, no forms elsewhere.
CONSOLE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "media-src 'self' blob:; connect-src 'self'; font-src 'self'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
# A served output file is data, never a document that runs anything.
OUTPUT_CSP = "default-src 'none'; sandbox"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# What the output endpoint serves: media, manifests, images, text tracks.
OUTPUT_TYPES = {
    ".mpd": "application/dash+xml",
    ".m3u8": "application/vnd.apple.mpegurl",
    ".mp4": "video/mp4",
    ".m4s": "video/iso.segment",
    ".m4a": "audio/mp4",
    ".m4v": "video/mp4",
    ".cmfv": "video/mp4",
    ".cmfa": "audio/mp4",
    ".ts": "video/mp2t",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".vtt": "text/vtt; charset=utf-8",
}
MAX_OUTPUT_FILE = 256 * 1024 * 1024  # one segment or image; bigger is not a preview's business
MAX_LIST = 500


def console_headers(csp: str = CONSOLE_CSP) -> dict[str, str]:
    """The security headers of every console answer."""
    return {"Content-Security-Policy": csp, **SECURITY_HEADERS}


def list_jobs(store: Store, tenant_id: str, state: str | None, limit: int) -> list[dict[str, Any]]:
    """The tenant's jobs, newest first, optionally of one state."""
    query = select(JobRow).where(JobRow.tenant_id == tenant_id)
    if state:
        query = query.where(JobRow.state == state)
    query = query.order_by(JobRow.created_at.desc(), JobRow.id).limit(limit)
    with store.reading() as session:
        return [job_summary(row) for row in session.scalars(query)]


def check_submission(service: JobService, document: Any, tenant_id: str) -> dict[str, Any]:
    """`POST /Job/Validate`: the checks of `POST /Job` that need no network (validation,
    secrets, `Local` roots), nothing stored. `{"Valid", "Errors", "Warnings"}`, each problem
    as `{"Field": JSON path, "Message"}`."""
    try:
        submission = service.prepare(document, tenant_id)
    except InvalidJob as invalid:
        return {"Valid": False, "Errors": [e.as_json() for e in invalid.errors], "Warnings": []}
    except TenantQueueFull as full:
        message = f"valid, but the tenant has {full.limit} queued jobs: POST /Job answers 429 now"
        return {"Valid": True, "Errors": [], "Warnings": [{"Field": "$", "Message": message}]}
    warnings = [w.as_json() for w in submission.warnings]
    return {"Valid": True, "Errors": [], "Warnings": warnings}


def install_console(
    app: FastAPI,
    store: Store,
    service: JobService,
    principal: Callable[..., Awaitable[Principal]],
    *,
    max_streams_per_tenant: int = 8,
) -> EventStreams:
    """Add the console and its routes to `app`; the event streams object is returned (and
    kept as `app.state.streams`)."""
    files = _static_files()
    streams = EventStreams(store, max_per_tenant=max_streams_per_tenant)
    app.state.streams = streams
    app.include_router(_page_routes(files))
    app.include_router(_job_list_routes(store, principal))
    app.include_router(_event_routes(store, streams, principal))
    app.include_router(_preview_routes(store, service, principal))
    return streams


def _page_routes(files: dict[str, bytes]) -> APIRouter:
    """`GET /console`, `GET /console/{file}`: the page and its modules (not in the API docs)."""
    router = APIRouter()

    @router.get("/console", include_in_schema=False)
    def console_index() -> Response:
        return _page(files, "index.html")

    @router.get("/console/{name}", include_in_schema=False)
    def console_file(name: str) -> Response:
        return _page(files, name)

    return router


def _page(files: dict[str, bytes], name: str) -> Response:
    """One of the console's files with its security headers, else 404."""
    data = files.get(name)
    if data is None:
        return JSONResponse({"Message": "Not found"}, status_code=404)
    headers = console_headers()
    headers["Cache-Control"] = "no-cache"
    suffix = Path(name).suffix
    return Response(data, media_type=CONTENT_TYPES[suffix], headers=headers)


def _job_list_routes(store: Store, principal: Callable[..., Awaitable[Principal]]) -> APIRouter:
    """`GET /Job?State=&Limit=`: the tenant's jobs, newest first."""
    router = APIRouter()

    @router.get("/Job", tags=["Job"], summary="The tenant's jobs, newest first (console)")
    async def jobs(
        State: str | None = Query(default=None, max_length=16),
        Limit: int = Query(default=200, ge=1, le=MAX_LIST),
        who: Principal = Depends(principal),
    ):
        if State is not None and State not in STATES:
            return JSONResponse(
                {
                    "Message": "Invalid state",
                    "Errors": [{"Field": "State", "Message": f"one of {', '.join(STATES)}"}],
                },
                status_code=400,
            )
        rows = await run_in_threadpool(list_jobs, store, who.tenant_id, State, Limit)
        return {"Jobs": rows}

    return router


def _event_routes(
    store: Store, streams: EventStreams, principal: Callable[..., Awaitable[Principal]]
) -> APIRouter:
    """`GET /Job/{JobId}/events`, `GET /events`: Server-Sent Events (engine.service.sse)."""
    router = APIRouter()

    @router.get(
        "/Job/{JobId}/events", tags=["Job"], summary="The job's events (Server-Sent Events)"
    )
    async def job_events(JobId: str, request: Request, who: Principal = Depends(principal)):
        row = await run_in_threadpool(store.get_job, JobId, who.tenant_id)
        if row is None:
            return JSONResponse({"Message": "Job not found"}, status_code=404)
        return streams.job_response(request, who.tenant_id, JobId)

    @router.get("/events", tags=["Job"], summary="The tenant's events (Server-Sent Events)")
    async def tenant_events(request: Request, who: Principal = Depends(principal)):
        return await streams.tenant_response(request, who.tenant_id)

    return router


def _preview_routes(
    store: Store, service: JobService, principal: Callable[..., Awaitable[Principal]]
) -> APIRouter:
    """What the preview player needs: `GET /Job/{JobId}/output/{name}` (a file of the job's
    published Local output) and `POST /Job/{JobId}/ClearKey` (a Base64Key job's license)."""
    router = APIRouter()

    @router.get(
        "/Job/{JobId}/output/{name:path}",
        tags=["Job"],
        summary="A file of the job's published Local output (console preview)",
    )
    async def output_file(JobId: str, name: str, who: Principal = Depends(principal)):
        answer = await run_in_threadpool(_read_output, store, service, JobId, who.tenant_id, name)
        if isinstance(answer, JSONResponse):
            return answer
        data, media_type = answer
        headers = console_headers(OUTPUT_CSP)
        headers["Cache-Control"] = "private, no-cache"
        return Response(data, media_type=media_type, headers=headers)

    @router.post("/Job/{JobId}/ClearKey", tags=["Job"], summary="ClearKey license (Base64Key jobs)")
    async def clear_key(JobId: str, request: Request, who: Principal = Depends(principal)):
        body = await request.body()
        try:
            wanted = json.loads(body or b"{}").get("kids", [])
            if not isinstance(wanted, list) or not all(isinstance(k, str) for k in wanted):
                raise ValueError("kids")
        except (ValueError, AttributeError):
            return JSONResponse({"Message": 'Expected {"kids": [...]}'}, status_code=400)
        answer = await run_in_threadpool(_clear_keys, store, JobId, who.tenant_id, wanted)
        if isinstance(answer, JSONResponse):
            return answer
        return JSONResponse(answer, headers={"Cache-Control": "no-store"})

    return router


# ------------------------------------------------------------------------------ helpers


def _static_files() -> dict[str, bytes]:
    """The console's files, read once: only these names are ever served."""
    return {
        path.name: path.read_bytes()
        for path in STATIC.iterdir()
        if path.is_file() and path.suffix in CONTENT_TYPES
    }


def _not_found(message: str = "Job not found") -> JSONResponse:
    return JSONResponse({"Message": message}, status_code=404)


def _read_output(
    store: Store, service: JobService, job_id: str, tenant_id: str, name: str
) -> tuple[bytes, str] | JSONResponse:
    """The bytes and type of `name` in the job's published Local folder, or an error answer.
    Confined: the file's real path (as opened) lies inside the folder's real path, which the
    server's policy admits for this tenant (and outside its data folder)."""
    row = store.get_job(job_id, tenant_id)
    if row is None:
        return _not_found()
    summary = json.loads(row.summary)
    if summary.get("ContentPublishingProvider") != "Local":
        return _message(409, "The job's output is not on Local storage: open its manifest URLs")
    media_type = OUTPUT_TYPES.get(Path(name).suffix.lower())
    parts = name.split("/")
    if media_type is None or any(p in ("", ".", "..") or "\0" in p for p in parts):
        return _not_found("No such output file")
    parsed = urlparse(str(summary.get("ContentPublishingUriPath") or ""))
    if parsed.scheme != "file":
        return _not_found("No such output file")
    policy = service.options.policy
    folder = os.path.realpath(unquote(parsed.path))
    roots = policy.roots_for(tenant_id)
    if roots is not None and not any(Path(folder).is_relative_to(r) for r in roots):
        return _not_found("No such output file")  # the policy changed since: not served
    if any(Path(folder).is_relative_to(p) for p in policy.excluded):
        return _not_found("No such output file")
    try:
        fd = os.open(os.path.join(folder, *parts), os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return _not_found("No such output file")
    with open(fd, "rb") as reader:
        try:
            real = os.readlink(f"/proc/self/fd/{fd}")  # where the opened file really is
        except OSError:
            real = os.path.realpath(os.path.join(folder, *parts))
        info = os.fstat(fd)
        if not Path(real).is_relative_to(folder) or not stat.S_ISREG(info.st_mode):
            return _not_found("No such output file")
        if info.st_size > MAX_OUTPUT_FILE:
            return _message(413, "The file is too large for a preview")
        os.set_blocking(fd, True)
        return reader.read(MAX_OUTPUT_FILE + 1), media_type


def _clear_keys(
    store: Store, job_id: str, tenant_id: str, wanted: list[str]
) -> dict[str, Any] | JSONResponse:
    """The W3C ClearKey license ({"keys": [{"kty", "kid", "k"}]}) of a Base64Key job."""
    from engine.keys import keys_from_job
    from engine.validation import check_job

    row = store.get_job(job_id, tenant_id)
    if row is None:
        return _not_found()
    checked = check_job(store.job_document(row))
    job = checked.job
    if job is None or str(job.content_processing.drm_protection) != "Base64Key":
        return _message(409, "Only a Base64Key job has a key the console may use")
    keys = keys_from_job(job.content_processing, None, (), job_id)
    answer = []
    for key in keys or ():
        kid = _b64url(key.key_id.bytes)
        if not wanted or kid in wanted:
            answer.append({"kty": "oct", "kid": kid, "k": _b64url(key.key)})
    log.info("job %s: ClearKey license for %d key(s)", job_id, len(answer))
    return {"keys": answer, "type": "temporary"}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _message(status: int, message: str) -> JSONResponse:
    return JSONResponse({"Message": message}, status_code=status)


__all__ = ["CONSOLE_CSP", "check_submission", "install_console", "list_jobs"]
