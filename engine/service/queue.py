"""Where stored jobs wait to run: the `JobQueue` interface and the in-process pool.

- `JobQueue` is the interface (`start`, `stop`, `enqueue`, `cancel`), small on purpose so that a
  Celery implementation fits it: the store is the source of truth and `enqueue` only dispatches.
- `InProcessQueue` runs `--workers N` threads in this process that claim Queued jobs from the
  store (round-robin across tenants, each tenant's oldest first, at most
  `max_running_per_tenant` of one tenant at once). `--workers 0` accepts and stores jobs
  without running them.
- `engine.service.cluster.CeleryQueue` (with `VIPE_BROKER_URL`) routes and sends each job to a
  Celery broker; `vipe worker` processes run them.

A graceful stop (SIGTERM, Ctrl-C) takes no new jobs and gives the running ones `drain_seconds`
(10) to finish; those still running are then queued again at once and the process exits
without interrupting them, so no `FinalError` reaches the publishers for a job that is resumed
(the next start, or another node, runs it again). Cancellation reaches a running job through
its `CancelToken`: at once in this process (`InProcessQueue.cancel`), and from any process
through the store's cancel flag, which the pool's watchdog reads every half second.
"""

from __future__ import annotations

import abc
import logging
import threading
import time

from engine.cancel import CancelToken
from engine.service.jobs import JobService, RunningJob
from engine.service.owners import new_owner

log = logging.getLogger(__name__)


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
    def enqueue(self, job_id: str) -> None:
        """Dispatch a job that was just stored Queued."""

    @abc.abstractmethod
    def cancel(self, job_id: str) -> None:
        """Reach a running job whose cancel flag was just set."""

    def start(self) -> None:  # noqa: B027 - optional hook
        """Begin taking jobs."""

    def stop(self, timeout: float = 10.0) -> None:  # noqa: B027 - optional hook
        """Stop taking jobs; interrupted ones are queued again."""

    def stalled_jobs(self) -> list[str]:
        """Jobs running in this process that showed no sign of life (a stored heartbeat, an
        event) within their lease: `/health` is Unhealthy while there are any."""
        return []


class InProcessQueue(JobQueue):
    """`workers` threads in this process that claim Queued jobs from the store.

    A watchdog thread renews the heartbeats of the running jobs, turns the store's cancel flag
    into their tokens, and sweeps for orphaned jobs (the restart policy of
    `engine.service.jobs`).
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
        self.owner = new_owner()
        self._wake = threading.Condition()
        self._stopping = threading.Event()
        self._runs: dict[str, RunningJob] = {}
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

    def stalled_jobs(self) -> list[str]:
        lease = self.service.options.lease_seconds
        now = time.monotonic()
        with self._lock:
            runs = list(self._runs.values())
        return [run.job_id for run in runs if now - run.last_alive > lease]

    # -- threads ----------------------------------------------------------------------------

    def _work(self) -> None:
        store = self.service.store
        while not self._stopping.is_set():
            try:
                row = store.claim_next(
                    self.owner,
                    max_running_per_tenant=self.service.options.max_running_per_tenant,
                )
            except Exception:
                log.exception("the job store cannot be read; retrying")
                row = None
            if row is None:
                with self._wake:
                    self._wake.wait(self.poll_seconds)
                continue
            run = RunningJob(row.id, CancelToken(), self.owner)
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
                        if store.heartbeat(run.job_id, self.owner):
                            run.last_alive = time.monotonic()
                        else:
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


__all__ = ["InProcessQueue", "JobQueue"]
