"""The Encoding API over real HTTPS: jobs from creation to reporting, keys in the answer,
field errors, authentication, tenant isolation, TLS only, the body limit."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import sqlite3
import ssl
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from api_helpers import (
    ApiServer,
    TokenIssuer,
    event_types,
    folder_files,
    tiny_job,
    wait_final,
    wait_for,
)
from cpix_server import CpixServer
from mediagen import make_media

KEY_ID = "6c3e7bd1-8c10-4b4e-9d2a-6c2b0f0ae1a4"
CONTENT_KEY = "AAECAwQFBgcICQoLDA0ODw=="


@pytest.fixture(scope="module")
def issuer(tmp_path_factory) -> TokenIssuer:
    return TokenIssuer(tmp_path_factory.mktemp("jwt"))


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("source")
    make_media(folder / "movie.mp4", duration=2, width=160, height=90)
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory, issuer):
    with ApiServer(tmp_path_factory.mktemp("data"), issuer.auth_settings(), workers=1) as api:
        yield api


@pytest.fixture(scope="module")
def alice(server, issuer):
    with server.client(f"Bearer {issuer.token('tenant-a')}") as client:
        yield client


@pytest.fixture(scope="module")
def bob(server, issuer):
    with server.client(f"Bearer {issuer.token('tenant-b')}") as client:
        yield client


def test_job_runs_to_success_and_reporting(server, alice, source, tmp_path):
    output = tmp_path / "out"
    job = tiny_job(source, output)
    answer = alice.post("/Job", json=job)
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert set(body) == {"JobId", "ExternalId", "ExternalType", "ExternalProvider"}
    assert body["ExternalId"] == job["ExternalId"]
    assert body["ExternalType"] == "Movie" and body["ExternalProvider"] == "tests"
    job_id = body["JobId"]

    view = wait_final(alice, job_id, timeout=60)
    assert view["State"] == "Succeeded", view
    kinds = event_types(view)
    for kind in ("JobCreated", "ContentAcquired", "VideoEncodingStarted", "EncodingFinished"):
        assert kind in kinds
    assert kinds[-1] == "JobSuccess"
    assert all(e["JobId"] == job_id and e["TenantId"] == "tenant-a" for e in view["Events"])
    assert all(e["ExternalId"] == job["ExternalId"] for e in view["Events"])
    assert view["Progress"] == 100 and view["Phase"] == "Publishing"
    assert "manifest.mpd" in view["Outputs"]["Manifests"]
    assert (output / "manifest.mpd").exists()

    entry = alice.get(f"/reporting/{job_id}")
    assert entry.status_code == 200
    entry = entry.json()
    assert entry["JobId"] == job_id and entry["Success"] is True
    assert entry["State"] == "Succeeded" and entry["OutputFormat"] == "CMAF"
    assert entry["BitrateVariants"] == "200" and entry["BitratesCount"] == 1
    assert entry["EncodingOptimizedFor"] == 1 and entry["VideoFormat"] == 0
    assert entry["JobStartTime"] and entry["JobFinishedTime"]
    assert entry["JobStartTime"].endswith("+00:00")
    year, month = int(entry["JobStartTime"][:4]), int(entry["JobStartTime"][5:7])
    assert job_id in [e["JobId"] for e in alice.get(f"/reporting/{year}/{month}").json()]
    assert job_id in [e["JobId"] for e in alice.get("/reporting").json()]
    other = (year + 1, month)
    assert job_id not in [e["JobId"] for e in alice.get(f"/reporting/{other[0]}/{other[1]}").json()]

    # a finished job cannot be cancelled
    cancel = alice.delete(f"/Job/{job_id}")
    assert cancel.status_code == 409 and "Message" in cancel.json()
    assert alice.post(f"/Job/{job_id}/Cancel").status_code == 409

    metrics = httpx.get(
        f"{server.url}/metrics", verify=ssl.create_default_context(cafile=str(server.cert))
    )
    assert metrics.status_code == 200
    text = metrics.text
    assert 'vipe_jobs{state="Succeeded"}' in text and "vipe_queue_depth" in text
    assert 'vipe_phase_duration_seconds_count{phase="Encoding"}' in text
    assert "vipe_encoder_in_use" in text


def test_base64key_job_answers_key_id_and_stores_no_secret(server, alice, source, tmp_path):
    job = tiny_job(
        source, tmp_path / "out", DrmProtection="Base64Key", KeyId=KEY_ID, ContentKey=CONTENT_KEY
    )
    job["ContentProcessing"]["MySecretNote"] = "hush-hush-unknown-property"  # unknown: warned
    answer = alice.post("/Job", json=job)
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["KeyId"] == KEY_ID and "KeyIds" not in body
    view = wait_final(alice, body["JobId"])
    assert view["State"] == "Succeeded", view
    assert view["KeyId"] == KEY_ID
    created = next(e for e in view["Events"] if e["MessageType"] == "JobCreated")
    assert any("MySecretNote" in w["Field"] for w in created["Warnings"])
    # neither the content key nor the unknown property's value is anywhere in the store
    dump = _sqlite_dump(server.data_dir / "vipe.db")
    assert CONTENT_KEY not in dump and "hush-hush" not in dump
    assert base64.b64decode(CONTENT_KEY).hex() not in dump
    assert CONTENT_KEY not in json.dumps(view)


def test_managed_multi_key_job_answers_key_ids(server, alice, source, tmp_path):
    with CpixServer() as cpix:
        job = tiny_job(
            source,
            tmp_path / "out",
            DrmProtection="Managed",
            DrmManaged={
                "ApiUrl": cpix.url,
                "TenantId": cpix.tenant,
                "ManagementKey": cpix.management_key,
                "MultiKey": True,
            },
        )
        answer = alice.post("/Job", json=job)
        assert answer.status_code == 201, answer.text
        body = answer.json()
        assert "KeyId" not in body and len(body["KeyIds"]) == 2  # AUDIO and SD
        view = wait_final(alice, body["JobId"])
        assert view["State"] == "Succeeded", view
        # the worker asked the Key Service again, for the same key ids
        assert len(cpix.requests) == 2
        for kid in body["KeyIds"]:
            assert all(kid.encode() in request for request in cpix.requests)
        streams = view["Outputs"]["Streams"]
        assert {s["KeyId"] for s in streams if s["KeyId"]} <= set(body["KeyIds"])
        dump = _sqlite_dump(server.data_dir / "vipe.db")
        assert cpix.management_key not in dump


def test_key_service_refusing_or_down_answers_before_the_job_exists(alice, source, tmp_path):
    with CpixServer() as cpix:
        managed = {"ApiUrl": cpix.url, "TenantId": cpix.tenant, "ManagementKey": "wrong"}
        job = tiny_job(source, tmp_path / "o", DrmProtection="Managed", DrmManaged=managed)
        refused = alice.post("/Job", json=job)
        url = cpix.url
    assert refused.status_code == 502, refused.text
    assert "Key Service" in refused.json()["Message"] and "wrong" not in refused.text
    managed = {"ApiUrl": url, "TenantId": "t", "ManagementKey": "k"}  # nobody listens now
    job = tiny_job(source, tmp_path / "o", DrmProtection="Managed", DrmManaged=managed)
    down = alice.post("/Job", json=job)
    assert down.status_code == 503, down.text
    assert "Key Service" in down.json()["Message"]


def test_invalid_job_lists_every_field_error(alice, source, tmp_path):
    job = tiny_job(source, tmp_path / "o")
    job["ContentProcessing"]["OutputFormat"] = ["Dash", "Nope"]
    job["ContentProcessing"]["OptimizeFor"] = "Sometimes"
    job["ExternalId"] = "x" * 201
    del job["ContentPublishing"]
    answer = alice.post("/Job", json=job)
    assert answer.status_code == 400
    body = answer.json()
    assert body["Message"]
    fields = {e["Field"] for e in body["Errors"]}
    assert {"ContentPublishing", "ExternalId", "ContentProcessing.OptimizeFor"} <= fields
    assert any(f.startswith("ContentProcessing.OutputFormat") for f in fields)
    assert all(set(e) == {"Field", "Message"} for e in body["Errors"])

    not_json = alice.post("/Job", content=b"{nope", headers={"Content-Type": "application/json"})
    assert not_json.status_code == 400 and not_json.json()["Errors"][0]["Field"] == "$"
    array = alice.post("/Job", json=[1, 2])
    assert array.status_code == 400 and array.json()["Errors"]


def test_bad_base64_key_is_a_field_error(alice, source, tmp_path):
    job = tiny_job(
        source, tmp_path / "o", DrmProtection="Base64Key", KeyId=KEY_ID, ContentKey="AAEC"
    )
    answer = alice.post("/Job", json=job)
    assert answer.status_code == 400, answer.text
    assert answer.json()["Errors"][0]["Field"] == "ContentProcessing.ContentKey"


def test_unauthorized_requests(server, issuer, source, tmp_path):
    job = tiny_job(source, tmp_path / "o")
    stranger = TokenIssuer(tmp_path)  # another key pair: a wrong signature
    cases = {
        "missing": None,
        "wrong signature": f"Bearer {stranger.token()}",
        "expired": f"Bearer {issuer.token(expires_in=-120)}",  # beyond the 60 s leeway
        "wrong audience": f"Bearer {issuer.token(audience='someone-else')}",
        "wrong issuer": f"Bearer {issuer.token(issuer='https://evil.test/')}",
        "missing permission": f"Bearer {issuer.token(permissions=['Videos: Read'])}",
        "no tenant": f"Bearer {issuer.token(tenant=None)}",
        "HS256 with the public key": f"Bearer {_hs256_with(issuer.public_pem.read_bytes())}",
        "alg none": f"Bearer {_unsigned()}",
        "garbage": "Bearer not.a.token",
        "wrong management key": f"Tenant-Auth {uuid.uuid4()}",
        "unknown scheme": "Basic dXNlcjpwYXNz",
    }
    for name, authorization in cases.items():
        with server.client(authorization) as client:
            for method, path in (("POST", "/Job"), ("GET", "/reporting"), ("GET", "/Job/x")):
                answer = client.request(method, path, json=job if method == "POST" else None)
                assert answer.status_code == 401, (name, path, answer.text)
                assert answer.json() == {
                    "Message": "User is not authorized to access this resource"
                }, name
    # within the clock-skew leeway an expired token still passes
    with server.client(f"Bearer {issuer.token(expires_in=-20)}") as client:
        assert client.get("/reporting").status_code == 200
    # permissions as a comma-separated string and as per-service lists pass too
    for permissions in ("Videos: Read, Videos: Encode", {"ax-encoding": ["Videos: Encode"]}):
        with server.client(f"Bearer {issuer.token(permissions=permissions)}") as client:
            assert client.get("/reporting").status_code == 200, permissions


def test_tenant_auth_management_key(server, source, tmp_path):
    key = server.add_tenant("tenant-m")
    with server.client(f"Tenant-Auth {key}") as client:
        answer = client.post("/Job", json=tiny_job(source, tmp_path / "o"))
        assert answer.status_code == 201, answer.text
        job_id = answer.json()["JobId"]
        assert client.get(f"/Job/{job_id}").json()["TenantId"] == "tenant-m"
        wait_final(client, job_id)
    from engine.service.tenants import TenantRegistry

    TenantRegistry(server.data_dir).remove("tenant-m")  # takes effect without a restart
    with server.client(f"Tenant-Auth {key}") as client:
        assert client.get("/reporting").status_code == 401


def test_tenant_isolation(alice, bob, source, tmp_path):
    answer = alice.post("/Job", json=tiny_job(source, tmp_path / "o"))
    job_id = answer.json()["JobId"]
    unknown = str(uuid.uuid4())
    for path in (f"/Job/{job_id}", f"/reporting/{job_id}"):
        theirs, nobody = bob.get(path), bob.get(path.replace(job_id, unknown))
        assert theirs.status_code == nobody.status_code == 404
        assert theirs.json() == nobody.json()
    for method, path in (("DELETE", f"/Job/{job_id}"), ("POST", f"/Job/{job_id}/Cancel")):
        theirs = bob.request(method, path)
        assert theirs.status_code == 404
        assert theirs.json() == bob.request(method, path.replace(job_id, unknown)).json()
    assert job_id not in json.dumps(bob.get("/reporting").json())
    view = wait_final(alice, job_id)
    assert view["State"] == "Succeeded"  # bob's cancel did not reach it
    year, month = int(view["StartTime"][:4]), int(view["StartTime"][5:7])
    assert job_id not in json.dumps(bob.get(f"/reporting/{year}/{month}").json())


def test_plain_http_gets_no_api_answer(server):
    port = server.settings.port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        received = b""
        try:
            while chunk := sock.recv(4096):
                received += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    assert b"Healthy" not in received and b"HTTP/1.1 200" not in received
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)


def test_body_over_the_limit_gets_413(server, alice):
    big = b'{"ExternalId": "' + b"x" * (1024 * 1024) + b'"}'
    answer = alice.post("/Job", content=big, headers={"Content-Type": "application/json"})
    assert answer.status_code == 413 and "Message" in answer.json()

    def chunks():  # no Content-Length: counted while read
        for _ in range(40):
            yield b"x" * 32768

    answer = alice.post("/Job", content=chunks(), headers={"Content-Type": "application/json"})
    assert answer.status_code == 413 and "Message" in answer.json()


def test_open_endpoints_and_json_errors(server, alice):
    with server.client() as anonymous:
        assert anonymous.get("/health").json()["Status"] == "Healthy"
        certificate = anonymous.get("/certificate")
        assert certificate.status_code == 200
        from cryptography import x509

        x509.load_der_x509_certificate(base64.b64decode(certificate.json()))
        spec = anonymous.get("/api/help/openapi.json").json()
        for path in ("/Job", "/Job/{JobId}", "/Job/{JobId}/Cancel", "/reporting/{year}/{month}"):
            assert path in spec["paths"]
        docs = anonymous.get("/api/help")
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
        # the page's script and style come from this server, not from a CDN
        assert "cdn." not in docs.text and "/api/help/static/swagger-ui-bundle.js" in docs.text
        script = anonymous.get("/api/help/static/swagger-ui-bundle.js")
        assert script.status_code == 200 and len(script.content) > 100_000
        missing = anonymous.get("/no/such/thing")
        assert missing.status_code == 404 and missing.json()["Message"]
    # paths match case-insensitively, as the hosted service's do
    assert alice.get("/job/" + str(uuid.uuid4())).status_code == 404
    assert alice.get("/REPORTING").status_code == 200
    bad_month = alice.get("/reporting/2024/13")
    assert bad_month.status_code == 400 and bad_month.json()["Errors"]
    assert alice.get("/reporting/2024/xx").status_code == 400


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims() -> bytes:
    return json.dumps(
        {
            "tenantId": "tenant-a",
            "exp": 4102444800,
            "iss": "https://id.vipe.test/",
            "aud": "vipe-test",
            "permissions": ["Videos: Encode"],
        }
    ).encode()


def _hs256_with(secret: bytes) -> str:
    """The algorithm-confusion attack: an HMAC token keyed with the server's public key."""
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    signing_input = f"{header}.{_b64url(_claims())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(signature)}"


def _unsigned() -> str:
    header = _b64url(json.dumps({"alg": "none"}).encode())
    return f"{header}.{_b64url(_claims())}."


def _sqlite_dump(path: Path) -> str:
    connection = sqlite3.connect(path)
    try:
        return "\n".join(connection.iterdump())
    finally:
        connection.close()


def test_no_partial_output_left_by_failed_job(alice, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    output = tmp_path / "out"
    answer = alice.post("/Job", json=tiny_job(empty, output))
    view = wait_final(alice, answer.json()["JobId"])
    assert view["State"] == "Failed" and view["ErrorCode"] == 2003
    assert event_types(view)[-1] == "FinalError" and folder_files(output) == []
    entry = alice.get(f"/reporting/{view['JobId']}").json()
    assert entry["Success"] is False and entry["ErrorCode"] == 2003


def test_events_reach_the_jobs_message_publishers(alice, source, tmp_path):
    """The runner's events are stored and forwarded to the job's publishers (a Webhook
    here); the cancel of a queued job is forwarded too."""
    received: list[tuple[str, dict]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append((self.headers["X-Vipe-Event"], body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        job = tiny_job(source, tmp_path / "out")
        job["MessagePublishers"] = [
            {"Type": "Webhook", "Url": f"http://127.0.0.1:{receiver.server_address[1]}/hook"}
        ]
        job_id = alice.post("/Job", json=job).json()["JobId"]
        view = wait_final(alice, job_id)
        assert view["State"] == "Succeeded"
        stored = [e["MessageType"] for e in view["Events"]]
        wait_for(lambda: len(received) >= len(stored), 10)
        assert len(received) == len(stored)  # each event once
        assert [name for name, _ in received] == stored
        assert all(body["JobId"] == job_id for _, body in received)
    finally:
        receiver.shutdown()
        receiver.server_close()


def test_publisher_secret_that_does_not_decrypt_is_a_400(alice, source, tmp_path):
    job = tiny_job(source, tmp_path / "out")
    job["MessagePublishers"] = [
        {
            "Type": "Webhook",
            "Url": "https://hooks.example/x",
            "CredentialsSecret": base64.b64encode(b"x" * 256).decode(),
            "CredentialsProtection": "Encrypted",
        }
    ]
    answer = alice.post("/Job", json=job)
    assert answer.status_code == 400, answer.text
    assert answer.json()["Errors"][0]["Field"].startswith("MessagePublishers[0]")
