"""The service layer behind the API: accepting jobs, the queue interface, the in-process pool.

`JobService` does the work that does not depend on how jobs travel: `submit` (validate, check
protected secrets, resolve DRM keys, store: what `POST /Job` does), `cancel`, and `execute`
(run one claimed job with `engine.pipeline.run_job`, storing its events and report). A queue
decides where and when `execute` runs:

- `JobQueue` is the interface (`start`, `stop`, `enqueue`, `cancel`), small on purpose so that a
  Celery implementation fits it: the store is the source of truth and `enqueue` only dispatches.
- `InProcessQueue` runs `--workers N` threads in this process that claim Queued jobs from the
  store (oldest first). `--workers 0` accepts and stores jobs without running them.
- `cluster.CeleryQueue` (with `VIPE_BROKER_URL`) routes and sends each job to a Celery
  broker; `vipe worker` processes run them (`ServiceOptions.checkpoints`: a job that comes back
  to the same worker skips its finished phases, see engine.pipeline.checkpoints).

Decisions:

- **Keys at the worker**: `POST /Job` resolves the keys (so that it can answer the key ids and
  refuse a job whose Key Service is down), and stores only the key ids and quality groups. The
  worker gets the keys again: `Base64Key`/`Encrypted` from the job itself, `Managed` by asking
  the Key Service again for the same key ids under the same content id (a CPIX request carries
  the key ids; a Key Service answers the same key for the same id and content). The key ids must
  match what the job was answered, else the job fails with 4001. Key material is never stored.
- **Restart policy (resume)**: a job left Running by a worker that stopped (crash, kill,
  restart) is queued again and run from the start, with a `Warning` event `JobResumed`; after
  `max_attempts` (3) starts it fails with FinalError 5000 instead, so a job that kills its
  worker cannot loop forever. A job whose cancellation was requested ends Cancelled (5001).
  Orphans are found at start (same host, the owning process is gone) and by a sweep that takes
  over jobs whose heartbeat is older than the lease (other hosts sharing a PostgreSQL store).
  A graceful stop (SIGTERM, Ctrl-C) takes no new jobs and gives the running ones
  `drain_seconds` (10) to finish; those still running are then queued again at once and the
  process exits without interrupting them, so no `FinalError` reaches the publishers for a job
  that is resumed (the next start, or another node, runs it again).
- **Cancellation** reaches a running job through its `CancelToken`: at once in this process
  (`InProcessQueue.cancel`), and from any process through the store's cancel flag, which the
  pool's watchdog reads every half second. The pipeline stops between frames and transfers,
  removes partial output and ends with FinalError 5001.
"""

from __future__ import annotations

import abc
import json
import logging
import os
import shutil
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from drm.cpix import KeyServiceError
from drm.keys import DrmKeyError
from engine.cancel import CancelToken
from engine.errors import JobValidationError
from engine.events import EventEmitter
from engine.keys import keys_again, keys_from_job, possible_quality_groups
from engine.locations import location_from_spec
from engine.pipeline import job_created_fields, run_job
from engine.report import ReportFacts, reporting_entry
from engine.service.store import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    STATES,
    CancelOutcome,
    JobRow,
    NewJob,
    SealError,
    Store,
    utcnow,
)
from engine.validation import FieldError, check_job, validate_job

log = logging.getLogger(__name__)

# Which phase an event belongs to (the FinalError names its own).
EVENT_PHASES = {
    "JobCreated": "Pre-Validation",
    "AcquisitionProgress": "Acquisition",
    "ContentAcquired": "Acquisition",
    "ContentMapped": "Media Mapping",
    "ContentPreProcessed": "Media Mapping",
    "VideoEncodingStarted": "Encoding",
    "EncodingProgress": "Encoding",
    "EncodingFinished": "DRM + Packaging",
    "ImagesExtracted": "Image Extraction",
    "PublishingProgress": "Publishing",
    "ContentPublished": "Publishing",
    "JobSuccess": "Publishing",
}


# ------------------------------------------------------------------------------- errors


class InvalidJob(Exception):
    """400: the job is invalid; `errors` lists every problem."""

    def __init__(self, errors: list[FieldError], message: str = "The job is invalid"):
        super().__init__(message)
        self.errors = errors
        self.message = message


class KeyServiceFailed(Exception):
    """502/503: the Key Service refused or could not be reached at job creation."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.message = message
        self.status = status


# ------------------------------------------------------------------------------ metrics


class ServiceMetrics:
    """Prometheus metrics of one server (its own registry, so tests can run several)."""

    def __init__(self, store: Store, queue_depth: Callable[[], int] | None = None):
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_StoreCollector(store))
        self.phase_seconds = Histogram(
            "vipe_phase_duration_seconds",
            "Duration of each phase of succeeded jobs",
            ["phase"],
            buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 14400),
            registry=self.registry,
        )
        self.encoder_in_use = Gauge(
            "vipe_encoder_in_use",
            "Jobs of this server encoding with each encoder now",
            ["encoder"],
            registry=self.registry,
        )
        self.finished = Counter(
            "vipe_jobs_finished",
            "Jobs this server finished, by final state",
            ["state"],
            registry=self.registry,
        )
        self.submitted = Counter(
            "vipe_jobs_submitted", "Jobs accepted by POST /Job", registry=self.registry
        )
        self.running = Gauge(
            "vipe_jobs_running_here", "Jobs running in this process", registry=self.registry
        )


class _StoreCollector:
    """Jobs by state and the queue depth, counted in the store at scrape time (so they are
    right across restarts and across nodes sharing one store)."""

    def __init__(self, store: Store):
        self.store = store

    def describe(self):
        return []

    def collect(self):
        try:
            counts = self.store.count_by_state()
        except Exception:
            log.exception("metrics: the job store cannot be read")
            return
        jobs = GaugeMetricFamily("vipe_jobs", "Jobs in the store by state", labels=["state"])
        for state in STATES:
            jobs.add_metric([state], counts.get(state, 0))
        yield jobs
        yield GaugeMetricFamily(
            "vipe_queue_depth", "Jobs waiting to run", value=counts.get(QUEUED, 0)
        )


# ---------------------------------------------------------------------------- the service


@dataclass
class ServiceOptions:
    data_dir: Path
    strict: bool = False
    lease_seconds: float = 60.0
    max_attempts: int = 3
    capabilities: Any = None  # engine.encoders.NodeCapabilities; None: CPU encoders
    # Keep a job's work folder across attempts and skip the phases whose checkpoints are
    # complete (engine.pipeline.checkpoints); `vipe worker` sets it, the embedded pool starts clean.
    checkpoints: bool = False


@dataclass
class _Run:
    """A job running in this process."""

    job_id: str
    token: CancelToken
    owner: str
    abandoned: bool = False  # queued again (server stop) or taken over: drop its results
    encoders: list[str] = field(default_factory=list)
    last_heartbeat: float = field(default_factory=time.monotonic)


class JobService:
    """Accepting, cancelling and executing jobs against one `Store`."""

    def __init__(self, store: Store, options: ServiceOptions, service_key: Any):
        self.store = store
        self.options = options
        self.service_key = service_key
        self.metrics = ServiceMetrics(store)
        # Called with the id of a job that `recover` queued again, so that a queue that
        # dispatches (Celery) sends it anew; the in-process pool finds it in the store.
        self.on_requeue: Callable[[str], None] | None = None

    # -- POST /Job --------------------------------------------------------------------------

    def submit(self, document: Any, tenant_id: str) -> dict[str, Any]:
        """Validate, check secrets, resolve keys and store a job; the 201 answer.

        Raises InvalidJob (400) or KeyServiceFailed (502/503). The job is committed in the
        store before this returns.
        """
        checked = check_job(document, strict=self.options.strict)
        if not checked.valid:
            raise InvalidJob(checked.errors)
        job = checked.job
        assert job is not None
        errors = self._secret_errors(job) + _publisher_errors(job, self.service_key)
        if errors:
            raise InvalidJob(errors)
        job_id = str(uuid.uuid4())
        keys = self._creation_keys(job, job_id)
        key_ids = [
            {"KeyId": str(key.key_id), "QualityGroup": key.quality_group} for key in keys or []
        ]
        summary = job_created_fields(job, checked.warnings)
        summary["ContentAcquisitionUriPath"] = _without_userinfo(job.content_acquisition.uri_path)
        summary["ContentPublishingProvider"] = job.content_publishing.provider.value
        summary["ContentPublishingUriPath"] = _without_userinfo(job.content_publishing.uri_path)
        report = reporting_entry(job_id, tenant_id, job, ReportFacts(state=QUEUED))
        report["JobStartTime"] = None
        external = (job.external_id, job.external_type, job.external_provider)
        self.store.create_job(
            NewJob(job_id, tenant_id, external, document, summary, key_ids, report)
        )
        self.metrics.submitted.inc()
        answer: dict[str, Any] = {"JobId": job_id}
        if len(key_ids) == 1:
            answer["KeyId"] = key_ids[0]["KeyId"]
        elif key_ids:
            answer["KeyIds"] = [k["KeyId"] for k in key_ids]
        answer.update(
            ExternalId=external[0], ExternalType=external[1], ExternalProvider=external[2]
        )
        log.info("job %s: accepted for tenant %s (%d key id(s))", job_id, tenant_id, len(key_ids))
        return answer

    def _secret_errors(self, job: Any) -> list[FieldError]:
        """Protected storage secrets that do not decrypt with the service key: found now,
        not as a failed job later."""
        specs = [
            (job.content_acquisition, "ContentAcquisition"),
            (job.content_publishing, "ContentPublishing"),
        ]
        if job.image_extraction is not None:
            specs.append((job.image_extraction.location, "ImageExtraction.Location"))
        errors: list[FieldError] = []
        for spec, name in specs:
            try:
                location_from_spec(spec, self.service_key, name)
            except JobValidationError as error:
                errors += error.errors
        return errors

    def _creation_keys(self, job: Any, job_id: str) -> Any:
        processing = job.content_processing
        if str(processing.drm_protection) == "None":
            return None
        try:
            return keys_from_job(
                processing, self.service_key, possible_quality_groups(job), content_id=job_id
            )
        except KeyServiceError as error:
            # Down or overloaded: 503 (try later); refused or nonsense: 502 (bad gateway).
            status = 503 if error.transient else 502
            log.warning("job %s: Key Service failed at creation: %s", job_id, error)
            raise KeyServiceFailed(
                f"The Key Service could not provide the content keys: {error}", status
            ) from None
        except DrmKeyError as error:
            raise InvalidJob([FieldError(error.source, error.reason)]) from None

    # -- cancel -----------------------------------------------------------------------------

    def cancel(self, job_id: str, tenant_id: str) -> str:
        """Request cancellation (a `CancelOutcome`); a Queued job ends here and now."""
        outcome = self.store.request_cancel(job_id, tenant_id)
        if outcome == CancelOutcome.QUEUED:
            row = self.store.get_job(job_id)
            if row is not None:
                self._emit_standalone(
                    row,
                    "FinalError",
                    ErrorCode=5001,
                    ErrorMessage="the job was cancelled before it started",
                    Phase="Pre-Validation",
                )
                self.metrics.finished.labels(CANCELLED).inc()
            log.info("job %s: cancelled while queued", job_id)
        elif outcome == CancelOutcome.RUNNING:
            log.info("job %s: cancellation requested", job_id)
        return outcome

    def _emit_standalone(
        self, row: JobRow, message_type: str, *, document: Any = None, **fields: Any
    ) -> None:
        """An event outside a run (cancel of a queued job, a resume, a failure before the
        runner starts): stored, and sent to the job's publishers by a hub of its own."""
        hub = None
        try:
            if document is None:
                document = self.store.job_document(row)
            hub = open_publishers(document, self.service_key, row.id)
        except (JobValidationError, SealError) as error:
            log.warning("job %s: event not published: %s", row.id, type(error).__name__)
        sinks: list[Callable[[dict[str, Any]], None]] = [EventSink(self, row.id)]
        if hub is not None:
            sinks.append(hub)
        emitter = EventEmitter(
            row.id,
            row.tenant_id,
            (row.external_id, row.external_type, row.external_provider),
            sinks,
        )
        emitter.emit(message_type, **fields)
        close_publishers(hub, row.id, background=True)

    # -- execution --------------------------------------------------------------------------

    def execute(self, row: JobRow, run: _Run) -> str:
        """Run one claimed job (state Running, owned by `run.owner`) to its end; the final
        state, or RUNNING when the run was interrupted to be resumed later."""
        job_id = row.id
        workdir = self.options.data_dir / "work" / job_id
        if not self.options.checkpoints:
            shutil.rmtree(workdir, ignore_errors=True)  # leftovers of an interrupted attempt
        final: dict[str, Any] = {}
        self.metrics.running.inc()
        try:
            document = self.store.job_document(row)
            # The runner opens the job's publishers itself (engine.publishers); this sink
            # stores. Events outside the run go out through `_emit_standalone`.
            sink = EventSink(self, job_id, run, final)
            if row.attempts > 1:
                how = (
                    "(from the checkpoints this worker has of it, else from the start)"
                    if self.options.checkpoints
                    else "from the start"
                )
                self._emit_standalone(
                    row,
                    "Warning",
                    document=document,
                    Code="JobResumed",
                    Message=f"the job runs again {how} after its worker stopped "
                    f"(attempt {row.attempts} of {self.options.max_attempts})",
                )
            try:
                keys = self.worker_keys(document, row)
            except _KeyFailure as failure:
                return self._fail_outside_run(
                    row, run, failure.message, code=4001, document=document
                )
            try:
                report = run_job(
                    document,
                    on_event=sink,
                    cancel=run.token,
                    workdir=workdir,
                    data_dir=self.options.data_dir,
                    job_id=job_id,
                    tenant_id=row.tenant_id,
                    capabilities=self._capabilities(document),
                    strict=self.options.strict,
                    keys=keys,
                    keep_workdir=self.options.checkpoints,
                    checkpoints=self.options.checkpoints,
                )
            except JobValidationError as error:
                return self._fail_outside_run(row, run, error.message, code=1001, document=document)
            state = report.get("State", FAILED)
            return self._finish(
                row, run, state, report, report.get("ErrorCode"), final.get("ErrorMessage")
            )
        except SealError as error:
            log.error("%s", error)
            return self._fail_outside_run(row, run, "the stored job cannot be read")
        except Exception:
            log.exception("job %s: internal error in the worker", job_id)
            return self._fail_outside_run(row, run, "internal error in the worker")
        finally:
            self.metrics.running.dec()
            for encoder in run.encoders:
                self.metrics.encoder_in_use.labels(encoder).dec()
            if not run.abandoned:  # an abandoned run may still be writing there
                shutil.rmtree(workdir, ignore_errors=True)

    def _fail_outside_run(
        self,
        row: JobRow,
        run: _Run,
        message: str,
        *,
        code: int = 5000,
        document: Any = None,
    ) -> str:
        """End a job that failed outside the runner (keys, validation, vipe's own code) with
        its FinalError event."""
        if run.abandoned:
            return RUNNING
        try:
            self._emit_standalone(
                row,
                "FinalError",
                document=document,
                ErrorCode=code,
                ErrorMessage=message,
                Phase=row.phase or "Pre-Validation",
            )
            return self._finish(row, run, FAILED, None, code, message)
        except Exception:
            log.exception("job %s: the failure cannot be recorded", row.id)
            return FAILED

    def _capabilities(self, document: Any) -> Any:
        """What this node can encode with: given in the options, else probed (once, cached)
        for the job's `HardwareAcceleration`."""
        if self.options.capabilities is not None:
            return self.options.capabilities
        try:
            from engine.capabilities import node_capabilities
        except ImportError:
            return None
        job = check_job(document).job
        return node_capabilities(job.content_processing.hardware_acceleration if job else None)

    def _finish(
        self,
        row: JobRow,
        run: _Run,
        state: str,
        report: dict[str, Any] | None,
        code: int | None,
        message: str | None,
    ) -> str:
        if run.abandoned:
            log.info("job %s: this run was abandoned; its result is dropped", row.id)
            return RUNNING
        if not self.store.finish_job(
            row.id, state, report, error_code=code, error_message=message, owner=run.owner
        ):
            log.warning("job %s: no longer held by this worker; its result is dropped", row.id)
            return RUNNING
        self.metrics.finished.labels(state).inc()
        return state

    def worker_keys(self, document: Any, row: JobRow) -> Any:
        """The content keys for a run: the same key ids `POST /Job` answered."""
        stored = json.loads(row.key_ids or "[]")
        if not stored:
            return None
        try:
            job = validate_job(document, strict=self.options.strict).job
        except JobValidationError:
            return None  # run_job reports the invalid job itself (1001)
        key_ids = [(item["KeyId"], item.get("QualityGroup")) for item in stored]
        try:
            return keys_again(job, self.service_key, key_ids, content_id=row.id)
        except DrmKeyError as error:
            raise _KeyFailure(f"the content keys cannot be obtained again: {error}") from None

    # -- recovery ---------------------------------------------------------------------------

    def recover(self, owner: str, *, at_start: bool) -> int:
        """Take over jobs whose worker is gone; returns how many were requeued or ended.

        At start: every Running job of a process of this host that no longer runs (or of this
        very process id under an older instance, as in a restarted container). Always: jobs
        whose heartbeat is older than the lease.
        """
        count = 0
        for row in self.store.running_jobs():
            if row.owner != owner and self.orphaned(row, owner, at_start=at_start):
                self.take_over(row)
                count += 1
        return count

    def orphaned(self, row: JobRow, owner: str, *, at_start: bool) -> bool:
        """Whether the Running job `row` has lost its worker, as seen by `owner`: its lease
        ran out, or (`at_start`, or a queue that got the job's message again) its owner was a
        process of this host that no longer runs."""
        if row.owner is None:
            return True
        if at_start:
            host, pid, instance = _owner_parts(owner)
            their_host, their_pid, their_instance = _owner_parts(row.owner)
            if their_host == host and (
                (their_pid == pid and their_instance != instance)
                or (their_pid != pid and not _process_alive(their_pid))
            ):
                return True
        if row.heartbeat_at is not None:
            return (utcnow() - row.heartbeat_at).total_seconds() > self.options.lease_seconds
        return False

    def take_over(self, row: JobRow) -> None:
        """A job whose worker is gone: Cancelled when that was asked, failed (5000) after
        `max_attempts` starts, else queued again (and `on_requeue` told)."""
        previous = row.owner
        if row.cancel_requested:
            message = "the job was cancelled (its worker stopped meanwhile)"
            if self.store.finish_job(
                row.id, CANCELLED, None, error_code=5001, error_message=message, owner=previous
            ):
                self._emit_standalone(
                    row, "FinalError", ErrorCode=5001, ErrorMessage=message, Phase=row.phase or ""
                )
            return
        if row.attempts >= self.options.max_attempts:
            message = f"the job's worker stopped {row.attempts} times while running it; giving up"
            if self.store.finish_job(
                row.id, FAILED, None, error_code=5000, error_message=message, owner=previous
            ):
                self._emit_standalone(
                    row, "FinalError", ErrorCode=5000, ErrorMessage=message, Phase=row.phase or ""
                )
            log.error("job %s: %s", row.id, message)
            return
        if self.store.requeue(row.id, owner=previous):
            log.warning("job %s: its worker (%s) is gone; queued again", row.id, previous)
            if self.on_requeue is not None:
                try:
                    self.on_requeue(row.id)
                except Exception:  # the store has it Queued: a later sweep sends it again
                    log.exception("job %s: queued again, but not dispatched", row.id)


class _KeyFailure(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


# ------------------------------------------------------------------------------- events


class EventSink:
    """The runner's `on_event`: stores each event, keeps the job's phase, progress and
    encoder current, and feeds the metrics. (Delivery to the job's message publishers is the
    runner's own `PublisherHub`, a sink beside this one.)"""

    def __init__(
        self,
        service: JobService,
        job_id: str,
        run: _Run | None = None,
        final: dict[str, Any] | None = None,
    ):
        self.service = service
        self.job_id = job_id
        self.run = run
        self.final = final if final is not None else {}

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("MessageType", "")
        store = self.service.store
        if self.run is not None and self.run.abandoned:
            return  # the job was queued again or taken over: this run no longer speaks for it
        store.add_event(self.job_id, event)
        phase = event.get("Phase") if kind == "FinalError" else EVENT_PHASES.get(kind)
        progress = event.get("Progress") if "Progress" in event else None
        if kind in ("ContentAcquired", "EncodingFinished", "ContentPublished"):
            progress = 100
        encoder = None
        if kind == "VideoEncodingStarted":
            encoder = str(event.get("Encoder") or "")
            if self.run is not None:
                for name in filter(None, encoder.split(",")):
                    self.run.encoders.append(name)
                    self.service.metrics.encoder_in_use.labels(name).inc()
        elif kind == "JobSuccess":
            for name, seconds in (event.get("PhaseDurationsInSeconds") or {}).items():
                self.service.metrics.phase_seconds.labels(name).observe(float(seconds))
        elif kind == "FinalError":
            self.final.update(event)
        if phase is not None or progress is not None or encoder:
            store.update_progress(self.job_id, phase, progress, encoder or None)


def open_publishers(document: Any, service_key: Any, job_id: str) -> Any:
    """The job's message publishers as a `PublisherHub` (an event sink with `close`), or None
    when the job has none or `engine.publishers` is not there (events are then only stored).

    Raises JobValidationError when a publisher's secret does not decrypt or its SDK is missing
    (checked at `POST /Job` already, so a worker meets it only if the node differs).
    """
    try:
        from engine.publishers import open_hub
    except ImportError:
        return None
    job = check_job(document).job
    if job is None or not job.message_publishers:
        return None
    return open_hub(job, service_key, job_id=job_id)


def close_publishers(hub: Any, job_id: str, *, background: bool = False) -> None:
    """Flush and close a hub (up to 30 s); in a thread when the caller must not wait."""
    if hub is None:
        return

    def close() -> None:
        try:
            if not hub.close(timeout=30):
                log.warning("job %s: not every event reached every publisher", job_id)
        except Exception:
            log.exception("job %s: closing the message publishers failed", job_id)

    if background:
        threading.Thread(target=close, name=f"vipe-publish-{job_id[:8]}", daemon=True).start()
    else:
        close()


def _publisher_errors(job: Any, service_key: Any) -> list[FieldError]:
    """Publisher secrets that do not decrypt, SDKs that are missing: a 400 at creation."""
    if not job.message_publishers:
        return []
    try:
        from engine.publishers import build_publishers
    except ImportError:
        return []
    try:
        publishers = build_publishers(job, service_key)
    except JobValidationError as error:
        return list(error.errors)
    for publisher in publishers:  # nothing connected yet; closing is only tidy
        try:
            publisher.close()
        except Exception:
            log.debug("closing an unused publisher failed", exc_info=True)
    return []


# -------------------------------------------------------------------------------- queues


class JobQueue(abc.ABC):
    """Where stored jobs wait to run, and how a cancellation reaches a running one.

    The contract of an implementation:

    - `enqueue(job_id)` is called after the job was committed in state Queued. It dispatches
      (wakes a worker, sends a task); it may be lost (a broker hiccup) without losing the job,
      because the store is the source of truth: a worker claims a job with
      `Store.claim(job_id, owner)` (atomic; False when someone else has it or it was
      cancelled meanwhile) and runs it with `JobService.execute`.
    - `cancel(job_id)` is called after the store's cancel flag was set for a Running job. It
      is a fast path to the job's `CancelToken`; workers must also watch the flag
      (`Store.cancel_requested`), which is what reaches a job on another node.
    - `start()` begins taking jobs (and recovers orphans); `stop()` ends it, leaving
      interrupted jobs Queued for the next start.
    """

    @abc.abstractmethod
    def enqueue(self, job_id: str) -> None: ...

    @abc.abstractmethod
    def cancel(self, job_id: str) -> None: ...

    def start(self) -> None:  # noqa: B027 - optional hook
        """Begin taking jobs."""

    def stop(self, timeout: float = 10.0) -> None:  # noqa: B027 - optional hook
        """Stop taking jobs; interrupted ones are queued again."""


class InProcessQueue(JobQueue):
    """`workers` threads in this process that claim Queued jobs from the store.

    A watchdog thread renews the heartbeats of the running jobs, turns the store's cancel flag
    into their tokens, and sweeps for orphaned jobs (see the restart policy above).
    """

    def __init__(
        self,
        service: JobService,
        workers: int = 1,
        *,
        poll_seconds: float = 1.0,
        watch_seconds: float = 0.5,
    ):
        self.service = service
        self.workers = max(0, workers)
        self.poll_seconds = poll_seconds
        self.watch_seconds = watch_seconds
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._wake = threading.Condition()
        self._stopping = threading.Event()
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    # -- JobQueue ---------------------------------------------------------------------------

    def enqueue(self, job_id: str) -> None:
        with self._wake:
            self._wake.notify()

    def cancel(self, job_id: str) -> None:
        with self._lock:
            run = self._runs.get(job_id)
        if run is not None:
            run.token.cancel("the job was cancelled")

    def start(self) -> None:
        recovered = self.service.recover(self.owner, at_start=True)
        if recovered:
            log.warning("%d job(s) left by a stopped worker were taken over", recovered)
        for index in range(self.workers):
            thread = threading.Thread(
                target=self._work, name=f"vipe-worker-{index + 1}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        watchdog = threading.Thread(target=self._watch, name="vipe-watchdog", daemon=True)
        watchdog.start()
        self._threads.append(watchdog)
        log.info("in-process queue started: %d worker(s), owner %s", self.workers, self.owner)

    def stop(self, timeout: float = 10.0) -> None:
        """Take no new jobs; give the running ones `timeout` seconds, then queue the rest
        again (they are not interrupted: the process is about to exit)."""
        self._stopping.set()
        with self._wake:
            self._wake.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            run.abandoned = True
            if self.service.store.requeue(run.job_id, owner=run.owner):
                log.warning("job %s: still running at stop; queued again", run.job_id)
        self._threads.clear()

    # -- threads ----------------------------------------------------------------------------

    def _work(self) -> None:
        store = self.service.store
        while not self._stopping.is_set():
            try:
                row = store.claim_next(self.owner)
            except Exception:
                log.exception("the job store cannot be read; retrying")
                row = None
            if row is None:
                with self._wake:
                    self._wake.wait(self.poll_seconds)
                continue
            run = _Run(row.id, CancelToken(), self.owner)
            with self._lock:
                self._runs[row.id] = run
            try:
                if store.cancel_requested(row.id):
                    run.token.cancel("the job was cancelled")
                log.info("job %s: started (attempt %d)", row.id, row.attempts)
                state = self.service.execute(row, run)
                log.info("job %s: worker done: %s", row.id, state)
            finally:
                with self._lock:
                    self._runs.pop(row.id, None)

    def _watch(self) -> None:
        store = self.service.store
        lease = self.service.options.lease_seconds
        last_sweep = time.monotonic()
        while not self._stopping.wait(self.watch_seconds):
            with self._lock:
                runs = list(self._runs.values())
            for run in runs:
                try:
                    if not run.token.cancelled and store.cancel_requested(run.job_id):
                        run.token.cancel("the job was cancelled")
                    if time.monotonic() - run.last_heartbeat >= lease / 4:
                        run.last_heartbeat = time.monotonic()
                        if not store.heartbeat(run.job_id, self.owner):
                            # Another node took the job over (our lease ran out): stop, so
                            # that two runs do not write one output.
                            run.abandoned = True
                            run.token.cancel("the job was taken over by another worker")
                except Exception:
                    log.exception("job %s: watchdog check failed", run.job_id)
            if time.monotonic() - last_sweep >= lease / 2:
                last_sweep = time.monotonic()
                try:
                    self.service.recover(self.owner, at_start=False)
                except Exception:
                    log.exception("the orphan sweep failed")


# ------------------------------------------------------------------------------ helpers


def _owner_parts(owner: str) -> tuple[str, int, str]:
    parts = owner.rsplit(":", 2)
    if len(parts) != 3:
        return owner, -1, ""
    host, pid, instance = parts
    try:
        return host, int(pid), instance
    except ValueError:
        return host, -1, instance


def _process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    return True


def _without_userinfo(uri: str) -> str:
    """A URI without `user:password@` (some providers allow credentials in the URI)."""
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError:
        return uri
    if "@" not in parts.netloc:
        return uri
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def job_view(store: Store, row: JobRow) -> dict[str, Any]:
    """`GET /Job/{JobId}`: state, phase, progress, events so far, outputs."""
    events = store.events(row.id)
    key_ids = [item["KeyId"] for item in json.loads(row.key_ids or "[]")]
    outputs: dict[str, Any] = {}
    for event in events:
        kind = event.get("MessageType")
        if kind == "EncodingFinished":
            outputs["Streams"] = event.get("Streams", [])
        elif kind == "ContentPublished":
            for name in ("Location", "FilesCount", "BytesCount", "Manifests"):
                outputs[name] = event.get(name)
        elif kind == "ImagesExtracted":
            outputs["Images"] = {"Path": event.get("Path"), "Images": event.get("Images", [])}
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
        "Outputs": outputs,
    }
    if len(key_ids) == 1:
        view["KeyId"] = key_ids[0]
    elif key_ids:
        view["KeyIds"] = key_ids
    if row.error_code is not None:
        view["ErrorCode"] = row.error_code
        view["ErrorMessage"] = row.error_message
    return view


def _iso(moment: Any) -> str | None:
    return moment.isoformat(timespec="milliseconds") if moment else None


__all__ = [
    "InProcessQueue",
    "InvalidJob",
    "JobQueue",
    "JobService",
    "KeyServiceFailed",
    "ServiceOptions",
    "job_view",
]
