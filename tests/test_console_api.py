"""The console's server side over HTTPS with httpx (no browser): the static files and their
CSP, the jobs list, the SSE streams (same bodies as the stored events, resume by id, per-tenant
bound), validation by JSON path, the confined output endpoint and the ClearKey license."""

from __future__ import annotations

import base64
import json
import os
import threading
from pathlib import Path

import pytest
from api_helpers import ApiServer, TokenIssuer, tiny_job, wait_final, wait_for
from mediagen import make_media

KEY_ID = "6e5a1d26-2757-47d7-8046-eaa5c4a0a7e9"
CONTENT_KEY = base64.b64encode(bytes(range(16))).decode()


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("console-api-source")
    make_media(folder / "movie.mp4", duration=2, width=160, height=90)
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("console-api")
    issuer = TokenIssuer(folder)
    with ApiServer(folder / "data", issuer.auth_settings(), workers=1) as api:
        yield api


@pytest.fixture(scope="module")
def keys(server) -> tuple[str, str]:
    return server.add_tenant("c-api-a"), server.add_tenant("c-api-b")


def sse_messages(text: str) -> list[dict[str, str]]:
    """The messages of an event stream: {"event", "data", "id"} each."""
    messages = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line and not line.startswith(":") and ":" in line:
                name, value = line.split(":", 1)
                fields[name] = value.removeprefix(" ")
        if "data" in fields:
            messages.append(fields)
    return messages


def test_console_files_have_a_strict_csp(server):
    with server.client() as anyone:
        page = anyone.get("/console")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "style-src 'self'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        html = page.text
        assert "<script>" not in html and "style=" not in html and " on" not in html.lower()
        script = anyone.get("/console/app.js")
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        assert "innerHTML" not in script.text
        assert anyone.get("/console/../api.py").status_code == 404
        assert anyone.get("/console/nothing.js").status_code == 404
        assert anyone.get("/CONSOLE").status_code == 200  # paths match case-insensitively
        # the API behind it needs credentials
        assert anyone.get("/Job").status_code == 401
        assert anyone.get("/events").status_code == 401


def test_list_stream_and_output_per_tenant(server, keys, source, tmp_path):
    key_a, key_b = keys
    with server.client(f"Tenant-Auth {key_a}") as a, server.client(f"Tenant-Auth {key_b}") as b:
        job = tiny_job(source, tmp_path / "out") | {"ExternalId": "<b>x</b>"}
        job_id = a.post("/Job", json=job).json()["JobId"]
        with a.stream("GET", f"/Job/{job_id}/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            text = "".join(stream.iter_text())
        view = wait_final(a, job_id)
        assert view["State"] == "Succeeded"
        messages = sse_messages(text)
        bodies = [json.loads(m["data"]) for m in messages if "event" not in m]
        assert bodies == view["Events"]  # exactly the stored (published) bodies, in order
        states = [json.loads(m["data"])["State"] for m in messages if m.get("event") == "job"]
        assert states[-1] == "Succeeded" and messages[-1]["event"] == "end"
        ids = [int(m["id"]) for m in messages if "id" in m]
        assert ids == sorted(ids) and len(ids) == len(bodies)
        # a reconnect with Last-Event-ID continues after it
        with a.stream(
            "GET", f"/Job/{job_id}/events", headers={"Last-Event-ID": str(ids[-3])}
        ) as stream:
            again = sse_messages("".join(stream.iter_text()))
        assert [json.loads(m["data"]) for m in again if "event" not in m] == bodies[-2:]

        listed = a.get("/Job").json()["Jobs"]
        assert listed[0]["JobId"] == job_id and listed[0]["ExternalId"] == "<b>x</b>"
        assert a.get("/Job?State=Failed").json()["Jobs"] == []
        assert a.get("/Job?State=Nope").status_code == 400
        assert all(j["JobId"] != job_id for j in b.get("/Job").json()["Jobs"])
        assert b.get(f"/Job/{job_id}/events").status_code == 404

        manifest = a.get(f"/Job/{job_id}/output/manifest.mpd")
        assert manifest.status_code == 200 and "<MPD" in manifest.text
        assert manifest.headers["content-security-policy"] == "default-src 'none'; sandbox"
        assert b.get(f"/Job/{job_id}/output/manifest.mpd").status_code == 404
        for name in ("../out/manifest.mpd", "%2e%2e/secret.mp4", "job.json", "a//b.mp4"):
            assert a.get(f"/Job/{job_id}/output/{name}").status_code == 404, name
        outside = tmp_path / "secret.mp4"
        outside.write_bytes(b"secret")
        os.symlink(outside, tmp_path / "out" / "link.mp4")  # planted later: leads outside
        assert a.get(f"/Job/{job_id}/output/link.mp4").status_code == 404
        assert a.post(f"/Job/{job_id}/ClearKey", json={"kids": []}).status_code == 409


def test_tenant_stream_sends_new_events_and_is_bounded(server, keys, source, tmp_path):
    key_a, _ = keys
    streams = server.app.state.streams
    got: list[str] = []
    ready = threading.Event()

    with server.client(f"Tenant-Auth {key_a}") as a:

        def read() -> None:
            with a.stream("GET", "/events") as stream:
                ready.set()
                for line in stream.iter_lines():
                    got.append(line)
                    if '"State": "Succeeded"' in line and any("JobSuccess" in g for g in got):
                        return  # the job's last event, then its final state

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        assert ready.wait(10)
        job_id = a.post("/Job", json=tiny_job(source, tmp_path / "o")).json()["JobId"]
        reader.join(20)
        assert not reader.is_alive()
        bodies = [json.loads(line[6:]) for line in got if line.startswith("data: {")]
        assert any(b.get("MessageType") == "JobCreated" and b["JobId"] == job_id for b in bodies)
        assert any(b.get("State") == "Succeeded" and b["JobId"] == job_id for b in bodies)

        # The reader's stream is released when the server sees it closed: wait for that, or
        # its release would undo the count set below.
        wait_for(lambda: streams.open.get("c-api-a", 0) == 0, 10)
        limit = streams.max_per_tenant
        streams.open["c-api-a"] = limit  # as if `limit` tabs held streams open
        try:
            refused = a.get("/events", timeout=10)
            assert refused.status_code == 429 and "at most" in refused.json()["Message"]
        finally:
            streams.open.pop("c-api-a", None)


def test_validate_lists_every_problem_and_clear_key(server, keys, source, tmp_path):
    key_a, _ = keys
    with server.client(f"Tenant-Auth {key_a}") as a:
        job = tiny_job(source, tmp_path / "v")
        job["ContentProcessing"]["VideoRepresentations"][0]["Width"] = "wide"
        del job["ContentPublishing"]
        answer = a.post("/Job/Validate", json=job)
        assert answer.status_code == 200
        result = answer.json()
        fields = [e["Field"] for e in result["Errors"]]
        assert not result["Valid"] and "ContentPublishing" in fields
        width = [f for f in fields if f.startswith("ContentProcessing.VideoRepresentations")]
        assert width and width[0].endswith("Width"), fields
        assert a.get("/Job").json()["Jobs"] == [] or all(
            j["ExternalId"] != job["ExternalId"] for j in a.get("/Job").json()["Jobs"]
        )
        good = tiny_job(source, tmp_path / "v")
        assert a.post("/job/validate", json=good).json() == {
            "Valid": True,
            "Errors": [],
            "Warnings": [],
        }
        assert a.post("/Job/Validate", content=b"{}").status_code == 415

        drm = tiny_job(
            source,
            tmp_path / "drm",
            DrmProtection="Base64Key",
            KeyId=KEY_ID,
            ContentKey=CONTENT_KEY,
        )
        job_id = a.post("/Job", json=drm).json()["JobId"]
        kid = base64.urlsafe_b64encode(bytes.fromhex(KEY_ID.replace("-", ""))).rstrip(b"=")
        license = a.post(f"/Job/{job_id}/ClearKey", json={"kids": [kid.decode()]}).json()
        key = base64.urlsafe_b64encode(bytes(range(16))).rstrip(b"=").decode()
        assert license["keys"] == [{"kty": "oct", "kid": kid.decode(), "k": key}]
        wait_final(a, job_id)
