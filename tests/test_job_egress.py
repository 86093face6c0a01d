"""The egress policy over whole jobs (engine.pipeline.run_job with a restricted JobPolicy, as
`vipe serve` and `vipe worker` run them): an Http input, a webhook publisher and a Key Service
on loopback are refused, the listener sees no connection, and the failure names the field and
the rule; `--allow-network` admits them."""

from __future__ import annotations

from pathlib import Path

import pytest
from api_helpers import tiny_job
from cpix_server import CpixServer, self_signed_certificate
from egress_helpers import RULE, Listener
from mediagen import make_media

from engine.job import ContentProcessing, DrmManaged
from engine.keys import keys_from_job
from engine.pipeline import run_job
from engine.policy import JobPolicy
from storage.egress import EgressPolicy

RESTRICTED = JobPolicy(egress=EgressPolicy.from_cidrs([]))
LOOPBACK_ALLOWED = JobPolicy(egress=EgressPolicy.from_cidrs(["127.0.0.0/8"]))


@pytest.fixture
def listener():
    listening = Listener()
    yield listening
    listening.close()


@pytest.fixture(scope="module")
def source(media_dir) -> Path:
    folder = media_dir / "egress-source"
    if not (folder / "clip.mp4").exists():
        make_media(folder / "clip.mp4", duration=1, width=160, height=90)
    return folder


def run(job: dict, tmp_path: Path, policy: JobPolicy) -> tuple[dict, list[dict]]:
    events: list[dict] = []
    report = run_job(job, on_event=events.append, data_dir=tmp_path / "data", policy=policy)
    return report, events


def final_error(events: list[dict]) -> dict:
    return next(e for e in events if e["MessageType"] == "FinalError")


def test_an_http_input_on_loopback_is_refused(listener, tmp_path):
    job = tiny_job(tmp_path, tmp_path / "out")
    job["ContentAcquisition"] = {
        "Provider": "Http",
        "UriPath": f"http://127.0.0.1:{listener.port}/clip.mp4",
    }
    report, events = run(job, tmp_path, RESTRICTED)
    error = final_error(events)
    assert report["Success"] is False and error["ErrorCode"] == 2002, error
    assert "ContentAcquisition.UriPath" in error["ErrorMessage"], error
    assert RULE in error["ErrorMessage"]
    assert listener.seen() == 0
    assert not (tmp_path / "out").exists()


def test_a_key_service_on_loopback_is_refused(listener, source, tmp_path):
    job = tiny_job(
        source,
        tmp_path / "out",
        DrmProtection="Managed",
        DrmManaged={
            "ApiUrl": f"https://127.0.0.1:{listener.port}/cpix",
            "TenantId": "t",
            "ManagementKey": "k",
        },
    )
    _, events = run(job, tmp_path, RESTRICTED)
    error = final_error(events)
    assert error["ErrorCode"] == 1001, error
    assert "ContentProcessing.DrmManaged.ApiUrl" in error["ErrorMessage"], error
    assert RULE in error["ErrorMessage"]
    assert listener.seen() == 0
    assert "ContentAcquired" not in [e["MessageType"] for e in events]


def test_a_webhook_on_loopback_gets_nothing_and_fails_nothing(listener, source, tmp_path):
    job = tiny_job(source, tmp_path / "out")
    job["MessagePublishers"] = [
        {"Type": "Webhook", "Url": f"http://127.0.0.1:{listener.port}/events"}
    ]
    report, events = run(job, tmp_path, RESTRICTED)
    assert report["Success"], final_error(events)
    assert listener.seen() == 0


def test_allow_network_admits_a_key_service(tmp_path_factory):
    certificate = self_signed_certificate(tmp_path_factory.mktemp("tls"))
    with CpixServer("tenant-7", "mgmt-key-7", certificate=certificate) as server:
        processing = ContentProcessing(
            output_format=["Cmaf"],
            drm_protection="Managed",
            drm_managed=DrmManaged(
                api_url=server.url, tenant_id="tenant-7", management_key="mgmt-key-7"
            ),
        )
        for policy, admitted in ((RESTRICTED, False), (LOOPBACK_ALLOWED, True)):
            asked = len(server.requests)
            try:
                keys = keys_from_job(
                    processing,
                    None,
                    {"SD"},
                    "job-1",
                    ca_file=str(certificate[0]),
                    egress=policy.egress,
                )
            except Exception as error:  # the refusal is what is checked
                assert not admitted, error
                assert RULE in str(error)
            else:
                assert admitted and keys is not None and len(keys) == 1
            assert len(server.requests) == asked + (1 if admitted else 0)
