"""Cancellation through the API (a running and a queued job) and restart of a killed server."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from api_helpers import (
    ApiServer,
    ServeProcess,
    TokenIssuer,
    event_types,
    folder_files,
    free_port,
    job_state,
    tiny_job,
    wait_final,
    wait_for,
)
from mediagen import make_media

from engine.service.store import JobSealer, Store, database_url


@pytest.fixture(scope="module")
def issuer(tmp_path_factory) -> TokenIssuer:
    return TokenIssuer(tmp_path_factory.mktemp("jwt"))


@pytest.fixture(scope="module")
def long_source(media_dir) -> Path:
    """30 s of 160x90 video without audio: seconds of encoding, cheap to make."""
    folder = media_dir / "api-long"
    if not (folder / "long.mp4").exists():
        make_media(folder / "long.mp4", duration=30, width=160, height=90, audio=[])
    return folder


def slow_job(source: Path, output: Path, **processing) -> dict:
    """Seconds of work on 2 cores: two rungs at the Quality preset."""
    job = tiny_job(
        source,
        output,
        OptimizeFor="Quality",
        VideoRepresentations=[
            {"Width": 160, "Height": 90, "BitrateInKbps": 200},
            {"Width": 160, "Height": 90, "BitrateInKbps": 100},
        ],
        **processing,
    )
    job["MediaMappings"]["FailOnNoAudioTracks"] = False
    return job


@pytest.fixture(scope="module")
def server(tmp_path_factory, issuer):
    with ApiServer(tmp_path_factory.mktemp("data"), issuer.auth_settings(), workers=1) as api:
        yield api


@pytest.fixture(scope="module")
def client(server, issuer):
    with server.client(f"Bearer {issuer.token('tenant-a')}") as api:
        yield api


def test_cancel_running_and_queued_jobs(server, client, long_source, tmp_path):
    running_out, queued_out = tmp_path / "running", tmp_path / "queued"
    running = client.post("/Job", json=slow_job(long_source, running_out)).json()["JobId"]
    queued = client.post("/Job", json=slow_job(long_source, queued_out)).json()["JobId"]

    # the first is encoding, the second waits (one worker)
    wait_for(lambda: "EncodingProgress" in event_types(job_state(client, running)), 30)
    assert job_state(client, queued)["State"] == "Queued"

    # a queued job: cancelled at once, never started
    started = time.monotonic()
    answer = client.delete(f"/Job/{queued}")
    assert answer.status_code == 200
    assert answer.json() == f"{server.url}/Job/{queued}"
    view = job_state(client, queued)
    assert view["State"] == "Cancelled" and view["ErrorCode"] == 5001
    assert time.monotonic() - started < 5
    assert event_types(view) == ["FinalError"] and view["StartTime"] is None
    assert view["Events"][0]["ErrorCode"] == 5001
    entry = client.get(f"/reporting/{queued}").json()
    assert entry["State"] == "Cancelled" and entry["ErrorCode"] == 5001

    # a running job: FinalError 5001 within 5 s, nothing published
    started = time.monotonic()
    answer = client.post(f"/Job/{running}/Cancel")
    assert answer.status_code == 200
    assert answer.json() == f"{server.url}/Job/{running}/Cancel"
    view = wait_final(client, running, timeout=5)
    elapsed = time.monotonic() - started
    assert view["State"] == "Cancelled" and view["ErrorCode"] == 5001, view
    assert elapsed < 5, elapsed
    final = view["Events"][-1]
    assert final["MessageType"] == "FinalError" and final["ErrorCode"] == 5001
    assert "JobSuccess" not in event_types(view)
    assert folder_files(running_out) == [] and folder_files(queued_out) == []
    assert not (server.data_dir / "work" / running).exists()  # work folder removed
    assert client.get(f"/reporting/{running}").json()["ErrorCode"] == 5001

    # cancelling again: both have finished
    assert client.delete(f"/Job/{running}").status_code == 409
    assert client.post(f"/Job/{queued}/Cancel").status_code == 409

    # the worker is free again: a next job runs
    quick = tiny_job(long_source, tmp_path / "after")
    quick["MediaMappings"]["FailOnNoAudioTracks"] = False
    after = client.post("/Job", json=quick).json()["JobId"]
    view = wait_final(client, after)
    assert view["State"] == "Succeeded"


def test_killed_server_resumes_its_running_job(tmp_path, issuer, long_source):
    """SIGKILL while a job encodes: the next start takes the job over and runs it again."""
    data = tmp_path / "data"
    data.mkdir()
    from engine.service.tenants import TenantRegistry

    key = TenantRegistry(data).add("tenant-r")
    port = free_port()
    output = tmp_path / "out"
    job = tiny_job(long_source, output)  # about a second of encoding
    job["MediaMappings"]["FailOnNoAudioTracks"] = False

    first = ServeProcess(data, port, issuer.public_pem).start()
    try:
        from api_helpers import api_client

        with api_client(first.url, first.cert, f"Tenant-Auth {key}") as client:
            job_id = client.post("/Job", json=job).json()["JobId"]
            wait_for(lambda: job_state(client, job_id)["Phase"] == "Encoding", 30, 0.02)
            first.kill()
    finally:
        first.kill()

    second = ServeProcess(data, port, issuer.public_pem).start()
    try:
        with api_client(second.url, second.cert, f"Tenant-Auth {key}") as client:
            view = wait_final(client, job_id, timeout=60)
            assert view["State"] == "Succeeded", view
            assert view["Attempts"] == 2
            kinds = event_types(view)
            assert kinds.count("JobCreated") == 2 and kinds[-1] == "JobSuccess"
            resumed = [e for e in view["Events"] if e.get("Code") == "JobResumed"]
            assert len(resumed) == 1
            assert (output / "manifest.mpd").exists()
            entry = client.get(f"/reporting/{job_id}").json()
            assert entry["Success"] is True and entry["JobStartTime"] == view["StartTime"]
    finally:
        second.stop()


def test_sigterm_queues_the_running_job_again(tmp_path, issuer, long_source):
    """SIGTERM with no drain time: the job is queued again without a FinalError (it is not
    interrupted: the process exits); the next start runs it."""
    data = tmp_path / "data"
    data.mkdir()
    from api_helpers import api_client

    from engine.service.tenants import TenantRegistry

    key = TenantRegistry(data).add("tenant-g")
    port = free_port()
    output = tmp_path / "out"
    job = tiny_job(long_source, output)
    job["MediaMappings"]["FailOnNoAudioTracks"] = False

    first = ServeProcess(data, port, issuer.public_pem, "--drain-seconds", "0").start()
    try:
        with api_client(first.url, first.cert, f"Tenant-Auth {key}") as client:
            job_id = client.post("/Job", json=job).json()["JobId"]
            wait_for(lambda: job_state(client, job_id)["Phase"] == "Encoding", 30, 0.02)
        first.stop()
        assert first.process.returncode in (0, -15)  # uvicorn re-raises the signal it caught
        assert "queued again" in first.log.read_text()
    finally:
        first.kill()
    store = Store(database_url(data), JobSealer.load_or_create(data))
    try:
        row = store.get_job(job_id)
        assert row.state == "Queued" and row.owner is None, row.state
        assert "FinalError" not in [e["MessageType"] for e in store.events(job_id)]
    finally:
        store.close()
    second = ServeProcess(data, port, issuer.public_pem).start()
    try:
        with api_client(second.url, second.cert, f"Tenant-Auth {key}") as client:
            view = wait_final(client, job_id)
            assert view["State"] == "Succeeded" and view["Attempts"] == 2
            warnings = [e["Code"] for e in view["Events"] if e["MessageType"] == "Warning"]
            assert warnings == ["JobResumed"]
            assert (output / "manifest.mpd").exists()
    finally:
        second.stop()
