"""Cluster pieces without a broker: routing, the store's worker registry and hand-back
accounting, JSON logs, broker URL redaction."""

from __future__ import annotations

import datetime
import json
import logging
import os
import uuid

import pytest
from sqlalchemy import update

from engine.service.cluster import (
    JsonFormatter,
    WorkerSettings,
    gpu_workers_alive,
    queue_name,
    redacted,
    route_for,
    run_worker,
)
from engine.service.store import JobRow, JobSealer, NewJob, Store, WorkerRow


@pytest.mark.parametrize(
    ("hardware", "gpu_workers", "route"),
    [
        ("Nvidia", False, "gpu"),
        ("Nvidia", True, "gpu"),
        ("Auto", True, "gpu"),
        ("Auto", False, "cpu"),
        (None, True, "gpu"),  # missing means Auto
        (None, False, "cpu"),
        ("None", True, "cpu"),
        ("None", False, "cpu"),
    ],
)
def test_routing(hardware, gpu_workers, route):
    assert route_for(hardware, gpu_workers) == route


def test_queue_names_and_redaction():
    assert queue_name("gpu", "farm") == "farm.gpu"
    assert redacted("amqp://guest:secret@host:5672//") == "amqp://guest:***@host:5672//"
    assert redacted("redis://127.0.0.1:6379/3") == "redis://127.0.0.1:6379/3"


@pytest.fixture
def store(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'vipe.db'}", JobSealer(os.urandom(32)))
    store.migrate()
    yield store
    store.close()


def new_job(store: Store) -> str:
    job_id = str(uuid.uuid4())
    store.create_job(
        NewJob(job_id, "t", ("e", "t", "p"), {"a": 1}, {}, [], {"JobId": job_id, "State": "Q"})
    )
    return job_id


def test_worker_registry_and_gpu_presence(store):
    caps = {"NvencEncoders": [], "CpuCount": 2}
    store.register_worker(
        "cpu-1", hostname="h", pid=1, queues=["cpu"], concurrency=2, capabilities=caps
    )
    assert not gpu_workers_alive(store)
    gpu = dict(caps, NvencEncoders=["h264_nvenc"])
    store.register_worker(
        "gpu-1", hostname="h", pid=2, queues=["gpu", "cpu"], concurrency=1, capabilities=gpu
    )
    assert gpu_workers_alive(store)
    assert store.worker_heartbeat("gpu-1", "Draining", 1)
    assert [w.id for w in store.workers(alive_within=10)] == ["cpu-1", "gpu-1"]
    # a worker silent for a minute is not alive, and is pruned after the given age
    old = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=60)
    with store.writing() as session:
        session.execute(update(WorkerRow).where(WorkerRow.id == "gpu-1").values(heartbeat_at=old))
    assert not gpu_workers_alive(store)
    assert store.prune_workers(30) == 1
    assert not store.worker_heartbeat("gpu-1", "Running", 0)  # gone: it registers again
    store.remove_worker("cpu-1")
    assert store.workers() == []


def test_hand_back_does_not_use_an_attempt_and_fail_queued(store):
    job_id = new_job(store)
    row = store.claim(job_id, "w1")
    assert row is not None and row.attempts == 1 and row.worker == "w1"
    assert store.requeue(job_id, "w1", refund_attempt=True)
    assert store.get_job(job_id).attempts == 0
    assert store.claim(job_id, "w2").attempts == 1
    assert store.requeue(job_id, "w2")  # a crash: the attempt counts
    assert store.get_job(job_id).attempts == 1
    store.set_queue(job_id, "gpu")
    assert [r.id for r in store.queued_jobs("gpu")] == [job_id] and store.queued_jobs("cpu") == []
    final = {"MessageType": "FinalError", "ErrorCode": 3102, "Phase": "Encoding"}
    assert store.fail_queued(job_id, 3102, "no GPU worker", final_event=final)
    row = store.get_job(job_id)
    assert (row.state, row.error_code, row.phase) == ("Failed", 3102, "Encoding")
    assert store.events(job_id) == [final]  # committed with the state: seen together
    assert not store.fail_queued(job_id, 3102, "again", final_event=final)  # only a Queued job
    assert store.events(job_id) == [final]
    assert store.report(job_id, "t")["ErrorCode"] == 3102
    with store.reading() as session:
        assert session.get(JobRow, job_id).queue == "gpu"


def test_json_log_lines_carry_the_job_id():
    formatter = JsonFormatter("host:1:abc")
    job_id = str(uuid.uuid4())
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "job %s: started", (job_id,), None)
    line = json.loads(formatter.format(record))
    assert line["job_id"] == job_id and line["worker"] == "host:1:abc"
    assert line["message"] == f"job {job_id}: started" and line["level"] == "INFO"
    record = logging.LogRecord(
        "celery", logging.INFO, __file__, 1, f"Task vipe.run_job[{job_id}] succeeded", (), None
    )
    assert json.loads(formatter.format(record))["job_id"] == job_id
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "no job here", (), None)
    assert json.loads(formatter.format(record))["job_id"] is None


def test_worker_refuses_to_start_without_the_api_store_key(tmp_path, monkeypatch):
    monkeypatch.delenv("VIPE_STORE_KEY", raising=False)
    settings = WorkerSettings(data_dir=tmp_path / "w", broker="redis://127.0.0.1:1/0")
    assert run_worker(settings) == 2
    assert not (tmp_path / "w" / "store.key").exists()  # never a key of its own
