"""Whole jobs between real storage servers (contract §3; FinalError codes 2001-2003, 4301-4302).

- S3 input (S3Compatible on moto through `run_job`; AmazonS3 with `VIPE_S3_ENDPOINT_URL` through
  `vipe run` in a subprocess) to Azure output (Azurite), one secret `Encrypted` with the service
  certificate: the package lands in the container, acquisition progress is reported in bytes,
  `ContentPublished` and the report's sizes match what the servers hold, no secret leaks.
- FTPS input (explicit TLS, the test CA trusted through `VIPE_FTPS_CA_FILE`) to S3 output.
- A publish that fails for good (a `FaultProxy` in front of Azurite that cuts every connection
  once the first uploads went through) ends with 4301 and no manifest in the output; when the
  outage is over by the rollback (it cut exactly `Storage.attempts` connections), the output
  folder is empty.
- Wrong input credentials end with 2002, a message naming the provider and the location, never
  the secret; a missing bucket/container and an empty input folder end with 2003.

Media: one 2 s 160x90 source, one rung, OptimizeFor Speed, CMAF (DASH and HLS manifests over one
set of segments).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from mediagen import make_media
from servers import (
    LOCALHOST,
    AzuriteServer,
    FaultProxy,
    MotoServer,
    Target,
    azure_target,
    fast_storage_settings,
    ftp_target,
    s3_target,
)

from drm.credentials import ServiceKey, encrypt_for_certificate
from engine.pipeline import run_job
from storage import Storage, is_manifest
from storage.azure import AzureBlobStorage

# One rung at the source's own size; 1 s segments give two segments per track.
LADDER = [{"Height": 90, "BitrateInKbps": 150}]
SECRET_LIKE = "ThisIs-Not-The-Key-0123456789"  # a wrong secret, distinctive enough to grep for
WRONG_AZURE_KEY = "V3Jvbmcta2V5LW5vdC10aGUtYWNjb3VudC1rZXktMDEyMzQ1Njc4OQ=="  # base64


@pytest.fixture(autouse=True)
def _fast(monkeypatch, tls_files):
    fast_storage_settings(monkeypatch)
    monkeypatch.setenv("VIPE_FTPS_CA_FILE", str(tls_files.ca_file))


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("storage-jobs") / "movie.mp4"
    return make_media(path, duration=2, width=160, height=90)


@pytest.fixture(scope="module")
def s3_bucket(moto_server) -> str:
    return moto_server.create_bucket()


@pytest.fixture(scope="module")
def azure_container(azurite_server) -> str:
    return azurite_server.create_container()


# ------------------------------------------------------------------------------------ helpers


def storage_object(target: Target, protect=None) -> dict[str, Any]:
    """The job's storage object for a target; `protect` encrypts its secret (Encrypted)."""
    location = target.location
    spec: dict[str, Any] = {"Provider": location.provider, "UriPath": location.uri}
    if location.credentials_name:
        spec["CredentialsName"] = location.credentials_name
    if location.credentials_secret:
        if protect is None:
            spec["CredentialsSecret"] = location.credentials_secret
        else:
            spec["CredentialsSecret"] = protect(location.credentials_secret)
            spec["CredentialsProtection"] = "Encrypted"
    return spec


def local_object(folder: Path) -> dict[str, Any]:
    return {"Provider": "Local", "UriPath": folder.as_uri() + "/"}


def make_job(acquisition: dict[str, Any], publishing: dict[str, Any]) -> dict[str, Any]:
    return {
        "ExternalId": "storage-42",
        "ContentAcquisition": acquisition,
        "MediaMappings": {"VideoStreamExpression": r"^movie\.mp4$"},
        "ContentProcessing": {
            "OutputFormat": ["Cmaf"],
            "OptimizeFor": "Speed",
            "SegmentLengthInSeconds": 1,
            "VideoRepresentations": LADDER,
            "HardwareAcceleration": "None",
        },
        "ContentPublishing": publishing,
    }


def run(
    job: dict[str, Any], root: Path, data_dir: Path | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """`run_job` with a work folder under `root` and the data dir (service key) `root/data`."""
    events: list[dict[str, Any]] = []
    report = run_job(
        job, on_event=events.append, workdir=root / "work", data_dir=data_dir or root / "data"
    )
    return report, events


def of_type(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in events if e["MessageType"] == name]


def final_error(events: list[dict[str, Any]]) -> dict[str, Any]:
    assert events and events[-1]["MessageType"] == "FinalError", [e["MessageType"] for e in events]
    return events[-1]


def protector(root: Path):
    """Encrypts a secret with the certificate of the service key in `root/data` (run's data
    dir), as a client does with the answer of `GET /certificate`."""
    key = ServiceKey.load_or_create(root / "data")
    return lambda secret: encrypt_for_certificate(secret, key.certificate_base64)


def s3_sizes(moto: MotoServer, bucket: str, folder: str) -> dict[str, int]:
    """Every object under the folder (recursive): relative name -> size."""
    client = moto.client("s3")
    prefix = folder + "/"
    sizes = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            sizes[item["Key"][len(prefix) :]] = int(item["Size"])
    return sizes


def azure_sizes(azurite: AzuriteServer, container: str, folder: str) -> dict[str, int]:
    client = azurite.service_client().get_container_client(container)
    prefix = folder + "/"
    return {
        blob.name[len(prefix) :]: int(blob.size)
        for blob in client.list_blobs(name_starts_with=prefix)
    }


def folder_of(target: Target) -> str:
    """The (unquoted) folder name a target's URI ends in."""
    from urllib.parse import unquote

    return unquote(target.location.uri.rstrip("/").rsplit("/", 1)[1])


def put_input(target: Target, source: Path) -> int:
    """The source plus a small unrelated file in the input folder, and a file in a sub-folder
    (not acquired: only the folder's own files are). Returns the bytes to be acquired."""
    extra = b"notes about the movie\n" * 10
    target.put("movie.mp4", source.read_bytes())
    target.put("notes.txt", extra)
    target.put("extras/trailer.mp4", b"not acquired: in a sub-folder")
    return source.stat().st_size + len(extra)


def check_success(
    report: dict[str, Any],
    events: list[dict[str, Any]],
    acquired_bytes: int,
    published: dict[str, int],
    secrets: list[str],
) -> None:
    """The job succeeded; acquisition progress in bytes; ContentPublished and the report agree
    with what the output server holds; the package is complete; no secret anywhere."""
    types = [e["MessageType"] for e in events]
    assert report["Success"] is True and types[-1] == "JobSuccess", (report, types)
    assert "FinalError" not in types

    progress = of_type(events, "AcquisitionProgress")
    assert progress, types
    for event in progress:
        assert event["BytesTotal"] == acquired_bytes
        assert 0 <= event["BytesDone"] <= acquired_bytes
        assert event["Progress"] == int(100 * event["BytesDone"] / acquired_bytes)
    assert [e["BytesDone"] for e in progress] == sorted(e["BytesDone"] for e in progress)
    assert progress[-1]["BytesDone"] == acquired_bytes and progress[-1]["Progress"] == 100
    acquired = of_type(events, "ContentAcquired")[0]
    assert acquired["FilesCount"] == 2 and acquired["BytesCount"] == acquired_bytes
    assert report["AcquiredFilesSizeInBytes"] == acquired_bytes

    # The package on the server: manifests, init segments and media segments of every track.
    names = set(published)
    assert {"manifest.mpd", "manifest.m3u8"} <= names, sorted(names)
    streams = of_type(events, "EncodingFinished")[0]["Streams"]
    assert {s["Type"] for s in streams} == {"Video", "Audio"}
    for stream in streams:
        assert stream["InitFile"] in names, (stream["InitFile"], sorted(names))
        pattern = re.escape(stream["FileTemplate"]).replace(r"\$Number\$", r"\d+")
        segments = [n for n in names if re.fullmatch(pattern, n)]
        assert len(segments) >= 2, (stream["FileTemplate"], sorted(names))
    assert all(size > 0 for size in published.values()), published
    published_event = of_type(events, "ContentPublished")[0]
    assert published_event["FilesCount"] == len(published)
    assert published_event["BytesCount"] == sum(published.values())
    assert set(published_event["Manifests"]) == {n for n in names if is_manifest(n)}
    assert report["PublishedFilesSizeInBytes"] == sum(published.values())
    assert report["BitratesCount"] == 1 and report["OutputFormat"] == "CMAF"

    text = json.dumps(events) + json.dumps(report)
    for secret in secrets:
        assert secret not in text


# ------------------------------------------------------------------------- successful jobs


def test_s3_compatible_to_azure_with_an_encrypted_key(
    moto_server, s3_bucket, azurite_server, azure_container, source, tmp_path
):
    source_target = s3_target(moto_server, s3_bucket)
    output = azure_target(azurite_server, azure_container)
    acquired_bytes = put_input(source_target, source)
    protect = protector(tmp_path)
    job = make_job(storage_object(source_target), storage_object(output, protect))
    ciphertext = job["ContentPublishing"]["CredentialsSecret"]

    report, events = run(job, tmp_path)

    published = azure_sizes(azurite_server, azure_container, folder_of(output))
    check_success(
        report, events, acquired_bytes, published, [azurite_server.key, moto_server.secret_key]
    )
    assert ciphertext not in json.dumps(events)
    # The bytes on the server are the package's: a manifest read back through Azurite.
    assert output.get("manifest.mpd").startswith(b"<?xml")
    # The input folder is untouched (DeleteFilesFromSourceWhenDone is false).
    assert source_target.names() == {"movie.mp4", "notes.txt", "extras/trailer.mp4"}


def test_amazon_s3_to_azure_through_vipe_run(
    moto_server, s3_bucket, azurite_server, azure_container, source, tmp_path
):
    """`vipe run` in a subprocess; AmazonS3 URIs reach moto through the endpoint override."""
    source_target = s3_target(moto_server, s3_bucket, provider="AmazonS3")
    assert source_target.location.uri.startswith(f"https://{s3_bucket}.s3.")
    output = azure_target(azurite_server, azure_container)
    acquired_bytes = put_input(source_target, source)
    protect = protector(tmp_path)
    job = make_job(storage_object(source_target, protect), storage_object(output))
    job_path, events_path, report_path = (
        tmp_path / "job.json",
        tmp_path / "events.jsonl",
        tmp_path / "report.json",
    )
    job_path.write_text(json.dumps(job))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "VIPE_S3", "VIPE_STS"))}
    env.update(VIPE_S3_ENDPOINT_URL=moto_server.endpoint, AWS_EC2_METADATA_DISABLED="true")

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "run",
            str(job_path),
            "--events",
            str(events_path),
            "--report",
            str(report_path),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    events = [json.loads(line) for line in events_path.read_text().splitlines()]
    report = json.loads(report_path.read_text())
    published = azure_sizes(azurite_server, azure_container, folder_of(output))
    check_success(
        report, events, acquired_bytes, published, [moto_server.secret_key, azurite_server.key]
    )
    for secret in (moto_server.secret_key, job["ContentAcquisition"]["CredentialsSecret"]):
        assert secret not in result.stdout + result.stderr
    assert events[0]["ContentAcquisitionProvider"] == "AmazonS3"


def test_ftps_explicit_tls_to_s3(ftp_explicit, moto_server, s3_bucket, source, tmp_path):
    source_target = ftp_target(ftp_explicit)
    assert source_target.location.uri.startswith("ftpes://")
    output = s3_target(moto_server, s3_bucket)
    acquired_bytes = put_input(source_target, source)
    job = make_job(storage_object(source_target), storage_object(output))

    report, events = run(job, tmp_path)

    published = s3_sizes(moto_server, s3_bucket, folder_of(output))
    check_success(
        report, events, acquired_bytes, published, [ftp_explicit.password, moto_server.secret_key]
    )
    # Explicit TLS: AUTH TLS before the password was sent.
    commands = [command for command, _ in ftp_explicit.commands]
    assert "AUTH" in commands and commands.index("AUTH") < commands.index("PASS")
    assert output.content_type and output.content_type("manifest.mpd") == "application/dash+xml"


# ---------------------------------------------------------------------------- failing jobs


@pytest.mark.parametrize("outage", ["ends", "lasts"])
def test_publish_failing_for_good(
    outage, azurite_server, azure_container, source, tmp_path, monkeypatch, caplog
):
    """Azure through a FaultProxy: the first three uploads go through, then every connection is
    cut as soon as it carries data. The upload in flight fails on every attempt (the retry
    bound) and the job ends with 4301; manifests go last, so none was ever written.

    `ends`: the outage lasts exactly `Storage.attempts` connections, so the rollback that
    follows deletes what had gone up: the output folder is empty. `lasts`: the rollback cannot
    reach the server either; what is left is segments only, never a manifest."""
    proxy = FaultProxy()
    try:
        port = proxy.forward(LOCALHOST, int(azurite_server.blob_endpoint.rsplit(":", 1)[1]))
        output = azure_target(
            azurite_server, azure_container, endpoint=f"http://{LOCALHOST}:{port}"
        )
        (tmp_path / "in").mkdir()
        (tmp_path / "in" / "movie.mp4").write_bytes(source.read_bytes())

        uploaded: list[str] = []
        faults = []
        upload = AzureBlobStorage.upload_file

        def upload_then_fail(self, path, name, progress=None, cancel=None):
            if len(uploaded) == 3 and not faults:  # the outage starts after three uploads
                times = Storage.attempts if outage == "ends" else None
                faults.append(proxy.drop(0, direction="up", times=times))
            upload(self, path, name, progress, cancel)
            uploaded.append(name)

        monkeypatch.setattr(AzureBlobStorage, "upload_file", upload_then_fail)
        job = make_job(local_object(tmp_path / "in"), storage_object(output))

        report, events = run(job, tmp_path)
    finally:
        proxy.close()

    error = final_error(events)
    assert error["ErrorCode"] == 4301 and error["Phase"] == "Publishing", error
    assert report["Success"] is False and report["ErrorCode"] == 4301
    message = error["ErrorMessage"]
    assert message.startswith("AzureBlob") and azure_container in message, message
    assert folder_of(output) in message, message
    assert azurite_server.key not in json.dumps(events) + caplog.text
    assert len(uploaded) == 3 and not any(is_manifest(name) for name in uploaded)
    assert "ContentPublished" not in [e["MessageType"] for e in events]
    left = azure_sizes(azurite_server, azure_container, folder_of(output))
    assert not [name for name in left if is_manifest(name)], left
    if outage == "ends":
        assert faults[0].fired == Storage.attempts  # bounded: one connection per attempt
        assert left == {}, left  # the rollback removed the segments that had gone up
    else:
        assert set(left) <= set(uploaded), left
        assert "could not remove" in caplog.text  # the failed rollback is logged


def test_wrong_input_credentials_are_denied(
    moto_server, s3_bucket, azurite_server, azure_container, ftp_explicit, source, tmp_path
):
    """2002 for S3, Azure and FTPS; the message names the provider and the location, never the
    secret (one of them Encrypted: neither the clear secret nor its ciphertext shows)."""
    protect = protector(tmp_path)
    wrong_azure_key = WRONG_AZURE_KEY
    targets = {
        "S3Compatible": s3_target(moto_server, s3_bucket, secret=SECRET_LIKE),
        "AzureBlob": azure_target(azurite_server, azure_container, key=wrong_azure_key),
        "Ftps": ftp_target(ftp_explicit, password=SECRET_LIKE),
    }
    for target in targets.values():
        target.put("movie.mp4", source.read_bytes())
    for number, (provider, target) in enumerate(targets.items()):
        root = tmp_path / provider
        spec = storage_object(target, protect if provider == "AzureBlob" else None)
        job = make_job(spec, local_object(root / "out"))

        report, events = run(job, root, data_dir=tmp_path / "data")

        error = final_error(events)
        assert error["ErrorCode"] == 2002 and error["Phase"] == "Acquisition", (provider, error)
        assert report["ErrorCode"] == 2002 and report["Success"] is False
        message = error["ErrorMessage"]
        assert message.startswith(provider), message
        location = quote(folder_of(target)) if provider == "S3Compatible" else folder_of(target)
        host_part = s3_bucket if provider == "S3Compatible" else ""
        assert location in message and host_part in message, message
        assert "StorageErrorCode." not in message  # the code as the service spells it
        text = json.dumps(events) + json.dumps(report)
        for secret in (SECRET_LIKE, wrong_azure_key, spec["CredentialsSecret"]):
            assert secret not in text, (provider, number)
        assert not (root / "out").exists() or not any((root / "out").iterdir())


def test_missing_bucket_container_and_empty_folders(
    moto_server, s3_bucket, azurite_server, azure_container, ftp_explicit, tmp_path
):
    """2003: a bucket or container that does not exist, an input folder with no files in it
    (S3: only a sub-folder's object under the prefix; Azure and FTPS: nothing at all)."""
    missing = f"vipe-missing-{uuid.uuid4().hex[:8]}"
    empty_s3 = s3_target(moto_server, s3_bucket)
    empty_s3.put("sub/movie.mp4", b"in a sub-folder: not the folder's own file")
    ftp_empty = ftp_target(ftp_explicit)
    (ftp_explicit.root / folder_of(ftp_empty)).mkdir()
    cases = {
        "missing bucket": s3_target(moto_server, missing),
        "missing container": azure_target(azurite_server, missing),
        "empty S3 folder": empty_s3,
        "empty Azure folder": azure_target(azurite_server, azure_container),
        "empty FTPS folder": ftp_empty,
    }
    for index, (case, target) in enumerate(cases.items()):
        root = tmp_path / f"case{index}"
        job = make_job(storage_object(target), local_object(root / "out"))

        report, events = run(job, root)

        error = final_error(events)
        assert error["ErrorCode"] == 2003 and error["Phase"] == "Acquisition", (case, error)
        assert report["ErrorCode"] == 2003, case
        assert error["ErrorMessage"].startswith(target.location.provider), (case, error)
        if case.startswith("missing"):
            assert missing in error["ErrorMessage"], (case, error)
        assert target.location.credentials_secret not in json.dumps(events), case


def test_wrong_output_credentials_fail_before_the_encode(
    moto_server, s3_bucket, azurite_server, azure_container, ftp_explicit, source, tmp_path
):
    """4302 in Pre-Validation for an output that refuses the credentials: the job stops
    before acquiring and encoding anything, and the secret shows nowhere."""
    root = tmp_path / "job"
    (root / "in").mkdir(parents=True)
    (root / "in" / "movie.mp4").write_bytes(source.read_bytes())
    for provider, target in {
        "S3Compatible": s3_target(moto_server, s3_bucket, secret=SECRET_LIKE),
        "AzureBlob": azure_target(azurite_server, azure_container, key=WRONG_AZURE_KEY),
        "Ftps": ftp_target(ftp_explicit, password=SECRET_LIKE),
    }.items():
        job = make_job(local_object(root / "in"), storage_object(target))

        report, events = run(job, root / provider)

        error = final_error(events)
        assert error["ErrorCode"] == 4302 and error["Phase"] == "Pre-Validation", error
        assert error["ErrorMessage"].startswith(provider), error
        names = [e["MessageType"] for e in events]
        assert "ContentAcquired" not in names and "VideoEncodingStarted" not in names
        for secret in (SECRET_LIKE, WRONG_AZURE_KEY):
            assert secret not in json.dumps(events) + json.dumps(report)


def test_refused_image_location_fails_before_the_encode(ftp_explicit, source, tmp_path):
    """4201 in Pre-Validation when ImageExtraction.Location refuses the credentials."""
    root = tmp_path / "job"
    (root / "in").mkdir(parents=True)
    (root / "in" / "movie.mp4").write_bytes(source.read_bytes())
    job = make_job(local_object(root / "in"), local_object(root / "out"))
    job["ImageExtraction"] = {
        "Intervals": [50],
        "Pattern": "still_%.jpg",
        "Location": storage_object(ftp_target(ftp_explicit, password=SECRET_LIKE)),
    }

    report, events = run(job, root)

    error = final_error(events)
    assert error["ErrorCode"] == 4201 and error["Phase"] == "Pre-Validation", error
    assert "VideoEncodingStarted" not in [e["MessageType"] for e in events]
    assert SECRET_LIKE not in json.dumps(events) + json.dumps(report)
    assert not (root / "out").exists() or not any((root / "out").iterdir())
