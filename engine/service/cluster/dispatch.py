"""The API's side of the cluster: the broker settings, routing a job to the gpu or cpu queue,
sending its message (`Dispatcher`), and `CeleryQueue`, the `JobQueue` of `vipe serve` with
`VIPE_BROKER_URL` (its sweeper sends the jobs that have no message yet, reroutes or fails jobs
that wait for GPU workers that are gone). The package docstring tells the whole design.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.parse
from typing import Any

from engine.events import EventType, Phase
from engine.service.jobs import JobService
from engine.service.owners import new_owner
from engine.service.queue import JobQueue
from engine.service.store import FAILED, QUEUED, JobRow, Store, WorkerRow, utcnow

log = logging.getLogger(__name__)

BROKER_URL_ENV = "VIPE_BROKER_URL"
QUEUE_PREFIX_ENV = "VIPE_QUEUE_PREFIX"
TRANSPORT_OPTIONS_ENV = "VIPE_BROKER_TRANSPORT_OPTIONS"
VISIBILITY_TIMEOUT_ENV = "VIPE_REDIS_VISIBILITY_TIMEOUT"
GPU_WAIT_ENV = "VIPE_GPU_WAIT_SECONDS"

GPU, CPU = "gpu", "cpu"
ROUTES = (GPU, CPU)
TASK_NAME = "vipe.run_job"
DEFAULT_PREFIX = "vipe"
DEFAULT_VISIBILITY_TIMEOUT = 3600.0
WORKER_ALIVE_SECONDS = 10.0  # a worker silent for longer is not counted as alive
WORKER_PRUNE_SECONDS = 3600.0  # rows of workers silent this long are removed
UNSENT_SECONDS = 5.0  # a Queued job without a message for this long is sent (again)


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


# ------------------------------------------------------------------------ the API's queue


def _hardware(row: JobRow) -> str | None:
    try:
        summary = json.loads(row.summary or "{}")
    except ValueError:
        return None
    return (summary.get("ContentProcessing") or {}).get("HardwareAcceleration")


def _worker_json(row: WorkerRow) -> dict[str, Any]:
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
        self.owner = new_owner()
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
        self.service.recover_at_start(self.owner)
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
            final = self.service.outside_event(
                row,
                EventType.FINAL_ERROR,
                ErrorCode=3102,
                ErrorMessage=message,
                Phase=str(Phase.ENCODING),
            )
            if store.fail_queued(row.id, 3102, message, final_event=final):
                log.error("job %s: %s", row.id, message)
                self.service.metrics.finished.labels(FAILED).inc()
                self.service.publish_outside_run(row, final)


__all__ = [
    "BROKER_URL_ENV",
    "CPU",
    "GPU",
    "ROUTES",
    "TASK_NAME",
    "UNSENT_SECONDS",
    "CeleryQueue",
    "Dispatcher",
    "broker_url",
    "gpu_workers_alive",
    "make_celery",
    "queue_name",
    "queue_prefix",
    "redacted",
    "route_for",
]
