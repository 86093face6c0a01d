"""Celery: the job queue for farms of CPU and GPU nodes (`VIPE_BROKER_URL`).

    vipe serve  ...                      with VIPE_BROKER_URL set: stores and enqueues only
    vipe worker [--queues gpu,cpu] [--concurrency N] [--burst] [--data-dir DIR]
                [--keys-dir DIR] [--grace-seconds S] [--lease-seconds S] [--max-attempts N]
                [--log-format text|json] [--broker URL]

The job store (PostgreSQL, `VIPE_DATABASE_URL`) is the source of truth; a broker message only
says "job X may be runnable now". A worker that gets one claims the job in the store
(`Store.claim`, atomic) and runs it with `JobService.execute`; a message for a job that is
finished, cancelled or running on a live worker is acknowledged and dropped. So duplicates
(re-deliveries, sweeps that send again) are harmless, and every job runs once per attempt.

**Routing.** `HardwareAcceleration: Nvidia` goes to the `gpu` queue; `Auto` to `gpu` when a
live worker that serves `gpu` advertises an NVENC encoder that opened, else `cpu`; `None` to
`cpu`. A GPU node runs `--queues gpu,cpu` to take CPU jobs too whenever it has a free slot
(messages of both queues are taken in arrival order). A `Nvidia` job waits for a GPU worker;
with `vipe serve --gpu-wait-seconds S` (`VIPE_GPU_WAIT_SECONDS`) it fails with 3102 when it has
waited S seconds while no GPU worker is alive (0, the default: it waits as long as it takes).
An `Auto` job routed to `gpu` whose GPU workers all went away is sent to `cpu` instead.
Queue names are `<prefix>.gpu` and `<prefix>.cpu`, prefix `VIPE_QUEUE_PREFIX` (default `vipe`).

**Workers** register in the store (`workers` table): queues, concurrency, and what the node can
do as probed (`engine.capabilities`: encoders that actually open, NVDEC codecs, CPU count), with
a heartbeat every 2 s; `GET /health` lists those alive.

**Crash safety.**
- Late acknowledgement (`task_acks_late`, `task_reject_on_worker_lost`, prefetch 1 per slot):
  a message is acknowledged when its job has ended, never before. Jobs run in threads of the
  worker process, so a worker that dies (kill -9, OOM) drops its broker connection with its
  messages unacknowledged.
- Leases: a running job's row carries its worker (`owner`) and a heartbeat renewed every
  lease/4 (`--lease-seconds`, default 60). Every worker and the API sweep every lease/2: a
  Running job whose heartbeat is older than the lease is queued again in the store and sent
  again. A worker that gets a message for a Running job whose owner was a process of its own
  host that no longer runs takes it over at once.
- Unsent jobs: a job's `queue` is recorded once the broker took its message. A Queued job
  without one (stored while the broker was unreachable, or queued again by a process that
  stopped before sending) is sent by the sweeps within about 5 s: an accepted job is never lost.
- Attempts: each claim counts one; a job whose worker died `--max-attempts` times (default 3)
  ends with FinalError 5000 (a job that kills its worker cannot loop forever). A job handed
  back by a worker that stops gracefully does not use up an attempt.
- Checkpoints (`pipeline.checkpoints`): a worker keeps a stable work folder per job id under its
  data folder; a job that comes back to the same worker skips the phases whose checkpoints are
  complete, anything else starts clean. Publishing is idempotent: the same names are uploaded
  again and overwrite, manifests last.

**Re-delivery: RabbitMQ vs Redis (vs SQS).** RabbitMQ gives the unacknowledged messages of a
closed connection to another consumer at once, so a killed worker's job is re-delivered in
about a second (and taken over at once on the same host, else after the lease). Redis (kombu)
has no such notion: a message delivered but not acknowledged stays in the `unacked` hash until
its `visibility_timeout` (`VIPE_REDIS_VISIBILITY_TIMEOUT`, default 3600 s) has passed, then is
put back. vipe does not wait for that: the lease sweep queues the job again after
`--lease-seconds`. Keep the visibility timeout long (longer than most jobs): it is only the
backstop for a message lost between delivery and claim, and a shorter one merely re-delivers
messages of running jobs that are then dropped. SQS (`VIPE_BROKER_URL=sqs://`, `pip install
celery[sqs]`, region and queue options in `VIPE_BROKER_TRANSPORT_OPTIONS` as JSON) behaves like
Redis (a visibility timeout per message, here `visibility_timeout` in the transport options);
it has no broadcast, so `DELETE /Job` reaches a running job through the store flag alone.

**Cancellation** across nodes: `DELETE /Job/{id}` sets the store's cancel flag and revokes the
Celery task (id = job id, so no queued or re-delivered copy of the message starts); the worker
that runs the job polls the flag every half second and stops it (5001) well within 5 s.

**Operations.** SIGTERM/SIGINT: the worker takes no more messages and gives its running jobs
`--grace-seconds` (default 30) to finish; those still running are then handed back (queued
again in the store and sent again, not counted as an attempt) and the process exits at once
without interrupting them, so no FinalError reaches their publishers and nothing they already
published is deleted; their work folders stay for a resume. A second signal hands back at once.
`--burst` runs until the worker's queues are empty and nothing runs, then exits (tests, batch).
`--log-format json` writes one JSON object per line with `job_id` where a line is about a job.

Test seam: `VIPE_TEST_KILL_EXTERNAL_ID=X` makes a worker SIGKILL itself when it starts a job
whose ExternalId is X (crash tests; never set it in production).
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.cancel import CancelToken
from engine.events import EventType
from engine.service.jobs import JobService, RunningJob, ServiceOptions
from engine.service.queue import JobQueue
from engine.service.store import FINISHED, QUEUED, RUNNING, JobRow, Store, utcnow

log = logging.getLogger(__name__)

BROKER_URL_ENV = "VIPE_BROKER_URL"
QUEUE_PREFIX_ENV = "VIPE_QUEUE_PREFIX"
TRANSPORT_OPTIONS_ENV = "VIPE_BROKER_TRANSPORT_OPTIONS"
VISIBILITY_TIMEOUT_ENV = "VIPE_REDIS_VISIBILITY_TIMEOUT"
GPU_WAIT_ENV = "VIPE_GPU_WAIT_SECONDS"
KILL_SEAM_ENV = "VIPE_TEST_KILL_EXTERNAL_ID"

GPU, CPU = "gpu", "cpu"
ROUTES = (GPU, CPU)
TASK_NAME = "vipe.run_job"
DEFAULT_PREFIX = "vipe"
DEFAULT_VISIBILITY_TIMEOUT = 3600.0
WORKER_HEARTBEAT_SECONDS = 2.0
WORKER_ALIVE_SECONDS = 10.0  # a worker silent for longer is not counted as alive
WORKER_PRUNE_SECONDS = 3600.0  # rows of workers silent this long are removed
WATCH_SECONDS = 0.5  # how often a worker reads the cancel flags of its jobs
UNSENT_SECONDS = 5.0  # a Queued job without a message for this long is sent (again)

JOB_ID = contextvars.ContextVar("vipe_job_id", default=None)


# ------------------------------------------------------------------------------ settings


def broker_url(explicit: str | None = None) -> str | None:
    """`--broker`, else `VIPE_BROKER_URL` (None: no cluster)."""
    return explicit or os.environ.get(BROKER_URL_ENV) or None


def queue_prefix() -> str:
    return os.environ.get(QUEUE_PREFIX_ENV) or DEFAULT_PREFIX


def queue_name(route: str, prefix: str | None = None) -> str:
    """The broker queue of a route: `vipe.gpu`, `vipe.cpu`."""
    return f"{prefix or queue_prefix()}.{route}"


def redacted(url: str) -> str:
    """A broker URL without its password."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def route_for(hardware: str | None, gpu_workers: bool) -> str:
    """The queue of a job: `Nvidia` -> gpu; `Auto` -> gpu when GPU workers are alive, else
    cpu; `None` -> cpu. (`hardware` in the contract's spelling; missing means Auto.)"""
    hardware = hardware or "Auto"
    if hardware == "Nvidia":
        return GPU
    if hardware == "Auto" and gpu_workers:
        return GPU
    return CPU


def make_celery(
    url: str, prefix: str | None = None, transport_options: dict[str, Any] | None = None
) -> Any:
    """The Celery app of a cluster: late acks, no results (the store has them), JSON only.
    Broker transport options: `VIPE_BROKER_TRANSPORT_OPTIONS` (JSON), then `transport_options`
    (e.g. Redis `global_keyprefix`, SQS `region` and `predefined_queues`)."""
    try:
        from celery import Celery
        from kombu import Exchange, Queue
    except ImportError:
        raise RuntimeError("the Celery queue needs `pip install vipe[cluster]`") from None

    prefix = prefix or queue_prefix()
    transport: dict[str, Any] = {}
    if url.startswith(("redis", "rediss", "sqs")):
        timeout = float(os.environ.get(VISIBILITY_TIMEOUT_ENV) or DEFAULT_VISIBILITY_TIMEOUT)
        transport["visibility_timeout"] = timeout
    if os.environ.get(TRANSPORT_OPTIONS_ENV):
        transport.update(json.loads(os.environ[TRANSPORT_OPTIONS_ENV]))
    transport.update(transport_options or {})
    app = Celery("vipe", broker=url, set_as_current=False)
    queues = []
    for route in ROUTES:
        name = queue_name(route, prefix)
        queues.append(Queue(name, Exchange(name, type="direct"), routing_key=name))
    app.conf.update(
        task_acks_late=True,  # acknowledged when the job has ended, not when it starts
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,  # a slot holds one message: none waits behind a job
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        task_queues=queues,
        task_default_queue=queue_name(CPU, prefix),
        task_create_missing_queues=False,
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=10,
        # A broker outage does not stop running jobs; copies of their messages delivered
        # again meanwhile are dropped while the job's lease is held.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        worker_enable_remote_control=not url.startswith("sqs"),  # revoke needs broadcast
        enable_utc=True,
    )
    return app


# ---------------------------------------------------------------------------- JSON logs


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, job_id, worker, pid."""

    JOB = re.compile(
        r"(?:\bjob |\brun_job\[)([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\b"
    )

    def __init__(self, worker: str = ""):
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        job_id = getattr(record, "job_id", None) or JOB_ID.get()
        if job_id is None:
            found = self.JOB.search(message)
            job_id = found.group(1) if found else None
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
            "job_id": job_id,
            "worker": self.worker or None,
            "pid": record.process,
            "thread": record.threadName,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(log_format: str, level: int = logging.INFO, worker: str = "") -> None:
    """Root logging to stderr, as text or JSON lines (replaces what `main` set up)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(worker))
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(threadName)s]: %(message)s")
        )
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("alembic", "kombu", "amqp", "celery.worker.consumer", "celery.bootsteps"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


# ------------------------------------------------------------------------ the API's queue


def _hardware(row: JobRow) -> str | None:
    try:
        summary = json.loads(row.summary or "{}")
    except ValueError:
        return None
    return (summary.get("ContentProcessing") or {}).get("HardwareAcceleration")


def _worker_json(row: Any) -> dict[str, Any]:
    age = (utcnow() - row.heartbeat_at).total_seconds()
    return {
        "Id": row.id,
        "Hostname": row.hostname,
        "Pid": row.pid,
        "Queues": json.loads(row.queues),
        "Concurrency": row.concurrency,
        "Running": row.running,
        "State": row.state,
        "Capabilities": json.loads(row.capabilities),
        "StartTime": row.started_at.isoformat(timespec="seconds"),
        "HeartbeatAgeSeconds": round(age, 1),
    }


def gpu_workers_alive(store: Store) -> bool:
    """A live worker serves the gpu queue with an NVENC encoder that opened."""
    for row in store.workers(alive_within=WORKER_ALIVE_SECONDS):
        capabilities = json.loads(row.capabilities)
        if GPU in json.loads(row.queues) and capabilities.get("NvencEncoders"):
            return True
    return False


class Dispatcher:
    """Sends a job's message to its queue (routing it first when it has none)."""

    def __init__(self, store: Store, app: Any, prefix: str):
        self.store = store
        self.app = app
        self.prefix = prefix

    def route(self, row: JobRow) -> str:
        return route_for(_hardware(row), gpu_workers_alive(self.store))

    def send(self, job_id: str, *, reroute: bool = False) -> str | None:
        """Publish the job's task; the route it went to (None: the job is gone or ended).

        The job's `queue` is recorded after the broker took the message and cleared when it
        did not, so that a Queued job without a queue is one that still has to be sent
        (`resend_unsent`)."""
        row = self.store.get_job(job_id)
        if row is None or row.state != QUEUED:
            return None
        route = row.queue if row.queue in ROUTES and not reroute else self.route(row)
        name = queue_name(route, self.prefix)
        try:
            # task id = job id: a revoke (cancel) then covers every copy of the message.
            self.app.send_task(
                TASK_NAME, args=[job_id], task_id=job_id, queue=name, routing_key=name
            )
        except Exception:
            if row.queue is not None:
                self.store.set_queue(job_id, None)
            raise
        if route != row.queue:
            self.store.set_queue(job_id, route)
        log.info("job %s: sent to queue %s", job_id, name)
        return route

    def resend_unsent(self, older_than: float = UNSENT_SECONDS) -> int:
        """Send the Queued jobs that have no message (see `send`); how many were sent."""
        count = 0
        for row in self.store.unsent_jobs(older_than):
            if self.send(row.id) is not None:
                log.warning("job %s: had no message in the broker; sent now", row.id)
                count += 1
        return count


class CeleryQueue(JobQueue):
    """The API's side of the cluster: `enqueue` routes and publishes; nothing runs here.

    A sweeper thread takes over jobs whose lease ran out (queued again and sent again, or
    failed after `max_attempts`), sends `Auto` jobs waiting for a GPU worker that is gone to
    the cpu queue, fails `Nvidia` jobs that waited `gpu_wait_seconds` with no GPU worker alive
    (3102), and prunes the rows of long-dead workers.
    """

    def __init__(
        self,
        service: JobService,
        broker: str,
        *,
        prefix: str | None = None,
        gpu_wait_seconds: float = 0.0,
        transport_options: dict[str, Any] | None = None,
    ):
        self.service = service
        self.broker = broker
        self.prefix = prefix or queue_prefix()
        self.gpu_wait_seconds = gpu_wait_seconds
        self.app = make_celery(broker, self.prefix, transport_options)
        self.dispatcher = Dispatcher(service.store, self.app, self.prefix)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- JobQueue ---------------------------------------------------------------------------

    def enqueue(self, job_id: str) -> None:
        self.dispatcher.send(job_id, reroute=True)

    def cancel(self, job_id: str) -> None:
        # The store's flag (set already) is what the worker polls; the revoke keeps any copy
        # of the message that is still queued or re-delivered from starting the job.
        try:
            self.app.control.revoke(job_id)
        except Exception as error:
            log.warning("job %s: revoke not sent (%s); the store flag stops it", job_id, error)

    def start(self) -> None:
        self.service.on_requeue = self._resend
        try:
            recovered = self.service.recover(self.owner, at_start=True)
            if recovered:
                log.warning("%d job(s) left by stopped workers were taken over", recovered)
        except Exception:
            log.exception("the orphan sweep failed at start")
        self._thread = threading.Thread(target=self._sweep, name="vipe-sweeper", daemon=True)
        self._thread.start()
        log.info("Celery queue: broker %s, queues %s", redacted(self.broker), self._names())

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.app.close()

    def health(self) -> dict[str, Any]:
        workers = self.service.store.workers(alive_within=WORKER_ALIVE_SECONDS)
        return {
            "Queue": "celery",
            "Broker": redacted(self.broker),
            "Queues": self._names(),
            "Workers": [_worker_json(row) for row in workers],
        }

    # -- internals --------------------------------------------------------------------------

    def _names(self) -> list[str]:
        return [queue_name(route, self.prefix) for route in ROUTES]

    def _resend(self, job_id: str) -> None:
        self.dispatcher.send(job_id)

    def _sweep(self) -> None:
        lease = self.service.options.lease_seconds
        last_lease = last_prune = time.monotonic()
        while not self._stopping.wait(1.0):
            now = time.monotonic()
            try:
                if now - last_lease >= min(lease / 2, UNSENT_SECONDS):
                    last_lease = now
                    self.service.recover(self.owner, at_start=False)
                    self.dispatcher.resend_unsent()
                self._check_gpu_queue()
                if now - last_prune >= 600:
                    last_prune = now
                    self.service.store.prune_workers(WORKER_PRUNE_SECONDS)
            except Exception:
                log.exception("the queue sweep failed; retrying")

    def _check_gpu_queue(self) -> None:
        """Jobs waiting in the gpu queue while no GPU worker is alive: `Auto` ones (routed
        there while one was) go to the cpu queue; `Nvidia` ones fail with 3102 once they have
        waited `gpu_wait_seconds` (when set)."""
        store = self.service.store
        waiting = store.queued_jobs(GPU)
        if not waiting or gpu_workers_alive(store):
            return  # GPU workers exist: a long queue is not a failure
        now = utcnow()
        for row in waiting:
            if _hardware(row) != "Nvidia":
                log.warning("job %s: no GPU worker alive any more; rerouted", row.id)
                self.dispatcher.send(row.id, reroute=True)
                continue
            waited = (now - row.updated_at).total_seconds()
            if self.gpu_wait_seconds <= 0 or waited < self.gpu_wait_seconds:
                continue
            message = (
                f"no GPU worker (NVENC) took the job within {self.gpu_wait_seconds:g} s: "
                "no worker serving the gpu queue is alive"
            )
            if store.fail_queued(row.id, 3102, message):
                log.error("job %s: %s", row.id, message)
                self.service.metrics.finished.labels("Failed").inc()
                self.service.emit_outside_run(
                    row,
                    EventType.FINAL_ERROR,
                    ErrorCode=3102,
                    ErrorMessage=message,
                    Phase="Encoding",
                )


# ---------------------------------------------------------------------------- the worker


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
    capabilities: Any = None  # NodeCapabilities (tests); None: probed


class WorkerSetupError(RuntimeError):
    """The worker cannot start (no store key, unknown queue, ...): exit status 2."""


_WORKER: ClusterWorker | None = None


def _task(task: Any, job_id: str) -> str:
    """The Celery task: runs in a thread of the worker's pool."""
    if _WORKER is None:  # pragma: no cover - only workers register the task
        raise RuntimeError("vipe.run_job runs only in `vipe worker`")
    return _WORKER.handle(job_id, task.request)


class ClusterWorker:
    """One `vipe worker` process: a Celery consumer (threads pool, `concurrency` slots), a
    watchdog (heartbeats, cancel flags, lease sweep, registry, burst), graceful stop."""

    def __init__(self, settings: WorkerSettings):
        from celery.exceptions import Reject

        from drm.credentials import CERTIFICATE_FILE, KEY_FILE, ServiceKey
        from engine.service.store import STORE_KEY_ENV, STORE_KEY_FILE, JobSealer, database_url

        self.settings = settings
        self._reject = Reject
        self.hostname = socket.gethostname()
        self.owner = f"{self.hostname}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        for handler in logging.getLogger().handlers:  # JSON lines name this worker
            if isinstance(handler.formatter, JsonFormatter):
                handler.formatter.worker = self.owner
        self.prefix = settings.prefix or queue_prefix()
        data_dir = settings.data_dir
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        keys_dir = settings.keys_dir or data_dir
        # Workers must unseal what the API sealed: its store key, never a new one.
        if not os.environ.get(STORE_KEY_ENV) and not (keys_dir / STORE_KEY_FILE).exists():
            raise WorkerSetupError(
                f"no store key: set {STORE_KEY_ENV} or give --keys-dir with the API's "
                f"{STORE_KEY_FILE} (workers must share the API's key to read its jobs)"
            )
        sealer = JobSealer.load_or_create(keys_dir)
        if (keys_dir / KEY_FILE).exists() and (keys_dir / CERTIFICATE_FILE).exists():
            service_key = ServiceKey.load_or_create(keys_dir)
        else:
            log.warning(
                "no service key in %s: jobs with protected (Encrypted) secrets fail on this "
                "worker unless it shares the API's %s",
                keys_dir,
                KEY_FILE,
            )
            service_key = ServiceKey.load_or_create(data_dir)
        self.store = Store(settings.database_url or database_url(data_dir), sealer)
        self.store.migrate()
        self.capabilities = settings.capabilities or self._probe()
        queues = settings.queues or ((GPU, CPU) if self.capabilities.nvenc_encoders else (CPU,))
        unknown = [q for q in queues if q not in ROUTES]
        if unknown or not queues:
            raise WorkerSetupError(f"unknown queue(s) {unknown}: use gpu and/or cpu")
        if GPU in queues and not self.capabilities.nvenc_encoders:
            log.warning(
                "serving the gpu queue without NVENC (%s): Nvidia jobs fail here with 3102",
                self.capabilities.no_nvenc_reason(),
            )
        self.queues = tuple(queues)
        options = ServiceOptions(
            data_dir=data_dir,
            strict=settings.strict,
            lease_seconds=settings.lease_seconds,
            max_attempts=settings.max_attempts,
            capabilities=self.capabilities,
            checkpoints=True,
        )
        self.service = JobService(self.store, options, service_key)
        self.service.on_requeue = self._resend
        self.app = make_celery(settings.broker, self.prefix)
        self.app.task(
            name=TASK_NAME,
            bind=True,
            acks_late=True,
            reject_on_worker_lost=True,
            ignore_result=True,
        )(_task)
        self.dispatcher = Dispatcher(self.store, self.app, self.prefix)
        self.runs: dict[str, RunningJob] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()  # SIGTERM: no new jobs
        self._done = threading.Event()  # the watchdog ends
        self._drain: threading.Thread | None = None
        self._handing_back = threading.Lock()
        self.controller: Any = None

    # -- capabilities -----------------------------------------------------------------------

    @staticmethod
    def _probe() -> Any:
        try:
            from engine.capabilities import probe

            return probe().capabilities
        except Exception:
            log.exception("the node probe failed; advertising CPU encoders only")
            from engine.encoders import cpu_capabilities

            return cpu_capabilities()

    def advertised(self) -> dict[str, Any]:
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
        try:
            recovered = self.service.recover(self.owner, at_start=True)
            if recovered:
                log.warning("%d job(s) left by stopped workers were taken over", recovered)
        except Exception:
            log.exception("the orphan sweep failed at start")
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
        if os.environ.get(KILL_SEAM_ENV) and claimed.external_id == os.environ[KILL_SEAM_ENV]:
            log.warning("job %s: test seam: killing this worker (SIGKILL)", job_id)
            os.kill(os.getpid(), signal.SIGKILL)
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
            return state
        finally:
            with self._lock:
                self.runs.pop(job_id, None)

    def _resend(self, job_id: str) -> None:
        self.dispatcher.send(job_id)

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
        from amqp.exceptions import ChannelError as AmqpChannelError
        from kombu.exceptions import ChannelError

        for route in self.queues:
            name = queue_name(route, self.prefix)
            with self.app.connection_for_write() as connection:
                try:
                    _, count, _ = connection.default_channel.queue_declare(queue=name, passive=True)
                except (ChannelError, AmqpChannelError):  # no such queue (yet): empty
                    count = 0
            if count:
                return False
        return True

    def _prune_workdirs(self) -> None:
        """Remove the work folders of jobs that ended (or are unknown) in the store: a job's
        checkpoints matter only while it may come back to this worker."""
        folder = self.settings.data_dir / "work"
        if not folder.is_dir():
            return
        with self._lock:
            mine = set(self.runs)
        for path in folder.iterdir():
            if not path.is_dir() or path.name in mine:
                continue
            try:
                row = self.store.get_job(path.name)
            except Exception:
                return
            if row is None or row.state in FINISHED:
                import shutil

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


__all__ = [
    "BROKER_URL_ENV",
    "CPU",
    "GPU",
    "CeleryQueue",
    "ClusterWorker",
    "Dispatcher",
    "JsonFormatter",
    "WorkerSettings",
    "broker_url",
    "configure_logging",
    "make_celery",
    "queue_name",
    "route_for",
    "run_worker",
]
