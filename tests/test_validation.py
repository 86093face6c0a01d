"""Validation of job JSON against the contract (`shared/reference/job-api.md` §2–§9).

Most checks are table-driven: a case is a list of changes applied to the minimal job of the
contract (§11) and the exact set of JSON paths that must be reported.
"""

from __future__ import annotations

import base64
import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from engine.errors import JobValidationError
from engine.job import (
    Archiving,
    AudioFormat,
    AvoidNegativeTimestamps,
    BitrateLadder,
    ContentProcessing,
    Create,
    DrmProtection,
    EncodingMode,
    EncryptionScheme,
    HardwareAcceleration,
    MediaDetection,
    OptimizeFor,
    OutputFormat,
    SegmentFormat,
    Sound,
    VideoFormat,
    VideoSyncMethod,
)
from engine.validation import CheckedJob, FieldError, check_job, validate_job

MINIMAL: dict[str, Any] = {
    "ExternalId": "movie-42",
    "ContentAcquisition": {"Provider": "Local", "UriPath": "file:///data/in/movie-42/"},
    "MediaMappings": {"VideoStreamExpression": r"^.*\.(mp4|mov|mkv)$"},
    "ContentProcessing": {"OutputFormat": ["Cmaf"]},
    "ContentPublishing": {"Provider": "Local", "UriPath": "file:///data/out/movie-42/"},
}

KEY_ID = "6c3e7bd1-8c10-4b4e-9d2a-6c2b0f0ae1a4"
CONTENT_KEY = base64.b64encode(bytes(range(16))).decode()
CIPHERTEXT = base64.b64encode(bytes(range(256))).decode()  # looks like an RSA-2048 ciphertext
MANAGED = {
    "ApiUrl": "https://keys.example.com/cpix",
    "TenantId": "tenant-1",
    "ManagementKey": "9e8d7c6b-5a49-4837-9261-504f3e2d1c0b",
}
IMAGES = {
    "Intervals": [10, 50],
    "Pattern": "preview_%.jpg",
    "Location": {"Provider": "Local", "UriPath": "file:///data/images/"},
}
AUDIO = [{"BitrateInKbps": 128, "Sound": "Stereo", "AudioFormat": "AAC", "Create": "Always"}]
WATERMARK = {"WatermarkFileName": "logo.png", "StartTime": "00:00:05", "EndTime": "00:01:00"}
RABBIT = {"Type": "RabbitMQ", "Host": "rabbit.local", "Queue": "events"}
WEBHOOK = {"Type": "Webhook", "Url": "https://hooks.example.com/vipe"}
DELETE = object()

CP = "ContentProcessing"
MM = "MediaMappings"


def _steps(path: str) -> list[str | int]:
    return [
        int(p[1:-1]) if p.startswith("[") else p for p in re.findall(r"[^.\[\]]+|\[\d+\]", path)
    ]


def make(changes: dict[str, Any] | None = None, base: dict[str, Any] | None = None) -> dict:
    """A copy of the minimal job with `changes` (JSON path -> value, or DELETE) applied in order."""
    job = copy.deepcopy(MINIMAL if base is None else base)
    for path, value in (changes or {}).items():
        *parents, last = _steps(path)
        node: Any = job
        for step in parents:
            node = node[step]
        if value is DELETE:
            del node[last]
        else:
            node[last] = copy.deepcopy(value)
    return job


def fields(checked: CheckedJob) -> set[str]:
    return {e.field for e in checked.errors}


def assert_outcome(checked: CheckedJob, expected: set[str], fragment: str | None = None) -> None:
    """No job, errors at exactly `expected`, and `fragment` in the message of one of them."""
    assert checked.job is None
    assert fields(checked) == expected, checked.errors
    if fragment is not None:
        messages = " | ".join(e.message for e in checked.errors if e.field in expected)
        assert fragment.lower() in messages.lower(), messages


# ------------------------------------------------------------------------- required fields

REQUIRED = [
    ("ContentAcquisition", {}, "ContentAcquisition"),
    ("MediaMappings", {}, "MediaMappings"),
    ("ContentProcessing", {}, "ContentProcessing"),
    ("ContentPublishing", {}, "ContentPublishing"),
    ("ContentProcessing.OutputFormat", {}, "ContentProcessing.OutputFormat"),
    ("ContentAcquisition.Provider", {}, "ContentAcquisition.Provider"),
    ("ContentAcquisition.UriPath", {}, "ContentAcquisition.UriPath"),
    ("ContentPublishing.Provider", {}, "ContentPublishing.Provider"),
    ("ContentPublishing.UriPath", {}, "ContentPublishing.UriPath"),
    ("ImageExtraction.Intervals", {"ImageExtraction": IMAGES}, "ImageExtraction.Intervals"),
    ("ImageExtraction.Pattern", {"ImageExtraction": IMAGES}, "ImageExtraction.Pattern"),
    ("ImageExtraction.Location", {"ImageExtraction": IMAGES}, "ImageExtraction.Location"),
    (
        "ImageExtraction.Location.UriPath",
        {"ImageExtraction": IMAGES},
        "ImageExtraction.Location.UriPath",
    ),
    (
        f"{CP}.VideoRepresentations[0].BitrateInKbps",
        {f"{CP}.VideoRepresentations": [{"Height": 720, "BitrateInKbps": 2450}]},
        f"{CP}.VideoRepresentations[0].BitrateInKbps",
    ),
    (
        f"{CP}.AudioRepresentations[0].BitrateInKbps",
        {f"{CP}.AudioRepresentations": AUDIO},
        f"{CP}.AudioRepresentations[0].BitrateInKbps",
    ),
    (
        f"{CP}.VisibleVideoWatermarks[0].WatermarkFileName",
        {f"{CP}.VisibleVideoWatermarks": [WATERMARK]},
        f"{CP}.VisibleVideoWatermarks[0].WatermarkFileName",
    ),
    (
        f"{MM}.AudioStreams[0].Language",
        {f"{MM}.AudioStreams": [{"Language": "fr", "FileNameExpression": "^fr\\.wav$"}]},
        f"{MM}.AudioStreams[0].Language",
    ),
    (
        f"{MM}.AudioStreams[0].FileNameExpression",
        {f"{MM}.AudioStreams": [{"Language": "fr", "FileNameExpression": "^fr\\.wav$"}]},
        f"{MM}.AudioStreams[0].FileNameExpression",
    ),
    (
        f"{MM}.AudioMappings.VideoStreamAudioTracks[0].TrackIndices",
        {f"{MM}.AudioMappings": {"VideoStreamAudioTracks": [{"TrackIndices": [1, 2]}]}},
        f"{MM}.AudioMappings.VideoStreamAudioTracks[0].TrackIndices",
    ),
    ("MessagePublishers[0].Type", {"MessagePublishers": [WEBHOOK]}, "MessagePublishers[0].Type"),
    (f"{MM}.VideoStreamExpression", {}, f"{MM}.VideoStreamExpression"),
]


@pytest.mark.parametrize(("missing", "setup", "path"), REQUIRED, ids=[r[0] for r in REQUIRED])
def test_required_field_missing(missing: str, setup: dict, path: str) -> None:
    job = make({**setup, missing: DELETE})
    assert_outcome(check_job(job), {path}, "required")


def test_empty_job_lists_every_required_section() -> None:
    assert_outcome(
        check_job({}),
        {"ContentAcquisition", "MediaMappings", "ContentProcessing", "ContentPublishing"},
        "required",
    )


# ------------------------------------------------------------------------------ enum values

ENUMS = [
    ("ContentAcquisition.Provider", {}, ["AmazonS3", "AzureBlob", "Ftps", "S3Compatible", "Local"]),
    ("ContentAcquisition.CredentialsProtection", {}, ["Unencrypted", "Encrypted"]),
    (f"{MM}.MediaDetection", {}, ["Regex", "Convention"]),
    (f"{CP}.OutputFormat[0]", {}, ["Dash", "Hls", "Cmaf", "DashOnDemand", "HlsTs"]),
    (f"{CP}.SegmentFormat", {}, ["Segments", "ByteRange"]),
    (f"{CP}.VideoFormat", {}, ["H264", "H265", "DoNotEncode"]),
    (f"{CP}.OptimizeFor", {}, ["Speed", "Balance", "Quality"]),
    (f"{CP}.EncodingMode", {}, ["Default", "PerScene"]),
    (f"{CP}.BitrateLadder", {}, ["V2", "V1"]),
    (f"{CP}.Sound", {}, ["Mono", "Stereo", "5.1"]),
    (f"{CP}.AudioRepresentations[0].Sound", {f"{CP}.AudioRepresentations": AUDIO}, ["5.1"]),
    (
        f"{CP}.AudioRepresentations[0].AudioFormat",
        {f"{CP}.AudioRepresentations": AUDIO},
        ["AAC", "AC3", "EAC3"],
    ),
    (
        f"{CP}.AudioRepresentations[0].Create",
        {f"{CP}.AudioRepresentations": AUDIO},
        ["Always", "OnMatchingSound"],
    ),
    (f"{CP}.VideoSyncMethod", {}, ["Auto"]),
    (f"{CP}.AvoidNegativeVideoTimestamps", {}, ["Auto"]),
    (f"{CP}.Archiving", {}, ["None", "Tar", "SingleTar"]),
    (f"{CP}.DrmProtection", {}, ["None", "Base64Key", "Encrypted", "Managed"]),
    (
        f"{CP}.EncryptionScheme",
        {
            f"{CP}.DrmProtection": "Base64Key",
            f"{CP}.KeyId": KEY_ID,
            f"{CP}.ContentKey": CONTENT_KEY,
        },
        ["cenc", "cbcs"],
    ),
    (f"{CP}.HardwareAcceleration", {}, ["Auto", "Nvidia", "None"]),
    (
        f"{CP}.DrmManaged.KeysProtection",
        {f"{CP}.DrmProtection": "Managed", f"{CP}.DrmManaged": MANAGED},
        ["Unencrypted", "Encrypted"],
    ),
    (
        "MessagePublishers[0].Type",
        {"MessagePublishers": [WEBHOOK]},
        ["RabbitMQ", "AzureServiceBusQueue", "AmazonSqs", "Ftps", "Webhook"],
    ),
    ("MessagePublishers[0].Protocol", {"MessagePublishers": [RABBIT]}, ["amqp", "amqps"]),
    (
        "MessagePublishers[0].CredentialsProtection",
        {"MessagePublishers": [WEBHOOK]},
        ["Unencrypted", "Encrypted"],
    ),
]


@pytest.mark.parametrize(("path", "setup", "allowed"), ENUMS, ids=[e[0] for e in ENUMS])
def test_wrong_enum_value_lists_the_allowed_ones(path: str, setup: dict, allowed: list) -> None:
    checked = check_job(make({**setup, path: "Bogus"}))
    assert_outcome(checked, {path})
    message = checked.errors[0].message
    for value in allowed:
        assert f"'{value}'" in message, message


# ------------------------------------------------------------------------ cross-field rules

RULES = [
    # OutputFormat
    ("cmaf-with-dash", {f"{CP}.OutputFormat": ["Cmaf", "Dash"]}, {f"{CP}.OutputFormat"}, "Cmaf"),
    (
        "dashondemand-with-hls",
        {f"{CP}.OutputFormat": ["DashOnDemand", "Hls"]},
        {f"{CP}.OutputFormat"},
        "DashOnDemand",
    ),
    ("format-twice", {f"{CP}.OutputFormat": ["Dash", "dash"]}, {f"{CP}.OutputFormat"}, "twice"),
    ("no-format", {f"{CP}.OutputFormat": []}, {f"{CP}.OutputFormat"}, "at least 1"),
    # packaging-only
    (
        "donotencode-with-representations",
        {
            f"{CP}.VideoFormat": "DoNotEncode",
            f"{CP}.VideoRepresentations": [{"Height": 720, "BitrateInKbps": 2450}],
        },
        {f"{CP}.VideoRepresentations"},
        "DoNotEncode",
    ),
    (
        "donotencode-with-watermark",
        {f"{CP}.VideoFormat": "DoNotEncode", f"{CP}.VisibleVideoWatermarks": [WATERMARK]},
        {f"{CP}.VisibleVideoWatermarks"},
        "DoNotEncode",
    ),
    (
        "donotencode-with-perscene",
        {f"{CP}.VideoFormat": "DoNotEncode", f"{CP}.EncodingMode": "PerScene"},
        {f"{CP}.EncodingMode"},
        "DoNotEncode",
    ),
    (
        "donotencode-with-hdr",
        {f"{CP}.VideoFormat": "DoNotEncode", f"{CP}.ExtractAndApplyHDR": True},
        {f"{CP}.ExtractAndApplyHDR"},
        "DoNotEncode",
    ),
    (
        "donotencode-with-hdr10plus",
        {
            f"{CP}.VideoFormat": "DoNotEncode",
            f"{CP}.ExtractAndApplyHDR": True,
            f"{CP}.ExtractAndApplyHDR10Plus": True,
        },
        {f"{CP}.ExtractAndApplyHDR", f"{CP}.ExtractAndApplyHDR10Plus"},
        "DoNotEncode",
    ),
    # HDR
    ("hdr-with-h264", {f"{CP}.ExtractAndApplyHDR": True}, {f"{CP}.ExtractAndApplyHDR"}, "H265"),
    (
        "hdr10plus-with-h264",
        {f"{CP}.VideoFormat": "H264", f"{CP}.ExtractAndApplyHDR": True},
        {f"{CP}.ExtractAndApplyHDR"},
        "H265",
    ),
    (
        "hdr10plus-without-hdr",
        {f"{CP}.VideoFormat": "H265", f"{CP}.ExtractAndApplyHDR10Plus": True},
        {f"{CP}.ExtractAndApplyHDR10Plus"},
        "ExtractAndApplyHDR",
    ),
    # DRM: what each mode requires
    (
        "base64key-without-key",
        {f"{CP}.DrmProtection": "Base64Key"},
        {f"{CP}.KeyId", f"{CP}.ContentKey"},
        "required when DrmProtection is Base64Key",
    ),
    (
        "encrypted-without-key",
        {f"{CP}.DrmProtection": "Encrypted"},
        {f"{CP}.KeyId", f"{CP}.ContentKey"},
        "required when DrmProtection is Encrypted",
    ),
    (
        "base64key-without-keyid",
        {f"{CP}.DrmProtection": "Base64Key", f"{CP}.ContentKey": CONTENT_KEY},
        {f"{CP}.KeyId"},
        "required",
    ),
    (
        "managed-without-drmmanaged",
        {f"{CP}.DrmProtection": "Managed"},
        {f"{CP}.DrmManaged"},
        "required when DrmProtection is Managed",
    ),
    (
        "managed-with-empty-drmmanaged",
        {f"{CP}.DrmProtection": "Managed", f"{CP}.DrmManaged": {}},
        {f"{CP}.DrmManaged.ApiUrl", f"{CP}.DrmManaged.TenantId", f"{CP}.DrmManaged.ManagementKey"},
        "required",
    ),
    (
        "managed-apiurl-not-http",
        {
            f"{CP}.DrmProtection": "Managed",
            f"{CP}.DrmManaged": {**MANAGED, "ApiUrl": "ftp://keys.example.com/"},
        },
        {f"{CP}.DrmManaged.ApiUrl"},
        "http",
    ),
    (
        "managed-encrypted-key-not-base64",
        {
            f"{CP}.DrmProtection": "Managed",
            f"{CP}.DrmManaged": {**MANAGED, "KeysProtection": "Encrypted"},
        },
        {f"{CP}.DrmManaged.ManagementKey"},
        "base64",
    ),
    # DRM: fields given with None
    ("keyid-with-none", {f"{CP}.KeyId": KEY_ID}, {f"{CP}.KeyId"}, "DrmProtection is None"),
    (
        "contentkey-with-none",
        {f"{CP}.ContentKey": CONTENT_KEY},
        {f"{CP}.ContentKey"},
        "DrmProtection is None",
    ),
    (
        "drmmanaged-with-none",
        {f"{CP}.DrmManaged": MANAGED},
        {f"{CP}.DrmManaged"},
        "DrmProtection is None",
    ),
    (
        "scheme-with-none",
        {f"{CP}.EncryptionScheme": "cenc"},
        {f"{CP}.EncryptionScheme"},
        "DrmProtection is None",
    ),
    # DRM: key material
    (
        "contentkey-8-bytes",
        {
            f"{CP}.DrmProtection": "Base64Key",
            f"{CP}.KeyId": KEY_ID,
            f"{CP}.ContentKey": base64.b64encode(bytes(8)).decode(),
        },
        {f"{CP}.ContentKey"},
        "16 bytes",
    ),
    (
        "contentkey-not-base64",
        {f"{CP}.DrmProtection": "Base64Key", f"{CP}.KeyId": KEY_ID, f"{CP}.ContentKey": "k3y!"},
        {f"{CP}.ContentKey"},
        "base64",
    ),
    (
        "encrypted-contentkey-not-base64",
        {f"{CP}.DrmProtection": "Encrypted", f"{CP}.KeyId": KEY_ID, f"{CP}.ContentKey": "k3y!"},
        {f"{CP}.ContentKey"},
        "base64",
    ),
    (
        "keyid-not-guid",
        {
            f"{CP}.DrmProtection": "Base64Key",
            f"{CP}.KeyId": "key-1",
            f"{CP}.ContentKey": CONTENT_KEY,
        },
        {f"{CP}.KeyId"},
        "GUID",
    ),
    (
        "hlsts-with-drm",
        {
            f"{CP}.OutputFormat": ["HlsTs"],
            f"{CP}.DrmProtection": "Base64Key",
            f"{CP}.KeyId": KEY_ID,
            f"{CP}.ContentKey": CONTENT_KEY,
        },
        {f"{CP}.DrmProtection"},
        "HlsTs",
    ),
    # message publishers
    ("six-publishers", {"MessagePublishers": [WEBHOOK] * 6}, {"MessagePublishers"}, "at most 5"),
    (
        "rabbitmq-without-host-and-queue",
        {"MessagePublishers": [{"Type": "RabbitMQ"}]},
        {"MessagePublishers[0].Host", "MessagePublishers[0].Queue"},
        "RabbitMQ",
    ),
    (
        "servicebus-without-connection",
        {"MessagePublishers": [WEBHOOK, {"Type": "AzureServiceBusQueue"}]},
        {"MessagePublishers[1].Connection"},
        "required",
    ),
    (
        "servicebus-without-entitypath-or-queue",
        {
            "MessagePublishers": [
                {
                    "Type": "AzureServiceBusQueue",
                    "Connection": "Endpoint=sb://x.servicebus.windows.net/;SharedAccessKey=abc",
                }
            ]
        },
        {"MessagePublishers[0].Queue"},
        "EntityPath",
    ),
    (
        "sqs-without-queueurl",
        {"MessagePublishers": [{"Type": "AmazonSqs", "Region": "eu-west-1"}]},
        {"MessagePublishers[0].QueueUrl"},
        "AmazonSqs",
    ),
    (
        "ftps-publisher-without-uripath",
        {"MessagePublishers": [{"Type": "Ftps"}]},
        {"MessagePublishers[0].UriPath"},
        "Ftps",
    ),
    (
        "ftps-publisher-wrong-scheme",
        {"MessagePublishers": [{"Type": "Ftps", "UriPath": "https://host/events/"}]},
        {"MessagePublishers[0].UriPath"},
        "ftp://",
    ),
    (
        "webhook-without-url",
        {"MessagePublishers": [{"Type": "Webhook"}]},
        {"MessagePublishers[0].Url"},
        "Webhook",
    ),
    (
        "webhook-url-not-http",
        {"MessagePublishers": [{"Type": "Webhook", "Url": "ftp://hooks/"}]},
        {"MessagePublishers[0].Url"},
        "http",
    ),
    (
        "publisher-port-out-of-range",
        {"MessagePublishers": [{**RABBIT, "Port": 70000}]},
        {"MessagePublishers[0].Port"},
        "65535",
    ),
    # storage
    (
        "http-as-output",
        {"ContentPublishing": {"Provider": "Http", "UriPath": "https://example.com/out/"}},
        {"ContentPublishing.Provider"},
        "input only",
    ),
    (
        "http-as-image-location",
        {"ImageExtraction": {**IMAGES, "Location": {"Provider": "Http", "UriPath": "https://x/"}}},
        {"ImageExtraction.Location.Provider"},
        "input only",
    ),
    (
        "image-location-not-an-object",
        {"ImageExtraction": {**IMAGES, "Location": "file:///data/images/"}},
        {"ImageExtraction.Location"},
        "object",
    ),
    (
        "local-uri-not-absolute",
        {"ContentPublishing.UriPath": "file://data/out/"},
        {"ContentPublishing.UriPath"},
        "absolute",
    ),
    (
        "local-uri-without-scheme",
        {"ContentAcquisition.UriPath": "/data/in/"},
        {"ContentAcquisition.UriPath"},
        "file://",
    ),
    (
        "amazons3-with-file-uri",
        {"ContentAcquisition.Provider": "AmazonS3"},
        {"ContentAcquisition.UriPath"},
        "https://",
    ),
    (
        "ftps-with-https-uri",
        {"ContentAcquisition": {"Provider": "Ftps", "UriPath": "https://host/in/"}},
        {"ContentAcquisition.UriPath"},
        "ftps://",
    ),
    (
        "azureblob-with-ftp-uri",
        {"ContentPublishing": {"Provider": "AzureBlob", "UriPath": "ftp://host/out/"}},
        {"ContentPublishing.UriPath"},
        "https://",
    ),
    (
        "role-on-non-s3",
        {"ContentAcquisition.RoleArnToAssume": "arn:aws:iam::1:role/r"},
        {"ContentAcquisition.RoleArnToAssume"},
        "AmazonS3",
    ),
    (
        "role-session-too-short",
        {
            "ContentPublishing": {
                "Provider": "AmazonS3",
                "UriPath": "https://b.s3.eu-west-1.amazonaws.com/out/",
                "RoleArnToAssume": "arn:aws:iam::1:role/r",
                "RoleSessionDurationInSeconds": 60,
            }
        },
        {"ContentPublishing.RoleSessionDurationInSeconds"},
        "900",
    ),
    (
        "credentials-name-without-secret",
        {"ContentAcquisition.CredentialsName": "reader"},
        {"ContentAcquisition.CredentialsSecret"},
        "together",
    ),
    (
        "encrypted-secret-not-base64",
        {
            "ContentAcquisition.CredentialsName": "reader",
            "ContentAcquisition.CredentialsSecret": "pass word!",
            "ContentAcquisition.CredentialsProtection": "Encrypted",
        },
        {"ContentAcquisition.CredentialsSecret"},
        "base64",
    ),
    # video and audio representations
    (
        "width-too-large",
        {f"{CP}.VideoRepresentations": [{"Width": 7682, "BitrateInKbps": 9000}]},
        {f"{CP}.VideoRepresentations[0].Width"},
        "7680",
    ),
    (
        "height-too-small",
        {f"{CP}.VideoRepresentations": [{"Height": 30, "BitrateInKbps": 100}]},
        {f"{CP}.VideoRepresentations[0].Height"},
        "32",
    ),
    (
        "height-too-large",
        {f"{CP}.VideoRepresentations": [{"Height": 4322, "BitrateInKbps": 9000}]},
        {f"{CP}.VideoRepresentations[0].Height"},
        "4320",
    ),
    (
        "video-bitrate-too-low",
        {f"{CP}.VideoRepresentations": [{"Height": 360, "BitrateInKbps": 49}]},
        {f"{CP}.VideoRepresentations[0].BitrateInKbps"},
        "50",
    ),
    (
        "video-bitrate-too-high",
        {f"{CP}.VideoRepresentations": [{"Height": 360, "BitrateInKbps": 200_001}]},
        {f"{CP}.VideoRepresentations[0].BitrateInKbps"},
        "200000",
    ),
    (
        "representation-without-size",
        {f"{CP}.VideoRepresentations": [{"BitrateInKbps": 1000}]},
        {f"{CP}.VideoRepresentations[0].Height"},
        "Width, Height",
    ),
    (
        "odd-width",
        {f"{CP}.VideoRepresentations": [{"Height": 360}, {"Width": 641, "BitrateInKbps": 900}]},
        {f"{CP}.VideoRepresentations[0].BitrateInKbps", f"{CP}.VideoRepresentations[1].Width"},
        "even",
    ),
    (
        "odd-height",
        {f"{CP}.VideoRepresentations": [{"Height": 361, "BitrateInKbps": 900}]},
        {f"{CP}.VideoRepresentations[0].Height"},
        "even",
    ),
    (
        "too-many-representations",
        {f"{CP}.VideoRepresentations": [{"Height": 360, "BitrateInKbps": 900}] * 21},
        {f"{CP}.VideoRepresentations"},
        "at most 20",
    ),
    (
        "aac-bitrate-too-high",
        {f"{CP}.AudioRepresentations": [{**AUDIO[0], "BitrateInKbps": 700}]},
        {f"{CP}.AudioRepresentations[0].BitrateInKbps"},
        "640",
    ),
    (
        "segment-length-too-long",
        {f"{CP}.SegmentLengthInSeconds": 11},
        {f"{CP}.SegmentLengthInSeconds"},
        "10",
    ),
    (
        "segment-length-too-short",
        {f"{CP}.SegmentLengthInSeconds": 0.5},
        {f"{CP}.SegmentLengthInSeconds"},
        "1",
    ),
    (
        "naming-with-folder",
        {f"{CP}.Naming": {"ManifestName": "../escape"}},
        {f"{CP}.Naming.ManifestName"},
        "no folders",
    ),
    # watermarks
    (
        "watermark-ends-before-start",
        {f"{CP}.VisibleVideoWatermarks": [{**WATERMARK, "EndTime": "00:00:04"}]},
        {f"{CP}.VisibleVideoWatermarks[0].EndTime"},
        "after StartTime",
    ),
    (
        "watermark-time-format",
        {f"{CP}.VisibleVideoWatermarks": [{**WATERMARK, "StartTime": "5s"}]},
        {f"{CP}.VisibleVideoWatermarks[0].StartTime"},
        "HH:MM:SS",
    ),
    (
        "watermark-not-an-image",
        {f"{CP}.VisibleVideoWatermarks": [{**WATERMARK, "WatermarkFileName": "logo.svg"}]},
        {f"{CP}.VisibleVideoWatermarks[0].WatermarkFileName"},
        "png",
    ),
    (
        "watermark-position-over-100",
        {f"{CP}.VisibleVideoWatermarks": [{**WATERMARK, "PositionXPercentage": 101}]},
        {f"{CP}.VisibleVideoWatermarks[0].PositionXPercentage"},
        "100",
    ),
    # image extraction
    (
        "pattern-without-percent",
        {"ImageExtraction": {**IMAGES, "Pattern": "preview.jpg"}},
        {"ImageExtraction.Pattern"},
        "%",
    ),
    (
        "pattern-not-jpeg",
        {"ImageExtraction": {**IMAGES, "Pattern": "preview_%.png"}},
        {"ImageExtraction.Pattern"},
        ".jpg",
    ),
    (
        "interval-over-100",
        {"ImageExtraction": {**IMAGES, "Intervals": [10, 100.5]}},
        {"ImageExtraction.Intervals[1]"},
        "100",
    ),
    (
        "interval-negative",
        {"ImageExtraction": {**IMAGES, "Intervals": [-1, 50]}},
        {"ImageExtraction.Intervals[0]"},
        "0",
    ),
    (
        "no-intervals",
        {"ImageExtraction": {**IMAGES, "Intervals": []}},
        {"ImageExtraction.Intervals"},
        "at least 1",
    ),
    (
        "jpeg-quality-0",
        {"ImageExtraction": {**IMAGES, "Quality": 0}},
        {"ImageExtraction.Quality"},
        "1",
    ),
    (
        "jpeg-quality-101",
        {"ImageExtraction": {**IMAGES, "Quality": 101}},
        {"ImageExtraction.Quality"},
        "100",
    ),
    # thumbnails
    ("thumb-width-23", {"Thumbnails": {"Width": 23}}, {"Thumbnails.Width"}, "24"),
    ("thumb-width-7681", {"Thumbnails": {"Width": 7681}}, {"Thumbnails.Width"}, "7680"),
    ("thumb-height-23", {"Thumbnails": {"Height": 23}}, {"Thumbnails.Height"}, "24"),
    ("thumb-height-4321", {"Thumbnails": {"Height": 4321}}, {"Thumbnails.Height"}, "4320"),
    ("tile-columns-21", {"Thumbnails": {"TileColumns": 21}}, {"Thumbnails.TileColumns"}, "20"),
    ("tile-rows-21", {"Thumbnails": {"TileRows": 21}}, {"Thumbnails.TileRows"}, "20"),
    ("tile-rows-0", {"Thumbnails": {"TileRows": 0}}, {"Thumbnails.TileRows"}, "1"),
    (
        "tile-sheet-beyond-jpeg",
        {"Thumbnails": {"Width": 7680, "Height": 4320, "TileColumns": 9, "TileRows": 16}},
        {"Thumbnails.Width", "Thumbnails.Height"},
        "65535",
    ),
    # string lengths
    ("externalid-201", {"ExternalId": "x" * 201}, {"ExternalId"}, "200"),
    ("externaltype-101", {"ExternalType": "x" * 101}, {"ExternalType"}, "100"),
    ("externalprovider-101", {"ExternalProvider": "x" * 101}, {"ExternalProvider"}, "100"),
    # expressions and mapping
    (
        "invalid-regex",
        {f"{MM}.VideoStreamExpression": "^(movie"},
        {f"{MM}.VideoStreamExpression"},
        "regular expression",
    ),
    (
        "backreference-not-re2",
        {f"{MM}.VideoStreamExpression": r"^(a)\1$"},
        {f"{MM}.VideoStreamExpression"},
        "RE2",
    ),
    (
        "language-expression-without-group",
        {f"{MM}.AudioFileLanguageExpression": r"^audio-[a-z]{2}\.wav$"},
        {f"{MM}.AudioFileLanguageExpression"},
        "capture group",
    ),
    (
        "subtitle-expression-without-group",
        {f"{MM}.SubtitleFileLanguageExpression": r"^sub\.vtt$"},
        {f"{MM}.SubtitleFileLanguageExpression"},
        "capture group",
    ),
    (
        "stream-expression-invalid",
        {f"{MM}.CaptionStreams": [{"Language": "en", "FileNameExpression": "[cc"}]},
        {f"{MM}.CaptionStreams[0].FileNameExpression"},
        "regular expression",
    ),
    (
        "video-expression-missing-with-fail-on-no-video",
        {f"{MM}.VideoStreamExpression": DELETE, f"{MM}.FailOnNoVideoTracks": True},
        {f"{MM}.VideoStreamExpression"},
        "FailOnNoVideoTracks",
    ),
    (
        "track-indices-three",
        {f"{MM}.AudioMappings": {"VideoStreamAudioTracks": [{"TrackIndices": [1, 2, 3]}]}},
        {f"{MM}.AudioMappings.VideoStreamAudioTracks[0].TrackIndices"},
        "5.1",
    ),
    (
        "track-indices-twice",
        {f"{MM}.AudioMappings": {"VideoStreamAudioTracks": [{"TrackIndices": [1, 1]}]}},
        {f"{MM}.AudioMappings.VideoStreamAudioTracks[0].TrackIndices"},
        "twice",
    ),
    # names
    (
        "same-name-in-two-cases",
        {f"{CP}.outputformat": ["Dash"]},
        {f"{CP}.outputformat"},
        "given twice",
    ),
    (
        "mediamappings-and-contentpreprocessing",
        {"ContentPreProcessing": {"VideoStreamExpression": ".*"}},
        {"ContentPreProcessing"},
        "given twice",
    ),
    ("section-not-an-object", {CP: ["Dash"]}, {CP}, "object"),
    ("bool-not-a-bool", {f"{CP}.NormalizeAudio": "maybe"}, {f"{CP}.NormalizeAudio"}, "boolean"),
    (
        "nan-percent",
        {"ImageExtraction": {**IMAGES, "Intervals": [float("nan")]}},
        {"ImageExtraction.Intervals[0]"},
        "finite",
    ),
]


@pytest.mark.parametrize(
    ("changes", "expected", "fragment"),
    [pytest.param(c, e, f, id=i) for i, c, e, f in RULES],
)
def test_rule(changes: dict, expected: set[str], fragment: str) -> None:
    assert_outcome(check_job(make(changes)), expected, fragment)


# ----------------------------------------------------------------------------- valid inputs

VALID = [
    ("lower-case-names-and-values", {CP: {"outputformat": ["dash"]}}),
    (
        "upper-case-names-and-values",
        {
            "CONTENTPROCESSING": {"OUTPUTFORMAT": ["HLS"], "VIDEOFORMAT": "H265"},
            "ContentProcessing": DELETE,
        },
    ),
    ("mixed-case-enums", {f"{CP}.DrmProtection": "nOnE", f"{CP}.Archiving": "singletar"}),
    ("sound-5.1", {f"{CP}.Sound": "5.1"}),
    ("contentpreprocessing-alias", {"ContentPreProcessing": MINIMAL[MM], MM: DELETE}),
    (
        "audio-only-without-video-expression",
        {MM: {"FailOnNoVideoTracks": False, "AudioFileLanguageExpression": "^a-(..)\\.wav$"}},
    ),
    ("convention-without-video-expression", {MM: {"MediaDetection": "Convention"}}),
    ("dash-and-hls", {f"{CP}.OutputFormat": ["Dash", "Hls"]}),
    ("hlsts-alone", {f"{CP}.OutputFormat": ["HlsTs"]}),
    ("hdr-on-h265", {f"{CP}.VideoFormat": "H265", f"{CP}.ExtractAndApplyHDR": True}),
    (
        "base64key",
        {
            f"{CP}.DrmProtection": "Base64Key",
            f"{CP}.KeyId": KEY_ID,
            f"{CP}.ContentKey": CONTENT_KEY,
        },
    ),
    (
        "keyid-in-braces-upper-case",
        {
            f"{CP}.DrmProtection": "Base64Key",
            f"{CP}.KeyId": "{" + KEY_ID.upper() + "}",
            f"{CP}.ContentKey": CONTENT_KEY,
        },
    ),
    (
        "encrypted-key",
        {f"{CP}.DrmProtection": "Encrypted", f"{CP}.KeyId": KEY_ID, f"{CP}.ContentKey": CIPHERTEXT},
    ),
    (
        "managed-with-keyseed-alias",
        {f"{CP}.DrmProtection": "Managed", f"{CP}.DrmManaged": {**MANAGED, "KeySeed": "seed-1"}},
    ),
    ("five-publishers", {"MessagePublishers": [WEBHOOK] * 5}),
    (
        "servicebus-with-entitypath",
        {
            "MessagePublishers": [
                {
                    "Type": "AzureServiceBusQueue",
                    "Connection": "Endpoint=sb://x/;SharedAccessKey=abc;EntityPath=events",
                }
            ]
        },
    ),
    (
        "servicebus-with-queue",
        {
            "MessagePublishers": [
                {"Type": "AzureServiceBusQueue", "Connection": "Endpoint=sb://x/;", "Queue": "q"}
            ]
        },
    ),
    ("http-input", {"ContentAcquisition": {"Provider": "Http", "UriPath": "https://x/a.mp4"}}),
    (
        "s3-with-role",
        {
            "ContentAcquisition": {
                "Provider": "AmazonS3",
                "UriPath": "https://b.s3.eu-west-1.amazonaws.com/in/",
                "RoleArnToAssume": "arn:aws:iam::1:role/r",
            }
        },
    ),
    ("ftpes-input", {"ContentAcquisition": {"Provider": "Ftps", "UriPath": "ftpes://h:21/in/"}}),
    ("thumbnails-one-side", {"Thumbnails": {"Generate": True, "Height": 4320}}),
    ("image-extraction", {"ImageExtraction": IMAGES}),
    ("externalid-200", {"ExternalId": "x" * 200}),
    ("externalid-null", {"ExternalId": None}),
    ("optimizefor-empty", {f"{CP}.OptimizeFor": ""}),
    (
        "even-sizes",
        {f"{CP}.VideoRepresentations": [{"Width": 7680, "Height": 4320, "BitrateInKbps": 50}]},
    ),
]


@pytest.mark.parametrize("changes", [pytest.param(c, id=i) for i, c in VALID])
def test_valid(changes: dict) -> None:
    checked = check_job(make(changes), strict=True)
    assert checked.errors == []
    assert checked.warnings == []
    assert checked.valid and checked.job is not None


def test_case_insensitive_names_give_the_same_job() -> None:
    lower = json.loads(json.dumps(MINIMAL).lower())  # names and enum values; the rest is
    assert "contentprocessing" in lower  # already lower case in the minimal job
    assert check_job(lower, strict=True).job == check_job(make()).job


def test_keyseed_is_keyseedid() -> None:
    job = check_job(
        make({f"{CP}.DrmProtection": "Managed", f"{CP}.DrmManaged": {**MANAGED, "keyseed": "s1"}})
    ).job
    assert job is not None
    managed = job.content_processing.drm_managed
    assert managed is not None and managed.key_seed_id is not None
    assert managed.key_seed_id.get_secret_value() == "s1"


def test_contentpreprocessing_fills_media_mappings() -> None:
    job = check_job(
        make({"ContentPreProcessing": {"VideoStreamExpression": "^v$"}, MM: DELETE})
    ).job
    assert job is not None
    assert job.media_mappings.video_stream_expression == "^v$"


def test_external_values_are_echoed_unchanged() -> None:
    job = check_job(make({"ExternalId": "  id with spaces ", "ExternalType": " T"})).job
    assert job is not None
    assert job.external_id == "  id with spaces "
    assert job.external_type == " T"
    assert job.external_provider == ""


# --------------------------------------------------------------------------------- defaults


def test_defaults_on_a_minimal_job() -> None:
    job = check_job(make()).job
    assert job is not None
    processing = job.content_processing
    assert processing.segment_format == SegmentFormat.Segments
    assert processing.segment_length_in_seconds == 4
    assert processing.video_format == VideoFormat.H264
    assert processing.optimize_for == OptimizeFor.Balance
    assert processing.encoding_mode == EncodingMode.Default
    assert processing.bitrate_ladder == BitrateLadder.V2
    assert processing.video_representations is None
    assert processing.audio_representations is None
    assert processing.sound is None
    assert processing.force_pixel_aspect_ratio_to1 is True
    assert processing.search_for_optimal_nearby_resolutions is True
    for flag in (
        processing.normalize_audio,
        processing.force_aspect_ratio_to_standard,
        processing.use_highest_possible_bitrate,
        processing.extract_and_apply_hdr,
        processing.extract_and_apply_hdr10_plus,
        processing.delete_files_from_source_when_done,
        processing.use_native_language_names,
        processing.quality_metrics,
    ):
        assert flag is False
    assert processing.video_sync_method == VideoSyncMethod.Auto
    assert processing.avoid_negative_video_timestamps == AvoidNegativeTimestamps.Auto
    assert processing.archiving == Archiving.Off
    assert processing.drm_protection == DrmProtection.Off
    assert processing.encryption_scheme is None
    assert processing.hardware_acceleration == HardwareAcceleration.Auto

    mappings = job.media_mappings
    assert mappings.media_detection == MediaDetection.Regex
    assert mappings.fallback_language_code == "en"
    assert mappings.fail_on_no_video_tracks is True
    assert mappings.fail_on_no_audio_tracks is True
    for flag in (
        mappings.fail_on_ignored_files,
        mappings.fail_on_ignored_tracks,
        mappings.fail_on_no_subtitle_tracks,
        mappings.fail_on_no_caption_tracks,
    ):
        assert flag is False

    assert job.content_acquisition.credentials_protection == "Unencrypted"
    assert job.external_type == "" and job.external_provider == ""
    assert job.image_extraction is None and job.thumbnails is None
    assert job.message_publishers is None


def test_thumbnail_tile_defaults_to_10_by_10() -> None:
    job = check_job(make({"Thumbnails": {"Generate": True}})).job
    assert job is not None and job.thumbnails is not None
    assert (job.thumbnails.tile_columns, job.thumbnails.tile_rows) == (10, 10)
    assert job.thumbnails.width is None and job.thumbnails.height is None


def test_audio_representation_defaults() -> None:
    job = check_job(make({f"{CP}.AudioRepresentations": [{"BitrateInKbps": 96}]})).job
    assert job is not None
    (audio,) = job.content_processing.audio_representations or []
    assert (audio.sound, audio.audio_format, audio.create) == (
        Sound.Stereo,
        AudioFormat.AAC,
        Create.Always,
    )


@pytest.mark.parametrize("value", ["", "  ", "balance", "Balance"])
def test_optimize_for_empty_is_balance(value: str) -> None:
    job = check_job(make({f"{CP}.OptimizeFor": value})).job
    assert job is not None and job.content_processing.optimize_for == OptimizeFor.Balance


@pytest.mark.parametrize(
    ("formats", "scheme"),
    [
        (["Dash"], EncryptionScheme.cenc),
        (["DashOnDemand"], EncryptionScheme.cenc),
        (["Hls"], EncryptionScheme.cbcs),
        (["Cmaf"], EncryptionScheme.cbcs),
        (["HlsTs"], EncryptionScheme.cbcs),
        (["Dash", "Hls"], EncryptionScheme.cbcs),
    ],
)
def test_default_encryption_scheme(formats: list[str], scheme: EncryptionScheme) -> None:
    processing = ContentProcessing.model_validate({"OutputFormat": formats})
    assert processing.scheme == scheme
    assert [OutputFormat(f) for f in formats] == processing.formats


def test_given_encryption_scheme_wins() -> None:
    processing = ContentProcessing.model_validate(
        {"OutputFormat": ["Dash"], "EncryptionScheme": "CBCS"}
    )
    assert processing.scheme == EncryptionScheme.cbcs


# ----------------------------------------------------------------------- unknown properties

UNKNOWN = {
    "Priority": 1,
    "ContentAcquisition.Region": "eu",
    f"{MM}.Detect": True,
    f"{CP}.Preset": "slow",
    f"{CP}.VideoRepresentations": [{"Height": 360, "BitrateInKbps": 800, "Fps": 25}],
    "MessagePublishers": [{**WEBHOOK, "Retries": 3}],
    "ImageExtraction": {**IMAGES, "Location": {**IMAGES["Location"], "Bucket": "b"}},
}
UNKNOWN_PATHS = {
    "Priority",
    "ContentAcquisition.Region",
    f"{MM}.Detect",
    f"{CP}.Preset",
    f"{CP}.VideoRepresentations[0].Fps",
    "MessagePublishers[0].Retries",
    "ImageExtraction.Location.Bucket",
}


def test_unknown_properties_are_warnings_with_paths() -> None:
    checked = check_job(make(UNKNOWN))
    assert checked.valid
    assert {w.field for w in checked.warnings} == UNKNOWN_PATHS
    assert all("unknown" in w.message for w in checked.warnings)


def test_unknown_properties_are_errors_when_strict() -> None:
    checked = check_job(make(UNKNOWN), strict=True)
    assert_outcome(checked, UNKNOWN_PATHS, "unknown property")
    assert checked.warnings == []


def test_unknown_properties_do_not_hide_errors() -> None:
    checked = check_job(make({**UNKNOWN, f"{CP}.OutputFormat": ["Cmaf", "Hls"]}))
    assert_outcome(checked, {f"{CP}.OutputFormat"})
    assert {w.field for w in checked.warnings} == UNKNOWN_PATHS


# ------------------------------------------------------------------ every problem at once


def test_every_problem_of_a_job_is_reported_at_once() -> None:
    job = make(
        {
            "ExternalId": "x" * 201,
            "ContentAcquisition.UriPath": DELETE,
            f"{MM}.AudioFileLanguageExpression": "^audio\\.wav$",
            f"{CP}.OutputFormat": ["Cmaf", "Hls"],
            f"{CP}.VideoFormat": "H266",
            f"{CP}.VideoRepresentations": [
                {"Width": 641, "BitrateInKbps": 900},
                {"Height": 360, "BitrateInKbps": 10},
                {"Height": 721, "BitrateInKbps": 2000},
            ],
            f"{CP}.DrmProtection": "Base64Key",
            f"{CP}.KeyId": "not-a-guid",
            "ImageExtraction": {**IMAGES, "Pattern": "preview.jpg", "Intervals": [5, 150]},
            "Thumbnails": {"Width": 10},
            "MessagePublishers": [WEBHOOK, {"Type": "Webhook"}, {"Type": "Pigeon"}],
            "ContentPublishing.UriPath": "file://relative/",
        }
    )
    checked = check_job(job)
    assert_outcome(
        checked,
        {
            "ExternalId",
            "ContentAcquisition.UriPath",
            f"{MM}.AudioFileLanguageExpression",
            f"{CP}.OutputFormat",
            f"{CP}.VideoFormat",
            f"{CP}.VideoRepresentations[0].Width",
            f"{CP}.VideoRepresentations[1].BitrateInKbps",
            f"{CP}.VideoRepresentations[2].Height",
            f"{CP}.KeyId",
            f"{CP}.ContentKey",
            "ImageExtraction.Pattern",
            "ImageExtraction.Intervals[1]",
            "Thumbnails.Width",
            "MessagePublishers[1].Url",
            "MessagePublishers[2].Type",
            "ContentPublishing.UriPath",
        },
    )
    with pytest.raises(JobValidationError) as raised:
        validate_job(job)
    assert raised.value.code == 1001
    assert {e.field for e in raised.value.errors} == fields(checked)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        pytest.param(
            {f"{CP}.DrmProtection": "Managd", f"{CP}.KeyId": KEY_ID},
            {f"{CP}.DrmProtection"},
            id="invalid-drm-mode-is-not-taken-as-None",
        ),
        pytest.param(
            {f"{CP}.VideoFormat": "H266", f"{CP}.ExtractAndApplyHDR": True},
            {f"{CP}.VideoFormat"},
            id="invalid-codec-is-not-taken-as-H264",
        ),
        pytest.param(
            {f"{CP}.VideoFormat": "H266", f"{CP}.OutputFormat": ["Cmaf", "Dash"]},
            {f"{CP}.VideoFormat", f"{CP}.OutputFormat"},
            id="rules-independent-of-the-invalid-field-still-run",
        ),
        pytest.param(
            {f"{MM}.FailOnNoVideoTracks": "perhaps", f"{MM}.VideoStreamExpression": DELETE},
            {f"{MM}.FailOnNoVideoTracks"},
            id="invalid-bool-is-not-taken-as-its-default",
        ),
    ],
)
def test_an_invalid_value_causes_no_follow_up_errors(changes: dict, expected: set[str]) -> None:
    assert_outcome(check_job(make(changes)), expected)


# ------------------------------------------------------------------------------------ secrets

SECRET = "Zz-very-secret-value-0042!"
SECRET_B64_SHORT = base64.b64encode(b"secret-key-8-bytes-too-long-x").decode()

SECRET_CASES = [
    (
        "contentkey-not-base64",
        {f"{CP}.DrmProtection": "Base64Key", f"{CP}.KeyId": KEY_ID, f"{CP}.ContentKey": SECRET},
        SECRET,
    ),
    (
        "contentkey-wrong-length",
        {
            f"{CP}.DrmProtection": "Base64Key",
            f"{CP}.KeyId": KEY_ID,
            f"{CP}.ContentKey": SECRET_B64_SHORT,
        },
        SECRET_B64_SHORT,
    ),
    (
        "contentkey-encrypted-not-base64",
        {f"{CP}.DrmProtection": "Encrypted", f"{CP}.KeyId": "bad", f"{CP}.ContentKey": SECRET},
        SECRET,
    ),
    ("contentkey-with-none", {f"{CP}.ContentKey": SECRET}, SECRET),
    (
        "credentials-secret-encrypted-not-base64",
        {
            "ContentAcquisition.CredentialsName": "reader",
            "ContentAcquisition.CredentialsSecret": SECRET,
            "ContentAcquisition.CredentialsProtection": "Encrypted",
        },
        SECRET,
    ),
    (
        "credentials-secret-without-name",
        {"ContentPublishing.CredentialsSecret": SECRET, "ContentPublishing.Provider": "Bogus"},
        SECRET,
    ),
    (
        "management-key-encrypted-not-base64",
        {
            f"{CP}.DrmProtection": "Managed",
            f"{CP}.DrmManaged": {**MANAGED, "ManagementKey": SECRET, "KeysProtection": "Encrypted"},
        },
        SECRET,
    ),
    (
        "keyseed-encrypted-not-base64",
        {
            f"{CP}.DrmProtection": "Managed",
            f"{CP}.DrmManaged": {
                **MANAGED,
                "ManagementKey": CIPHERTEXT,
                "KeySeed": SECRET,
                "KeysProtection": "Encrypted",
                "ApiUrl": "gopher://x",
            },
        },
        SECRET,
    ),
    (
        "connection-without-entitypath",
        {
            "MessagePublishers": [
                {"Type": "AzureServiceBusQueue", "Connection": f"Endpoint=sb://x/;Key={SECRET}"}
            ]
        },
        SECRET,
    ),
    (
        "connection-encrypted-not-base64",
        {
            "MessagePublishers": [
                {
                    "Type": "AzureServiceBusQueue",
                    "Connection": SECRET,
                    "CredentialsProtection": "Encrypted",
                    "Port": "not-a-port",
                }
            ]
        },
        SECRET,
    ),
    (
        "publisher-secret-encrypted-not-base64",
        {
            "MessagePublishers": [
                {**WEBHOOK, "CredentialsSecret": SECRET, "CredentialsProtection": "Encrypted"}
            ]
        },
        SECRET,
    ),
]


@pytest.mark.parametrize(
    ("changes", "secret"), [pytest.param(c, s, id=i) for i, c, s in SECRET_CASES]
)
def test_secrets_never_in_error_text(changes: dict, secret: str) -> None:
    job = make(changes)
    checked = check_job(job)
    assert checked.job is None and checked.errors
    text = str(checked.errors) + str(checked.warnings) + repr(checked)
    text += json.dumps([e.as_json() for e in checked.errors])
    assert secret not in text
    with pytest.raises(JobValidationError) as raised:
        validate_job(json.dumps(job))
    assert secret not in str(raised.value) and secret not in repr(raised.value.errors)


SECRETS_VALID = {
    "ContentAcquisition.CredentialsName": "reader",
    "ContentAcquisition.CredentialsSecret": "S3cr3t-acquisition",
    f"{CP}.DrmProtection": "Base64Key",
    f"{CP}.KeyId": KEY_ID,
    f"{CP}.ContentKey": "qrvM3e7/ABEiM0RVZneImQ==",
    "MessagePublishers": [
        {
            "Type": "AzureServiceBusQueue",
            "Connection": "Endpoint=sb://x/;SharedAccessKey=S3cr3t-bus;EntityPath=q",
        },
        {**WEBHOOK, "CredentialsSecret": "S3cr3t-hmac"},
    ],
}


def test_secrets_never_in_a_valid_jobs_repr_or_dump() -> None:
    job = check_job(make(SECRETS_VALID)).job
    assert job is not None
    assert len(job.secrets) == 4
    shown = repr(job) + str(job) + job.model_dump_json() + str(job.model_dump())
    shown += job.model_dump_json(by_alias=True)
    for secret in job.secrets:
        assert secret not in shown


def test_secrets_of_managed_drm_are_hidden() -> None:
    managed = {**MANAGED, "KeySeedId": "S3cr3t-seed", "Thumbprints": "S3cr3t-thumb"}
    job = check_job(make({f"{CP}.DrmProtection": "Managed", f"{CP}.DrmManaged": managed})).job
    assert job is not None
    shown = repr(job) + job.model_dump_json()
    for secret in (MANAGED["ManagementKey"], "S3cr3t-seed", "S3cr3t-thumb"):
        assert secret in job.secrets
        assert secret not in shown


# ------------------------------------------------------------------------ input robustness


@pytest.mark.parametrize("source", [[], "job", 42, None, [MINIMAL]])
def test_a_job_must_be_an_object(source: Any) -> None:
    assert_outcome(check_job(source), {"$"}, "JSON object")


def test_deeply_nested_values_are_an_error_not_a_crash() -> None:
    deep: Any = []
    for _ in range(5000):
        deep = [deep]
    job = make({f"{CP}.OutputFormat": ["Cmaf", "Hls"]})
    job["ExternalId"] = deep
    checked = check_job(job)
    assert_outcome(checked, {"ExternalId", f"{CP}.OutputFormat"})


def test_validate_job_reads_files_and_json(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    path.write_text(json.dumps(MINIMAL))
    assert validate_job(path).valid
    assert validate_job(json.dumps(MINIMAL)).valid
    assert validate_job(json.dumps(MINIMAL).encode()).valid
    with pytest.raises(JobValidationError) as raised:
        validate_job("{not json")
    assert raised.value.errors == [raised.value.errors[0]]
    assert raised.value.errors[0].field == "$"
    with pytest.raises(JobValidationError):
        validate_job(tmp_path / "missing.json")


def test_field_error_json_shape() -> None:
    assert FieldError("A.B[1]", "bad").as_json() == {"Field": "A.B[1]", "Message": "bad"}
