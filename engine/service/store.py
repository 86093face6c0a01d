"""The job store (SQLAlchemy): jobs, their events and their reporting entries.

SQLite file `vipe.db` in the data folder by default; PostgreSQL (or any SQLAlchemy URL) when
`VIPE_DATABASE_URL` is set. The schema is created and upgraded by Alembic
(`engine/service/migrations/`) when the store opens.

Tables:

- `jobs`: one row per job: tenant, state (`Queued`, `Running`, `Succeeded`, `Failed`,
  `Cancelled`), phase, progress, the sealed job JSON, a public summary of the job (no secret),
  the External* values, the key ids resolved at creation (never the keys), timestamps, error
  code and message, the worker that runs it (owner, heartbeat, attempts) and the cancel flag;
  with a Celery queue also the queue it was routed to (`gpu`/`cpu`) and the worker that last
  ran it (`worker`, kept after the job ends, unlike `owner`).
- `events`: every event of a job, in order (the bodies of contract §8: never a secret).
- `reports`: the reporting entry of a job (contract §9) and the instant that places it in a
  month (the job's first start, else its creation).
- `workers`: the registry of `vipe worker` processes (engine.service.cluster): queues, concurrency,
  capabilities (encoders that open, NVDEC codecs, CPU count), state and heartbeat. A worker
  whose heartbeat is older than a few intervals is taken as gone.

Secrets: the job JSON is stored sealed (AES-256-GCM, the job id as associated data) with the
store key (`store.key` in the data folder, or `VIPE_STORE_KEY`, base64 of 32 bytes, for nodes
that share one PostgreSQL store), so the database never holds a clear secret, including one in
a misspelled (unknown) property. Only a worker that runs the job unseals it.

Why the whole JSON and not only the secret fields: the worker must re-run exactly the job that
was accepted (unknown properties included, for its `JobCreated` warnings), and a secret in a
property vipe does not know would otherwise stay in clear.
"""

from __future__ import annotations

import base64
import binascii
import concurrent.futures
import contextlib
import datetime
import json
import logging
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    create_engine,
    event,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.engine import Connection, CursorResult, Dialect, Engine
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    aliased,
    mapped_column,
    sessionmaker,
)
from sqlalchemy.sql import Executable

log = logging.getLogger(__name__)

DATABASE_URL_ENV = "VIPE_DATABASE_URL"
STORE_KEY_ENV = "VIPE_STORE_KEY"
STORE_KEY_FILE = "store.key"
SQLITE_FILE = "vipe.db"

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "Queued",
    "Running",
    "Succeeded",
    "Failed",
    "Cancelled",
)
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
FINISHED = frozenset({SUCCEEDED, FAILED, CANCELLED})
CANCELLED_BEFORE_START = "the job was cancelled before it started"


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def iso(moment: datetime.datetime | None) -> str | None:
    """ISO 8601 with offset, milliseconds (as the events write it)."""
    return moment.isoformat(timespec="milliseconds") if moment else None


def database_url(data_dir: Path) -> str:
    """`VIPE_DATABASE_URL`, else the SQLite file in the data folder."""
    return os.environ.get(DATABASE_URL_ENV) or f"sqlite:///{data_dir / SQLITE_FILE}"


# ---------------------------------------------------------------------------------- schema


class UTCDateTime(TypeDecorator):
    """An aware UTC datetime on both sides; stored naive UTC so that SQLite (which drops the
    offset) and PostgreSQL compare and sort the same way."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(
        self, value: datetime.datetime | None, dialect: Dialect
    ) -> datetime.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(datetime.UTC).replace(tzinfo=None)

    def process_result_value(
        self, value: datetime.datetime | None, dialect: Dialect
    ) -> datetime.datetime | None:
        return value.replace(tzinfo=datetime.UTC) if value is not None else None


class Base(DeclarativeBase):
    pass


class JobRow(Base):
    """One job. `job_sealed` is the job JSON as accepted, sealed; `summary` the public part."""

    __tablename__ = "jobs"
    # A tenant's jobs in a state: the queued-limit count of POST /Job reads only this index.
    __table_args__ = (Index("ix_jobs_tenant_state", "tenant_id", "state"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(16), index=True)
    phase: Mapped[str | None] = mapped_column(String(32))
    progress: Mapped[int] = mapped_column(Integer, default=0)
    external_id: Mapped[str] = mapped_column(String(200), default="")
    external_type: Mapped[str] = mapped_column(String(100), default="")
    external_provider: Mapped[str] = mapped_column(String(100), default="")
    job_sealed: Mapped[str] = mapped_column(Text)
    summary: Mapped[str] = mapped_column(Text)  # JSON: JobCreated fields, no secret
    key_ids: Mapped[str] = mapped_column(Text, default="[]")  # JSON [{"KeyId", "QualityGroup"}]
    created_at: Mapped[datetime.datetime] = mapped_column(UTCDateTime, index=True)
    started_at: Mapped[datetime.datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime.datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime.datetime] = mapped_column(UTCDateTime)
    owner: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[datetime.datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error_code: Mapped[int | None] = mapped_column(Integer)
    error_message: Mapped[str | None] = mapped_column(Text)
    encoder: Mapped[str | None] = mapped_column(String(100))
    queue: Mapped[str | None] = mapped_column(String(32))  # Celery route: gpu or cpu
    worker: Mapped[str | None] = mapped_column(String(200))  # the last owner; kept at the end
    # JSON list: the output names the job's publishing will create (recorded before it writes)
    publish_plan: Mapped[str | None] = mapped_column(Text)


class WorkerRow(Base):
    """One `vipe worker` process (engine.service.cluster). `id` is its owner string."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    queues: Mapped[str] = mapped_column(Text)  # JSON list: ["gpu", "cpu"]
    concurrency: Mapped[int] = mapped_column(Integer)
    capabilities: Mapped[str] = mapped_column(Text)  # JSON object
    state: Mapped[str] = mapped_column(String(16))  # Running, Draining
    running: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime.datetime] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime.datetime] = mapped_column(UTCDateTime, index=True)


class EventRow(Base):
    """One event of a job; `id` orders them."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("jobs.id", ondelete="CASCADE"), index=True
    )
    message_type: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime.datetime] = mapped_column(UTCDateTime)
    body: Mapped[str] = mapped_column(Text)


class ReportRow(Base):
    """The reporting entry of a job. `period_at` (job start, else creation) places it in a
    month; `entry` is the §9 JSON."""

    __tablename__ = "reports"

    job_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    tenant_id: Mapped[str] = mapped_column(String(200), index=True)
    period_at: Mapped[datetime.datetime] = mapped_column(UTCDateTime, index=True)
    entry: Mapped[str] = mapped_column(Text)


# ---------------------------------------------------------------------------------- sealing


class SealError(RuntimeError):
    """A sealed job does not open (wrong store key or corrupted row)."""


class JobSealer:
    """AES-256-GCM with the store key; the job id is the associated data, so a sealed job
    cannot be moved to another row."""

    def __init__(self, key: bytes):
        if len(key) != 32:
            raise ValueError("the store key must be 32 bytes")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "JobSealer(<key hidden>)"

    @classmethod
    def load_or_create(cls, data_dir: Path) -> JobSealer:
        """The key from `VIPE_STORE_KEY`, else `store.key` in the data folder (created 0600)."""
        text = os.environ.get(STORE_KEY_ENV)
        if text:
            try:
                return cls(base64.b64decode(text, validate=True))
            except (binascii.Error, ValueError):
                raise ValueError(f"{STORE_KEY_ENV} must be base64 of 32 bytes") from None
        path = data_dir / STORE_KEY_FILE
        if not path.exists():
            data_dir.mkdir(parents=True, exist_ok=True)
            try:
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another process made it first
                pass
            else:
                with os.fdopen(descriptor, "wb") as file:
                    file.write(secrets.token_bytes(32))
        return cls(path.read_bytes())

    def seal(self, job_id: str, document: Any) -> str:
        data = json.dumps(document, separators=(",", ":")).encode()
        return "v1:" + base64.b64encode(self.seal_bytes(job_id, data)).decode()

    def unseal(self, job_id: str, sealed: str) -> Any:
        try:
            version, text = sealed.split(":", 1)
            raw = base64.b64decode(text, validate=True)
            if version != "v1":
                raise ValueError(version)
        except (ValueError, binascii.Error):
            raise SealError(f"job {job_id}: the stored job is not sealed data") from None
        return json.loads(self.unseal_bytes(job_id, raw))

    def seal_bytes(self, job_id: str, data: bytes) -> bytes:
        """`data` sealed for `job_id`: what only holders of the store key can make (the
        farm's chunk tasks, which a worker unpickles, are sealed so)."""
        nonce = secrets.token_bytes(12)
        return nonce + self._aead.encrypt(nonce, data, job_id.encode())

    def unseal_bytes(self, job_id: str, sealed: bytes) -> bytes:
        try:
            return self._aead.decrypt(sealed[:12], sealed[12:], job_id.encode())
        except (ValueError, InvalidTag):
            message = f"job {job_id}: the stored job does not open with this store key"
            raise SealError(message) from None


# ------------------------------------------------------------------------------------ store


@dataclass(frozen=True)
class NewJob:
    """What `POST /Job` stores."""

    job_id: str
    tenant_id: str
    external: tuple[str, str, str]
    document: Any  # the job JSON as accepted (sealed before it is written)
    summary: dict[str, Any]
    key_ids: list[dict[str, str | None]]
    report: dict[str, Any]


class TenantQueueFull(Exception):
    """The tenant has as many Queued jobs as it may (429 at `POST /Job`)."""

    def __init__(self, tenant_id: str, limit: int):
        super().__init__(f"tenant {tenant_id} has {limit} queued jobs already")
        self.tenant_id = tenant_id
        self.limit = limit


class CancelOutcome:
    """What `request_cancel` found: `unknown`, `finished`, `queued` (cancelled now, never
    started) or `running` (the flag is set; the worker stops it)."""

    UNKNOWN, FINISHED, QUEUED, RUNNING = "unknown", "finished", "queued", "running"


@dataclass(frozen=True)
class _PendingJob:
    """A new job waiting for the job writer: its `jobs` and `reports` rows (sealed), the
    tenant's queued limit, and the future its request waits on."""

    job: dict[str, Any]
    report: dict[str, Any]
    limit: int | None
    future: concurrent.futures.Future[None] = field(default_factory=concurrent.futures.Future)


class _JobWriter:
    """Group commit for new jobs (`POST /Job` under load).

    One commit per job made the store's single writer (the SQLite write lock and its fsync)
    the bottleneck of `POST /Job`. Requests hand their rows to this writer; its thread takes
    every job waiting, stores them in one transaction and completes their futures only after
    the commit. No batching delay: the jobs that arrive while one commit runs form the next
    batch. A batch that fails as a whole (not a tenant's queued limit) is retried one job at
    a time, so one bad row fails only its own request."""

    MAX_BATCH = 256

    def __init__(self, insert_jobs: Callable[[list[_PendingJob]], list[TenantQueueFull | None]]):
        self._insert_jobs = insert_jobs
        self._wake = threading.Condition()
        self._pending: list[_PendingJob] = []
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._closed = False

    def submit(self, pending: _PendingJob) -> concurrent.futures.Future[None]:
        # Running from now on: a request that goes away (its awaiting task cancelled) cannot
        # cancel it; the job is committed all the same.
        pending.future.set_running_or_notify_cancel()
        with self._wake:
            if self._closed:
                raise RuntimeError("the job store is closed")
            if self._pid != os.getpid():  # a forked child: the parent's thread is not here
                self._pending, self._thread, self._pid = [], None, os.getpid()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="vipe-job-writer", daemon=True
                )
                self._thread.start()
            self._pending.append(pending)
            self._wake.notify()
        return pending.future

    def close(self, timeout: float = 30.0) -> None:
        with self._wake:
            self._closed = True
            thread, self._thread = self._thread, None
            self._wake.notify()
        if thread is not None and self._pid == os.getpid():
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._pending and not self._closed:
                    self._wake.wait()
                if not self._pending:
                    return  # closed, and nothing left to commit
                batch = self._pending[: self.MAX_BATCH]
                del self._pending[: self.MAX_BATCH]
            self._commit(batch)

    def _commit(self, batch: list[_PendingJob]) -> None:
        try:
            outcomes = self._insert_jobs(batch)
        except Exception as error:
            if len(batch) > 1:
                for pending in batch:
                    self._commit([pending])
            else:
                batch[0].future.set_exception(error)
            return
        for pending, outcome in zip(batch, outcomes, strict=True):
            if outcome is None:
                pending.future.set_result(None)
            else:
                pending.future.set_exception(outcome)


class Store:
    """Access to the job store. Thread-safe: each method is its own short transaction."""

    def __init__(self, url: str, sealer: JobSealer, *, echo: bool = False):
        self.url = url
        self.sealer = sealer
        self.is_sqlite = url.startswith("sqlite")
        options: dict[str, Any] = {"echo": echo, "future": True}
        if self.is_sqlite:
            options["connect_args"] = {"check_same_thread": False, "timeout": 30}
            _private_sqlite_file(url)
        else:
            options.update(pool_pre_ping=True, pool_size=10, max_overflow=20)
        self.engine: Engine = create_engine(url, **options)
        if self.is_sqlite:
            _sqlite_pragmas(self.engine)
        # Writes on SQLite start with BEGIN IMMEDIATE: two deferred transactions that both
        # upgrade to a write lock would otherwise fail at once with "database is locked".
        writer = self.engine.execution_options(vipe_immediate=True)
        self._write_lock = threading.Lock() if self.is_sqlite else contextlib.nullcontext()
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(writer, expire_on_commit=False)
        self._job_writer = _JobWriter(self._insert_jobs)

    def __repr__(self) -> str:
        return f"Store({self.engine.url.render_as_string(hide_password=True)!r})"

    def migrate(self) -> None:
        """Create or upgrade the schema (Alembic, `engine/service/migrations/`)."""
        from engine.service.migrations import upgrade

        upgrade(self.engine)

    def close(self) -> None:
        self._job_writer.close()  # the jobs already handed to it are committed first
        self.engine.dispose()

    @contextmanager
    def writing(self) -> Iterator[Session]:
        # SQLite has one writer at a time; queueing this process's writers on a lock is
        # fairer and faster than SQLite's busy handler, which sleeps and retries.
        with self._write_lock, self._write() as session, session.begin():
            yield session

    @contextmanager
    def reading(self) -> Iterator[Session]:
        with self._read() as session, session.begin():
            yield session

    # -- jobs -------------------------------------------------------------------------------

    def create_job(self, new: NewJob, *, max_queued_per_tenant: int | None = None) -> None:
        """Store a job in state Queued with its first reporting entry; committed on return.

        Raises TenantQueueFull when the tenant has `max_queued_per_tenant` Queued jobs already
        (counted in the writing transaction: exact on SQLite; on PostgreSQL posts racing in
        separate transactions may pass it by a few)."""
        self.create_job_future(new, max_queued_per_tenant=max_queued_per_tenant).result()

    def create_job_future(
        self, new: NewJob, *, max_queued_per_tenant: int | None = None
    ) -> concurrent.futures.Future[None]:
        """`create_job` without waiting: the future completes once the job is committed (or
        with TenantQueueFull). The job is sealed here, in the caller's thread; the store's
        job writer commits the jobs waiting for it together, one transaction (and one fsync)
        for the lot, then completes each future."""
        now = utcnow()
        job = {
            "id": new.job_id,
            "tenant_id": new.tenant_id,
            "state": QUEUED,
            "phase": None,
            "progress": 0,
            "external_id": new.external[0],
            "external_type": new.external[1],
            "external_provider": new.external[2],
            "job_sealed": self.sealer.seal(new.job_id, new.document),
            "summary": json.dumps(new.summary),
            "key_ids": json.dumps(new.key_ids),
            "created_at": now,
            "updated_at": now,
            "attempts": 0,
            "cancel_requested": False,
        }
        report = {
            "job_id": new.job_id,
            "tenant_id": new.tenant_id,
            "period_at": now,
            "entry": json.dumps(new.report),
        }
        return self._job_writer.submit(_PendingJob(job, report, max_queued_per_tenant))

    def _insert_jobs(self, batch: list[_PendingJob]) -> list[TenantQueueFull | None]:
        """One transaction for a batch of new jobs (the job writer's); per job, None when
        it is stored, else the TenantQueueFull that refused it."""
        outcomes: list[TenantQueueFull | None] = []
        jobs: list[dict[str, Any]] = []
        with self.writing() as session:
            queued: dict[str, int] = {}  # per tenant, counted once, then kept up to date
            for pending in batch:
                tenant, limit = pending.job["tenant_id"], pending.limit
                if limit is not None:
                    if tenant not in queued:
                        queued[tenant] = _queued_count(session, tenant)
                    if queued[tenant] >= limit:
                        outcomes.append(TenantQueueFull(tenant, limit))
                        continue
                    queued[tenant] += 1
                jobs.append(pending.job)
                outcomes.append(None)
            accepted = [p for p, outcome in zip(batch, outcomes, strict=True) if outcome is None]
            if accepted:  # the job rows first: the reports refer to them
                session.execute(insert(JobRow), jobs)
                session.execute(insert(ReportRow), [p.report for p in accepted])
        for pending, outcome in zip(batch, outcomes, strict=True):
            if outcome is None:
                job = pending.job
                log.info("job %s: stored for tenant %s", job["id"], job["tenant_id"])
        return outcomes

    def get_job(self, job_id: str, tenant_id: str | None = None) -> JobRow | None:
        """The job, or None when unknown or of another tenant (`tenant_id` given)."""
        with self.reading() as session:
            row = session.get(JobRow, job_id)
            if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
                return None
            return row

    def job_document(self, row: JobRow) -> Any:
        """The accepted job JSON, secrets and all (for the worker only)."""
        return self.sealer.unseal(row.id, row.job_sealed)

    def claim_next(self, owner: str, *, max_running_per_tenant: int | None = None) -> JobRow | None:
        """Take the next Queued job for `owner` (state Running), or None.

        Fair across tenants (round-robin): of the tenants with a Queued job and fewer than
        `max_running_per_tenant` Running ones, the tenant whose last job started least
        recently (one that never ran first) gives its oldest Queued job. So one tenant's 300
        queued jobs do not all run before another tenant's first.

        The conditional UPDATE makes the claim atomic across threads and processes: of two
        workers racing for one job, one changes the row and the other sees no row changed.
        """
        for _ in range(5):
            with self.reading() as session:
                job_id = _next_fair(session, max_running_per_tenant)
            if job_id is None:
                return None
            row = self.claim(job_id, owner, max_running_per_tenant=max_running_per_tenant)
            if row is not None:
                return row
        return None

    def claim(
        self, job_id: str, owner: str, *, max_running_per_tenant: int | None = None
    ) -> JobRow | None:
        """Take one Queued job (used by `claim_next`, and by queue workers that get job ids);
        with `max_running_per_tenant`, only while its tenant runs fewer jobs than that (on
        PostgreSQL, claims racing in separate transactions may pass it by one each)."""
        now = utcnow()
        conditions = [JobRow.id == job_id, JobRow.state == QUEUED]
        if max_running_per_tenant is not None:
            other = aliased(JobRow)
            running = (
                select(func.count())
                .select_from(other)
                .where(other.state == RUNNING, other.tenant_id == JobRow.tenant_id)
                .scalar_subquery()
            )
            conditions.append(running < max_running_per_tenant)
        with self.writing() as session:
            changed = rows_changed(
                session,
                update(JobRow)
                .where(*conditions)
                .values(
                    state=RUNNING,
                    owner=owner,
                    worker=owner,
                    heartbeat_at=now,
                    updated_at=now,
                    started_at=func.coalesce(JobRow.started_at, literal(now, UTCDateTime)),
                    attempts=JobRow.attempts + 1,
                ),
            )
            if changed != 1:
                return None
            row = session.get(JobRow, job_id)
            assert row is not None
            report = session.get(ReportRow, job_id)
            if report is not None:
                entry = json.loads(report.entry)
                entry.update(State=RUNNING, JobStartTime=iso(row.started_at))
                report.entry = json.dumps(entry)
                report.period_at = row.started_at or report.period_at
            return row

    def heartbeat(self, job_id: str, owner: str) -> bool:
        """Renew the lease of a running job; False when this owner no longer holds it."""
        now = utcnow()
        with self.writing() as session:
            changed = rows_changed(
                session,
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.owner == owner, JobRow.state == RUNNING)
                .values(heartbeat_at=now),
            )
        return changed == 1

    def cancel_requested(self, job_id: str) -> bool:
        with self.reading() as session:
            return bool(session.scalar(select(JobRow.cancel_requested).where(JobRow.id == job_id)))

    def request_cancel(
        self, job_id: str, tenant_id: str, *, final_event: dict[str, Any] | None = None
    ) -> str:
        """Cancel a job of `tenant_id`: a Queued one is Cancelled at once (it never starts),
        with its `final_event` in the same transaction; a Running one gets the flag its worker
        watches. Returns a `CancelOutcome` value."""
        now = utcnow()
        with self.writing() as session:
            row = session.get(JobRow, job_id)
            if row is None or row.tenant_id != tenant_id:
                return CancelOutcome.UNKNOWN
            if row.state in FINISHED:
                return CancelOutcome.FINISHED
            row.cancel_requested = True
            row.updated_at = now
            if row.state == QUEUED:
                row.state = CANCELLED
                row.finished_at = now
                row.error_code = 5001
                row.error_message = CANCELLED_BEFORE_START
                if final_event is not None:
                    row.phase = _phase_of_event(final_event).get("phase", row.phase)
                    _add_event_row(session, job_id, final_event)
                report = session.get(ReportRow, job_id)
                if report is not None:
                    entry = json.loads(report.entry)
                    entry.update(
                        State=CANCELLED,
                        Success=False,
                        ErrorCode=5001,
                        JobFinishedTime=iso(now),
                    )
                    report.entry = json.dumps(entry)
                return CancelOutcome.QUEUED
            return CancelOutcome.RUNNING

    def finish_job(
        self,
        job_id: str,
        state: str,
        report: dict[str, Any] | None,
        *,
        error_code: int | None = None,
        error_message: str | None = None,
        owner: str | None = None,
        final_event: dict[str, Any] | None = None,
    ) -> bool:
        """Record the end of a job and its final reporting entry (JobStartTime kept from the
        first start, so a resumed job stays in the month it started in), and `final_event`
        in the same transaction (whoever sees the end sees its event).

        With `owner`, only a Running job held by that owner is finished (a worker whose job
        was taken over must not overwrite the new run); returns whether the job was finished.
        """
        now = utcnow()
        with self.writing() as session:
            row = session.get(JobRow, job_id)
            if row is None:
                return False
            if owner is not None and (row.owner != owner or row.state != RUNNING):
                return False
            row.state = state
            row.finished_at = now
            row.updated_at = now
            row.owner = None
            row.error_code = error_code
            row.error_message = error_message
            if state == SUCCEEDED:
                row.progress = 100
            if final_event is not None:
                row.phase = _phase_of_event(final_event).get("phase", row.phase)
                _add_event_row(session, job_id, final_event)
            stored = session.get(ReportRow, job_id)
            if stored is not None:
                entry = dict(report) if report else json.loads(stored.entry)
                entry.update(
                    State=state,
                    Success=state == SUCCEEDED,
                    JobStartTime=iso(row.started_at) or entry.get("JobStartTime") or None,
                    JobFinishedTime=iso(now),
                )
                if error_code is not None:
                    entry["ErrorCode"] = error_code
                stored.entry = json.dumps(entry)
        log.info("job %s: %s%s", job_id, state, f" ({error_code})" if error_code else "")
        return True

    def requeue(self, job_id: str, owner: str | None, *, refund_attempt: bool = False) -> bool:
        """Put a job that `owner` was running back in the queue (its worker stopped).

        `refund_attempt`: the run was handed back by a worker that stops gracefully, so it does
        not count towards the job's bounded attempts (which are for crashes)."""
        values: dict[str, Any] = {
            "state": QUEUED,
            "owner": None,
            "heartbeat_at": None,
            "updated_at": utcnow(),
            "queue": None,  # not sent yet (engine.service.cluster sends it, then records the queue)
        }
        if refund_attempt:
            values["attempts"] = func.greatest(JobRow.attempts - 1, 0)
            if self.is_sqlite:  # SQLite spells it max()
                values["attempts"] = func.max(JobRow.attempts - 1, 0)
        with self.writing() as session:
            changed = rows_changed(
                session,
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.state == RUNNING, JobRow.owner == owner)
                .values(**values),
            )
        return changed == 1

    def set_queue(self, job_id: str, queue: str | None) -> None:
        """Record the queue a job's message was sent to (engine.service.cluster); None: not sent."""
        with self.writing() as session:
            session.execute(update(JobRow).where(JobRow.id == job_id).values(queue=queue))

    def queued_jobs(self, queue: str | None = None) -> list[JobRow]:
        """Jobs waiting to run (of one queue), oldest first."""
        query = select(JobRow).where(JobRow.state == QUEUED)
        if queue is not None:
            query = query.where(JobRow.queue == queue)
        with self.reading() as session:
            return list(session.scalars(query.order_by(JobRow.created_at, JobRow.id)))

    def unsent_jobs(self, older_than: float) -> list[JobRow]:
        """Queued jobs without a queue (no message sent: the broker was unreachable, or the
        sender stopped in between) whose row has not changed for `older_than` seconds."""
        since = utcnow() - datetime.timedelta(seconds=older_than)
        query = select(JobRow).where(
            JobRow.state == QUEUED, JobRow.queue.is_(None), JobRow.updated_at < since
        )
        with self.reading() as session:
            return list(session.scalars(query.order_by(JobRow.created_at, JobRow.id)))

    def fail_queued(
        self,
        job_id: str,
        error_code: int,
        error_message: str,
        *,
        final_event: dict[str, Any] | None = None,
    ) -> bool:
        """End a job that never started with `error_code` (e.g. 3102: no GPU worker took it)
        and its `final_event`, in one transaction; False when it is no longer Queued (a worker
        claimed it meanwhile)."""
        now = utcnow()
        with self.writing() as session:
            changed = rows_changed(
                session,
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.state == QUEUED)
                .values(
                    state=FAILED,
                    finished_at=now,
                    updated_at=now,
                    error_code=error_code,
                    error_message=error_message,
                    **_phase_of_event(final_event),
                ),
            )
            if changed != 1:
                return False
            if final_event is not None:
                _add_event_row(session, job_id, final_event)
            report = session.get(ReportRow, job_id)
            if report is not None:
                entry = json.loads(report.entry)
                entry.update(
                    State=FAILED, Success=False, ErrorCode=error_code, JobFinishedTime=iso(now)
                )
                report.entry = json.dumps(entry)
        log.info("job %s: %s (%d) before it started", job_id, FAILED, error_code)
        return True

    def running_jobs(self) -> list[JobRow]:
        with self.reading() as session:
            return list(session.scalars(select(JobRow).where(JobRow.state == RUNNING)))

    def record_publish_plan(self, job_id: str, names: list[str]) -> None:
        """The output names a job's publishing is about to create ([] once rolled back)."""
        with self.writing() as session:
            session.execute(
                update(JobRow).where(JobRow.id == job_id).values(publish_plan=json.dumps(names))
            )

    def publish_plan(self, job_id: str) -> list[str]:
        """What `record_publish_plan` recorded last for a job ([] when nothing)."""
        with self.reading() as session:
            value = session.scalar(select(JobRow.publish_plan).where(JobRow.id == job_id))
        return list(json.loads(value)) if value else []

    def update_progress(
        self, job_id: str, phase: str | None, progress: int | None, encoder: str | None
    ) -> None:
        values: dict[str, Any] = {"updated_at": utcnow()}
        if phase is not None:
            values["phase"] = phase
        if progress is not None:
            values["progress"] = progress
        if encoder is not None:
            values["encoder"] = encoder
        with self.writing() as session:
            session.execute(update(JobRow).where(JobRow.id == job_id).values(**values))

    # -- workers (engine.service.cluster) ------------------------------------------------

    def register_worker(
        self,
        worker_id: str,
        *,
        hostname: str,
        pid: int,
        queues: list[str],
        concurrency: int,
        capabilities: dict[str, Any],
    ) -> None:
        """Add (or replace) a worker's row in the registry."""
        now = utcnow()
        with self.writing() as session:
            row = session.get(WorkerRow, worker_id) or WorkerRow(id=worker_id, started_at=now)
            row.hostname, row.pid, row.concurrency = hostname, pid, concurrency
            row.queues = json.dumps(queues)
            row.capabilities = json.dumps(capabilities)
            row.state, row.running, row.heartbeat_at = "Running", 0, now
            session.add(row)

    def worker_heartbeat(self, worker_id: str, state: str, running: int) -> bool:
        """Renew a worker's row; False when it is gone (pruned): the caller registers again."""
        with self.writing() as session:
            changed = rows_changed(
                session,
                update(WorkerRow)
                .where(WorkerRow.id == worker_id)
                .values(state=state, running=running, heartbeat_at=utcnow()),
            )
        return changed == 1

    def remove_worker(self, worker_id: str) -> None:
        with self.writing() as session:
            row = session.get(WorkerRow, worker_id)
            if row is not None:
                session.delete(row)

    def workers(self, alive_within: float | None = None) -> list[WorkerRow]:
        """Registered workers (whose heartbeat is at most `alive_within` seconds old)."""
        query = select(WorkerRow).order_by(WorkerRow.started_at, WorkerRow.id)
        if alive_within is not None:
            since = utcnow() - datetime.timedelta(seconds=alive_within)
            query = query.where(WorkerRow.heartbeat_at >= since)
        with self.reading() as session:
            return list(session.scalars(query))

    def prune_workers(self, older_than: float) -> int:
        """Remove the rows of workers silent for `older_than` seconds (crashed, never stopped)."""
        since = utcnow() - datetime.timedelta(seconds=older_than)
        with self.writing() as session:
            rows = list(session.scalars(select(WorkerRow).where(WorkerRow.heartbeat_at < since)))
            for row in rows:
                session.delete(row)
        return len(rows)

    # -- events -----------------------------------------------------------------------------

    def add_event(self, job_id: str, body: dict[str, Any], *, owner: str | None = None) -> bool:
        """Store one of a job's events. With `owner`, only while that owner runs the job: a
        run that lost its job (taken over after its lease, given up) must not add events after
        the new owner's, or after the job's end. False when the event was refused."""
        with self.writing() as session:
            if owner is not None:
                # locks the job row, so a take-over commits before or after this event
                held = session.scalar(
                    select(JobRow.id)
                    .where(JobRow.id == job_id, JobRow.owner == owner, JobRow.state == RUNNING)
                    .with_for_update()
                )
                if held is None:
                    return False
            _add_event_row(session, job_id, body)
        return True

    def events(self, job_id: str) -> list[dict[str, Any]]:
        with self.reading() as session:
            bodies = session.scalars(
                select(EventRow.body).where(EventRow.job_id == job_id).order_by(EventRow.id)
            )
            return [json.loads(body) for body in bodies]

    # -- reporting --------------------------------------------------------------------------

    def report(self, job_id: str, tenant_id: str) -> dict[str, Any] | None:
        with self.reading() as session:
            row = session.get(ReportRow, job_id)
            if row is None or row.tenant_id != tenant_id:
                return None
            return json.loads(row.entry)

    def reports(
        self, tenant_id: str, year: int | None = None, month: int | None = None
    ) -> list[dict[str, Any]]:
        """The tenant's entries, oldest first; of one month (UTC) when `year`/`month` given."""
        query = select(ReportRow.entry).where(ReportRow.tenant_id == tenant_id)
        if year is not None and month is not None:
            start = datetime.datetime(year, month, 1, tzinfo=datetime.UTC)
            end = datetime.datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=datetime.UTC)
            query = query.where(ReportRow.period_at >= start, ReportRow.period_at < end)
        query = query.order_by(ReportRow.period_at, ReportRow.job_id)
        with self.reading() as session:
            return [json.loads(entry) for entry in session.scalars(query)]

    # -- figures ----------------------------------------------------------------------------

    def count_by_state(self) -> dict[str, int]:
        with self.reading() as session:
            rows = session.execute(select(JobRow.state, func.count()).group_by(JobRow.state))
            counts = dict.fromkeys(STATES, 0)
            counts.update({state: count for state, count in rows})
            return counts

    def queued_count(self, tenant_id: str) -> int:
        """How many jobs of the tenant are Queued."""
        with self.reading() as session:
            return _queued_count(session, tenant_id)

    def count_jobs(self, tenant_id: str | None = None) -> int:
        query = select(func.count()).select_from(JobRow)
        if tenant_id is not None:
            query = query.where(JobRow.tenant_id == tenant_id)
        with self.reading() as session:
            return int(session.scalar(query) or 0)


def _add_event_row(session: Session, job_id: str, body: dict[str, Any]) -> None:
    session.add(
        EventRow(
            job_id=job_id,
            message_type=str(body.get("MessageType", "")),
            created_at=utcnow(),
            body=json.dumps(body),
        )
    )


def _phase_of_event(event: dict[str, Any] | None) -> dict[str, Any]:
    """The job row's `phase` a FinalError names (the phase the job ended in), as values."""
    phase = (event or {}).get("Phase")
    return {"phase": phase} if phase else {}


def rows_changed(session: Session, statement: Executable) -> int:
    """Run an UPDATE and return how many rows it changed. (An UPDATE executes to a
    `CursorResult`, which has `rowcount`; `Session.execute` is typed with the plain `Result`.)"""
    return cast(CursorResult[Any], session.execute(statement)).rowcount


def _queued_count(session: Session, tenant_id: str) -> int:
    query = select(func.count()).where(JobRow.tenant_id == tenant_id, JobRow.state == QUEUED)
    return int(session.scalar(query) or 0)


def _next_fair(session: Session, max_running: int | None) -> str | None:
    """The id of the job `claim_next` takes (three small aggregate queries, portable SQL)."""
    oldest = dict(
        session.execute(
            select(JobRow.tenant_id, func.min(JobRow.created_at))
            .where(JobRow.state == QUEUED)
            .group_by(JobRow.tenant_id)
        ).all()
    )
    if not oldest:
        return None
    tenants = list(oldest)
    running = dict(
        session.execute(
            select(JobRow.tenant_id, func.count())
            .where(JobRow.state == RUNNING, JobRow.tenant_id.in_(tenants))
            .group_by(JobRow.tenant_id)
        ).all()
    )
    last_start = dict(
        session.execute(
            select(JobRow.tenant_id, func.max(JobRow.started_at))
            .where(JobRow.started_at.is_not(None), JobRow.tenant_id.in_(tenants))
            .group_by(JobRow.tenant_id)
        ).all()
    )
    eligible = [t for t in tenants if max_running is None or running.get(t, 0) < max_running]
    if not eligible:
        return None
    never = datetime.datetime.min.replace(tzinfo=datetime.UTC)

    def turn(tenant: str) -> tuple[datetime.datetime, datetime.datetime, str]:
        return (_aware(last_start.get(tenant)) or never, _aware(oldest[tenant]) or never, tenant)

    tenant = min(eligible, key=turn)
    return session.scalar(
        select(JobRow.id)
        .where(JobRow.state == QUEUED, JobRow.tenant_id == tenant)
        .order_by(JobRow.created_at, JobRow.id)
        .limit(1)
    )


def _aware(moment: Any) -> datetime.datetime | None:
    """An aggregate's datetime as aware UTC (SQLite hands aggregates back as text)."""
    if moment is None:
        return None
    if isinstance(moment, str):
        moment = datetime.datetime.fromisoformat(moment)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=datetime.UTC)
    return moment.astimezone(datetime.UTC)


def _private_sqlite_file(url: str) -> None:
    """Create the SQLite file 0600 before SQLite does (it would follow the umask: 0644); its
    -wal and -shm files take the database file's mode."""
    path = url.split("///", 1)[1] if "///" in url else ""
    if not path or path.startswith((":memory:", "file:")):
        return
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:  # there already, or a folder missing: SQLite reports what it must
        return
    os.close(descriptor)


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" hook below issue BEGIN itself (pysqlite's own is deferred).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
        # A 201 answer means the job survives a crash, power loss included. (NORMAL would keep
        # it across a process crash only; with the job writer's group commit the fsync is
        # paid once per batch, and NORMAL measured no faster.)
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        immediate = connection.get_execution_options().get("vipe_immediate")
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


__all__ = [
    "CANCELLED",
    "CANCELLED_BEFORE_START",
    "FAILED",
    "FINISHED",
    "QUEUED",
    "RUNNING",
    "STATES",
    "SUCCEEDED",
    "CancelOutcome",
    "EventRow",
    "JobRow",
    "JobSealer",
    "NewJob",
    "ReportRow",
    "SealError",
    "Store",
    "TenantQueueFull",
    "WorkerRow",
    "database_url",
    "rows_changed",
]
