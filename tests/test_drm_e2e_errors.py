"""Encrypted jobs that must not run: a Key Service that refuses, times out, answers malformed
XML or leaves a key out (FinalError 4001 naming the Key Service), a protected ContentKey that
does not decrypt with the service key (1001 naming the field), and HlsTs with DRM (refused by
validation). Nothing is acquired or published, and no secret reaches a log, an event, a report
or an error text."""

from __future__ import annotations

import base64
import functools
from pathlib import Path
from typing import Any

import pytest
from cpix_server import CpixServer
from cpix_server import self_signed_certificate as make_certificate
from drm_helpers import DrmRun, assert_no_secret, run_drm_job
from e2e_helpers import input_folder, make_job
from mediagen import make_media

import engine.keys
from drm.credentials import ServiceKey, encrypt_for_certificate
from engine.errors import JobValidationError
from engine.pipeline import run_job

pytestmark = pytest.mark.e2e

TENANT, MANAGEMENT_KEY, KEY_SEED = "tenant-errors", "mgmt-0b7e41c2-secret", "seed-errors-19"
KEY_ID = "5b2c7d1e-3f4a-4b6c-8d9e-0a1b2c3d4e5f"
KEY = bytes.fromhex("00112233445566778899aabbccddeeff")
SECRETS: dict[str, bytes | str] = {
    "ManagementKey": MANAGEMENT_KEY,
    "KeySeedId": KEY_SEED,
    "Basic credentials": f"{TENANT}:{MANAGEMENT_KEY}",
    "content key": KEY,
}


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Any:
    root = tmp_path_factory.mktemp("drm-errors")
    source = make_media(root / "src" / "small.mp4", duration=1.0, width=160, height=90)
    certificate = make_certificate(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VIPE_CPIX_CA_FILE", str(certificate[0]))
        with CpixServer(TENANT, MANAGEMENT_KEY, certificate=certificate) as server:
            yield {"root": root, "source": source, "server": server, "data_dir": root / "data"}


def _job(env: Any, name: str, formats: list[str], **drm: Any) -> tuple[Path, dict[str, Any]]:
    folder = env["root"] / name
    job = make_job(
        input_folder(folder, env["source"]),
        folder / "out",
        formats=formats,
        VideoRepresentations=[{"Height": 90, "BitrateInKbps": 100}],
        SegmentLengthInSeconds=1,
        **drm,
    )
    return folder, job


def _managed(env: Any, multi_key: bool = False) -> dict[str, Any]:
    return {
        "DrmProtection": "Managed",
        "DrmManaged": {
            "ApiUrl": env["server"].url,
            "TenantId": TENANT,
            "ManagementKey": MANAGEMENT_KEY,
            "KeySeedId": KEY_SEED,
            "MultiKey": multi_key,
        },
    }


def _assert_nothing_ran(run: DrmRun, folder: Path, code: int) -> dict[str, Any]:
    """The job ended in Pre-Validation: FinalError `code`, nothing acquired or published, no
    secret anywhere."""
    assert run.report["Success"] is False and run.report["ErrorCode"] == code
    error = run.final_error
    assert error is not None and error["ErrorCode"] == code, run.events
    kinds = [e["MessageType"] for e in run.events]
    for phase_event in ("ContentAcquired", "VideoEncodingStarted", "ContentPublished"):
        assert phase_event not in kinds, kinds
    assert not (run.workdir / "input").exists(), "the input was acquired"
    out = folder / "out"
    assert not out.exists() or not any(out.rglob("*")), "something was published"
    assert run.report["PublishedFilesSizeInBytes"] in (0, None)
    assert_no_secret(run.everything_said(), SECRETS)
    return error


# ----------------------------------------------------------------------- the Key Service


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("unauthorized", f"refused the credentials of tenant {TENANT} (HTTP 401)"),
        ("slow", "did not answer within 0.5 s, 2 attempt(s)"),
        ("malformed", "answered a malformed CPIX document"),
        ("missing_key", "did not return the content key for key id"),
    ],
)
def test_key_service_failures_end_the_job_before_it_runs(env, monkeypatch, mode, reason):
    """401, a timeout, malformed XML and a missing key: FinalError 4001 whose message names
    the Key Service (its URL without credentials) and the reason; nothing else happens."""
    server: CpixServer = env["server"]
    # The engine's CPIX client waits 10 s × 4 attempts; the timeout case needs less here.
    monkeypatch.setattr(  # (the Pre-Validation phase imports it when a job is encrypted)
        engine.keys,
        "keys_from_job",
        functools.partial(engine.keys.keys_from_job, timeout=0.5, attempts=2, backoff=0.05),
    )
    server.mode, server.delay = mode, 2.0
    asked = len(server.requests)
    try:
        folder, job = _job(env, f"cpix-{mode}", ["Cmaf"], **_managed(env, multi_key=True))
        run = run_drm_job(folder, job, data_dir=env["data_dir"])
    finally:
        server.mode = "ok"
    error = _assert_nothing_ran(run, folder, 4001)
    message = error["ErrorMessage"]
    assert message.startswith(f"Key Service {server.url}: "), message
    assert reason in message, message
    assert len(server.requests) - asked == (2 if mode == "slow" else 1)
    assert run.report["State"] == "Failed"


# --------------------------------------------------------------- Encrypted content keys


@pytest.mark.parametrize("damage", ["tampered", "wrong length"])
def test_encrypted_content_key_that_does_not_decrypt_is_an_invalid_job(env, damage):
    """A protected ContentKey whose ciphertext was tampered with (or that decrypts to other
    than 16 bytes): FinalError 1001 naming `ContentProcessing.ContentKey`."""
    certificate = ServiceKey.load_or_create(env["data_dir"]).certificate_base64
    if damage == "tampered":
        ciphertext = bytearray(base64.b64decode(encrypt_for_certificate(KEY, certificate)))
        ciphertext[len(ciphertext) // 2] ^= 0x01
        content_key = base64.b64encode(bytes(ciphertext)).decode()
    else:
        content_key = encrypt_for_certificate(KEY[:8], certificate)
    folder, job = _job(
        env,
        f"encrypted-{damage.replace(' ', '-')}",
        ["Hls"],
        DrmProtection="Encrypted",
        KeyId=KEY_ID,
        ContentKey=content_key,
    )
    run = run_drm_job(folder, job, data_dir=env["data_dir"])
    error = _assert_nothing_ran(run, folder, 1001)
    assert "ContentProcessing.ContentKey" in error["ErrorMessage"], error
    assert content_key not in run.everything_said()


def test_hls_ts_with_drm_is_refused(env):
    """HlsTs cannot carry CENC: the job is invalid before anything runs."""
    folder, job = _job(
        env,
        "hlsts",
        ["HlsTs"],
        DrmProtection="Base64Key",
        KeyId=KEY_ID,
        ContentKey=base64.b64encode(KEY).decode(),
    )
    events: list[dict[str, Any]] = []
    with pytest.raises(JobValidationError) as raised:
        run_job(job, on_event=events.append, workdir=folder / "work", data_dir=env["data_dir"])
    fields = {e.field: e.message for e in raised.value.errors}
    assert "HlsTs" in fields["ContentProcessing.DrmProtection"], fields
    assert not events and not (folder / "out").exists()
    assert_no_secret(str(raised.value), SECRETS)
