"""The HTTPS Encoding API (contract §1): FastAPI on uvicorn, TLS only.

    vipe serve --host 127.0.0.1 --port 8443 --data-dir DIR [--workers N] [--strict]
               [--jwks-url URL | --jwt-public-key FILE] [--jwt-issuer ISS] [--jwt-audience AUD]
               [--cert FILE --key FILE] [--max-body BYTES]

- `POST /Job` (auth): 201 `{"JobId", "KeyId" or "KeyIds", "ExternalId", "ExternalType",
  "ExternalProvider"}`; 400 with every field error; 502/503 when the Key Service refuses or is
  down.
- `DELETE /Job/{JobId}` and `POST /Job/{JobId}/Cancel` (auth): 200 with the requested URL as a
  JSON string; 404 unknown; 409 finished.
- `GET /Job/{JobId}` (auth, extension): state, phase, progress, events so far, outputs.
- `GET /certificate`: base64 of the DER certificate for credentials protection.
- `GET /reporting/{JobId}`, `/reporting/{year}/{month}`, `/reporting` (auth): §9 entries of the
  caller's tenant (a month by job start, UTC; a job that never started by its creation).
- `GET /api/help`: interactive OpenAPI docs; the JSON at `/api/help/openapi.json`.
- `GET /health`, `GET /metrics`: liveness (and store reachability; with a Celery queue the
  queue and the workers alive, `Workers` then a list); Prometheus text.

Every answer is JSON (except the docs page and the metrics), errors as `{"Message": ...}`, 400
with `"Errors": [{"Field", "Message"}]`. Paths match case-insensitively (`/job` is `/Job`), as
clients of the hosted service may rely on. Request bodies over `--max-body` (default 1 MiB) get
413 before they are read. Another tenant's job answers 404, exactly as an unknown one.

TLS: `--cert/--key`, else a self-signed certificate made at first start in the data folder
(`tls-certificate.pem`, `tls-key.pem`; EC P-256; names localhost, the host name, 127.0.0.1, ::1
and `--host`), its SHA-256 fingerprint printed at every start so that clients can pin it. There
is no plain-HTTP listener: a plain request to the port ends in a failed TLS handshake.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import hashlib
import ipaddress
import json
import logging
import os
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.chunks import ChunkSettings
from engine.config import data_dir as default_data_dir
from engine.policy import TRUSTED, JobPolicy
from engine.service.auth import (
    UNAUTHORIZED_MESSAGE,
    Authenticator,
    AuthSettings,
    NotAuthorized,
    Principal,
)
from engine.service.console import check_submission, install_console
from engine.service.jobs import (
    InvalidJob,
    JobService,
    KeyServiceFailed,
    ServiceOptions,
    Submission,
)
from engine.service.queue import InProcessQueue, JobQueue
from engine.service.store import CancelOutcome, JobSealer, Store, TenantQueueFull, database_url
from engine.service.tenants import TenantRegistry, make_private
from engine.service.views import job_view

if TYPE_CHECKING:
    from drm.credentials import ServiceKey

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 1024 * 1024
MAX_JSON_DEPTH = 32  # a job nests 5 levels; deeper bodies are refused before parsing
STAGE_WORKERS = 4  # threads for POST /Job's own steps (create_app)
RETRY_AFTER_SECONDS = 30  # told with a 429: when a full tenant queue may have room again
TLS_CERTIFICATE_FILE = "tls-certificate.pem"
TLS_KEY_FILE = "tls-key.pem"


@dataclass
class ServerSettings:
    """Everything `vipe serve` configures."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8443
    workers: int = 1
    strict: bool = False
    auth: AuthSettings = field(default_factory=AuthSettings)
    max_body: int = DEFAULT_MAX_BODY
    certificate: Path | None = None
    key: Path | None = None
    database_url: str | None = None  # default: VIPE_DATABASE_URL, else SQLite in data_dir
    lease_seconds: float = 60.0
    max_attempts: int = 3
    drain_seconds: float = 10.0  # at stop: time for running jobs to end before they are requeued
    # Builds the queue for the service (default: InProcessQueue with `workers` threads).
    queue_factory: Callable[[JobService], JobQueue] | None = None
    # Fairness: Queued jobs per tenant (429 beyond) and its jobs running at once here.
    max_queued_per_tenant: int | None = 100
    max_running_per_tenant: int | None = 4
    # POST /Job of a Managed job: the Key Service's total time (503 beyond), on its own pool.
    key_service_deadline: float = 15.0
    key_service_workers: int = 4
    # What jobs may touch (engine.policy). `vipe serve` builds it from its flags (no
    # --local-root: Local refused; egress restricted); embedding code gives its own.
    policy: JobPolicy = TRUSTED
    # The in-process pool's chunking (engine.chunks.ChunkSettings; `--chunk-workers N`):
    # each job's video in chunks encoded by N processes of this node. None: one pass.
    chunking: ChunkSettings | None = None


# --------------------------------------------------------------------------- middleware


class BodyTooLarge(Exception):
    """A request body grew over the limit while being read (no or a false Content-Length)."""


class BodyLimitMiddleware:
    """413 for bodies over `limit` bytes: at once by Content-Length, else while reading."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                too_large = int(length) > self.limit
            except ValueError:
                await _send_json(send, 400, {"Message": "Content-Length is not a number"})
                return
            if too_large:
                await _send_json(send, 413, _too_large_body(self.limit))
                return
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message.get("type") == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge()
            return message

        await self.app(scope, limited_receive, send)


class PathCaseMiddleware:
    """Routes match case-insensitively: the fixed segments are rewritten to their spelling."""

    NAMES = ("Job", "reporting", "certificate", "health", "metrics", "api", "console", "events")
    FIRST = {s.lower(): s for s in NAMES}
    JOB_ACTIONS = {s.lower(): s for s in ("Cancel", "events", "output", "ClearKey")}

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            path = scope.get("path", "")
            segments = path.split("/")
            if len(segments) > 1 and segments[1].lower() in self.FIRST:
                segments[1] = self.FIRST[segments[1].lower()]
                if segments[1] == "Job" and len(segments) >= 4:
                    segments[3] = self.JOB_ACTIONS.get(segments[3].lower(), segments[3])
                if segments[1] == "Job" and len(segments) == 3:
                    segments[2] = {"validate": "Validate"}.get(segments[2].lower(), segments[2])
                if segments[1] == "api" and len(segments) > 2 and segments[2].lower() == "help":
                    segments[2] = "help"
                rewritten = "/".join(segments)
                if rewritten != path:
                    scope = dict(scope, path=rewritten, raw_path=rewritten.encode())
        await self.app(scope, receive, send)


async def _send_json(send, status: int, body: Any) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


def _too_large_body(limit: int) -> dict[str, str]:
    return {"Message": f"The request body is larger than {limit} bytes"}


def _message(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"Message": message, **extra}, status_code=status)


# -------------------------------------------------------------------------------- the app


def create_app(settings: ServerSettings) -> FastAPI:
    """The API with its store, service and queue (started and stopped by the app's
    lifespan). `app.state` holds `store`, `service`, `queue`, `authenticator`."""
    folder = settings.data_dir
    make_private(folder)  # keys, tenants, jobs: 0700, whoever made it
    from drm.credentials import ServiceKey

    service_key = ServiceKey.load_or_create(folder)
    store = Store(settings.database_url or database_url(folder), JobSealer.load_or_create(folder))
    store.migrate()
    make_private(folder)  # and its files 0600 (the certificates, the database) once made
    service = JobService(store, _service_options(settings), service_key)
    queue = (
        settings.queue_factory(service)
        if settings.queue_factory
        else InProcessQueue(service, settings.workers)
    )
    authenticator = Authenticator(settings.auth, TenantRegistry(folder))
    # Key Service calls of POST /Job wait here, never on the shared thread pool that serves
    # /health, /metrics and the reads.
    key_pool = concurrent.futures.ThreadPoolExecutor(
        max(1, settings.key_service_workers), thread_name_prefix="vipe-keys"
    )
    # The steps of POST /Job in a thread (checks, sealing, the hand-over to the store) are
    # Python under one GIL: a few threads keep one slow filesystem check from holding up the
    # rest, more only hand the GIL around (on the shared pool 20 requests took 20 threads).
    stage_pool = concurrent.futures.ThreadPoolExecutor(
        STAGE_WORKERS, thread_name_prefix="vipe-stage"
    )
    app = FastAPI(
        title="vipe Encoding API",
        version="1",
        description=(
            "Self-hosted Encoding API: the job JSON, endpoints and events of the hosted "
            "Axinom Encoding service. Authenticate with `Authorization: Bearer <JWT>` or "
            "`Authorization: Tenant-Auth <management key>`."
        ),
        docs_url=None,  # served below from local files: nothing is fetched from a CDN
        redirect_slashes=False,  # `/Job/` is 404, not a redirect built from the Host header
        openapi_url="/api/help/openapi.json",
        redoc_url=None,
        lifespan=_lifespan(queue, store, (key_pool, stage_pool), settings),
    )
    _interactive_docs(app)
    app.state.store = store
    app.state.service = service
    app.state.queue = queue
    app.state.authenticator = authenticator
    app.state.settings = settings
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body)
    app.add_middleware(PathCaseMiddleware)
    _exception_handlers(app, settings.max_body)

    principal = _principal_dependency(authenticator)
    app.include_router(
        _submission_routes(service, queue, key_pool, stage_pool, settings, principal)
    )
    app.include_router(_job_routes(store, service, queue, principal))
    app.include_router(_certificate_routes(service_key))
    app.include_router(_reporting_routes(store, principal))
    app.include_router(_operation_routes(store, service, queue, settings))
    install_console(app, store, service, principal)  # /console, job list, events, preview
    return app


def _service_options(settings: ServerSettings) -> ServiceOptions:
    """What the job service takes of the server's settings."""
    return ServiceOptions(
        data_dir=settings.data_dir,
        strict=settings.strict,
        lease_seconds=settings.lease_seconds,
        max_attempts=settings.max_attempts,
        policy=settings.policy,
        max_queued_per_tenant=settings.max_queued_per_tenant,
        max_running_per_tenant=settings.max_running_per_tenant,
        key_service_deadline=settings.key_service_deadline,
        key_service_workers=settings.key_service_workers,
        chunking=settings.chunking,
    )


def _lifespan(
    queue: JobQueue,
    store: Store,
    pools: tuple[concurrent.futures.ThreadPoolExecutor, ...],
    settings: ServerSettings,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The app's lifespan: the queue starts with the app; at stop the POST /Job pools (Key
    Service, staging) are dropped, the queue drained (running jobs requeued after
    `settings.drain_seconds`), the store closed."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(queue.start)
        try:
            yield
        finally:
            for pool in pools:
                pool.shutdown(wait=False, cancel_futures=True)
            await run_in_threadpool(queue.stop, settings.drain_seconds)
            store.close()

    return lifespan


def _principal_dependency(
    authenticator: Authenticator,
) -> Callable[[Request], Awaitable[Principal]]:
    """The `principal` dependency of every authenticated route: the caller, else 401."""

    async def principal(request: Request) -> Principal:
        authorization = request.headers.get("authorization")
        try:
            if authenticator.fetches_keys:  # a JWKS download may wait on the network
                return await run_in_threadpool(authenticator.authenticate, authorization)
            # In memory but for one stat of the tenants file: no thread hop (it cost more
            # than the check itself).
            return authenticator.authenticate(authorization)
        except NotAuthorized as refused:
            log.info("request %s %s refused: %s", request.method, request.url.path, refused.reason)
            raise

    return principal


# -- jobs -------------------------------------------------------------------------------


def _submission_routes(
    service: JobService,
    queue: JobQueue,
    key_pool: concurrent.futures.ThreadPoolExecutor,
    stage_pool: concurrent.futures.ThreadPoolExecutor,
    settings: ServerSettings,
    principal: Callable[[Request], Awaitable[Principal]],
) -> APIRouter:
    """`POST /Job` and `POST /Job/Validate`."""
    router = APIRouter()

    @router.post(
        "/Job",
        status_code=201,
        tags=["Job"],
        summary="Create a job: validate, resolve DRM keys, store, enqueue",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        },
        responses={400: {"description": "invalid job, every field error listed"}},
    )
    async def create_job(request: Request, who: Principal = Depends(principal)):
        document = await _json_body(request)
        if isinstance(document, JSONResponse):
            return document
        loop = asyncio.get_running_loop()
        try:
            staged = await loop.run_in_executor(
                stage_pool, _stage, service, document, who.tenant_id
            )
            if isinstance(staged, Submission):  # a Key Service to ask, under its deadline
                keys = await _creation_keys(
                    service, key_pool, settings.key_service_deadline, staged
                )
                staged = await loop.run_in_executor(stage_pool, service.accept_future, staged, keys)
            # the store commits the jobs waiting for it together; no thread waits for it
            answer = await asyncio.wrap_future(staged)
        except InvalidJob as invalid:
            return _message(400, invalid.message, Errors=[e.as_json() for e in invalid.errors])
        except KeyServiceFailed as failed:
            return _message(failed.status, failed.message)
        except TenantQueueFull as full:
            return JSONResponse(
                {"Message": f"Too many queued jobs: at most {full.limit} per tenant"},
                status_code=429,
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        await _enqueue(queue, answer["JobId"])
        return JSONResponse(answer, status_code=201)

    @router.post(
        "/Job/Validate",
        tags=["Job"],
        summary="Check a job as POST /Job would, without creating it (console)",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        },
    )
    async def validate_job(request: Request, who: Principal = Depends(principal)):
        """200 `{"Valid", "Errors", "Warnings"}`: every problem with its JSON path; nothing is
        stored and no Key Service is asked."""
        document = await _json_body(request)
        if isinstance(document, JSONResponse):
            return document
        return await run_in_threadpool(check_submission, service, document, who.tenant_id)

    return router


def _stage(
    service: JobService, document: Any, tenant_id: str
) -> Submission | concurrent.futures.Future[dict[str, Any]]:
    """The steps of `POST /Job` that need no network, in one thread: checks, local keys
    and the hand-over to the store. The Submission back when a Key Service is to be asked."""
    submission = service.prepare(document, tenant_id)
    if submission.asks_key_service:
        return submission
    return service.accept_future(submission, service.creation_keys(submission))


async def _creation_keys(
    service: JobService,
    key_pool: concurrent.futures.ThreadPoolExecutor,
    deadline: float,
    submission: Submission,
) -> Any:
    """The job's keys; a Key Service is asked on `key_pool`, awaited without holding a
    thread, and given `deadline` seconds in all (503 beyond)."""
    if not submission.asks_key_service:
        return await run_in_threadpool(service.creation_keys, submission)
    future = key_pool.submit(service.creation_keys, submission)
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), deadline)
    except TimeoutError:
        future.cancel()  # still waiting for a thread: never asks; else it ends by itself
        log.warning(
            "job %s: the Key Service did not answer within %g s", submission.job_id, deadline
        )
        raise KeyServiceFailed(
            f"The Key Service did not provide the content keys within {deadline:g} s", 503
        ) from None


async def _enqueue(queue: JobQueue, job_id: str) -> None:
    """Hand a stored job to the queue; a failure is logged (the job is stored: a queue sweep
    or the next start runs it)."""
    try:
        if isinstance(queue, InProcessQueue):  # a notify: no thread needed
            queue.enqueue(job_id)
        else:  # in a thread: a Celery queue publishes to its broker (network, retries)
            await run_in_threadpool(queue.enqueue, job_id)
    except Exception:  # the job is stored: a queue sweep or the next start runs it
        log.exception("job %s: stored, but the queue did not take it now", job_id)


def _job_routes(
    store: Store,
    service: JobService,
    queue: JobQueue,
    principal: Callable[[Request], Awaitable[Principal]],
) -> APIRouter:
    """`GET /Job/{JobId}`, `DELETE /Job/{JobId}` and `POST /Job/{JobId}/Cancel`."""
    router = APIRouter()

    @router.get("/Job/{JobId}", tags=["Job"], summary="State, phase, progress, events, outputs")
    def get_job(JobId: str, who: Principal = Depends(principal)):
        row = store.get_job(JobId, who.tenant_id)
        if row is None:
            return _not_found()
        return job_view(store, row)

    def cancel(job_id: str, who: Principal, request: Request) -> JSONResponse:
        outcome = service.cancel(job_id, who.tenant_id)
        if outcome == CancelOutcome.UNKNOWN:
            return _not_found()
        if outcome == CancelOutcome.FINISHED:
            return _message(409, "The job has already finished")
        if outcome == CancelOutcome.RUNNING:
            queue.cancel(job_id)
        return JSONResponse(str(request.url), status_code=200)

    @router.delete("/Job/{JobId}", tags=["Job"], summary="Cancel a job (FinalError 5001)")
    def delete_job(JobId: str, request: Request, who: Principal = Depends(principal)):
        return cancel(JobId, who, request)

    @router.post("/Job/{JobId}/Cancel", tags=["Job"], summary="Cancel a job (FinalError 5001)")
    def cancel_job(JobId: str, request: Request, who: Principal = Depends(principal)):
        return cancel(JobId, who, request)

    return router


# -- certificate, reporting -------------------------------------------------------------


def _certificate_routes(service_key: ServiceKey) -> APIRouter:
    """`GET /certificate`: the certificate clients encrypt their secrets with."""
    router = APIRouter()

    @router.get("/certificate", tags=["Certificate"], summary="Certificate for secrets")
    def certificate():
        return JSONResponse(service_key.certificate_base64)

    return router


def _reporting_routes(
    store: Store, principal: Callable[[Request], Awaitable[Principal]]
) -> APIRouter:
    """`GET /reporting`, `/reporting/{year}/{month}`, `/reporting/{JobId}`: the caller's."""
    router = APIRouter()

    @router.get("/reporting", tags=["Reporting"], summary="All reporting entries")
    def reporting_all(who: Principal = Depends(principal)):
        return store.reports(who.tenant_id)

    @router.get("/reporting/{year}/{month}", tags=["Reporting"], summary="Entries of a month (UTC)")
    def reporting_month(year: int, month: int, who: Principal = Depends(principal)):
        if not 1 <= month <= 12 or not 1970 <= year <= 9999:
            return _message(
                400,
                "Invalid month",
                Errors=[{"Field": "month", "Message": "year 1970-9999, month 1-12"}],
            )
        return store.reports(who.tenant_id, year, month)

    @router.get("/reporting/{JobId}", tags=["Reporting"], summary="The reporting entry of a job")
    def reporting_job(JobId: str, who: Principal = Depends(principal)):
        entry = store.report(JobId, who.tenant_id)
        return entry if entry is not None else _not_found()

    return router


# -- operations -------------------------------------------------------------------------


def _operation_routes(
    store: Store, service: JobService, queue: JobQueue, settings: ServerSettings
) -> APIRouter:
    """`GET /health` (liveness, store, data folder, stalled jobs, a cluster queue's state)
    and `GET /metrics` (Prometheus text)."""
    router = APIRouter()
    folder = settings.data_dir

    @router.get("/health", tags=["Operations"], summary="Liveness and store reachability")
    def health():
        try:
            store.count_jobs()
        except Exception as error:
            log.error("health: the job store cannot be read: %s", type(error).__name__)
            return JSONResponse({"Status": "Unhealthy", "Store": "unreachable"}, status_code=503)
        if not _usable_folder(folder):
            log.error("health: the data folder %s is missing or not writable", folder)
            return JSONResponse(
                {"Status": "Unhealthy", "Store": "ok", "DataFolder": "unusable"}, status_code=503
            )
        stalled = queue.stalled_jobs()
        if stalled:
            log.error("health: job(s) without progress or heartbeat: %s", ", ".join(stalled))
            return JSONResponse(
                {"Status": "Unhealthy", "Store": "ok", "DataFolder": "ok", "Stalled": len(stalled)},
                status_code=503,
            )
        answer: dict[str, Any] = {
            "Status": "Healthy",
            "Store": "ok",
            "DataFolder": "ok",
            "Workers": settings.workers,
        }
        describe = getattr(queue, "health", None)
        if describe is not None:  # a cluster queue: the broker and the workers alive
            try:
                answer.update(describe())
            except Exception as error:
                log.error("health: the queue cannot be described: %s", type(error).__name__)
                answer.update(Status="Degraded", Queue="unreachable")
        return answer

    @router.get("/metrics", tags=["Operations"], summary="Prometheus metrics")
    def metrics():
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router


async def _json_body(request: Request) -> Any:
    """The parsed JSON body of a job request, or the 415/400 answer that refuses it."""
    if not _is_json(request.headers.get("content-type")):
        return _message(415, "The request body must be JSON (Content-Type: application/json)")
    body = await request.body()
    if _nesting_deeper_than(body, MAX_JSON_DEPTH):
        return _message(
            400,
            "The request body is nested too deeply",
            Errors=[{"Field": "$", "Message": f"nested deeper than {MAX_JSON_DEPTH} levels"}],
        )
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return _message(
            400,
            "The request body is not valid JSON",
            Errors=[{"Field": "$", "Message": f"not valid JSON: {error}"}],
        )


def _not_found() -> JSONResponse:
    return _message(404, "Job not found")


def _is_json(content_type: str | None) -> bool:
    """Whether a Content-Type is JSON (`application/json`, or a `+json` type)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def _nesting_deeper_than(body: bytes, limit: int) -> bool:
    """Whether JSON text opens more than `limit` arrays/objects at once (strings skipped):
    checked before parsing, whose recursion a deep body would exhaust."""
    depth = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return False


def _usable_folder(folder: Path) -> bool:
    """Whether the data folder is there and this process can write in it."""
    try:
        return folder.is_dir() and os.access(folder, os.R_OK | os.W_OK | os.X_OK)
    except OSError:
        return False


def _interactive_docs(app: FastAPI) -> None:
    """Swagger UI at `/api/help`, its script and style from the `swagger-ui-bundle` wheel."""
    import swagger_ui_bundle
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    app.mount(
        "/api/help/static",
        StaticFiles(directory=str(swagger_ui_bundle.swagger_ui_path)),
        name="swagger-ui",
    )

    @app.get("/api/help", include_in_schema=False)
    def docs() -> Any:
        return get_swagger_ui_html(
            openapi_url="/api/help/openapi.json",
            title="vipe Encoding API",
            swagger_js_url="/api/help/static/swagger-ui-bundle.js",
            swagger_css_url="/api/help/static/swagger-ui.css",
            swagger_favicon_url="/api/help/static/favicon-32x32.png",
        )


def _exception_handlers(app: FastAPI, max_body: int) -> None:
    @app.exception_handler(NotAuthorized)
    async def unauthorized(request: Request, error: NotAuthorized):
        return JSONResponse(
            {"Message": UNAUTHORIZED_MESSAGE},
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer, Tenant-Auth realm="vipe"'},
        )

    @app.exception_handler(BodyTooLarge)
    async def too_large(request: Request, error: BodyTooLarge):
        return JSONResponse(_too_large_body(max_body), status_code=413)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        return JSONResponse(
            {"Message": str(error.detail)},
            status_code=error.status_code,
            headers=getattr(error, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError):
        errors = [
            {
                "Field": ".".join(str(p) for p in item.get("loc", ()) if p not in ("path", "body")),
                "Message": str(item.get("msg", "")),
            }
            for item in error.errors()
        ]
        return JSONResponse({"Message": "Invalid request", "Errors": errors}, status_code=400)

    @app.exception_handler(Exception)
    async def internal(request: Request, error: Exception):
        log.error(
            "request %s %s failed: %s", request.method, request.url.path, type(error).__name__
        )
        return JSONResponse({"Message": "Internal server error"}, status_code=500)


# ------------------------------------------------------------------------------------ TLS


def ensure_tls_certificate(folder: Path, host: str | None = None) -> tuple[Path, Path]:
    """The self-signed server certificate of the data folder, made on first use."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    cert_path, key_path = folder / TLS_CERTIFICATE_FILE, folder / TLS_KEY_FILE
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    make_private(folder)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    hostname = socket.gethostname()
    if hostname and hostname != "localhost":
        names.append(x509.DNSName(hostname))
    addresses = {"127.0.0.1", "::1"}
    if host and host not in ("0.0.0.0", "::", "localhost", hostname):
        try:
            ipaddress.ip_address(host)
            addresses.add(host)
        except ValueError:
            names.append(x509.DNSName(host))
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in sorted(addresses)]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"vipe on {hostname}")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        # Its own CA, so that a client can trust exactly this certificate (verify=cert.pem).
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    descriptor = os.open(cert_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:  # public, but the data folder's files are 0600
        file.write(certificate.public_bytes(serialization.Encoding.PEM))
    log.info("self-signed TLS certificate created in %s", folder)
    return cert_path, key_path


def certificate_fingerprint(cert_path: Path) -> str:
    """SHA-256 of the DER certificate, as `AA:BB:…`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    digest = hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2)).upper()


def uvicorn_config(app: FastAPI, settings: ServerSettings, **extra: Any):
    """The uvicorn configuration: TLS with the given or the self-signed certificate."""
    import uvicorn

    if settings.certificate and settings.key:
        cert_path, key_path = settings.certificate, settings.key
    else:
        cert_path, key_path = ensure_tls_certificate(settings.data_dir, settings.host)
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ssl_certfile=str(cert_path),
        ssl_keyfile=str(key_path),
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=15,
        **extra,
    )


def serve(settings: ServerSettings, *, out=sys.stderr) -> None:
    """Run the API until stopped (SIGINT/SIGTERM: running jobs are queued again)."""
    import uvicorn

    settings.data_dir = default_data_dir(settings.data_dir)
    app = create_app(settings)
    config = uvicorn_config(app, settings)
    fingerprint = certificate_fingerprint(Path(config.ssl_certfile))
    runners = "jobs to the Celery broker" if settings.queue_factory else None
    runners = runners or f"{settings.workers} worker(s)"
    print(
        f"vipe: HTTPS on https://{settings.host}:{settings.port}/ (data folder "
        f"{settings.data_dir}, {runners})\n"
        f"vipe: TLS certificate {config.ssl_certfile}\n"
        f"vipe: SHA-256 fingerprint {fingerprint}",
        file=out,
        flush=True,
    )
    uvicorn.Server(config).run()


__all__ = [
    "BodyLimitMiddleware",
    "ServerSettings",
    "certificate_fingerprint",
    "create_app",
    "ensure_tls_certificate",
    "serve",
    "uvicorn_config",
]
