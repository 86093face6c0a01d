"""Transfers through a fault-injecting TCP proxy in front of real servers.

Dropped connections, HTTP 503s (FTP: 421 greetings) and stalls are survived with the same bytes
(checksums compared), or end in an `unreachable`, retryable StorageError once `Storage.attempts`
is spent; a publish that fails for good leaves no manifest behind.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from servers import (
    LOCALHOST,
    FaultProxy,
    Target,
    azure_target,
    fast_storage_settings,
    file_md5,
    ftp_behind_proxy,
    ftp_target,
    s3_target,
)

from engine.locations import storage_error_to_engine
from storage import Storage, StorageError, StorageLocation, is_manifest, open_storage

MiB = 1 << 20
DOWNLOAD_CASES = ["S3Compatible", "AzureBlob", "Ftps", "Http"]
UPLOAD_CASES = ["S3Compatible", "AzureBlob", "Ftps"]


@dataclass
class Faulty:
    """A fresh folder on a server that is reached through `proxy`."""

    case: str
    target: Target
    proxy: FaultProxy
    http_file: Path | None = None  # Http: the one file the location points at
    http: Any = None  # Http: the server (its request log)
    ftp: Any = None  # Ftps: the server (its command log)

    def put(self, name: str, data: bytes) -> StorageLocation:
        """Store `data` on the server (directly) and return the location to read it from."""
        if self.case == "Http":
            assert self.http_file is not None
            self.http_file.write_bytes(data)
        else:
            self.target.put(name, data)
        return self.target.location


@pytest.fixture(autouse=True)
def _fast(monkeypatch, tls_files):
    fast_storage_settings(monkeypatch)
    monkeypatch.setenv("VIPE_FTPS_CA_FILE", str(tls_files.ca_file))


@pytest.fixture
def faulty(request, tmp_path, tls_files) -> Iterator[Faulty]:
    case = request.param
    proxy = FaultProxy()
    ftp = None
    if case == "S3Compatible":
        moto = request.getfixturevalue("moto_server")
        port = proxy.forward(LOCALHOST, int(moto.endpoint.rsplit(":", 1)[1]))
        bucket = request.getfixturevalue("s3_bucket")
        result = Faulty(case, s3_target(moto, bucket, endpoint=f"http://{LOCALHOST}:{port}"), proxy)
    elif case == "AzureBlob":
        azurite = request.getfixturevalue("azurite_server")
        port = proxy.forward(LOCALHOST, int(azurite.blob_endpoint.rsplit(":", 1)[1]))
        container = request.getfixturevalue("azure_container")
        endpoint = f"http://{LOCALHOST}:{port}"
        result = Faulty(case, azure_target(azurite, container, endpoint=endpoint), proxy)
    elif case == "Ftps":
        proxy.close()
        ftp, proxy = ftp_behind_proxy("ftpes", tmp_path / "ftp", tls_files)
        result = Faulty(case, ftp_target(ftp, host=LOCALHOST), proxy, ftp=ftp)
    elif case == "Http":
        server = request.getfixturevalue("http_server")
        port = proxy.forward(LOCALHOST, server.port)
        name = f"{tmp_path.name}.mp4"
        location = StorageLocation(
            "Http", server.url(name, port=port), server.user, server.password
        )
        target = Target(location, None, None, None)  # type: ignore[arg-type]
        result = Faulty(case, target, proxy, http_file=server.root / name, http=server)
    else:
        raise AssertionError(case)
    yield result
    proxy.close()
    if ftp is not None:
        ftp.stop()


@pytest.fixture(scope="module")
def s3_bucket(moto_server) -> str:
    return moto_server.create_bucket()


@pytest.fixture(scope="module")
def azure_container(azurite_server) -> str:
    return azurite_server.create_container()


def _download(location: StorageLocation, folder: Path) -> list[Path]:
    storage = open_storage(location)
    try:
        return storage.download_folder(folder)
    finally:
        storage.close()


def _publish(location: StorageLocation, folder: Path) -> list[str]:
    storage = open_storage(location)
    try:
        return storage.upload_folder(folder)
    finally:
        storage.close()


def _source(tmp_path: Path, files: dict[str, int]) -> Path:
    folder = tmp_path / "out"
    for name, size in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(os.urandom(size))
    return folder


@pytest.mark.parametrize("faulty", DOWNLOAD_CASES, indirect=True)
def test_download_survives_dropped_connections(faulty, tmp_path):
    data = os.urandom(3 * MiB + 100)
    location = faulty.put("movie.mp4", data)
    fault = faulty.proxy.drop(after_bytes=MiB, direction="down", times=2)

    paths = _download(location, tmp_path / "in")

    assert fault.fired >= 1
    assert len(paths) == 1 and file_md5(paths[0]) == _md5(data)
    assert [p.name for p in (tmp_path / "in").iterdir()] == [paths[0].name]  # no partial files
    # Resumed where the connection broke (FTP REST, HTTP Range + If-Range), not started over.
    # (Not measured in bytes: a reset also discards what sat unread in the client's buffer.)
    if faulty.case == "Ftps":
        assert [arg for command, arg in faulty.ftp.commands if command == "REST" and arg != "0"]
    if faulty.case == "Http":
        resumed = [h for _, _, h in faulty.http.requests if h.get("Range", "bytes=0-")[6] != "0"]
        assert resumed and all(h.get("If-Range") for h in resumed)


@pytest.mark.parametrize("faulty", UPLOAD_CASES, indirect=True)
def test_upload_survives_dropped_connections(faulty, tmp_path):
    source = _source(tmp_path, {"video.mp4": 3 * MiB + 100, "manifest.mpd": 500})
    # Azure sends 256 KiB blocks over 4 connections: cut below what one connection carries.
    fault = faulty.proxy.drop(after_bytes=400 * 1024, direction="up", times=2)

    _publish(faulty.target.location, source)

    assert fault.fired == 2
    assert _md5(faulty.target.get("video.mp4")) == file_md5(source / "video.mp4")
    assert faulty.target.get("manifest.mpd") == (source / "manifest.mpd").read_bytes()


@pytest.mark.parametrize("faulty", DOWNLOAD_CASES, indirect=True)
def test_transient_refusals_are_retried(faulty, tmp_path):
    """HTTP answers 503 twice (FTP: a 421 greeting twice); the transfer then completes."""
    data = os.urandom(200_000)
    location = faulty.put("movie.mp4", data)
    fault = _refuse(faulty, times=2)

    paths = _download(location, tmp_path / "in")

    assert fault.fired == 2
    assert file_md5(paths[0]) == _md5(data)
    if faulty.case != "Http":
        fault = _refuse(faulty, times=2)
        source = _source(tmp_path, {"seg 1.m4s": 150_000, "manifest.mpd": 300})
        _publish(faulty.target.location, source)
        assert fault.fired == 2
        assert faulty.target.get("seg 1.m4s") == (source / "seg 1.m4s").read_bytes()


@pytest.mark.parametrize("faulty", DOWNLOAD_CASES, indirect=True)
def test_stalled_transfer_times_out_and_is_retried(faulty, tmp_path, monkeypatch):
    fast_storage_settings(monkeypatch, timeout=1.0)
    data = os.urandom(MiB)
    location = faulty.put("movie.mp4", data)
    fault = faulty.proxy.stall(after_bytes=64 * 1024, seconds=5, direction="down", times=1)

    paths = _download(location, tmp_path / "in")

    assert fault.fired == 1
    assert file_md5(paths[0]) == _md5(data)


@pytest.mark.parametrize("faulty", DOWNLOAD_CASES, indirect=True)
def test_gives_up_after_the_retry_bound(faulty, tmp_path):
    location = faulty.put("movie.mp4", b"x" * 1000)
    fault = _refuse(faulty, times=None)

    with pytest.raises(StorageError) as caught:
        _download(location, tmp_path / "in")

    assert caught.value.kind == "unreachable" and caught.value.retryable
    assert fault.fired == Storage.attempts  # bounded: one connection per attempt
    engine_error = storage_error_to_engine(caught.value, publishing=False)
    assert engine_error.code == 2001 and engine_error.phase == "Acquisition"
    assert not any((tmp_path / "in").glob("*")) if (tmp_path / "in").exists() else True


@pytest.mark.parametrize("faulty", UPLOAD_CASES, indirect=True)
def test_failed_publish_leaves_no_manifest(faulty, tmp_path):
    """manifest.m3u8 (small) goes up before manifest.mpd (big); the mpd's connection is cut every
    time, so the publish fails for good and the rollback removes the m3u8 and the segments."""
    source = _source(
        tmp_path,
        {
            "seg_1.m4s": 10_000,
            "seg_2.m4s": 10_000,
            "sub/seg_3.m4s": 10_000,
            "manifest.m3u8": 400,
            "manifest.mpd": 2 * MiB,
        },
    )
    faulty.proxy.drop(after_bytes=512 * 1024, direction="up", times=None)

    with pytest.raises(StorageError) as caught:
        _publish(faulty.target.location, source)

    assert caught.value.kind == "unreachable"
    assert storage_error_to_engine(caught.value, publishing=True).code == 4301
    left = faulty.target.names()
    assert not [name for name in left if is_manifest(name)]
    assert left == set()  # the rollback removed the segments too


def _refuse(faulty: Faulty, times: int | None):
    if faulty.case == "Ftps":
        return faulty.proxy.reply(b"421 Service not available, try later.\r\n", times=times)
    return faulty.proxy.http_error(503, times=times)


def _md5(data: bytes) -> str:
    import hashlib

    return hashlib.md5(data).hexdigest()
