"""The example jobs in `examples/jobs/` are valid, warning-free, and show what they claim to."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from engine.job import (
    ContentProcessing,
    DrmProtection,
    EncryptionScheme,
    Job,
    MediaMappings,
    Provider,
    PublisherType,
    VideoFormat,
)
from engine.validation import validate_job

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "jobs"
NAMES = ["minimal", "full", "audio-only", "packaging-only", "drm-base64"]


def _load(name: str) -> Job:
    checked = validate_job(EXAMPLES / f"{name}.json", strict=True)
    assert checked.valid
    return checked.job


def test_every_example_is_listed() -> None:
    assert sorted(p.stem for p in EXAMPLES.glob("*.json")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_example_is_valid_without_warnings(name: str) -> None:
    checked = validate_job(EXAMPLES / f"{name}.json")
    assert checked.valid
    assert checked.errors == []
    assert checked.warnings == []


@pytest.mark.parametrize("name", NAMES)
def test_example_uses_local_demo_paths_or_remote_storage(name: str) -> None:
    job = _load(name)
    storages = [job.content_acquisition, job.content_publishing]
    if job.image_extraction is not None:
        storages.append(job.image_extraction.location)
    for storage in storages:
        if storage.provider == Provider.Local:
            assert storage.uri_path.startswith("file:///tmp/vipe-demo/"), storage.uri_path
        else:  # remote: a full https URL, never a local path
            assert urlsplit(storage.uri_path).scheme == "https", storage.uri_path
            assert urlsplit(storage.uri_path).hostname, storage.uri_path


def test_minimal_is_the_contract_minimal_job() -> None:
    raw = json.loads((EXAMPLES / "minimal.json").read_text())
    assert set(raw) == {
        "ExternalId",
        "ContentAcquisition",
        "MediaMappings",
        "ContentProcessing",
        "ContentPublishing",
    }
    job = _load("minimal")
    assert job.content_processing.output_format == ["Cmaf"]


def _aliases(model: type) -> set[str]:
    return {info.alias or name for name, info in model.model_fields.items()}


def test_full_uses_every_section() -> None:
    raw = json.loads((EXAMPLES / "full.json").read_text())
    assert set(raw) == _aliases(Job)
    assert set(raw["MediaMappings"]) == _aliases(MediaMappings)
    processing = raw["ContentProcessing"]
    for alias in (
        "VideoRepresentations",
        "AudioRepresentations",
        "Naming",
        "VisibleVideoWatermarks",
        "DrmManaged",
        "EncryptionScheme",
    ):
        assert alias in processing
    assert set(processing) <= _aliases(ContentProcessing)

    job = _load("full")
    assert job.content_acquisition.provider == "S3Compatible"
    assert job.content_acquisition.credentials_protection == "Encrypted"
    assert job.content_processing.drm_protection == DrmProtection.Managed
    assert job.content_processing.drm_managed is not None
    assert job.image_extraction is not None and job.thumbnails is not None
    assert job.message_publishers is not None
    assert len(job.message_publishers) == 5
    assert {p.type for p in job.message_publishers} == set(PublisherType)


def test_audio_only_has_no_video_expression() -> None:
    job = _load("audio-only")
    assert job.media_mappings.fail_on_no_video_tracks is False
    assert job.media_mappings.video_stream_expression is None


def test_packaging_only_does_not_encode() -> None:
    job = _load("packaging-only")
    assert job.content_processing.video_format == VideoFormat.DoNotEncode
    assert job.content_processing.packaging_only


def test_drm_base64_has_a_16_byte_test_key() -> None:
    job = _load("drm-base64")
    processing = job.content_processing
    assert processing.drm_protection == DrmProtection.Base64Key
    assert processing.key_id == "6c3e7bd1-8c10-4b4e-9d2a-6c2b0f0ae1a4"
    assert processing.content_key is not None
    assert processing.content_key.get_secret_value() == "AAECAwQFBgcICQoLDA0ODw=="
    assert processing.scheme == EncryptionScheme.cbcs  # Dash + Hls share cbcs


# The contract's secret fields; the examples that hold any (the others must hold none).
SECRET_FIELDS = {"CredentialsSecret", "ContentKey", "ManagementKey", "KeySeedId", "Connection"}
WITH_SECRETS = {"full", "drm-base64"}


def _secret_values(value: Any) -> list[str]:
    """The values of every secret field in the raw JSON, at any depth."""
    if isinstance(value, dict):
        found = [v for k, v in value.items() if k in SECRET_FIELDS and isinstance(v, str)]
        return found + [s for v in value.values() for s in _secret_values(v)]
    if isinstance(value, list):
        return [s for item in value for s in _secret_values(item)]
    return []


@pytest.mark.parametrize("name", NAMES)
def test_example_secrets_stay_hidden(name: str) -> None:
    raw = _secret_values(json.loads((EXAMPLES / f"{name}.json").read_text()))
    assert bool(raw) == (name in WITH_SECRETS)
    job = _load(name)
    assert sorted(job.secrets) == sorted(raw)  # every secret field is held as a secret
    shown = repr(job) + str(job) + job.model_dump_json()
    for secret in raw:
        assert secret not in shown
