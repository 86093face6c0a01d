"""`vipe worker`: one process that takes jobs from the Celery broker and runs them against the
shared store (`ClusterWorker`), with its watchdog (heartbeats, cancel flags, lease sweep,
worker registry, burst mode) and its graceful stop. The package docstring tells the whole
design.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drm.credentials import CERTIFICATE_FILE, KEY_FILE, ServiceKey
from engine.cancel import CancelToken
from engine.chunks import DEFAULT_CHUNK_SECONDS, ChunkSettings
from engine.encoders import NodeCapabilities, cpu_capabilities
from engine.policy import TRUSTED, JobPolicy
from engine.service.cluster.chunks import (
    CHUNK_TASK_NAME,
    ChunkContext,
    ChunkStore,
    FarmChunks,
    encode_claimed,
    end_job,
)
from engine.service.cluster.dispatch import (
    CPU,
    GPU,
    ROUTES,
    TASK_NAME,
    UNSENT_SECONDS,
    Dispatcher,
    make_celery,
    queue_name,
    queue_prefix,
    redacted,
)
from engine.service.cluster.logs import JOB_ID, name_worker_in_logs
from engine.service.jobs import JobService, RunningJob, ServiceOptions
from engine.service.owners import new_owner
from engine.service.store import (
    FINISHED,
    RUNNING,
    STORE_KEY_ENV,
    STORE_KEY_FILE,
    JobRow,
    JobSealer,
    Store,
    database_url,
)
from storage import StorageLocation

log = logging.getLogger(__name__)

WORKER_HEARTBEAT_SECONDS = 2.0
WATCH_SECONDS = 0.5  # how often a worker reads the cancel flags of its jobs


@dataclass
class WorkerSettings:
    """Everything `vipe worker` configures."""

    data_dir: Path
    broker: str
    queues: tuple[str, ...] | None = None  # None: gpu,cpu with NVENC here, else cpu
    concurrency: int = 1
    burst: bool = False
    grace_seconds: float = 30.0
    lease_seconds: float = 60.0
    max_attempts: int = 3
    keys_dir: Path | None = None  # the API's keys (store key, service key); default data_dir
    database_url: str | None = None  # default: VIPE_DATABASE_URL, else SQLite in data_dir
    prefix: str | None = None
    strict: bool = False
    log_format: str = "text"
    capabilities: NodeCapabilities | None = None  # given (tests); None: probed
    policy: JobPolicy = TRUSTED  # what jobs may touch; `vipe worker` builds it from its flags
    # The farm's chunking (engine.service.cluster.chunks): where chunk files go (operator
    # configuration, `--work-storage`); None: this worker runs each job in one piece.
    work_storage: StorageLocation | None = None
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS


class WorkerSetupError(RuntimeError):
    """The worker cannot start (no store key, unknown queue, ...): exit status 2."""


_WORKER: ClusterWorker | None = None


def _task(task: Any, job_id: str) -> str:
    """The Celery task: runs in a thread of the worker's pool."""
    if _WORKER is None:  # pragma: no cover - only workers register the task
        raise RuntimeError("vipe.run_job runs only in `vipe worker`")
    return _WORKER.handle(job_id, task.request)


def _chunk_task(task: Any, job_id: str, index: int) -> str:
    """The Celery task of one chunk: runs in a thread of the worker's pool."""
    if _WORKER is None:  # pragma: no cover - only workers register the task
        raise RuntimeError("vipe.run_chunk runs only in `vipe worker`")
    return _WORKER.handle_chunk(job_id, index)


# ------------------------------------------------------------------------------- setup


def load_sealer(keys_dir: Path) -> JobSealer:
    """The API's store key: workers must unseal what the API sealed, never with a new key."""
    if not os.environ.get(STORE_KEY_ENV) and not (keys_dir / STORE_KEY_FILE).exists():
        raise WorkerSetupError(
            f"no store key: set {STORE_KEY_ENV} or give --keys-dir with the API's "
            f"{STORE_KEY_FILE} (workers must share the API's key to read its jobs)"
        )
    return JobSealer.load_or_create(keys_dir)


def load_service_key(keys_dir: Path, data_dir: Path) -> ServiceKey:
    """The API's service key (protected secrets of jobs), else one of this worker's own."""
    if (keys_dir / KEY_FILE).exists() and (keys_dir / CERTIFICATE_FILE).exists():
        return ServiceKey.load_or_create(keys_dir)
    log.warning(
        "no service key in %s: jobs with protected (Encrypted) secrets fail on this "
        "worker unless it shares the API's %s",
        keys_dir,
        KEY_FILE,
    )
    return ServiceKey.load_or_create(data_dir)


def open_store(settings: WorkerSettings, sealer: JobSealer) -> Store:
    """The shared job store, migrated to this version's schema."""
    store = Store(settings.database_url or database_url(settings.data_dir), sealer)
    store.migrate()
    return store


def probe_capabilities() -> NodeCapabilities:
    """What this node can encode with, probed; CPU encoders only when the probe fails."""
    try:
        from engine.capabilities import probe

        return probe().capabilities
    except Exception:
        log.exception("the node probe failed; advertising CPU encoders only")
        return cpu_capabilities()


def served_queues(
    requested: tuple[str, ...] | None, capabilities: NodeCapabilities
) -> tuple[str, ...]:
    """The routes this worker serves: as asked, else gpu,cpu with NVENC here, else cpu."""
    queues = requested or ((GPU, CPU) if capabilities.nvenc_encoders else (CPU,))
    unknown = [q for q in queues if q not in ROUTES]
    if unknown or not queues:
        raise WorkerSetupError(f"unknown queue(s) {unknown}: use gpu and/or cpu")
    if GPU in queues and not capabilities.nvenc_encoders:
        log.warning(
            "serving the gpu queue without NVENC (%s): Nvidia jobs fail here with 3102",
            capabilities.no_nvenc_reason(),
        )
    return tuple(queues)


def service_options(settings: WorkerSettings, capabilities: NodeCapabilities) -> ServiceOptions:
    """How this worker's `JobService` runs jobs: with checkpoints, so that a job that comes
    back here skips its finished phases."""
    return ServiceOptions(
        data_dir=settings.data_dir,
        strict=settings.strict,
        lease_seconds=settings.lease_seconds,
        max_attempts=settings.max_attempts,
        capabilities=capabilities,
        checkpoints=True,
        policy=settings.policy,
    )


def worker_celery(settings: WorkerSettings, prefix: str) -> Any:
    """The cluster's Celery app with the job and chunk tasks registered (they run in this
    worker)."""
    app = make_celery(settings.broker, prefix)
    for name, task in ((TASK_NAME, _task), (CHUNK_TASK_NAME, _chunk_task)):
        app.task(
            name=name,
            bind=True,
            acks_late=True,
            reject_on_worker_lost=True,
            ignore_result=True,
        )(task)
    return app


# ---------------------------------------------------------------------------- the worker


class ClusterWorker:
    """One `vipe worker` process: a Celery consumer (threads pool, `concurrency` slots), a
    watchdog (heartbeats, cancel flags, lease sweep, registry, burst), graceful stop."""

    def __init__(self, settings: WorkerSettings):
        from celery.exceptions import Reject

        self.settings = settings
        self._reject = Reject
        self.hostname = socket.gethostname()
        self.owner = new_owner(self.hostname)
        name_worker_in_logs(self.owner)
        self.prefix = settings.prefix or queue_prefix()
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        keys_dir = settings.keys_dir or settings.data_dir
        sealer = load_sealer(keys_dir)
        service_key = load_service_key(keys_dir, settings.data_dir)
        self.store = open_store(settings, sealer)
        self.capabilities = settings.capabilities or probe_capabilities()
        self.queues = served_queues(settings.queues, self.capabilities)
        options = service_options(settings, self.capabilities)
        self.service = JobService(self.store, options, service_key)
        self.chunks: ChunkContext | None = None
        if settings.work_storage is not None:
            self.chunks = ChunkContext(
                ChunkStore(self.store, settings.lease_seconds, settings.max_attempts),
                settings.work_storage,
                settings.data_dir / "chunks",
                self.owner,
            )
            self.service.job_chunking = self.chunking  # its jobs chunk on the whole farm
        self.service.on_requeue = self._resend
        self.app = worker_celery(settings, self.prefix)
        self.dispatcher = Dispatcher(self.store, self.app, self.prefix)
        self.runs: dict[str, RunningJob] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()  # SIGTERM: no new jobs
        self._done = threading.Event()  # the watchdog ends
        self._drain: threading.Thread | None = None
        self._handing_back = threading.Lock()
        self.controller: Any = None

    def advertised(self) -> dict[str, Any]:
        """What this worker registers in the store: its encoders, GPU and CPUs."""
        caps = self.capabilities
        return {
            "CpuEncoders": sorted(caps.cpu_encoders),
            "NvencEncoders": sorted(caps.nvenc_encoders),
            "NvencSessions": caps.nvenc_sessions,
            "Nvenc10Bit": caps.nvenc_10bit,
            "NvdecCodecs": sorted(caps.nvdec_codecs),
            "Gpu": caps.gpu_name,
            "Driver": caps.driver,
            "CpuCount": caps.cpu_count,
        }

    # -- running ----------------------------------------------------------------------------

    def run(self) -> int:
        """Consume until stopped (signal, or `--burst` with nothing left); the exit status."""
        global _WORKER
        from celery.worker import state as celery_state

        _WORKER = self
        celery_state.should_stop = None
        celery_state.should_terminate = None
        self._register()
        self.service.recover_at_start(self.owner)
        self._prune_workdirs()
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, self._on_signal)
        watchdog = threading.Thread(target=self._watch, name="vipe-watchdog", daemon=True)
        watchdog.start()
        self.controller = self.app.WorkController(
            hostname=f"vipe-{os.getpid()}@{self.hostname}",
            pool="threads",
            concurrency=self.settings.concurrency,
            queues=self._names(),
            without_gossip=True,
            without_mingle=True,
            without_heartbeat=True,
            loglevel=logging.getLogger().level,
            ready_callback=self._on_ready,
        )
        log.info(
            "worker %s: queues %s, %d slot(s), NVENC %s, broker %s%s",
            self.owner,
            ",".join(self.queues),
            self.settings.concurrency,
            ",".join(sorted(self.capabilities.nvenc_encoders)) or "none",
            redacted(self.settings.broker),
            ", burst" if self.settings.burst else "",
        )
        try:
            self.controller.start()  # returns after a warm shutdown
        finally:
            self._done.set()
            self._stopping.set()
            try:
                self.store.remove_worker(self.owner)
            except Exception:
                log.exception("the worker row could not be removed")
            _WORKER = None
        log.info("worker %s: stopped", self.owner)
        self.store.close()
        return int(self.controller.exitcode or 0)

    def _on_ready(self, consumer: Any) -> None:
        hub = getattr(consumer, "hub", None)
        if hub is not None:
            # The event loop sleeps until its next timer (up to 10 s with AMQP): a timer every
            # half second makes it see a stop (signal, burst) at once.
            hub.call_repeatedly(0.5, lambda: None)
        log.info("worker %s: consuming %s", self.owner, ", ".join(self._names()))

    def _names(self) -> list[str]:
        return [queue_name(q, self.prefix) for q in self.queues]

    def handle(self, job_id: str, request: Any = None) -> str:
        """One message: claim the job and run it; or drop the message (why, returned)."""
        token = JOB_ID.set(job_id)
        try:
            return self._handle(job_id, request)
        finally:
            JOB_ID.reset(token)

    def _handle(self, job_id: str, request: Any) -> str:
        if self._stopping.is_set():
            raise self._reject("the worker is stopping", requeue=True)
        store = self.store
        try:
            row = store.get_job(job_id)
        except Exception as error:  # the store is down: give the message back, a bit later
            log.error("job %s: the job store cannot be read (%s); message returned", job_id, error)
            time.sleep(2)
            raise self._reject("the job store cannot be read", requeue=True) from None
        if row is None:
            log.warning("job %s: not in the store; message dropped", job_id)
            return "unknown"
        if row.state in FINISHED:
            log.info("job %s: already %s; message dropped", job_id, row.state)
            return "finished"
        if row.state == RUNNING:
            if row.owner == self.owner:
                return "duplicate"
            if not self.service.orphaned(row, self.owner, at_start=True):
                log.info("job %s: running on %s; message dropped", job_id, row.owner)
                return "elsewhere"
            self.service.take_over(row)  # queued again (or failed after max attempts)
        claimed = store.claim(job_id, self.owner)
        if claimed is None:
            log.info("job %s: not claimable (taken or ended meanwhile); dropped", job_id)
            return "taken"
        run = RunningJob(job_id, CancelToken(), self.owner)
        with self._lock:
            self.runs[job_id] = run
        try:
            if store.cancel_requested(job_id):
                run.token.cancel("the job was cancelled")
            log.info(
                "job %s: started on %s (attempt %d of %d, queue %s)",
                job_id,
                self.owner,
                claimed.attempts,
                self.settings.max_attempts,
                claimed.queue,
            )
            state = self.service.execute(claimed, run)
            log.info("job %s: %s", job_id, state)
            if state in FINISHED:
                self._end_chunks(job_id)
            return state
        finally:
            with self._lock:
                self.runs.pop(job_id, None)

    def _resend(self, job_id: str) -> None:
        self.dispatcher.send(job_id)

    # -- chunks -----------------------------------------------------------------------------

    def chunking(self, row: JobRow) -> ChunkSettings | None:
        """How the job `row` chunks here: on the farm, its messages on the job's queue."""
        if self.chunks is None:
            return None
        queue = queue_name(row.queue if row.queue in ROUTES else CPU, self.prefix)

        def send(job_id: str, index: int, message_id: str) -> None:
            self.app.send_task(
                CHUNK_TASK_NAME,
                args=[job_id, index],
                task_id=message_id,
                queue=queue,
                routing_key=queue,
            )

        def revoke(message_ids: list[str]) -> None:
            self.app.control.revoke(message_ids)

        runner = FarmChunks(self.chunks, row.id, send, revoke)
        return ChunkSettings(workers=1, seconds=self.settings.chunk_seconds, runner=runner)

    def handle_chunk(self, job_id: str, index: int) -> str:
        """One chunk message: claim the chunk and encode it; or drop the message (why)."""
        token = JOB_ID.set(job_id)
        try:
            if self._stopping.is_set():
                raise self._reject("the worker is stopping", requeue=True)
            if self.chunks is None:
                log.warning("job %s: chunk %d: no --work-storage here; dropped", job_id, index)
                return "no work storage"
            row = self.store.get_job(job_id)
            if row is None or row.state != RUNNING or row.cancel_requested:
                return "job not running"
            claimed = self.chunks.chunks.claim(job_id, index, self.owner)
            if claimed is None:
                return "not claimable"
            return encode_claimed(self.chunks, job_id, index, claimed.plan or "")
        finally:
            JOB_ID.reset(token)

    def _end_chunks(self, job_id: str) -> None:
        """The job ended: its work storage folder goes (if it chunked on the farm)."""
        if self.chunks is None:
            return
        try:
            if self.chunks.chunks.holds_files(job_id):
                end_job(self.chunks, job_id)
        except Exception:  # the sweep (`_sweep_chunks`) tries again
            log.exception("job %s: its work storage folder could not be removed", job_id)

    def _sweep_chunks(self) -> None:
        """The work storage folders of jobs that ended elsewhere or without a run (given up
        or cancelled while their coordinator was dead, a coordinator that died right after
        the end)."""
        if self.chunks is not None:
            for job_id in self.chunks.chunks.ended_jobs():
                self._end_chunks(job_id)

    # -- watchdog ---------------------------------------------------------------------------

    def _watch(self) -> None:
        lease = self.settings.lease_seconds
        last_beat = last_sweep = last_prune = time.monotonic()
        idle_checks = 0
        last_burst = 0.0
        while not self._done.wait(WATCH_SECONDS):
            now = time.monotonic()
            with self._lock:
                runs = list(self.runs.values())
            for run in runs:
                self._watch_run(run, lease)
            try:
                if now - last_beat >= WORKER_HEARTBEAT_SECONDS:
                    last_beat = now
                    state = "Draining" if self._stopping.is_set() else "Running"
                    if not self.store.worker_heartbeat(self.owner, state, len(runs)):
                        self._register()
                sweep = min(lease / 2, UNSENT_SECONDS)
                if now - last_sweep >= sweep and not self._stopping.is_set():
                    last_sweep = now
                    self.service.recover(self.owner, at_start=False)
                    self.dispatcher.resend_unsent()
                    self._sweep_chunks()
                if now - last_prune >= 300:
                    last_prune = now
                    self._prune_workdirs()
                if self.settings.burst and not self._stopping.is_set() and now - last_burst >= 1:
                    last_burst = now
                    idle_checks = idle_checks + 1 if self._idle() else 0
                    if idle_checks >= 2:
                        log.info("burst: the queues are empty and nothing runs; stopping")
                        self._stop_consuming()
            except Exception:
                log.exception("the worker's watchdog failed; retrying")

    def _watch_run(self, run: RunningJob, lease: float) -> None:
        store = self.store
        try:
            if not run.token.cancelled and store.cancel_requested(run.job_id):
                log.info("job %s: cancellation seen in the store", run.job_id)
                run.token.cancel("the job was cancelled")
            if time.monotonic() - run.last_heartbeat >= lease / 4:
                run.last_heartbeat = time.monotonic()
                if not store.heartbeat(run.job_id, self.owner) and not run.abandoned:
                    # Our lease ran out and another worker took the job: stop this run.
                    log.warning("job %s: taken over by another worker; stopping", run.job_id)
                    run.abandoned = True
                    run.token.cancel("the job was taken over by another worker")
        except Exception:
            log.exception("job %s: watchdog check failed", run.job_id)

    def _register(self) -> None:
        self.store.register_worker(
            self.owner,
            hostname=self.hostname,
            pid=os.getpid(),
            queues=list(self.queues),
            concurrency=self.settings.concurrency,
            capabilities=self.advertised(),
        )

    def _idle(self) -> bool:
        """Nothing runs or waits here and the broker holds no message of our queues."""
        from celery.worker import state as celery_state

        with self._lock:
            if self.runs:
                return False
        if celery_state.active_requests or celery_state.reserved_requests:
            return False
        from kombu.exceptions import ChannelError  # the very class amqp raises

        for route in self.queues:
            name = queue_name(route, self.prefix)
            with self.app.connection_for_write() as connection:
                try:
                    _, count, _ = connection.default_channel.queue_declare(queue=name, passive=True)
                except ChannelError:  # no such queue (yet): empty
                    count = 0
            if count:
                return False
        return True

    def _prune_workdirs(self) -> None:
        """Remove the work folders of jobs that ended (or are unknown) in the store: a job's
        checkpoints matter only while it may come back to this worker. (The sources of
        chunked jobs, `chunks/<job id>`, likewise.)"""
        with self._lock:
            mine = set(self.runs)
        for kind in ("work", "chunks"):
            folder = self.settings.data_dir / kind
            if folder.is_dir():
                self._prune_folder(folder, mine)

    def _prune_folder(self, folder: Path, mine: set[str]) -> None:
        for path in folder.iterdir():
            if not path.is_dir() or path.name in mine:
                continue
            try:
                row = self.store.get_job(path.name)
            except Exception:
                return
            if row is None or row.state in FINISHED:
                shutil.rmtree(path, ignore_errors=True)
                log.info("job %s: work folder removed (job %s)", path.name, row and row.state)

    # -- stopping ---------------------------------------------------------------------------

    def _stop_consuming(self) -> None:
        """Celery's warm shutdown: no more messages; the pool waits for the running jobs."""
        from celery.worker import state as celery_state

        self._stopping.set()
        celery_state.should_stop = 0

    def _on_signal(self, number: int, _frame: Any) -> None:
        name = signal.Signals(number).name
        if self._drain is not None:  # the second signal: hand back now
            log.warning("%s again: handing the running jobs back now", name)
            threading.Thread(target=self._hand_back_and_exit, daemon=True).start()
            return
        log.warning(
            "%s: no new jobs; %d running job(s) get %g s to finish",
            name,
            len(self.runs),
            self.settings.grace_seconds,
        )
        self._stop_consuming()
        self._drain = threading.Thread(target=self._drain_then_exit, daemon=True)
        self._drain.start()

    def _drain_then_exit(self) -> None:
        deadline = time.monotonic() + self.settings.grace_seconds
        while time.monotonic() < deadline:
            with self._lock:
                if not self.runs:
                    return  # Celery's warm shutdown ends the process normally
            time.sleep(0.2)
        self._hand_back_and_exit()

    def _hand_back_and_exit(self) -> None:
        """Queue the running jobs again (no attempt used) and send them, then exit at once,
        without interrupting them: a cancelled run would publish a FinalError and delete what
        it had published while another worker already runs the job."""
        if not self._handing_back.acquire(blocking=False):
            return
        with self._lock:
            runs = list(self.runs.values())
        for run in runs:
            run.abandoned = True  # whatever it still emits is not stored
        for run in runs:
            try:
                if self.store.requeue(run.job_id, self.owner, refund_attempt=True):
                    log.warning("job %s: handed back (the worker stops)", run.job_id)
                    self.dispatcher.send(run.job_id)
            except Exception:  # the lease sweep of another node requeues it
                log.exception("job %s: hand-back failed; its lease will run out", run.job_id)
        try:
            self.store.remove_worker(self.owner)
        except Exception:
            log.exception("the worker row could not be removed")
        log.warning("worker %s: exiting with %d job(s) handed back", self.owner, len(runs))
        logging.shutdown()
        os._exit(0)


def run_worker(settings: WorkerSettings) -> int:
    """`vipe worker`: the exit status (0 stopped, 2 cannot start)."""
    try:
        worker = ClusterWorker(settings)
    except WorkerSetupError as error:
        log.error("%s", error)
        return 2
    return worker.run()


__all__ = ["ClusterWorker", "WorkerSettings", "WorkerSetupError", "run_worker"]
