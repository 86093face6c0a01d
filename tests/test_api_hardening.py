"""The API stays fair and bounded (issue 14): Key Service calls off the shared pool with a
deadline, per-tenant limits and round-robin, body bounds, a private data folder, /health that
sees an unusable folder or a stalled job, JWT tenants the server knows. Over real HTTPS."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time
from pathlib import Path

import pytest
from api_helpers import ApiServer, TokenIssuer, tiny_job, wait_for
from test_api_store import new_job, postgres_schema, store  # noqa: F401 - fixtures

from engine.cancel import CancelToken
from engine.service.jobs import RunningJob


@pytest.fixture(scope="module")
def issuer(tmp_path_factory) -> TokenIssuer:
    return TokenIssuer(tmp_path_factory.mktemp("jwt"))


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("source")  # never read: these jobs do not run


@pytest.fixture
def silent_key_service():
    """A loopback socket that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(200)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/speke"
    finally:
        stop.set()
        thread.join(5)
        for connection in held:
            connection.close()
        listener.close()


def test_health_stays_fast_while_posts_wait_on_a_silent_key_service(
    issuer, source, silent_key_service, tmp_path
):
    deadline = 3.0
    with ApiServer(
        tmp_path / "data", issuer.auth_settings(), workers=0, key_service_deadline=deadline
    ) as server:
        managed = {"ApiUrl": silent_key_service, "TenantId": "t", "ManagementKey": "k"}
        job = tiny_job(source, tmp_path / "o", DrmProtection="Managed", DrmManaged=managed)
        token = f"Bearer {issuer.token('tenant-a')}"
        answers: list[tuple[int, float, str]] = []
        lock = threading.Lock()

        def post() -> None:
            with server.client(token) as client:
                started = time.monotonic()
                answer = client.post("/Job", json=job)
                with lock:
                    answers.append((answer.status_code, time.monotonic() - started, answer.text))

        posts = [threading.Thread(target=post) for _ in range(45)]
        for thread in posts:
            thread.start()
        with server.client() as anonymous:
            anonymous.get("/health")  # TLS handshake before the clock starts
            time.sleep(0.5)  # the posts are waiting now
            for _ in range(5):
                started = time.monotonic()
                health = anonymous.get("/health")
                assert health.status_code == 200 and health.json()["Status"] == "Healthy"
                assert time.monotonic() - started < 1.0
                started = time.monotonic()
                assert anonymous.get("/metrics").status_code == 200
                assert time.monotonic() - started < 1.0
                time.sleep(0.3)
        for thread in posts:
            thread.join(60)
        assert len(answers) == 45
        for status, seconds, text in answers:
            assert status == 503, text
            assert "Key Service" in json.loads(text)["Message"]
            assert "127.0.0.1" not in text  # nothing about what listens there
            assert seconds < deadline + 2.0
        assert server.store.count_jobs() == 0


def test_round_robin_across_tenants(issuer, source, tmp_path):
    with ApiServer(tmp_path / "data", issuer.auth_settings(), workers=0) as server:
        ids: list[tuple[str, str]] = []
        for tenant, count in (("tenant-a", 3), ("tenant-b", 1)):
            with server.client(f"Bearer {issuer.token(tenant)}") as client:
                for _ in range(count):
                    answer = client.post("/Job", json=tiny_job(source, tmp_path / "o"))
                    assert answer.status_code == 201, answer.text
                    ids.append((tenant, answer.json()["JobId"]))
                    time.sleep(0.01)  # distinct creation instants
        order: list[str] = []
        while (row := server.store.claim_next("test-worker")) is not None:
            order.append(row.tenant_id)
            server.store.finish_job(row.id, "Succeeded", None, owner="test-worker")
            time.sleep(0.01)
        assert order == ["tenant-a", "tenant-b", "tenant-a", "tenant-a"]


def test_queued_limit_per_tenant_answers_429(issuer, source, tmp_path):
    with ApiServer(
        tmp_path / "data", issuer.auth_settings(), workers=0, max_queued_per_tenant=2
    ) as server:
        job = tiny_job(source, tmp_path / "o")
        with server.client(f"Bearer {issuer.token('tenant-a')}") as alice:
            assert [alice.post("/Job", json=job).status_code for _ in range(2)] == [201, 201]
            refused = alice.post("/Job", json=job)
            assert refused.status_code == 429, refused.text
            assert int(refused.headers["Retry-After"]) > 0
            assert "queued" in refused.json()["Message"]
        with server.client(f"Bearer {issuer.token('tenant-b')}") as bob:
            assert bob.post("/Job", json=job).status_code == 201  # another tenant's room
        assert server.store.count_jobs("tenant-a") == 2


@pytest.fixture(scope="module")
def server(tmp_path_factory, issuer):
    with ApiServer(tmp_path_factory.mktemp("data"), issuer.auth_settings(), workers=0) as api:
        yield api


@pytest.fixture(scope="module")
def alice(server, issuer):
    with server.client(f"Bearer {issuer.token('tenant-a')}") as client:
        yield client


def test_deeply_nested_json_is_400(alice):
    body = b'{"ExternalId": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    answer = alice.post("/Job", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 400, answer.text
    assert "nested" in answer.json()["Message"]


def test_text_plain_body_is_415(alice, source, tmp_path):
    body = json.dumps(tiny_job(source, tmp_path / "o"))
    answer = alice.post("/Job", content=body, headers={"Content-Type": "text/plain"})
    assert answer.status_code == 415, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    assert "JSON" in answer.json()["Message"]


def test_trailing_slash_is_404_without_redirect(alice, source, tmp_path):
    for answer in (
        alice.get("/health/", headers={"Host": "evil.example"}),
        alice.post("/Job/", json=tiny_job(source, tmp_path / "o")),
    ):
        assert answer.status_code == 404, answer.text
        assert "location" not in answer.headers
        assert "Message" in answer.json()


def test_unknown_properties_become_21_warnings(alice, server, source, tmp_path):
    job = tiny_job(source, tmp_path / "o")
    for index in range(40):
        job[f"Unknown{index}"] = index
    answer = alice.post("/Job", json=job)
    assert answer.status_code == 201, answer.text
    row = server.store.get_job(answer.json()["JobId"])
    warnings = json.loads(row.summary)["Warnings"]
    assert len(warnings) == 21
    assert [w["Field"] for w in warnings[:20]] == [f"Unknown{i}" for i in range(20)]
    assert "20 more" in warnings[20]["Message"]


def test_jwt_of_an_unknown_tenant_is_401(server, issuer, source, tmp_path):
    with server.client(f"Bearer {issuer.token('tenant-nobody-added')}") as stranger:
        answer = stranger.post("/Job", json=tiny_job(source, tmp_path / "o"))
        assert answer.status_code == 401
        assert stranger.get("/reporting").status_code == 401
    with server.client(f"Bearer {issuer.token('tenant-a')}") as known:
        assert known.get("/reporting").status_code == 200


def test_data_folder_0700_and_its_files_0600(issuer, tmp_path):
    folder = tmp_path / "data"
    os.umask(0o022)  # as most shells have it
    with ApiServer(folder, issuer.auth_settings(), workers=0) as server:
        with server.client() as anonymous:
            assert anonymous.get("/health").status_code == 200
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        names = {p.name for p in folder.iterdir() if p.is_file()}
        assert {"tenants.json", "vipe.db", "store.key", "tls-key.pem"} <= names
        assert "tls-certificate.pem" in names
        for path in folder.iterdir():
            if path.is_file():
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name


def test_health_is_unhealthy_without_the_data_folder_or_with_a_stalled_job(issuer, tmp_path):
    folder = tmp_path / "data"
    with (
        ApiServer(folder, issuer.auth_settings(), workers=0, lease_seconds=1.0) as server,
        server.client() as anonymous,
    ):
        assert anonymous.get("/health").json()["Status"] == "Healthy"
        queue = server.app.state.queue
        run = RunningJob("stalled-job", CancelToken(), queue.owner)
        with queue._lock:
            queue._runs[run.job_id] = run  # a run that shows no sign of life
        answer = wait_for(lambda: (a := anonymous.get("/health")).status_code == 503 and a, 5)
        assert answer.json()["Status"] == "Unhealthy" and answer.json()["Stalled"] == 1
        with queue._lock:
            queue._runs.pop(run.job_id)
        assert anonymous.get("/health").status_code == 200
        folder.chmod(0o500)  # not writable: unusable
        try:
            answer = anonymous.get("/health")
        finally:
            folder.chmod(0o700)
        if os.geteuid() != 0:  # root writes anywhere: only the missing folder tells
            assert answer.status_code == 503
        moved = tmp_path / "moved"
        folder.rename(moved)
        try:
            answer = anonymous.get("/health")
            assert answer.status_code == 503, answer.text
            assert answer.json() == {
                "Status": "Unhealthy",
                "Store": "ok",
                "DataFolder": "unusable",
            }
        finally:
            moved.rename(folder)


def test_claims_honour_the_running_limit_per_tenant(store):  # noqa: F811 - the fixture
    """Store level, on SQLite and PostgreSQL: a tenant at its running limit waits, others run."""
    for tenant in ("tenant-a", "tenant-a", "tenant-a", "tenant-b"):
        store.create_job(new_job(tenant))
        time.sleep(0.01)
    first = store.claim_next("w", max_running_per_tenant=1)
    second = store.claim_next("w", max_running_per_tenant=1)
    assert (first.tenant_id, second.tenant_id) == ("tenant-a", "tenant-b")
    assert store.claim_next("w", max_running_per_tenant=1) is None  # both at their limit
    assert store.finish_job(first.id, "Succeeded", None, owner="w")
    assert store.claim_next("w", max_running_per_tenant=1).tenant_id == "tenant-a"
