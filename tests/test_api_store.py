"""The job store on SQLite and PostgreSQL, sealing, and the service's restart policy."""

from __future__ import annotations

import datetime
import json
import os
import threading
import uuid
from pathlib import Path

import pytest
from api_helpers import tiny_job
from sqlalchemy import create_engine, inspect, text, update
from sqlalchemy.exc import IntegrityError

from engine.cancel import CancelToken
from engine.service.jobs import JobService, RunningJob, ServiceOptions, StoreEventSink
from engine.service.store import (
    CancelOutcome,
    JobRow,
    JobSealer,
    NewJob,
    ReportRow,
    SealError,
    Store,
    TenantQueueFull,
)

POSTGRES_URL = os.environ.get(
    "VIPE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
SECRET = "s3cr3t-credentials-value"


@pytest.fixture(scope="module")
def postgres_schema():
    """A schema of its own in the `test` database for this run, dropped afterwards."""
    try:
        admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as error:
        if os.environ.get("VIPE_REQUIRE_TEST_SERVERS"):
            raise
        pytest.skip(f"PostgreSQL not reachable: {type(error).__name__}")
    schema = f"vipe_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'vipe.db'}"
    else:
        url = request.getfixturevalue("postgres_schema")
    store = Store(url, JobSealer(os.urandom(32)))
    store.migrate()
    if request.param == "postgresql":  # each test starts empty in the run's schema
        with store.writing() as session:
            for table in ("events", "reports", "jobs"):
                session.execute(text(f"DELETE FROM {table}"))
    yield store
    store.close()


def new_job(tenant: str = "tenant-a", **document) -> NewJob:
    job_id = str(uuid.uuid4())
    document = document or {"ContentAcquisition": {"CredentialsSecret": SECRET}}
    return NewJob(
        job_id=job_id,
        tenant_id=tenant,
        external=("ext", "type", "provider"),
        document=document,
        summary={"ContentAcquisitionProvider": "Local"},
        key_ids=[{"KeyId": str(uuid.uuid4()), "QualityGroup": None}],
        report={"JobId": job_id, "TenantId": tenant, "State": "Queued"},
    )


def raw_rows(store: Store) -> str:
    with store.reading() as session:
        rows = []
        for table in ("jobs", "events", "reports"):
            rows += [repr(tuple(r)) for r in session.execute(text(f"SELECT * FROM {table}"))]
    return "\n".join(rows)


def test_job_round_trip_and_tenant_scope(store):
    job = new_job()
    store.create_job(job)
    row = store.get_job(job.job_id, "tenant-a")
    assert row is not None and row.state == "Queued" and row.attempts == 0
    assert row.created_at.tzinfo is not None
    assert store.get_job(job.job_id, "tenant-b") is None
    assert store.get_job(str(uuid.uuid4())) is None
    assert store.job_document(row) == job.document
    assert SECRET not in raw_rows(store)  # sealed
    assert store.report(job.job_id, "tenant-a")["State"] == "Queued"
    assert store.report(job.job_id, "tenant-b") is None
    assert store.count_jobs("tenant-a") == 1 and store.count_jobs("tenant-b") == 0


def test_claims_are_atomic_and_oldest_first(store):
    jobs = [new_job() for _ in range(12)]
    for job in jobs:
        store.create_job(job)
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while (row := store.claim_next(name)) is not None:
            with lock:
                claimed.append(row.id)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(j.job_id for j in jobs)  # each exactly once
    assert store.count_by_state()["Running"] == 12
    first = store.get_job(jobs[0].job_id)
    assert first.started_at is not None and first.attempts == 1
    assert store.report(first.id, "tenant-a")["State"] == "Running"


def test_cancel_outcomes_and_owned_finish(store):
    queued, running, other = new_job(), new_job(), new_job("tenant-b")
    for job in (queued, running, other):
        store.create_job(job)
    assert store.claim(running.job_id, "owner-1") is not None
    assert store.claim(running.job_id, "owner-2") is None  # taken
    assert store.request_cancel(other.job_id, "tenant-a") == CancelOutcome.UNKNOWN
    final = {"MessageType": "FinalError", "ErrorCode": 5001, "Phase": "Pre-Validation"}
    assert store.request_cancel(queued.job_id, "tenant-a", final_event=final) == (
        CancelOutcome.QUEUED
    )
    assert store.events(queued.job_id) == [final]  # in the transaction that ends the job
    cancelled = store.get_job(queued.job_id)
    assert cancelled.state == "Cancelled" and cancelled.error_code == 5001
    assert store.claim(queued.job_id, "owner-1") is None  # never starts
    assert store.report(queued.job_id, "tenant-a")["ErrorCode"] == 5001
    assert store.request_cancel(running.job_id, "tenant-a", final_event=final) == (
        CancelOutcome.RUNNING
    )
    assert store.events(running.job_id) == []  # a running job ends by its worker
    assert store.cancel_requested(running.job_id)
    # a worker that no longer holds the job cannot finish it
    assert not store.finish_job(running.job_id, "Succeeded", None, owner="owner-2")
    report = {"JobId": running.job_id, "State": "Cancelled", "ErrorCode": 5001}
    assert store.finish_job(running.job_id, "Cancelled", report, error_code=5001, owner="owner-1")
    assert store.request_cancel(running.job_id, "tenant-a") == CancelOutcome.FINISHED
    entry = store.report(running.job_id, "tenant-a")
    assert entry["Success"] is False and entry["JobStartTime"] and entry["JobFinishedTime"]


def test_events_in_order(store):
    job = new_job()
    store.create_job(job)
    for index in range(25):
        store.add_event(job.job_id, {"MessageType": "EncodingProgress", "Progress": index})
    assert [e["Progress"] for e in store.events(job.job_id)] == list(range(25))


def test_a_run_that_lost_its_job_adds_no_events(store):
    """A worker whose lease ran out (or whose job was given up) may still be running: its late
    events must not land after the new owner's or after the job's end."""
    job = new_job()
    store.create_job(job)
    assert not store.add_event(job.job_id, {"MessageType": "Warning"}, owner="owner-1")  # queued
    store.claim(job.job_id, "owner-1")
    assert store.add_event(job.job_id, {"MessageType": "EncodingProgress"}, owner="owner-1")
    assert store.requeue(job.job_id, "owner-1")
    store.claim(job.job_id, "owner-2")
    assert not store.add_event(job.job_id, {"MessageType": "EncodingProgress"}, owner="owner-1")
    assert store.add_event(job.job_id, {"MessageType": "JobSuccess"}, owner="owner-2")
    assert store.finish_job(job.job_id, "Succeeded", None, owner="owner-2")
    assert not store.add_event(job.job_id, {"MessageType": "Warning"}, owner="owner-2")
    assert [e["MessageType"] for e in store.events(job.job_id)] == [
        "EncodingProgress",
        "JobSuccess",
    ]


def test_reports_by_month_utc(store):
    jobs = [new_job(), new_job(), new_job(), new_job("tenant-b")]
    moments = [
        datetime.datetime(2024, 12, 31, 23, 59, 59, tzinfo=datetime.UTC),
        datetime.datetime(2025, 1, 1, 0, 0, 0, tzinfo=datetime.UTC),
        # 2025-02-01 00:30 in UTC+1 is still January in UTC
        datetime.datetime(2025, 2, 1, 0, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=1))),
        datetime.datetime(2025, 1, 15, tzinfo=datetime.UTC),
    ]
    for job, moment in zip(jobs, moments, strict=True):
        store.create_job(job)
        with store.writing() as session:
            session.execute(
                update(ReportRow).where(ReportRow.job_id == job.job_id).values(period_at=moment)
            )
    january = [e["JobId"] for e in store.reports("tenant-a", 2025, 1)]
    assert january == [jobs[1].job_id, jobs[2].job_id]
    assert [e["JobId"] for e in store.reports("tenant-a", 2024, 12)] == [jobs[0].job_id]
    assert store.reports("tenant-a", 2025, 2) == []
    assert len(store.reports("tenant-a")) == 3
    assert [e["JobId"] for e in store.reports("tenant-b", 2025, 1)] == [jobs[3].job_id]


def test_migrations_are_idempotent(store):
    store.migrate()
    with store.engine.connect() as connection:
        names = set(inspect(connection).get_table_names())
        version = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    assert {"jobs", "events", "reports", "alembic_version"} <= names
    assert version == _alembic_head()


def _alembic_head() -> str:
    """The newest revision among the migrations shipped in engine/service/migrations."""
    from pathlib import Path

    from alembic.config import Config
    from alembic.script import ScriptDirectory

    import engine.service.migrations as migrations

    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    return ScriptDirectory.from_config(config).get_current_head()


# ------------------------------------------------------------------------------- sealing


def test_sealed_job_is_bound_to_its_key_and_row():
    sealer, other = JobSealer(os.urandom(32)), JobSealer(os.urandom(32))
    sealed = sealer.seal("job-1", {"CredentialsSecret": SECRET})
    assert SECRET not in sealed and repr(sealer) == "JobSealer(<key hidden>)"
    assert sealer.unseal("job-1", sealed) == {"CredentialsSecret": SECRET}
    with pytest.raises(SealError):
        other.unseal("job-1", sealed)
    with pytest.raises(SealError):
        sealer.unseal("job-2", sealed)  # moved to another row
    with pytest.raises(SealError):
        sealer.unseal("job-1", "v2:" + sealed[3:])


def test_sealed_bytes_open_only_for_their_job_and_key():
    """The farm's chunk tasks (a pickle) are sealed: writing the work storage is not enough
    to have a worker unpickle something."""
    sealer = JobSealer(os.urandom(32))
    sealed = sealer.seal_bytes("job-1", b"payload")
    assert b"payload" not in sealed and sealer.unseal_bytes("job-1", sealed) == b"payload"
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    for job_id, data in (("job-2", sealed), ("job-1", tampered), ("job-1", b"short")):
        with pytest.raises(SealError):
            sealer.unseal_bytes(job_id, data)
    with pytest.raises(SealError):
        JobSealer(os.urandom(32)).unseal_bytes("job-1", sealed)


def test_store_key_file_is_private_and_stable(tmp_path, monkeypatch):
    monkeypatch.delenv("VIPE_STORE_KEY", raising=False)
    first = JobSealer.load_or_create(tmp_path)
    assert (tmp_path / "store.key").stat().st_mode & 0o777 == 0o600
    sealed = first.seal("j", [1])
    assert JobSealer.load_or_create(tmp_path).unseal("j", sealed) == [1]


# ------------------------------------------------------------------------- restart policy


@pytest.fixture
def service(tmp_path, store) -> JobService:
    return JobService(store, ServiceOptions(data_dir=tmp_path, lease_seconds=30), None)


def submit(service: JobService, tmp_path: Path) -> str:
    return service.submit(tiny_job(tmp_path / "in", tmp_path / "out"), "tenant-a")["JobId"]


def running_as(service: JobService, job_id: str, owner: str, *, attempts: int = 1, age: float = 0):
    service.store.claim(job_id, owner)
    with service.store.writing() as session:
        session.execute(
            update(JobRow)
            .where(JobRow.id == job_id)
            .values(
                attempts=attempts,
                heartbeat_at=datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=age),
            )
        )


def dead_pid() -> int:
    pid = 4_000_000  # above the default pid_max: no such process
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid += 1


def test_recovery_requeues_fails_and_cancels(service, tmp_path):
    host = __import__("socket").gethostname()
    me = f"{host}:{os.getpid()}:new"
    crashed, looping, cancelled, alive, stale = (submit(service, tmp_path) for _ in range(5))
    running_as(service, crashed, f"{host}:{dead_pid()}:old")
    running_as(service, looping, f"{host}:{dead_pid()}:old", attempts=3)
    running_as(service, cancelled, f"{host}:{os.getpid()}:old")  # same pid, older instance
    service.store.request_cancel(cancelled, "tenant-a")
    running_as(service, alive, f"{host}:{os.getppid()}:x")  # a live process: not ours to take
    running_as(service, stale, "other-host:1:x", age=120)  # its lease ran out
    assert service.recover(me, at_start=True) == 4
    store = service.store
    assert store.get_job(crashed).state == "Queued"
    assert store.get_job(stale).state == "Queued"
    assert store.get_job(alive).state == "Running"
    failed = store.get_job(looping)
    assert failed.state == "Failed" and failed.error_code == 5000
    assert store.events(looping)[-1]["ErrorCode"] == 5000
    assert store.report(looping, "tenant-a")["ErrorCode"] == 5000
    ended = store.get_job(cancelled)
    assert ended.state == "Cancelled" and store.events(cancelled)[-1]["ErrorCode"] == 5001
    # the sweep (not at start) leaves a live, fresh job alone
    assert service.recover(me, at_start=False) == 0


def test_the_event_sink_stops_a_run_whose_job_was_taken_over(service, tmp_path):
    job_id = submit(service, tmp_path)
    service.store.claim(job_id, "owner-1")
    run = RunningJob(job_id, CancelToken(), "owner-1")
    sink = StoreEventSink(service, job_id, run)
    sink({"MessageType": "EncodingProgress", "Progress": 10})
    assert not run.abandoned and not run.token.cancelled
    service.store.requeue(job_id, "owner-1")  # its lease ran out; another worker claims it
    service.store.claim(job_id, "owner-2")
    sink({"MessageType": "EncodingProgress", "Progress": 20})
    assert run.abandoned and run.token.cancelled
    assert [e.get("Progress") for e in service.store.events(job_id)] == [10]
    assert service.store.get_job(job_id).progress != 20


def test_submit_stores_summary_without_secrets(service, tmp_path):
    job = tiny_job(tmp_path / "in", tmp_path / "out")
    job["ContentAcquisition"]["UriPath"] = "file:///in/"
    job["ContentProcessing"].update(
        DrmProtection="Base64Key",
        KeyId="6c3e7bd1-8c10-4b4e-9d2a-6c2b0f0ae1a4",
        ContentKey="AAECAwQFBgcICQoLDA0ODw==",
    )
    answer = service.submit(job, "tenant-a")
    row = service.store.get_job(answer["JobId"])
    summary = json.loads(row.summary)
    assert summary["ContentProcessing"]["DrmProtection"] == "Base64Key"
    assert "AAECAwQFBgcICQoLDA0ODw==" not in raw_rows(service.store)
    assert json.loads(row.key_ids)[0]["KeyId"] == answer["KeyId"]


def test_a_job_given_up_after_crashes_in_publishing_is_rolled_back(service, tmp_path):
    """Its worker died while publishing, for the last time: what that publish had planned to
    create is deleted from the output (files that were there before the job are not), and its
    work folder goes."""
    host = __import__("socket").gethostname()
    job_id = submit(service, tmp_path)
    output = tmp_path / "out"
    (output / "dash").mkdir(parents=True)
    (output / "other-job.mpd").write_text("another job's manifest")
    for name in ("video_1.m4s", "dash/video_init.mp4"):  # half a publish
        (output / name).write_bytes(b"partial")
    service.store.record_publish_plan(
        job_id, ["video_1.m4s", "video_2.m4s", "dash/video_init.mp4", "manifest.mpd"]
    )
    workdir = tmp_path / "work" / job_id
    (workdir / "output").mkdir(parents=True)
    (workdir / "input.mp4").write_bytes(b"the source")
    running_as(service, job_id, f"{host}:{dead_pid()}:old", attempts=3)

    assert service.recover(f"{host}:{os.getpid()}:new", at_start=True) == 1
    assert service.store.get_job(job_id).state == "Failed"
    assert sorted(p.relative_to(output).as_posix() for p in output.rglob("*")) == ["other-job.mpd"]
    assert not workdir.exists()
    assert service.store.publish_plan(job_id) == []


def test_publishing_tells_its_plan_before_it_writes(tmp_path):
    """run_job's `on_publish_plan` gets the names publishing will create, not those already
    there, before the first file lands."""
    from mediagen import make_media

    from engine.pipeline import run_job

    source = tmp_path / "in"
    make_media(source / "clip.mp4", duration=1, width=160, height=90)
    output = tmp_path / "out"
    output.mkdir()
    (output / "manifest.mpd").write_text("there before")
    plans: list[tuple[list[str], list[str]]] = []

    def plan(names: list[str]) -> None:
        plans.append((names, sorted(p.name for p in output.rglob("*"))))

    report = run_job(tiny_job(source, output), on_publish_plan=plan, data_dir=tmp_path / "d")
    assert report["Success"]
    [(names, present)] = plans
    assert present == ["manifest.mpd"]  # nothing written yet
    published = sorted(p.relative_to(output).as_posix() for p in output.rglob("*") if p.is_file())
    assert sorted(names) == [n for n in published if n != "manifest.mpd"]


def _paused_writer(store: Store) -> tuple[threading.Event, threading.Event, list[int]]:
    """Hold the store's job writer inside its first batch until `release` is set; the sizes
    of the batches it commits go to `sizes`."""
    writer = store._job_writer
    insert_jobs = writer._insert_jobs
    entered, release, sizes = threading.Event(), threading.Event(), []

    def paused(batch):
        entered.set()
        assert release.wait(30)
        sizes.append(len(batch))
        return insert_jobs(batch)

    writer._insert_jobs = paused
    return entered, release, sizes


def test_waiting_jobs_are_committed_together_with_exact_queued_limits(store):
    entered, release, sizes = _paused_writer(store)
    first = store.create_job_future(new_job("tenant-a"), max_queued_per_tenant=5)
    assert entered.wait(30)  # the writer holds the first job; the next ones wait for it
    a_jobs = [new_job("tenant-a") for _ in range(7)]
    b_jobs = [new_job("tenant-b") for _ in range(3)]
    futures = [store.create_job_future(j, max_queued_per_tenant=5) for j in a_jobs]
    futures += [store.create_job_future(j, max_queued_per_tenant=None) for j in b_jobs]
    assert not any(f.done() for f in [first, *futures])  # nothing answers before its commit
    release.set()
    first.result(30)
    outcomes = [f.exception(30) for f in futures]
    assert sizes == [1, 10]  # one transaction for the ten that waited
    refused = [e for e in outcomes if e is not None]
    assert len(refused) == 3 and all(isinstance(e, TenantQueueFull) for e in refused)
    assert outcomes[:4] == [None] * 4 and outcomes[7:] == [None] * 3  # first come, first in
    assert store.queued_count("tenant-a") == 5 and store.queued_count("tenant-b") == 3
    for job in a_jobs[:4] + b_jobs:
        assert store.report(job.job_id, job.tenant_id)["State"] == "Queued"


def test_a_failing_job_in_a_batch_fails_only_its_own_request(store):
    taken = new_job()
    store.create_job(taken)
    entered, release, sizes = _paused_writer(store)
    blocker = store.create_job_future(new_job())
    assert entered.wait(30)
    good = [new_job(), new_job()]
    futures = [
        store.create_job_future(good[0]),
        store.create_job_future(taken),  # its id is stored already: the insert fails
        store.create_job_future(good[1]),
    ]
    release.set()
    blocker.result(30)
    assert futures[0].exception(30) is None and futures[2].exception(30) is None
    assert isinstance(futures[1].exception(30), IntegrityError)
    assert sizes == [1, 3, 1, 1, 1]  # the batch failed as a whole, then one job at a time
    assert all(store.get_job(j.job_id) is not None for j in good)
    assert store.count_jobs("tenant-a") == 4


def test_closing_the_store_commits_the_jobs_handed_over(tmp_path):
    url = f"sqlite:///{tmp_path / 'vipe.db'}"
    store = Store(url, JobSealer(os.urandom(32)))
    store.migrate()
    futures = [store.create_job_future(new_job()) for _ in range(20)]
    store.close()
    assert all(f.done() and f.exception() is None for f in futures)
    again = Store(url, store.sealer)
    try:
        assert again.count_jobs("tenant-a") == 20
    finally:
        again.close()


def test_a_request_that_goes_away_does_not_stop_its_job_or_the_writer(store):
    entered, release, _ = _paused_writer(store)
    blocker = store.create_job_future(new_job())
    assert entered.wait(30)
    gone = new_job()
    future = store.create_job_future(gone)
    assert not future.cancel()  # a cancelled request task cannot withdraw a handed-over job
    release.set()
    assert blocker.exception(30) is None and future.exception(30) is None
    store.create_job(after := new_job())  # the writer still runs
    assert store.get_job(gone.job_id) is not None and store.get_job(after.job_id) is not None
