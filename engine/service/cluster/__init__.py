"""Celery: the job queue for farms of CPU and GPU nodes (`VIPE_BROKER_URL`).

    vipe serve  ...                      with VIPE_BROKER_URL set: stores and enqueues only
    vipe worker [--queues gpu,cpu] [--concurrency N] [--burst] [--data-dir DIR]
                [--keys-dir DIR] [--grace-seconds S] [--lease-seconds S] [--max-attempts N]
                [--log-format text|json] [--broker URL]
                [--work-storage URI [--chunk-seconds S]]

The job store (PostgreSQL, `VIPE_DATABASE_URL`) is the source of truth; a broker message only
says "job X may be runnable now". A worker that gets one claims the job in the store
(`Store.claim`, atomic) and runs it with `JobService.execute`; a message for a job that is
finished, cancelled or running on a live worker is acknowledged and dropped. So duplicates
(re-deliveries, sweeps that send again) are harmless, and every job runs once per attempt.

**Modules.** `dispatch`: broker settings, routing, `Dispatcher` (sends a job's message) and
`CeleryQueue` (the API's queue and its sweeper, which sends the jobs that have no message);
`worker`: `ClusterWorker`, `WorkerSettings`, `run_worker`; `chunks`: a job's chunks encoded by
the whole farm; `logs`: JSON log lines.

**Chunks** (`chunks`, issue 17). Workers given one shared work storage (`--work-storage URI`,
`VIPE_WORK_STORAGE`: a shared folder, an S3 or Azure folder, any storage provider; operator
configuration, never a job's) split each job they claim into chunks of `--chunk-seconds`
(rounded to whole segments; a video shorter than two chunks runs in one pass). The claiming
worker coordinates: it puts the source and the chunk tasks in `<work storage>/<job id>/`,
writes a `chunks` row per chunk in the store and sends one `vipe.run_chunk` message per chunk
to the job's queue; any worker of that queue (the coordinator too, while it waits) claims a
chunk in the store, encodes it, uploads its rung files and marks it Done; the coordinator
stitches them, then packaging, DRM and publishing run as for any job. Chunk rows follow the
jobs' rules: owner and heartbeat (every 0.5 s, with the chunk's progress), taken over when the
owner's process is gone (same host) or its heartbeat is older than the lease, at most
`--max-attempts` claims; a cancelled or failed job stops its chunks (rows Cancelled, their
encoders stop within a second) and revokes their messages, and its work folder is removed.

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
"""

from __future__ import annotations

from engine.service.cluster.dispatch import (
    BROKER_URL_ENV,
    CPU,
    GPU,
    CeleryQueue,
    Dispatcher,
    broker_url,
    gpu_workers_alive,
    make_celery,
    queue_name,
    redacted,
    route_for,
)
from engine.service.cluster.logs import JsonFormatter, configure_logging
from engine.service.cluster.worker import (
    ClusterWorker,
    WorkerSettings,
    WorkerSetupError,
    run_worker,
)

__all__ = [
    "BROKER_URL_ENV",
    "CPU",
    "GPU",
    "CeleryQueue",
    "ClusterWorker",
    "Dispatcher",
    "JsonFormatter",
    "WorkerSettings",
    "WorkerSetupError",
    "broker_url",
    "configure_logging",
    "gpu_workers_alive",
    "make_celery",
    "queue_name",
    "redacted",
    "route_for",
    "run_worker",
]
