"""The orchestrator: one job, its phases in order (contract §10).

Pre-Validation → Acquisition → Media Mapping → Encoding → DRM + Packaging → Image Extraction →
Publishing. Each phase is a function of its own module that takes the earlier phases' results
and returns a frozen result (`engine.pipeline.results`); the runner owns the order, the phase
events and timings, the cancellation token, the checkpoints and the turning of exceptions into
`FinalError`. `run_job` is the documented entry point for programs that embed vipe.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from drm.keys import KeySet
from engine.cancel import CancelToken
from engine.chunks import ChunkSettings
from engine.config import data_dir as default_data_dir
from engine.encoders import NodeCapabilities, cpu_capabilities
from engine.errors import Cancelled, EngineError
from engine.events import EventEmitter, EventSink, EventType, Phase, utc_now
from engine.job import Job
from engine.pipeline.acquisition import acquire
from engine.pipeline.encoding import encode
from engine.pipeline.images import extract_stills
from engine.pipeline.media_mapping import map_job_media
from engine.pipeline.packaging import package_output
from engine.pipeline.prevalidation import load_service_key, pre_validate
from engine.pipeline.publishing import publish
from engine.pipeline.results import (
    Acquired,
    Encoded,
    Mapped,
    Packaged,
    Prepared,
    Published,
    report_facts,
)
from engine.pipeline.scope import JobScope
from engine.policy import TRUSTED, JobPolicy
from engine.publishers import open_hub
from engine.report import reporting_entry
from engine.validation import ValidJob, validate_job

if TYPE_CHECKING:
    from engine.pipeline.checkpoints import Checkpoints

log = logging.getLogger(__name__)

Result = TypeVar("Result")


class JobRunner:
    """Runs one validated job through every phase."""

    def __init__(
        self,
        scope: JobScope,
        keys: KeySet | None = None,
        checkpoints: Checkpoints | None = None,
    ):
        self.scope = scope
        self.events = scope.events
        self.given_keys = keys
        self.checkpoints = checkpoints
        self.phase_seconds: dict[str, float] = {}
        self.hub: Any = None  # the job's message publishers (contract §8)

    def run(self) -> dict[str, Any]:
        """Every phase in order; the reporting entry of the run, success or not."""
        scope = self.scope
        start_time = utc_now()
        phase = Phase.PRE_VALIDATION
        prepared: Prepared | None = None
        acquired: Acquired | None = None
        mapped: Mapped | None = None
        encoded: Encoded | None = None
        published: Published | None = None
        state, error_code = "Running", None
        try:
            prepared = self._timed(phase, self._pre_validation)
            phase = Phase.ACQUISITION
            acquired = self._resumable(phase, lambda: acquire(scope, prepared))
            self.events.emit(EventType.CONTENT_ACQUIRED, **acquired.summary())
            phase = Phase.MEDIA_MAPPING
            mapped = self._timed(phase, lambda: map_job_media(scope, acquired))
            phase = Phase.ENCODING
            encoded = self._resumable(phase, lambda: encode(scope, mapped))
            phase = Phase.PACKAGING
            packaged: Packaged = self._resumable(
                phase, lambda: package_output(scope, prepared, mapped, encoded)
            )
            self.events.emit(
                EventType.ENCODING_FINISHED,
                Streams=list(packaged.streams),
                Chunks=encoded.chunk_count,
            )
            phase = Phase.IMAGE_EXTRACTION
            self._timed(phase, lambda: extract_stills(scope, prepared, mapped, packaged))
            phase = Phase.PUBLISHING
            published = self._timed(phase, lambda: publish(scope, prepared, mapped, packaged))
            state = "Succeeded"
            # After the publishing phase's own timing, so that it is among the durations.
            self.events.emit(EventType.JOB_SUCCESS, PhaseDurationsInSeconds=self.phase_seconds)
        except Cancelled as cancelled:
            state, error_code = "Cancelled", Cancelled.code
            self._final_error(Cancelled.code, cancelled.message, phase)
        except EngineError as error:
            # The phase it happened in (contract §10 names): a SourceError may come from
            # Encoding, a PackagingError from a packaging-only job's Encoding.
            state, error_code = "Failed", error.code
            self._final_error(error.code, error.message, phase)
        except Exception as error:
            log.exception("job %s: internal error in %s", scope.job_id, phase)
            state, error_code = "Failed", 5000
            self._final_error(5000, f"internal error in {phase}: {type(error).__name__}", phase)
        finally:
            if prepared is not None:
                prepared.input_storage.close()
                prepared.output_storage.close()
            if self.hub is not None:  # deliver what is queued (JobSuccess/FinalError included)
                self.hub.close(timeout=30)
        facts = report_facts(acquired, mapped, encoded, published)
        facts.start_time, facts.finished_time = start_time, utc_now()
        facts.state, facts.error_code = state, error_code
        return reporting_entry(scope.job_id, scope.tenant_id, scope.job, facts)

    def _pre_validation(self) -> Prepared:
        """The publishers first, so that a bad publisher secret fails before any work and
        JobCreated reaches them too; then the phase itself."""
        scope = self.scope
        service_key = load_service_key(scope)
        self.hub = open_hub(scope.job, service_key, job_id=scope.job_id, egress=scope.policy.egress)
        self.events.sinks.append(self.hub)
        return pre_validate(scope, service_key, self.given_keys)

    def _resumable(self, phase: Phase, run: Callable[[], Result]) -> Result:
        """`_timed`, or the result of an earlier attempt when the phase's checkpoint in the
        work folder is complete (only with `run_job(checkpoints=True)`)."""
        if self.checkpoints is None:
            return self._timed(phase, run)
        saved = self.checkpoints.resume(phase)
        if saved is not None:
            if saved.seconds is not None:
                self.phase_seconds[phase] = saved.seconds
            self.events.warning(
                "PhaseResumed",
                f"{phase}: complete in a checkpoint of an earlier attempt on this worker; "
                "not done again",
            )
            result: Result = saved.result
            return result
        result = self._timed(phase, run)
        self.checkpoints.save(phase, result, self.phase_seconds[phase])
        return result

    def _timed(self, phase: Phase, run: Callable[[], Result]) -> Result:
        self.scope.cancel.check()
        log.info("job %s: %s", self.scope.job_id, phase)
        started = time.monotonic()
        result = run()
        self.phase_seconds[phase] = round(time.monotonic() - started, 3)
        # No cancellation check here: the next phase checks first, and a job whose publishing
        # has finished is done (cancelling it then would report a failure for a full output).
        return result

    def _final_error(self, code: int, message: str, phase: Phase) -> None:
        log.error("job %s failed (%d) in %s: %s", self.scope.job_id, code, phase, message)
        self.events.emit(
            EventType.FINAL_ERROR, ErrorCode=code, ErrorMessage=message, Phase=str(phase)
        )


def _job_capabilities(model: Job) -> NodeCapabilities:
    """Probed once per process; a job with HardwareAcceleration None probes no GPU, and a
    packaging-only job (it encodes nothing) probes nothing: the probe opens and runs encoders,
    most of a short packaging job's wall time."""
    if model.content_processing.packaging_only:
        return cpu_capabilities()
    from engine.capabilities import node_capabilities

    return node_capabilities(model.content_processing.hardware_acceleration)


def run_job(
    job: dict | str | bytes | Path | ValidJob,
    *,
    on_event: EventSink | None = None,
    cancel: CancelToken | None = None,
    workdir: Path | None = None,
    keep_workdir: bool = False,
    data_dir: Path | None = None,
    job_id: str | None = None,
    tenant_id: str = "local",
    capabilities: NodeCapabilities | None = None,
    strict: bool = False,
    keys: KeySet | None = None,
    checkpoints: bool = False,
    policy: JobPolicy = TRUSTED,
    on_publish_plan: Callable[[list[str]], None] | None = None,
    chunking: ChunkSettings | None = None,
) -> dict[str, Any]:
    """Run one job in this process and return its reporting entry (contract §9).

    `job` is a dict, a JSON string/bytes, a path to a JSON file, or a job already validated
    (`engine.validation.validate_job`: the worker path validates once). Events go to
    `on_event` (each a dict, in order). `cancel` stops the job between frames and file
    transfers (FinalError 5001). An invalid job raises JobValidationError before anything
    runs; every other failure ends the job with a FinalError event and a report with
    `Success: false`. `checkpoints`: phases finished by an earlier attempt in the same
    `workdir` are skipped (`engine.pipeline.checkpoints`); give a stable `workdir` and
    `keep_workdir=True` with it. `policy`: what the job may touch (`engine.policy`; the
    default trusts the job as the operator's own). `on_publish_plan` is told the names
    Publishing will create before it writes any (to roll back after a crash). `chunking`: split
    the video into chunks encoded by N processes and stitched (`engine.chunks`).
    """
    valid = job if isinstance(job, ValidJob) else validate_job(job, strict=strict)
    job_id = job_id or str(uuid.uuid4())
    model: Job = valid.job
    events = EventEmitter(
        job_id,
        tenant_id,
        (model.external_id, model.external_type, model.external_provider),
        [on_event] if on_event else [],
    )
    folder = workdir or Path(tempfile.mkdtemp(prefix=f"vipe-{job_id[:8]}-"))
    folder.mkdir(parents=True, exist_ok=True)
    scope = JobScope(
        job=model,
        warnings=tuple(valid.warnings),
        job_id=job_id,
        tenant_id=tenant_id,
        workdir=folder,
        events=events,
        cancel=cancel or CancelToken(),
        capabilities=capabilities or _job_capabilities(model),
        data_dir=default_data_dir(data_dir),
        policy=policy,
        on_publish_plan=on_publish_plan,
        chunking=chunking,
    )
    try:
        saved = None
        if checkpoints:  # resume in a stable work folder (a worker's, per job id)
            # Imported here: only a worker's resumable jobs use checkpoints.
            from engine.pipeline.checkpoints import Checkpoints, job_digest

            saved = Checkpoints(folder, job_digest(model), job_id)
            saved.prepare()
        return JobRunner(scope, keys, saved).run()
    finally:
        if not keep_workdir:
            shutil.rmtree(folder, ignore_errors=True)


__all__ = ["JobRunner", "run_job"]
