"""The cluster on RabbitMQ: queue routing with only a CPU worker (an `Auto` job runs on it, an
`Nvidia` job waits and fails with 3102 after `--gpu-wait-seconds`), `Auto` following the GPU
workers that are alive, SIGTERM letting a running job finish within the grace period, and
`vipe worker --burst` with JSON logs.

Unique queue names (deleted afterwards) on the machine's RabbitMQ; own PostgreSQL schema.
The tests run in order: the SIGTERM test stops the module's worker, the burst test needs none,
the last one starts two workers and kills one mid-encode: RabbitMQ re-delivers at once.
"""

from __future__ import annotations

import base64
import datetime
import json
import time
from pathlib import Path

import pytest
from api_helpers import (
    ServeProcess,
    TokenIssuer,
    api_client,
    event_types,
    free_port,
    job_state,
    wait_final,
    wait_for,
)
from cluster_helpers import (
    Cluster,
    cluster_sources,
    encodes,
    postgres_schema,
    quick_job,
    rabbitmq_broker,
    relative_files,
    slow_job,
    wait_encoding,
)
from sqlalchemy import update

from engine.service.store import WorkerRow

GPU_WAIT = 3.0
LEASE = 30.0  # long: re-delivery after kill -9 must not wait for it


@pytest.fixture(scope="module")
def sources(media_dir) -> dict[str, Path]:
    return cluster_sources(media_dir)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster-rabbitmq")
    issuer = TokenIssuer(root)
    with (
        postgres_schema() as database,
        rabbitmq_broker() as broker,
        Cluster(root, broker, database, issuer, lease=LEASE, gpu_wait_seconds=GPU_WAIT) as cluster,
    ):
        cluster.worker("cpu-worker", "--queues", "cpu", "--grace-seconds", "60")
        yield cluster


@pytest.fixture
def client(cluster):
    with cluster.client() as api:
        yield api


def test_vipe_serve_with_a_broker_only_enqueues(cluster, sources, tmp_path, monkeypatch):
    """`vipe serve` (a process, as deployed) with VIPE_BROKER_URL: no job runs in it; the
    worker runs what it accepts. It shares the store and its key with the test's API."""
    key = base64.b64encode((cluster.api.data_dir / "store.key").read_bytes()).decode()
    environment = {
        **cluster.broker.env(),
        "VIPE_DATABASE_URL": cluster.database_url,
        "VIPE_STORE_KEY": key,
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "serve").mkdir()
    issuer = cluster.issuer
    serve = ServeProcess(tmp_path / "serve", free_port(), issuer.public_pem, "--log-format=json")
    serve.start()
    try:
        token = f"Bearer {issuer.token('tenant-a')}"
        with api_client(serve.url, serve.cert, token) as client:
            health = client.get("/health").json()
            assert health["Queue"] == "celery"
            assert [w["Id"] for w in health["Workers"]] == [cluster.workers[0].owner]
            job = quick_job(sources["tiny"], tmp_path / "out")
            view = wait_final(client, client.post("/Job", json=job).json()["JobId"], 60)
        assert view["State"] == "Succeeded", view.get("ErrorMessage")
        assert view["Worker"] == cluster.workers[0].owner
    finally:
        serve.stop()
    assert '"job_id"' in serve.log.read_text()  # --log-format json


def test_auto_job_runs_on_the_cpu_worker(cluster, client, sources, tmp_path):
    job = quick_job(sources["tiny"], tmp_path / "out", HardwareAcceleration="Auto")
    view = wait_final(client, client.post("/Job", json=job).json()["JobId"], 60)
    assert view["State"] == "Succeeded", view.get("ErrorMessage")
    assert view["Queue"] == "cpu" and view["Worker"] == cluster.workers[0].owner
    assert view["Encoder"] == "libx264"


def test_nvidia_job_waits_then_fails_3102(cluster, client, sources, tmp_path):
    job = quick_job(sources["tiny"], tmp_path / "out", HardwareAcceleration="Nvidia")
    started = time.monotonic()
    job_id = client.post("/Job", json=job).json()["JobId"]
    time.sleep(1.0)
    view = job_state(client, job_id)
    assert (view["State"], view["Queue"], view["Attempts"]) == ("Queued", "gpu", 0)
    view = wait_final(client, job_id, 30)
    assert time.monotonic() - started >= GPU_WAIT
    assert view["State"] == "Failed" and view["ErrorCode"] == 3102, view
    assert "no GPU worker" in view["ErrorMessage"] and view["Worker"] is None
    final = [e for e in view["Events"] if e["MessageType"] == "FinalError"]
    assert [e["ErrorCode"] for e in final] == [3102]
    assert not relative_files(tmp_path / "out")


def test_auto_follows_the_gpu_workers_alive(cluster, client, sources, tmp_path):
    """A (registered, fake) GPU worker draws Auto jobs to the gpu queue; when it is gone, a
    job waiting there goes to the cpu queue and runs."""
    store = cluster.store
    gpu = {"NvencEncoders": ["h264_nvenc"], "CpuEncoders": ["libx264"], "CpuCount": 8}
    store.register_worker(
        "fake-gpu",
        hostname="gpu-node",
        pid=1,
        queues=["gpu", "cpu"],
        concurrency=1,
        capabilities=gpu,
    )
    job = quick_job(sources["tiny"], tmp_path / "out", HardwareAcceleration="Auto")
    job_id = client.post("/Job", json=job).json()["JobId"]
    health = client.get("/health").json()
    assert "fake-gpu" in {w["Id"] for w in health["Workers"]}
    assert job_state(client, job_id)["Queue"] == "gpu"
    time.sleep(1.5)
    assert job_state(client, job_id)["State"] == "Queued"  # no real GPU worker consumes
    silent = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    with store.writing() as session:  # the GPU worker goes silent (dies)
        session.execute(
            update(WorkerRow).where(WorkerRow.id == "fake-gpu").values(heartbeat_at=silent)
        )
    view = wait_final(client, job_id, 60)
    assert view["State"] == "Succeeded" and view["Queue"] == "cpu"
    store.remove_worker("fake-gpu")


def test_sigterm_lets_the_running_job_finish(cluster, client, sources, tmp_path):
    worker = cluster.workers[0]
    job_id = client.post("/Job", json=slow_job(sources["long"], tmp_path / "out")).json()["JobId"]
    wait_encoding(client, job_id)
    worker.terminate()
    assert worker.wait(90) == 0
    view = job_state(client, job_id)  # finished before the worker exited
    assert view["State"] == "Succeeded", view.get("ErrorMessage")
    assert (view["Attempts"], view["Worker"], encodes(view)) == (1, worker.owner, 1)
    assert worker.owner not in {w["Id"] for w in client.get("/health").json()["Workers"]}
    assert relative_files(tmp_path / "out")


def test_burst_worker_runs_the_queue_and_exits(cluster, client, sources, tmp_path):
    assert not any(w.alive() for w in cluster.workers)
    ids = [
        client.post("/Job", json=quick_job(sources["tiny"], tmp_path / f"o{i}")).json()["JobId"]
        for i in range(3)
    ]
    assert {job_state(client, i)["State"] for i in ids} == {"Queued"}
    burst = cluster.worker("burst", "--burst", start=False)
    burst.start(wait=False)
    assert burst.wait(120) == 0, burst.tail()
    views = [job_state(client, i) for i in ids]
    assert [v["State"] for v in views] == ["Succeeded"] * 3
    # JSON log lines, the job id on those about a job
    lines = burst.lines()
    assert lines and all({"time", "level", "message", "job_id", "worker"} <= set(x) for x in lines)
    for job_id in ids:
        assert any(x["job_id"] == job_id and "started" in x["message"] for x in lines)
    assert json.loads(Path(burst.log).read_text().splitlines()[0])["worker"]
    assert "burst: the queues are empty" in burst.tail()
    assert event_types(views[0]).count("JobSuccess") == 1


def test_kill_9_is_redelivered_at_once(cluster, client, sources, tmp_path):
    """RabbitMQ hands a dead consumer's unacknowledged message to another consumer at once,
    which takes the job over (its owner's process is gone) without waiting for the lease."""
    pair = [cluster.worker(name, start=False) for name in ("a", "b")]
    for worker in pair:
        worker.start(wait=False)
    for worker in pair:
        worker.wait_registered()
    job_id = client.post("/Job", json=slow_job(sources["long"], tmp_path / "out")).json()["JobId"]
    owner = wait_encoding(client, job_id)["Worker"]
    victim = next((w for w in pair if w.owner == owner), None)
    assert victim is not None, (owner, [w.owner for w in pair], [w.owner for w in cluster.workers])
    survivor = next(w for w in pair if w is not victim)
    killed = time.monotonic()
    victim.kill()
    wait_for(lambda: job_state(client, job_id)["Attempts"] == 2, LEASE)
    assert time.monotonic() - killed < LEASE / 3  # not the lease: the broker re-delivered
    view = wait_final(client, job_id, 120)
    assert view["State"] == "Succeeded", view.get("ErrorMessage")
    assert (view["Worker"], encodes(view)) == (survivor.owner, 2)
    assert relative_files(tmp_path / "out")
