"""The service layer behind the API: accepting, cancelling and executing jobs.

`JobService` does the work that does not depend on how jobs travel: `submit` (validate, check
protected secrets, resolve DRM keys, store: what `POST /Job` does), `cancel`, `execute` (run one
claimed job with `engine.pipeline.run_job`, storing its events and report) and the recovery of
jobs whose worker is gone. A queue (`engine.service.queue`, `engine.service.cluster`) decides
where and when `execute` runs (`ServiceOptions.checkpoints`: a job that comes back to the same
`vipe worker` skips its finished phases, see engine.pipeline.checkpoints).

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
  Orphans are found at start (same host, the owning process is gone: engine.service.owners)
  and by a sweep that takes over jobs whose heartbeat is older than the lease (other hosts
  sharing a PostgreSQL store).
- **Cancellation** reaches a running job through its `CancelToken` (set by the queue that runs
  it, from its own call or from the store's cancel flag). The pipeline stops between frames and
  transfers, removes partial output and ends with FinalError 5001.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import shutil
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drm.cpix import KeyServiceError
from drm.keys import DrmKeyError
from engine.cancel import CancelToken
from engine.errors import JobValidationError
from engine.events import EVENT_PHASE, EventEmitter, EventType, Phase
from engine.keys import keys_again, keys_from_job, possible_quality_groups
from engine.locations import location_from_spec
from engine.pipeline import job_created_fields, run_job
from engine.policy import TRUSTED, JobPolicy
from engine.report import ReportFacts, reporting_entry
from engine.service.metrics import ServiceMetrics
from engine.service.owners import owner_gone
from engine.service.store import (
    CANCELLED,
    CANCELLED_BEFORE_START,
    FAILED,
    QUEUED,
    RUNNING,
    CancelOutcome,
    JobRow,
    NewJob,
    SealError,
    Store,
    TenantQueueFull,
    utcnow,
)
from engine.validation import FieldError, check_job, validate_job
from storage import StorageError, open_storage

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------- errors


class InvalidJob(Exception):
    """400: the job is invalid; `errors` lists every problem."""

    def __init__(self, errors: list[FieldError], message: str = "The job is invalid"):
        super().__init__(message)
        self.errors = errors
        self.message = message


@dataclass(frozen=True)
class Submission:
    """A job that passed `JobService.prepare`: what `accept` stores once its keys are known."""

    job_id: str
    tenant_id: str
    document: Any
    job: Any
    warnings: list[FieldError]

    @property
    def asks_key_service(self) -> bool:
        """Whether its keys come from a Key Service (network: the API's bounded pool)."""
        return str(self.job.content_processing.drm_protection) == "Managed"


class KeyServiceFailed(Exception):
    """502/503: the Key Service refused or could not be reached at job creation."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.message = message
        self.status = status


# ---------------------------------------------------------------------------- the service


@dataclass
class ServiceOptions:
    """How a `JobService` runs jobs: where, how strictly, its lease and attempts."""

    data_dir: Path
    strict: bool = False
    lease_seconds: float = 60.0
    max_attempts: int = 3
    capabilities: Any = None  # engine.encoders.NodeCapabilities; None: CPU encoders
    # Keep a job's work folder across attempts and skip the phases whose checkpoints are
    # complete (engine.pipeline.checkpoints); `vipe worker` sets it, the embedded pool starts clean.
    checkpoints: bool = False
    # What jobs may touch (engine.policy); `vipe serve`/`vipe worker` build it from their flags.
    policy: JobPolicy = TRUSTED
    # Fairness: Queued jobs a tenant may have (429 beyond), jobs of one tenant running at once
    # in this process's pool (None: no limit).
    max_queued_per_tenant: int | None = 100
    max_running_per_tenant: int | None = 4
    # POST /Job: total seconds the Key Service may take (503 beyond), on a pool of this size.
    key_service_deadline: float = 15.0
    key_service_workers: int = 4
    # How this node splits a job's video into chunks (engine.chunks.ChunkSettings; None: one
    # pass): `vipe serve --chunk-workers N`, `vipe worker --work-storage` (the farm).
    chunking: Any = None


@dataclass
class RunningJob:
    """A job running in this process."""

    job_id: str
    token: CancelToken
    owner: str
    abandoned: bool = False  # queued again (server stop) or taken over: drop its results
    encoders: list[str] = field(default_factory=list)
    last_heartbeat: float = field(default_factory=time.monotonic)
    # The last sign of life (a stored heartbeat, an event): /health is Unhealthy when a run
    # shows none within the lease.
    last_alive: float = field(default_factory=time.monotonic)


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
        # How a job's video is split when the node decides per job (the farm's coordinator:
        # `ClusterWorker.chunking`); None: `options.chunking` for every job.
        self.job_chunking: Callable[[JobRow], Any] | None = None

    # -- POST /Job --------------------------------------------------------------------------

    def submit(self, document: Any, tenant_id: str) -> dict[str, Any]:
        """Validate, check secrets, resolve keys and store a job; the 201 answer.

        Raises InvalidJob (400), TenantQueueFull (429) or KeyServiceFailed (502/503). The job
        is committed in the store before this returns. (The API runs the three steps itself:
        `prepare`, `creation_keys` on its own pool under a deadline, `accept`.)
        """
        submission = self.prepare(document, tenant_id)
        return self.accept(submission, self.creation_keys(submission))

    def prepare(self, document: Any, tenant_id: str) -> Submission:
        """The checks of `POST /Job` that need no network: validation, secrets, `Local`
        roots, the tenant's queued limit. Raises InvalidJob or TenantQueueFull."""
        checked = check_job(document, strict=self.options.strict)
        if not checked.valid:
            raise InvalidJob(checked.errors)
        job = checked.job
        assert job is not None
        errors = self._location_errors(job, tenant_id) + _publisher_errors(job, self.service_key)
        if errors:
            raise InvalidJob(errors)
        submission = Submission(str(uuid.uuid4()), tenant_id, document, job, list(checked.warnings))
        limit = self.options.max_queued_per_tenant
        # Counted here only before asking a Key Service for keys; otherwise the count in the
        # storing transaction (`accept`) is the one check, not a second query per request.
        if limit is not None and submission.asks_key_service:
            if self.store.queued_count(tenant_id) >= limit:
                raise TenantQueueFull(tenant_id, limit)
        return submission

    def creation_keys(self, submission: Submission) -> Any:
        """The job's content keys (None without DRM); a Managed job asks its Key Service,
        with timeouts that fit `key_service_deadline`. Raises KeyServiceFailed, InvalidJob."""
        return self._creation_keys(submission.job, submission.job_id)

    def accept(self, submission: Submission, keys: Any) -> dict[str, Any]:
        """Store a prepared job with its key ids; the 201 answer. Raises TenantQueueFull."""
        return self.accept_future(submission, keys).result()

    def accept_future(
        self, submission: Submission, keys: Any
    ) -> concurrent.futures.Future[dict[str, Any]]:
        """`accept` without waiting for the store: the future gives the 201 answer once the
        job is committed (the store commits waiting jobs together), or raises
        TenantQueueFull. The API awaits it without holding a thread."""
        job, job_id, tenant_id = submission.job, submission.job_id, submission.tenant_id
        document = submission.document
        key_ids = [
            {"KeyId": str(key.key_id), "QualityGroup": key.quality_group} for key in keys or []
        ]
        summary = job_created_fields(job, submission.warnings)
        summary["ContentAcquisitionUriPath"] = _without_userinfo(job.content_acquisition.uri_path)
        summary["ContentPublishingProvider"] = job.content_publishing.provider.value
        summary["ContentPublishingUriPath"] = _without_userinfo(job.content_publishing.uri_path)
        report = reporting_entry(job_id, tenant_id, job, ReportFacts(state=QUEUED))
        report["JobStartTime"] = None
        external = (job.external_id, job.external_type, job.external_provider)
        answer: dict[str, Any] = {"JobId": job_id}
        if len(key_ids) == 1:
            answer["KeyId"] = key_ids[0]["KeyId"]
        elif key_ids:
            answer["KeyIds"] = [k["KeyId"] for k in key_ids]
        answer.update(
            ExternalId=external[0], ExternalType=external[1], ExternalProvider=external[2]
        )
        stored = self.store.create_job_future(
            NewJob(job_id, tenant_id, external, document, summary, key_ids, report),
            max_queued_per_tenant=self.options.max_queued_per_tenant,
        )
        accepted: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        accepted.set_running_or_notify_cancel()  # not cancellable: the job is stored anyway

        def done(stored: concurrent.futures.Future[None]) -> None:  # on the store's writer
            error = stored.exception()
            if error is not None:
                accepted.set_exception(error)
                return
            self.metrics.submitted.inc()
            log.info(
                "job %s: accepted for tenant %s (%d key id(s))", job_id, tenant_id, len(key_ids)
            )
            accepted.set_result(answer)

        stored.add_done_callback(done)
        return accepted

    def _location_errors(self, job: Any, tenant_id: str) -> list[FieldError]:
        """Protected storage secrets that do not decrypt with the service key, and `Local`
        locations outside the tenant's roots (`--local-root`): found now, not as a failed job
        later. A refusal names the field, never what lies outside the roots."""
        specs = [
            (job.content_acquisition, "ContentAcquisition"),
            (job.content_publishing, "ContentPublishing"),
        ]
        if job.image_extraction is not None:
            specs.append((job.image_extraction.location, "ImageExtraction.Location"))
        errors: list[FieldError] = []
        policy = self.options.policy
        for spec, name in specs:
            try:
                location = location_from_spec(spec, self.service_key, name, policy, tenant_id)
            except JobValidationError as error:
                errors += error.errors
                continue
            if location.provider == "Local":  # confinement is checked when it opens
                try:
                    open_storage(location).close()
                except StorageError as error:
                    errors.append(FieldError(f"{name}.UriPath", str(error)))
        return errors

    def _creation_keys(self, job: Any, job_id: str) -> Any:
        processing = job.content_processing
        if str(processing.drm_protection) == "None":
            return None
        try:
            # Three attempts that end within the deadline of POST /Job (the API answers 503
            # at the deadline anyway; this frees the pool's thread soon after).
            return keys_from_job(
                processing,
                self.service_key,
                possible_quality_groups(job),
                content_id=job_id,
                timeout=max(1.0, self.options.key_service_deadline / 4),
                attempts=3,
                egress=self.options.policy.egress,
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
        row = self.store.get_job(job_id, tenant_id)
        if row is None:
            return CancelOutcome.UNKNOWN
        # Its FinalError, stored by the store only if the job ends here (it is Queued then).
        final = self.outside_event(
            row,
            EventType.FINAL_ERROR,
            ErrorCode=5001,
            ErrorMessage=CANCELLED_BEFORE_START,
            Phase=str(Phase.PRE_VALIDATION),
        )
        outcome = self.store.request_cancel(job_id, tenant_id, final_event=final)
        if outcome == CancelOutcome.QUEUED:
            self.publish_outside_run(row, final)
            self.metrics.finished.labels(CANCELLED).inc()
            log.info("job %s: cancelled while queued", job_id)
        elif outcome == CancelOutcome.RUNNING:
            log.info("job %s: cancellation requested", job_id)
        return outcome

    def emit_outside_run(
        self, row: JobRow, message_type: EventType, *, document: Any = None, **fields: Any
    ) -> None:
        """An event outside a run (a resume, a failure before the runner starts): stored,
        and sent to the job's publishers by a hub of its own."""
        event = self.outside_event(row, message_type, **fields)
        StoreEventSink(self, row.id)(event)
        self.publish_outside_run(row, event, document=document)

    def outside_event(self, row: JobRow, message_type: EventType, **fields: Any) -> dict[str, Any]:
        """An event about `row` built outside a run, neither stored nor sent: a final one goes
        into the store with the state change it tells (`Store.finish_job(final_event=…)`)."""
        external = (row.external_id, row.external_type, row.external_provider)
        return EventEmitter(row.id, row.tenant_id, external).emit(message_type, **fields)

    def publish_outside_run(
        self, row: JobRow, event: dict[str, Any], *, document: Any = None
    ) -> None:
        """Send a stored event outside a run to the job's publishers (a hub of its own)."""
        try:
            if document is None:
                document = self.store.job_document(row)
            hub = open_publishers(document, self.service_key, row.id, self.options.policy)
        except (JobValidationError, SealError) as error:
            log.warning("job %s: event not published: %s", row.id, type(error).__name__)
            return
        if hub is None:
            return
        try:
            hub(event)
        except Exception:  # delivery never fails a job
            log.exception("job %s: publishing %s failed", row.id, event.get("MessageType"))
        close_publishers(hub, row.id, background=True)

    # -- execution --------------------------------------------------------------------------

    def execute(self, row: JobRow, run: RunningJob) -> str:
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
            # stores. Events outside the run go out through `emit_outside_run`.
            sink = StoreEventSink(self, job_id, run, final)
            if row.attempts > 1:
                how = (
                    "(from the checkpoints this worker has of it, else from the start)"
                    if self.options.checkpoints
                    else "from the start"
                )
                self.emit_outside_run(
                    row,
                    EventType.WARNING,
                    document=document,
                    Code="JobResumed",
                    Message=f"the job runs again {how} after its worker stopped "
                    f"(attempt {row.attempts} of {self.options.max_attempts})",
                )
                self.roll_back_publishing(row, document)
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
                    policy=self.options.policy,
                    on_publish_plan=lambda names: self.store.record_publish_plan(job_id, names),
                    keep_workdir=self.options.checkpoints,
                    checkpoints=self.options.checkpoints,
                    chunking=self.job_chunking(row) if self.job_chunking else self.options.chunking,
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
        run: RunningJob,
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
            self.emit_outside_run(
                row,
                EventType.FINAL_ERROR,
                document=document,
                ErrorCode=code,
                ErrorMessage=message,
                Phase=row.phase or str(Phase.PRE_VALIDATION),
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
        run: RunningJob,
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
            job = None
        if job is None:
            return None  # run_job reports the invalid job itself (1001)
        key_ids = [(item["KeyId"], item.get("QualityGroup")) for item in stored]
        try:
            return keys_again(
                job, self.service_key, key_ids, row.id, egress=self.options.policy.egress
            )
        except DrmKeyError as error:
            raise _KeyFailure(f"the content keys cannot be obtained again: {error}") from None

    # -- recovery ---------------------------------------------------------------------------

    def recover_at_start(self, owner: str) -> None:
        """`recover` when a cluster process starts: a store that fails now is logged, and the
        periodic sweep tries again."""
        try:
            recovered = self.recover(owner, at_start=True)
            if recovered:
                log.warning("%d job(s) left by stopped workers were taken over", recovered)
        except Exception:
            log.exception("the orphan sweep failed at start")

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
            if owner_gone(row.owner, owner):
                return True
        if row.heartbeat_at is not None:
            return (utcnow() - row.heartbeat_at).total_seconds() > self.options.lease_seconds
        return False

    def roll_back_publishing(self, row: JobRow, document: Any = None) -> None:
        """Delete what an interrupted attempt of the job published: the names its publishing
        recorded before writing (`Store.record_publish_plan`), which were not there before it.
        Objects that were there before the job are never touched. Failures are logged: the
        next attempt publishes over what is left."""
        names = self.store.publish_plan(row.id)
        if not names:
            return
        try:
            job = validate_job(
                document if document is not None else self.store.job_document(row)
            ).job
            location = location_from_spec(
                job.content_publishing,
                self.service_key,
                "ContentPublishing",
                self.options.policy,
                row.tenant_id,
            )
            storage = open_storage(location)
        except (JobValidationError, SealError, StorageError) as error:
            log.warning("job %s: no rollback of its output: %s", row.id, error)
            return
        removed = 0
        try:
            for name in names:
                try:
                    storage.delete_file(name)
                    removed += 1
                except StorageError as error:
                    if error.kind != "missing":
                        log.warning("job %s: rollback: %s", row.id, error)
        finally:
            storage.close()
        self.store.record_publish_plan(row.id, [])
        log.warning("job %s: rolled back %d file(s) an interrupted publish wrote", row.id, removed)

    def take_over(self, row: JobRow) -> None:
        """A job whose worker is gone: Cancelled when that was asked, failed (5000) after
        `max_attempts` starts, else queued again (and `on_requeue` told)."""
        previous = row.owner
        if row.cancel_requested:
            message = "the job was cancelled (its worker stopped meanwhile)"
            self._end_taken_over(row, CANCELLED, 5001, message)
            return
        if row.attempts >= self.options.max_attempts:
            message = f"the job's worker stopped {row.attempts} times while running it; giving up"
            self.roll_back_publishing(row)
            shutil.rmtree(self.options.data_dir / "work" / row.id, ignore_errors=True)
            self._end_taken_over(row, FAILED, 5000, message)
            log.error("job %s: %s", row.id, message)
            return
        if self.store.requeue(row.id, owner=previous):
            log.warning("job %s: its worker (%s) is gone; queued again", row.id, previous)
            if self.on_requeue is not None:
                try:
                    self.on_requeue(row.id)
                except Exception:  # the store has it Queued: a later sweep sends it again
                    log.exception("job %s: queued again, but not dispatched", row.id)

    def _end_taken_over(self, row: JobRow, state: str, code: int, message: str) -> None:
        """End a job whose worker is gone, with its FinalError (once: only the caller whose
        `finish_job` takes the row from the old owner emits it)."""
        final = self.outside_event(
            row, EventType.FINAL_ERROR, ErrorCode=code, ErrorMessage=message, Phase=row.phase or ""
        )
        if self.store.finish_job(
            row.id,
            state,
            None,
            error_code=code,
            error_message=message,
            owner=row.owner,
            final_event=final,
        ):
            self.publish_outside_run(row, final)


class _KeyFailure(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


# ------------------------------------------------------------------------------- events


class StoreEventSink:
    """The runner's `on_event`: stores each event, keeps the job's phase, progress and
    encoder current, and feeds the metrics. (Delivery to the job's message publishers is the
    runner's own `PublisherHub`, a sink beside this one.)"""

    def __init__(
        self,
        service: JobService,
        job_id: str,
        run: RunningJob | None = None,
        final: dict[str, Any] | None = None,
    ):
        self.service = service
        self.job_id = job_id
        self.run = run
        self.final = final if final is not None else {}

    def __call__(self, event: dict[str, Any]) -> None:
        kind = str(event.get("MessageType", ""))
        store = self.service.store
        if self.run is not None and self.run.abandoned:
            return  # the job was queued again or taken over: this run no longer speaks for it
        if self.run is None:
            store.add_event(self.job_id, event)
        elif store.add_event(self.job_id, event, owner=self.run.owner):
            self.run.last_alive = time.monotonic()
        else:
            # another worker took the job over before this run's heartbeat could tell
            log.warning("job %s: taken over by another worker; stopping", self.job_id)
            self.run.abandoned = True
            self.run.token.cancel("the job was taken over by another worker")
            return
        phase = event.get("Phase") if kind == EventType.FINAL_ERROR else _phase_of(kind)
        progress = event.get("Progress") if "Progress" in event else None
        if kind in _PHASE_DONE:
            progress = 100
        encoder = None
        if kind == EventType.VIDEO_ENCODING_STARTED:
            encoder = str(event.get("Encoder") or "")
            if self.run is not None:
                for name in filter(None, encoder.split(",")):
                    self.run.encoders.append(name)
                    self.service.metrics.encoder_in_use.labels(name).inc()
        elif kind == EventType.JOB_SUCCESS:
            for name, seconds in (event.get("PhaseDurationsInSeconds") or {}).items():
                self.service.metrics.phase_seconds.labels(name).observe(float(seconds))
        elif kind == EventType.FINAL_ERROR:
            self.final.update(event)
        if phase is not None or progress is not None or encoder:
            store.update_progress(self.job_id, phase, progress, encoder or None)


# Events that end a phase's work: the job's progress shows 100 for that phase.
_PHASE_DONE = (EventType.CONTENT_ACQUIRED, EventType.ENCODING_FINISHED, EventType.CONTENT_PUBLISHED)


def _phase_of(kind: str) -> str | None:
    """The phase an event of this type belongs to, as the store keeps it (None: a Warning or
    a type the contract does not name)."""
    if kind not in EVENT_PHASE:
        return None
    return str(EVENT_PHASE[EventType(kind)])


def open_publishers(
    document: Any, service_key: Any, job_id: str, policy: JobPolicy = TRUSTED
) -> Any:
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
    return open_hub(job, service_key, job_id=job_id, egress=policy.egress)


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


# ------------------------------------------------------------------------------ helpers


def _without_userinfo(uri: str) -> str:
    """A URI without `user:password@` (some providers allow credentials in the URI)."""
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError:
        return uri
    if "@" not in parts.netloc:
        return uri
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


__all__ = [
    "InvalidJob",
    "JobService",
    "KeyServiceFailed",
    "RunningJob",
    "ServiceOptions",
    "StoreEventSink",
    "Submission",
    "close_publishers",
    "open_publishers",
]
