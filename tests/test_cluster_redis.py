"""The cluster on Redis: the API (Celery queue) and two `vipe worker` processes on the
machine's Redis and PostgreSQL: spreading, exactly-once runs, kill -9 mid-encode, a job whose
worker is killed at every attempt, cancellation on a worker, SIGTERM mid-job.

Each run has its own PostgreSQL schema, Redis database and key prefix (cluster_helpers). The
workers use a 4 s lease and 2 attempts so that crash recovery is quick to watch.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from api_helpers import TokenIssuer, event_types, job_state, wait_final, wait_for
from cluster_helpers import (
    Cluster,
    cluster_sources,
    encodes,
    heavy_job,
    postgres_schema,
    quick_job,
    redis_broker,
    relative_files,
    slow_job,
    wait_encoding,
    wait_state,
)

GRACE = 1.0


@pytest.fixture(scope="module")
def sources(media_dir) -> dict[str, Path]:
    return cluster_sources(media_dir)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster-redis")
    issuer = TokenIssuer(root)
    with (
        postgres_schema() as database,
        redis_broker() as broker,
        Cluster(root, broker, database, issuer, lease=4.0, attempts=2) as cluster,
    ):
        workers = [
            cluster.worker(name, "--grace-seconds", str(GRACE), start=False)
            for name in ("w1", "w2")
        ]
        for worker in workers:
            worker.start(wait=False)
        for worker in workers:
            worker.wait_registered()
        yield cluster


@pytest.fixture
def workers(cluster):
    """Both workers alive at the start of each test (a test may kill or stop them)."""
    restarted = [w for w in cluster.workers if not w.alive()]
    for worker in restarted:
        worker.start(wait=False)
    for worker in restarted:
        worker.wait_registered()
    return cluster.workers


@pytest.fixture
def client(cluster):
    with cluster.client() as api:
        yield api


def by_owner(workers, owner: str):
    return next(w for w in workers if w.owner == owner)


def kill_mid_encode(client, workers, job_id: str, attempt: int):
    """SIGKILL the worker that runs attempt `attempt` of the job, once that attempt encodes
    (a job that crashes its worker); the victim."""

    def encoding() -> dict | None:
        view = job_state(client, job_id)
        assert view["State"] not in ("Succeeded", "Failed", "Cancelled"), view
        running = view["State"] == "Running" and view["Attempts"] == attempt
        return view if running and encodes(view) == attempt else None

    victim = by_owner(workers, wait_for(encoding, 60, 0.05)["Worker"])
    victim.kill()
    return victim


def test_ten_jobs_spread_over_both_workers_each_run_once(workers, client, sources, tmp_path):
    ids = [
        client.post("/Job", json=quick_job(sources["tiny"], tmp_path / f"out{i}")).json()["JobId"]
        for i in range(10)
    ]
    views = [wait_final(client, job_id, 120) for job_id in ids]
    assert [v["State"] for v in views] == ["Succeeded"] * 10, [v.get("ErrorMessage") for v in views]
    assert {v["Worker"] for v in views} == {w.owner for w in workers}  # both took jobs
    for index, view in enumerate(views):
        assert view["Attempts"] == 1 and view["Queue"] == "cpu"
        assert encodes(view) == 1  # exactly once
        assert event_types(view).count("JobSuccess") == 1
        files = relative_files(tmp_path / f"out{index}")
        assert any(name.endswith((".mpd", ".m3u8")) for name in files), files
    health = client.get("/health").json()
    assert {w["Id"] for w in health["Workers"]} == {w.owner for w in workers}
    assert all(w["Capabilities"]["CpuEncoders"] for w in health["Workers"])


def test_cancel_reaches_the_worker_within_5_seconds(workers, client, sources, tmp_path):
    job_id = client.post("/Job", json=slow_job(sources["long"], tmp_path / "out")).json()["JobId"]
    wait_encoding(client, job_id)
    started = time.monotonic()
    assert client.delete(f"/Job/{job_id}").status_code == 200
    view = wait_state(client, job_id, ("Cancelled", "Failed", "Succeeded"), 10)
    elapsed = time.monotonic() - started
    assert view["State"] == "Cancelled" and view["ErrorCode"] == 5001
    assert elapsed < 5.0, elapsed
    assert event_types(view)[-1] == "FinalError"
    assert not list((tmp_path / "out").rglob("*.mpd"))  # nothing published
    assert all(w.alive() for w in workers)


def test_kill_9_mid_encode_reruns_on_the_other_worker(workers, client, sources, tmp_path):
    """Two identical jobs, one per worker; the worker of the first is killed mid-encode. The
    first is delivered again and completes on the other worker, with the same output files
    as the second (which ran clean)."""
    first = client.post("/Job", json=slow_job(sources["long"], tmp_path / "a")).json()["JobId"]
    second = client.post("/Job", json=slow_job(sources["long"], tmp_path / "b")).json()["JobId"]
    victim = by_owner(workers, wait_encoding(client, first)["Worker"])
    victim.kill()
    done = wait_final(client, first, 120)
    clean = wait_final(client, second, 120)
    assert clean["State"] == "Succeeded" and clean["Attempts"] == 1
    assert done["State"] == "Succeeded", done.get("ErrorMessage")
    assert done["Attempts"] == 2
    assert done["Worker"] != victim.owner
    assert encodes(done) == 2  # the killed attempt and the one that finished
    resumed = [e for e in done["Events"] if e.get("Code") == "JobResumed"]
    assert len(resumed) == 1
    assert event_types(done).count("JobSuccess") == 1
    assert relative_files(tmp_path / "a") == relative_files(tmp_path / "b") != []


def test_a_job_that_kills_its_worker_every_time_fails_after_the_attempts(
    workers, client, sources, tmp_path
):
    job_id = client.post("/Job", json=slow_job(sources["long"], tmp_path / "out")).json()["JobId"]
    first = kill_mid_encode(client, workers, job_id, 1)
    second = kill_mid_encode(client, workers, job_id, 2)
    assert first is not second  # the job went to the worker still alive
    view = wait_final(client, job_id, 90)
    assert view["State"] == "Failed" and view["ErrorCode"] == 5000, view
    assert view["Attempts"] == 2  # --max-attempts 2: both workers died once each
    assert "stopped 2 times" in view["ErrorMessage"]
    assert event_types(view)[-1] == "FinalError"
    assert not any(w.alive() for w in workers)  # it took both down (restarted for the next)


def test_sigterm_mid_job_hands_it_back(workers, client, sources, tmp_path):
    """Grace 1 s: the job is still encoding, so the worker hands it back (no attempt used)
    and exits 0 at once; the other worker runs it to the end."""
    job = heavy_job(sources["heavy"], tmp_path / "out")  # still encoding when the grace ends
    job_id = client.post("/Job", json=job).json()["JobId"]
    victim = by_owner(workers, wait_encoding(client, job_id)["Worker"])
    started = time.monotonic()
    victim.terminate()
    assert victim.wait(30) == 0
    assert time.monotonic() - started < GRACE + 15
    assert "handed back" in victim.tail(20000)
    view = wait_final(client, job_id, 120)
    assert view["State"] == "Succeeded", view.get("ErrorMessage")
    assert view["Worker"] != victim.owner
    assert view["Attempts"] == 1  # handed back: not counted as a crash
    assert "FinalError" not in event_types(view)
    assert relative_files(tmp_path / "out")


def test_a_job_stored_without_a_message_is_sent_by_the_sweep(
    cluster, workers, client, sources, tmp_path
):
    """A job stored while the broker was unreachable (here: stored without enqueueing) has no
    queue recorded; the sweeps send it and a worker runs it."""
    service = cluster.api.app.state.service
    answer = service.submit(quick_job(sources["tiny"], tmp_path / "out"), "tenant-a")
    job_id = answer["JobId"]
    assert job_state(client, job_id)["Queue"] is None
    view = wait_final(client, job_id, 60)
    assert view["State"] == "Succeeded" and view["Queue"] == "cpu" and encodes(view) == 1


def test_a_worker_keeps_jobs_out_of_the_service_folders(workers, client, sources, tmp_path):
    """`vipe worker` runs jobs under its policy: an output inside the API's data folder (the
    worker's --keys-dir: store key, credentials key) is refused at run time (4302), though the
    in-process API of this test accepted the job, and nothing is written there."""
    cluster = workers[0].cluster
    target = cluster.api.data_dir / "stolen"
    view = wait_final(
        client, client.post("/Job", json=quick_job(sources["tiny"], target)).json()["JobId"], 60
    )
    assert view["State"] == "Failed" and view["ErrorCode"] == 4302, view.get("ErrorMessage")
    assert "ContentPublishing" in view["ErrorMessage"]
    assert str(cluster.api.data_dir) not in view["ErrorMessage"]
    assert not target.exists()
