"""The farm's chunks: one job's video encoded by every worker of its queue (issue 17).

A worker started with a work storage (`vipe worker --work-storage URI [--chunk-seconds S]`)
runs the jobs it claims with `FarmChunks` as the chunk runner (`engine.chunks.ChunkSettings`):
the encoding phase plans the chunks as on one node (`engine.pipeline.chunked`), then

1. the coordinator (the worker that claimed the job) uploads the source video and the chunk
   tasks (`tasks.<plan>.pkl`) to the job's folder of the work storage
   (`<work storage>/<job id>/`), then writes one row per chunk in the store (`chunks`: state,
   owner, heartbeat, attempts, progress, result, and `plan`, the plan's fingerprint: chunk
   boundaries, source name and size, every rung's rendition and encoder settings) and sends
   one Celery message per chunk (`vipe.run_chunk`, job id and chunk number) to the job's
   queue;
2. any worker of that queue that gets a message claims the chunk in the store (atomic: a
   compare-and-set on its row, plan included), downloads the source and the tasks once per
   job and plan, encodes the chunk's range of every rung (`engine.stitch.encode_chunk`),
   uploads the rung files to the job's folder under names of this encode
   (`chunk<n>.<token>.rung<r>.mp4`: a late upload of an encode that lost its chunk never
   overwrites the files of the one that is Done) and marks the chunk Done with its result
   (frames, encoders, worker, seconds, token). The coordinator does the same while it waits
   (it claims chunks itself: its slot never idles);
3. the coordinator downloads the finished chunks, and the encoding phase stitches them
   (`engine.stitch.stitch`); packaging, DRM and publishing run as for any job. Chunk files go
   through the work storage, never the broker (a message holds two ids).

**Crash safety.** The store is the truth, as for jobs: a chunk's owner renews its heartbeat
(with its progress) every half second; a Running chunk whose owner was a process of this host
that no longer runs, or whose heartbeat is older than the lease (`--lease-seconds`), is claimed
again by whoever looks (the coordinator polls the rows; a re-delivered message's worker
checks too), each claim counting one attempt: a chunk whose worker died `--max-attempts`
times fails the job (3101). A chunk that fails (not a crash) fails the job at once.

If the coordinator dies, the job itself is taken over (its lease, or at once when its message
comes back to a worker of the same host) and runs again on another worker, which plans the
chunks again: when the stored rows carry the same plan fingerprint (`ChunkStore.resume`), it
keeps the Done chunks (their files are in the job's folder: a row is Done only after its
files were uploaded, and the folder goes only when the job has ended), leaves Running chunks
to the take-over rules above (an encoder still alive finishes its chunk) and makes Failed
and Cancelled ones Pending again; it sends messages for the chunks not Done only. Rows of
another plan (or none) are replaced by fresh Pending rows after the new plan's files are
uploaded. Meanwhile the other workers go on encoding the chunks they get messages for (the
job is still Running). A coordinator that outlived its lease (the job taken over while it
was alive) stops its own chunk and leaves the rows, the messages and the folder to the new
coordinator: only a coordinator that still holds the job replaces the rows (checked in the
transaction that does it), and stops the chunks not Done and revokes its messages when its
encoding phase ends.

**Who removes the job's folder.** The worker whose run of the job ended it (Succeeded, Failed,
Cancelled), right after the end (`end_job`: the chunks not Done stop, the folder goes, then
the rows forget their plan); and, for a job that ended without such a run (given up or
cancelled while its coordinator was dead, or a coordinator that died right after the end),
any worker's periodic sweep (`ChunkStore.ended_jobs`: ended jobs whose rows still have a
plan). A coordinator's encoding phase removes only its own local copies.

**Cancellation.** Chunk encoders watch the job's cancel flag (every half second, like a job's
run) and their row: the coordinator, when the job is cancelled or fails, marks the chunks that
are not Done Cancelled (their encoders stop within a second) and revokes the chunk messages
(none still queued starts); the job's folder goes when the job has ended.

**Work storage.** Operator configuration, trusted like the broker and the store (never from a
job): `file:///shared/folder` (a folder every worker mounts), `s3://bucket/prefix`,
`https://<account>.blob.core.windows.net/<container>/<prefix>` or any provider of the storage
registry as `Provider:URI` (e.g. `S3Compatible:http://minio:9000/bucket/work`), credentials in
`VIPE_WORK_STORAGE_KEY` / `VIPE_WORK_STORAGE_SECRET`. The chunk tasks travel there pickled
and sealed with the store key (AES-GCM, the job id bound in): a worker unpickles only what a
holder of the store key wrote, so write access to the work storage alone runs no code on the
workers. Keep it private to the farm all the same (it holds the sources). A job's watermarks
travel with the tasks (the prepared `Watermarker`, pickled once for all the tasks).
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import logging
import os
import pickle
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sqlalchemy import Float, ForeignKey, Integer, String, Text, delete, select, update
from sqlalchemy.orm import Mapped, mapped_column

from engine.cancel import CancelToken
from engine.chunks import Chunk
from engine.errors import Cancelled, EncodingError
from engine.service.owners import owner_gone
from engine.service.store import (
    FINISHED,
    Base,
    JobRow,
    JobSealer,
    Store,
    UTCDateTime,
    rows_changed,
    utcnow,
)
from engine.stitch import ChunkMismatch, ChunkResult, ChunkTask, encode_chunk
from engine.transcode import EncodedTrack
from engine.watermark import Watermarker
from storage import REGISTRY, Storage, StorageError, StorageLocation, open_storage

log = logging.getLogger(__name__)

CHUNK_TASK_NAME = "vipe.run_chunk"
WORK_STORAGE_ENV = "VIPE_WORK_STORAGE"
WORK_STORAGE_KEY_ENV = "VIPE_WORK_STORAGE_KEY"
WORK_STORAGE_SECRET_ENV = "VIPE_WORK_STORAGE_SECRET"
PENDING, RUNNING, DONE, FAILED, CANCELLED = "Pending", "Running", "Done", "Failed", "Cancelled"
BEAT_SECONDS = 0.5  # chunk heartbeats, progress and the cancel flag
POLL_SECONDS = 0.3  # how often the coordinator reads its chunks' rows
TASKS_FILE = "tasks.pkl"  # a worker's copy of a plan's tasks (`tasks_file` in the work storage)
MISMATCH = "ChunkMismatch: "  # a Failed chunk's error that makes the job encode in one pass


class ChunkRow(Base):
    """One chunk of a job encoded by the farm (migration 0004)."""

    __tablename__ = "chunks"

    job_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    chunk: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    heartbeat_at: Mapped[datetime.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    result: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The fingerprint of the job's chunk plan these rows belong to (`plan_fingerprint`,
    # migration 0005); None once the job ended and its work storage folder was removed.
    plan: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)


# ---------------------------------------------------------------------------- the store


class ChunkStore:
    """The `chunks` rows of the shared job store."""

    def __init__(self, store: Store, lease_seconds: float, max_attempts: int):
        self.store = store
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts

    def reset(
        self, job_id: str, count: int, plan: str | None = None, *, owner: str | None = None
    ) -> bool:
        """A fresh set of Pending chunks of the plan `plan` for this attempt of the job; with
        `owner`, only while that worker holds the job (a coordinator that outlived its lease
        must not wipe the chunks of the one that took the job over). Whether it was done."""
        with self.store.writing() as session:
            if owner is not None:
                job = session.get(JobRow, job_id)
                if job is None or job.owner != owner:
                    return False
            session.execute(delete(ChunkRow).where(ChunkRow.job_id == job_id))
            for index in range(count):
                session.add(
                    ChunkRow(
                        job_id=job_id,
                        chunk=index,
                        state=PENDING,
                        attempts=0,
                        progress=0.0,
                        plan=plan,
                    )
                )
        return True

    def resume(self, job_id: str, count: int, plan: str) -> set[int] | None:
        """The job runs again (its coordinator died or handed it back): when its rows are
        those of the same plan, its Done chunks are kept (their files are in the job's
        folder: rows are written after the files, and the folder goes only when the job
        ends), Running ones are left to the take-over rules (`claimable`) and the others
        (Failed, Cancelled by the last coordinator) are Pending again; the Done chunks'
        numbers. None when there are no such rows (the caller publishes the plan and
        `reset`s)."""
        rows = self.rows(job_id)
        if not rows or len(rows) != count or any(r.plan != plan for r in rows):
            return None
        with self.store.writing() as session:
            rows_changed(
                session,
                update(ChunkRow)
                .where(
                    ChunkRow.job_id == job_id,
                    ChunkRow.plan == plan,
                    ChunkRow.state.in_((FAILED, CANCELLED)),
                )
                .values(state=PENDING, owner=None, progress=0.0, error=None),
            )
        return {r.chunk for r in rows if r.state == DONE}

    def holds_files(self, job_id: str) -> bool:
        """Whether the job's work storage folder may hold files (its rows have a plan)."""
        with self.store.reading() as session:
            found = session.scalars(
                select(ChunkRow.chunk)
                .where(ChunkRow.job_id == job_id, ChunkRow.plan.is_not(None))
                .limit(1)
            ).first()
            return found is not None

    def ended_jobs(self) -> list[str]:
        """Jobs that ended whose work storage folder may still hold files."""
        with self.store.reading() as session:
            return list(
                session.scalars(
                    select(ChunkRow.job_id)
                    .join(JobRow, JobRow.id == ChunkRow.job_id)
                    .where(ChunkRow.plan.is_not(None), JobRow.state.in_(FINISHED))
                    .distinct()
                ).all()
            )

    def forget(self, job_id: str) -> None:
        """The job's folder is gone: its rows keep their outcome, not their plan."""
        with self.store.writing() as session:
            rows_changed(
                session, update(ChunkRow).where(ChunkRow.job_id == job_id).values(plan=None)
            )

    def rows(self, job_id: str) -> list[ChunkRow]:
        with self.store.reading() as session:
            rows = session.scalars(
                select(ChunkRow).where(ChunkRow.job_id == job_id).order_by(ChunkRow.chunk)
            ).all()
            session.expunge_all()
            return list(rows)

    def claimable(self, row: ChunkRow, owner: str) -> bool:
        """Pending, or Running on a worker that is gone (this host) or silent (the lease)."""
        if row.state == PENDING:
            return True
        if row.state != RUNNING or row.owner == owner:
            return False
        if row.owner is None or owner_gone(row.owner, owner):
            return True
        age = (utcnow() - row.heartbeat_at).total_seconds() if row.heartbeat_at else 1e9
        return age > self.lease_seconds

    def claim(self, job_id: str, index: int, owner: str) -> ChunkRow | None:
        """Take the chunk if it is claimable (compare-and-set on its row); a chunk whose
        workers died `max_attempts` times is marked Failed instead (the job then fails)."""
        with self.store.reading() as session:
            row = session.get(ChunkRow, (job_id, index))
            if row is not None:
                session.expunge(row)
        if row is None or not self.claimable(row, owner):
            return None
        same = (
            ChunkRow.job_id == job_id,
            ChunkRow.chunk == index,
            ChunkRow.state == row.state,
            ChunkRow.attempts == row.attempts,
            ChunkRow.plan.is_(None) if row.plan is None else ChunkRow.plan == row.plan,
        )
        if row.attempts >= self.max_attempts:
            message = (
                f"chunk {index}: its worker stopped {row.attempts} times "
                f"(at most {self.max_attempts} attempts)"
            )
            with self.store.writing() as session:
                rows_changed(
                    session, update(ChunkRow).where(*same).values(state=FAILED, error=message)
                )
            return None
        now = utcnow()
        with self.store.writing() as session:
            changed = rows_changed(
                session,
                update(ChunkRow)
                .where(*same)
                .values(
                    state=RUNNING,
                    owner=owner,
                    heartbeat_at=now,
                    attempts=ChunkRow.attempts + 1,
                    progress=0.0,
                ),
            )
        if changed != 1:
            return None
        if row.state == RUNNING:
            log.warning("job %s: chunk %d taken over from %s", job_id, index, row.owner)
        row.state, row.owner, row.attempts = RUNNING, owner, row.attempts + 1
        return row

    def _update_mine(self, job_id: str, index: int, owner: str, **values: Any) -> bool:
        """Update the chunk while `owner` runs it; False when this owner no longer holds it."""
        with self.store.writing() as session:
            changed = rows_changed(
                session,
                update(ChunkRow)
                .where(
                    ChunkRow.job_id == job_id,
                    ChunkRow.chunk == index,
                    ChunkRow.owner == owner,
                    ChunkRow.state == RUNNING,
                )
                .values(**values),
            )
        return changed == 1

    def heartbeat(self, job_id: str, index: int, owner: str, progress: float) -> bool:
        """Renew the chunk's heartbeat; False when this owner no longer holds it."""
        return self._update_mine(job_id, index, owner, heartbeat_at=utcnow(), progress=progress)

    def finish(self, job_id: str, index: int, owner: str, result: dict[str, Any]) -> bool:
        return self._update_mine(
            job_id, index, owner, state=DONE, progress=1.0, result=json.dumps(result)
        )

    def fail(self, job_id: str, index: int, owner: str, message: str) -> None:
        self._update_mine(job_id, index, owner, state=FAILED, error=message)

    def stop(self, job_id: str) -> None:
        """Every chunk not Done is Cancelled: its encoder stops at its next heartbeat."""
        with self.store.writing() as session:
            rows_changed(
                session,
                update(ChunkRow)
                .where(ChunkRow.job_id == job_id, ChunkRow.state.in_((PENDING, RUNNING)))
                .values(state=CANCELLED),
            )


# ------------------------------------------------------------------------- work storage


def work_storage_location(spec: str) -> StorageLocation:
    """The operator's work storage: `Provider:URI`, or a URI whose form names its provider
    (`file://` Local, `s3://` AmazonS3, `https://*.blob.core.windows.net` AzureBlob, other
    http(s) S3Compatible). Credentials from VIPE_WORK_STORAGE_KEY / _SECRET."""
    provider, _, rest = spec.partition(":")
    if provider in REGISTRY and rest and not rest.startswith("//"):
        uri = rest
    else:
        provider, uri = "", spec
        parsed = urlparse(uri)
        host = (parsed.hostname or "").lower()
        if parsed.scheme == "file":
            provider = "Local"
        elif parsed.scheme == "s3":
            provider = "AmazonS3"
        elif parsed.scheme == "https" and host.endswith(".blob.core.windows.net"):
            provider = "AzureBlob"
        elif parsed.scheme in ("http", "https"):
            provider = "S3Compatible"
        elif spec.startswith("/"):
            provider, uri = "Local", Path(spec).as_uri()
        else:
            raise StorageError(f"work storage {spec!r}: not a URI vipe knows", "invalid")
    return StorageLocation(
        provider=provider,
        uri=uri.rstrip("/") + "/",
        credentials_name=os.environ.get(WORK_STORAGE_KEY_ENV) or None,
        credentials_secret=os.environ.get(WORK_STORAGE_SECRET_ENV) or None,
    )


def job_storage(base: StorageLocation, job_id: str) -> Storage:
    """The job's folder of the work storage."""
    return open_storage(replace(base, uri=f"{base.uri}{job_id}/"))


def remove_job_folder(base: StorageLocation, job_id: str) -> None:
    """Delete every file of the job's folder (and, for a shared folder, the folder)."""
    storage = job_storage(base, job_id)
    try:
        try:
            names = [f.name for f in storage.list_files()]
        except StorageError:
            names = []
        storage.delete_files(names)
    finally:
        storage.close()
    if base.provider == "Local":
        shutil.rmtree(Path(urlparse(base.uri).path) / job_id, ignore_errors=True)


def rung_file(index: int, rung: int, token: str) -> str:
    """A chunk's file of one rung; `token` names this encode of it (a late upload of an
    encode that lost its chunk never overwrites the files of the one that is Done)."""
    return f"chunk{index:04d}.{token}.rung{rung:02d}.mp4"


def tasks_file(plan: str) -> str:
    return f"tasks.{plan}.pkl"


def plan_fingerprint(portable: list[ChunkTask], source_size: int) -> str:
    """The chunk plan's fingerprint: the tasks (chunk boundaries, source name and track,
    every rung's rendition and encoder settings, paths reduced to names) and the source's
    size. A job that runs again with the same fingerprint keeps its Done chunks."""
    digest = hashlib.sha256(pickle.dumps((source_size, portable), protocol=5))
    return digest.hexdigest()[:32]


# ----------------------------------------------------------------------- encoding a chunk


@dataclass
class ChunkContext:
    """What a worker needs to encode chunks of any job."""

    chunks: ChunkStore
    work_storage: StorageLocation
    folder: Path  # this worker's scratch folder for chunks
    owner: str


def encode_claimed(
    context: ChunkContext,
    job_id: str,
    index: int,
    plan: str,
    *,
    stop: threading.Event | None = None,
    on_progress: Callable[[float], None] | None = None,
) -> str:
    """Encode a chunk this worker claimed, upload its files and mark it Done; the outcome.
    It stops (Cancelled) when the job's cancel flag is set, its row is no longer ours
    (cancelled, reset, taken over) or `stop` is set. `plan`: the claimed row's."""
    store, chunks, owner = context.chunks.store, context.chunks, context.owner
    stop = stop or threading.Event()
    done = threading.Event()
    fraction = [0.0]
    job_folder = context.folder / job_id
    token = uuid.uuid4().hex[:8]
    scratch = job_folder / f"{index}-{token}"

    def beat() -> None:
        while not done.wait(BEAT_SECONDS):
            try:
                mine = chunks.heartbeat(job_id, index, owner, fraction[0])
                if not mine or store.cancel_requested(job_id):
                    stop.set()
            except Exception:
                log.exception("job %s: chunk %d heartbeat failed", job_id, index)

    def check() -> None:
        if stop.is_set():
            raise Cancelled("the chunk was stopped")

    def progress(value: float) -> None:
        fraction[0] = value
        if on_progress is not None:
            on_progress(value)

    watcher = threading.Thread(target=beat, name=f"vipe-chunk-{index}", daemon=True)
    watcher.start()
    storage: Storage | None = None
    log.info("job %s: chunk %d started on %s", job_id, index, owner)
    try:
        storage = job_storage(context.work_storage, job_id)
        sealer = context.chunks.store.sealer
        task = _local_task(storage, sealer, job_id, plan, job_folder, scratch, index, check)
        result = encode_chunk(task, cancel=check, progress=progress)
        for rung, track in enumerate(result.tracks):
            storage.upload_file(track.path, rung_file(index, rung, token), cancel=check)
        if not chunks.finish(job_id, index, owner, {**_result_json(result), "Token": token}):
            log.info("job %s: chunk %d done but no longer ours; dropped", job_id, index)
            return "dropped"
        log.info("job %s: chunk %d done (%d frames)", job_id, index, result.frames)
        return "done"
    except Cancelled:
        log.info("job %s: chunk %d stopped", job_id, index)
        return "stopped"
    except ChunkMismatch as mismatch:  # the coordinator encodes the job in one pass instead
        log.warning("job %s: chunk %d failed: %s", job_id, index, mismatch)
        chunks.fail(job_id, index, owner, f"{MISMATCH}{mismatch}")
        return "failed"
    except Exception as error:
        log.exception("job %s: chunk %d failed", job_id, index)
        chunks.fail(job_id, index, owner, f"chunk {index} failed on {owner}: {error}")
        return "failed"
    finally:
        done.set()
        watcher.join()
        if storage is not None:
            storage.close()
        shutil.rmtree(scratch, ignore_errors=True)


_SOURCE_LOCK = threading.Lock()


def _local_task(
    storage: Storage,
    sealer: JobSealer,
    job_id: str,
    plan: str,
    job_folder: Path,
    scratch: Path,
    index: int,
    check: Callable[[], None],
) -> ChunkTask:
    """The chunk's task with this worker's paths: the source and the tasks are downloaded
    once per job, plan and worker."""
    with _SOURCE_LOCK:
        folder = job_folder / plan
        folder.mkdir(parents=True, exist_ok=True)
        tasks_path = folder / TASKS_FILE
        if not tasks_path.exists():
            storage.download_file(tasks_file(plan), folder / "tasks.part", cancel=check)
            (folder / "tasks.part").replace(tasks_path)
        tasks: list[ChunkTask] = pickle.loads(sealer.unseal_bytes(job_id, tasks_path.read_bytes()))
        source_name = tasks[index].video_file.name
        source = folder / source_name
        if not source.exists():
            storage.download_file(source_name, folder / "source.part", cancel=check)
            (folder / "source.part").replace(source)
    scratch.mkdir(parents=True, exist_ok=True)
    task = tasks[index]
    outputs = tuple(
        replace(o, path=scratch / f"rung{rung:02d}.mp4") for rung, o in enumerate(task.outputs)
    )
    return replace(task, video_file=source, outputs=outputs)


def _result_json(result: ChunkResult) -> dict[str, Any]:
    return {
        "Frames": result.frames,
        "Worker": result.worker,
        "Seconds": result.seconds,
        "Preroll": result.preroll,
        "Tracks": [
            {"Encoder": t.encoder, "Frames": t.frames, "Duration": t.duration}
            for t in result.tracks
        ],
    }


# ------------------------------------------------------------------------ the coordinator


class FarmChunks:
    """The chunk runner of one job on the farm (`ChunkSettings.runner`): run on the worker
    that claimed the job; see the module docstring."""

    def __init__(
        self,
        context: ChunkContext,
        job_id: str,
        send: Callable[[str, int, str], None],
        revoke: Callable[[list[str]], None],
    ):
        self.context = context
        self.job_id = job_id
        self.send = send  # (job id, chunk, task id): one chunk message to the job's queue
        self.revoke = revoke

    def __call__(
        self, tasks: list[ChunkTask], cancel: CancelToken, progress: Callable[[float], None]
    ) -> list[ChunkResult]:
        job_id, chunks = self.job_id, self.context.chunks
        source = tasks[0].video_file
        portable = _portable(tasks)
        plan = plan_fingerprint(portable, source.stat().st_size)
        storage = job_storage(self.context.work_storage, job_id)
        message_ids: list[str] = []
        local: dict[str, Any] = {}
        try:
            kept = chunks.resume(job_id, len(tasks), plan)
            if kept is None:  # a first attempt, or another plan: the chunks afresh
                self._publish(storage, source, portable, plan, cancel)
                if not chunks.reset(job_id, len(tasks), plan, owner=self.context.owner):
                    raise Cancelled("the job was taken over by another worker")
                kept = set()
            else:
                self._local_copies(source, portable, plan)
                log.info(
                    "job %s: %d of %d chunks done by an earlier attempt kept",
                    job_id,
                    len(kept),
                    len(tasks),
                )
            for task in tasks:
                if task.chunk.index in kept:
                    continue
                message_id = f"{job_id}.chunk{task.chunk.index}.{uuid.uuid4().hex[:8]}"
                try:
                    self.send(job_id, task.chunk.index, message_id)
                except Exception as error:  # the broker is down: this worker encodes it
                    log.warning("job %s: chunk message not sent (%s)", job_id, error)
                    continue
                message_ids.append(message_id)
            rows = self._wait(tasks, cancel, progress, local)
            return self._collect(storage, tasks, rows, cancel)
        finally:
            if "stop" in local:
                local["stop"].set()
            if self._ours():  # else the job was taken over: its chunks are the new owner's
                chunks.stop(job_id)  # nothing that is not Done runs on
                if message_ids:
                    try:
                        self.revoke(message_ids)
                    except Exception as error:
                        log.warning("job %s: chunk revoke not sent (%s)", job_id, error)
            if "thread" in local:
                local["thread"].join()
            storage.close()
            # The job's folder of the work storage stays until the job ends (`end_job`):
            # a coordinator that dies after this point leaves its Done chunks to the next.
            shutil.rmtree(self.context.folder / job_id, ignore_errors=True)

    def _ours(self) -> bool:
        """Whether this worker still holds the job (not taken over meanwhile)."""
        try:
            row = self.context.chunks.store.get_job(self.job_id)
        except Exception:
            log.exception("job %s: the job store cannot be read", self.job_id)
            return False
        return row is not None and row.owner == self.context.owner

    def _local_copies(self, source: Path, portable: list[ChunkTask], plan: str) -> Path:
        """This worker's copies of the tasks (sealed) and the source, for the chunks it
        encodes itself; the tasks file."""
        folder = self.context.folder / self.job_id / plan
        folder.mkdir(parents=True, exist_ok=True)
        sealed = self.context.chunks.store.sealer.seal_bytes(self.job_id, pickle.dumps(portable))
        (folder / TASKS_FILE).write_bytes(sealed)
        if not (folder / source.name).exists():
            shutil.copyfile(source, folder / source.name)
        return folder / TASKS_FILE

    def _publish(
        self,
        storage: Storage,
        source: Path,
        portable: list[ChunkTask],
        plan: str,
        cancel: CancelToken,
    ) -> None:
        """The source and the tasks into the job's folder (before the rows that name them)."""
        tasks = self._local_copies(source, portable, plan)
        storage.upload_file(source, source.name, cancel=cancel.check)
        storage.upload_file(tasks, tasks_file(plan), cancel=cancel.check)

    def _wait(
        self,
        tasks: list[ChunkTask],
        cancel: CancelToken,
        progress: Callable[[float], None],
        local: dict[str, Any],
    ) -> list[ChunkRow]:
        """Until every chunk is Done, claiming and encoding chunks here meanwhile."""
        chunks, job_id, owner = self.context.chunks, self.job_id, self.context.owner
        sizes = _sizes([t.chunk for t in tasks])
        total = sum(sizes)
        mine = [0.0]

        def set_mine(value: float) -> None:
            mine[0] = value

        while True:
            cancel.check()
            rows = chunks.rows(job_id)
            failed = [r for r in rows if r.state == FAILED]
            if failed:
                error = failed[0].error or f"chunk {failed[0].chunk} failed"
                if error.startswith(MISMATCH):
                    raise ChunkMismatch(error.removeprefix(MISMATCH))
                raise EncodingError(error)
            if len(rows) == len(tasks) and all(r.state == DONE for r in rows):
                progress(1.0)
                return rows
            if any(r.state == CANCELLED for r in rows):
                cancel.check()
                raise EncodingError("the job's chunks were stopped")
            done = 0.0
            for row in rows:
                share = row.progress if row.state in (RUNNING, DONE) else 0.0
                if row.state == RUNNING and row.owner == owner:
                    share = mine[0]
                done += sizes[row.chunk] * (1.0 if row.state == DONE else share)
            progress(done / total)
            thread = local.get("thread")
            if thread is None or not thread.is_alive():
                for row in rows:
                    if not chunks.claimable(row, owner):
                        continue
                    if chunks.claim(job_id, row.chunk, owner) is not None:
                        mine[0] = 0.0
                        local["stop"] = threading.Event()
                        local["thread"] = threading.Thread(
                            target=encode_claimed,
                            args=(self.context, job_id, row.chunk, row.plan or ""),
                            kwargs={"stop": local["stop"], "on_progress": set_mine},
                            name=f"vipe-chunk-{row.chunk}",
                            daemon=True,
                        )
                        local["thread"].start()
                        break
            time.sleep(POLL_SECONDS)

    def _collect(
        self,
        storage: Storage,
        tasks: list[ChunkTask],
        rows: list[ChunkRow],
        cancel: CancelToken,
    ) -> list[ChunkResult]:
        """The finished chunks' files at the tasks' paths, and their results."""
        results = []
        for task, row in zip(tasks, rows, strict=True):
            stored = json.loads(row.result or "{}")
            tracks = []
            for rung, (output, track) in enumerate(
                zip(task.outputs, stored["Tracks"], strict=True)
            ):
                name = rung_file(task.chunk.index, rung, stored["Token"])
                storage.download_file(name, output.path, cancel=cancel.check)
                tracks.append(
                    EncodedTrack(
                        output.path,
                        "video",
                        output.rendition.name,
                        track["Encoder"],
                        track["Frames"],
                        track["Duration"],
                    )
                )
            results.append(
                ChunkResult(
                    task.chunk,
                    tuple(tracks),
                    stored["Frames"],
                    stored["Worker"],
                    stored["Seconds"],
                    stored["Preroll"],
                )
            )
        return results


def _portable(tasks: list[ChunkTask]) -> list[ChunkTask]:
    """The tasks as they travel: paths reduced to names (each worker has its own), the
    watermarks with them (one object for all the tasks: pickled once)."""
    marks = _portable_watermarks(tasks[0].watermarks)
    return [
        replace(
            t,
            video_file=Path(t.video_file.name),
            outputs=tuple(replace(o, path=Path(o.path.name)) for o in t.outputs),
            watermarks=marks,
        )
        for t in tasks
    ]


def _portable_watermarks(marks: Watermarker | None) -> Watermarker | None:
    """A job's watermarks as they travel: the prepared images (the Watermarker reads the
    image files when it is made), each image's path reduced to its name."""
    if marks is None:
        return None
    portable = copy.copy(marks)
    portable.items = [
        replace(item, spec=replace(item.spec, image=Path(item.spec.image.name)))
        for item in marks.items
    ]
    return portable


def end_job(context: ChunkContext, job_id: str) -> None:
    """A job that ended (Succeeded, Failed, Cancelled): its chunks that still run stop, its
    work storage folder is removed, then its rows forget their plan (so that a crash in
    between leaves the folder to the next sweep, `ChunkStore.ended_jobs`)."""
    context.chunks.stop(job_id)
    remove_job_folder(context.work_storage, job_id)
    context.chunks.forget(job_id)
    log.info("job %s: its work storage folder was removed", job_id)


def _sizes(chunks: list[Chunk]) -> list[float]:
    """Each chunk's frames, the open-ended last one counted as an average chunk."""
    sized = [c.end - c.first for c in chunks if c.end is not None]
    average = sum(sized) / len(sized) if sized else 1.0
    return [float(c.end - c.first) if c.end is not None else average for c in chunks]


__all__ = [
    "CHUNK_TASK_NAME",
    "WORK_STORAGE_ENV",
    "ChunkContext",
    "ChunkRow",
    "ChunkStore",
    "FarmChunks",
    "encode_claimed",
    "end_job",
    "job_storage",
    "work_storage_location",
]
