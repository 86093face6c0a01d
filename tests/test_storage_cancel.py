"""Cancellation reaches storage: a cancel during a stalled transfer (the FaultProxy stops
forwarding, the server never answers) or during a retry backoff raises the cancellation within
about a second, measured from the cancel, far below the stall and backoff limits."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import pytest
from servers import (
    LOCALHOST,
    FaultProxy,
    azure_target,
    fast_storage_settings,
    ftp_behind_proxy,
    ftp_target,
    s3_target,
)

from engine.cancel import CancelToken
from engine.errors import Cancelled
from storage import Storage, StorageError, StorageLocation, open_storage
from storage.base import pause
from storage.http import HttpStorage

pytest_plugins = ["servers"]

MiB = 1 << 20
STALL = 30.0  # the proxy's stall, and the transfers' own timeout: far longer than the test


@pytest.fixture(autouse=True)
def _slow_timeouts(monkeypatch, tls_files):
    fast_storage_settings(monkeypatch, timeout=STALL)
    monkeypatch.setenv("VIPE_FTPS_CA_FILE", str(tls_files.ca_file))


@pytest.fixture
def proxy():
    proxy = FaultProxy()
    yield proxy
    proxy.close()


def _cancel_when(ready: Callable[[], bool], token: CancelToken) -> list[float]:
    """Cancel `token` 0.5 s after `ready()` turns true (the transfer is stalled by then); the
    list receives the moment of the cancel."""
    cancelled_at: list[float] = []

    def watch() -> None:
        deadline = time.monotonic() + STALL
        while not ready() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.5)
        cancelled_at.append(time.monotonic())
        token.cancel()

    threading.Thread(target=watch, daemon=True).start()
    return cancelled_at


def _assert_cancelled_quickly(action: Callable[[], object], token: CancelToken, when) -> float:
    cancelled_at = _cancel_when(when, token)
    started = time.monotonic()
    with pytest.raises(Cancelled):
        action()
    ended = time.monotonic()
    assert cancelled_at, "the transfer ended before it was cancelled"
    latency = ended - cancelled_at[0]
    assert latency < 2.0, f"the cancel took {latency:.2f} s to reach the transfer"
    assert ended - started < STALL / 2  # it did not wait for the stall to end
    print(f"cancel reached the transfer after {latency:.2f} s")
    return latency


@pytest.mark.parametrize("after_bytes", [0, 256 * 1024], ids=["before-headers", "mid-body"])
def test_cancel_during_a_stalled_http_download(http_server, proxy, tmp_path, after_bytes):
    name = f"{tmp_path.name}.mp4"
    (http_server.root / name).write_bytes(os.urandom(4 * MiB))
    port = proxy.forward(LOCALHOST, http_server.port)
    location = StorageLocation(
        "Http", http_server.url(name, port=port), http_server.user, http_server.password
    )
    fault = proxy.stall(after_bytes=after_bytes, seconds=STALL, direction="down", times=None)
    storage = open_storage(location)
    # The listing's one-byte answer passes the mid-body stall; before-headers stalls it too.
    token = CancelToken()
    work = tmp_path / "in"
    _assert_cancelled_quickly(
        lambda: storage.download_folder(work, cancel=token.check), token, lambda: fault.fired > 0
    )
    time.sleep(0.3)
    assert not any(work.glob("*")) if work.exists() else True  # no partial file left


def test_cancel_during_a_stalled_s3_multipart_upload(moto_server, proxy, tmp_path):
    port = proxy.forward(LOCALHOST, int(moto_server.endpoint.rsplit(":", 1)[1]))
    bucket = moto_server.create_bucket()
    target = s3_target(moto_server, bucket, endpoint=f"http://{LOCALHOST}:{port}")
    source = tmp_path / "package"
    source.mkdir()
    (source / "seg 1.m4s").write_bytes(os.urandom(200_000))
    (source / "video.mp4").write_bytes(os.urandom(11 * MiB))  # multipart: 3 parts of 5 MiB
    token = CancelToken()
    storage = open_storage(target.location)
    # Every connection stalls once it has sent 512 KiB: the segment (200 kB) goes up, the
    # multipart upload's first part stalls. (Set from the start: set once the segment showed
    # in the bucket, the 11 MiB sometimes finished before the stall was in place.)
    fault = proxy.stall(after_bytes=512 * 1024, seconds=STALL, direction="up", times=None)

    try:
        _assert_cancelled_quickly(
            lambda: storage.upload_folder(source, cancel=token.check),
            token,
            lambda: fault.fired > 0,
        )
    finally:
        storage.close()
    proxy.clear()
    client = moto_server.client("s3")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the abort runs beside the cancel, not before it
        if not client.list_multipart_uploads(Bucket=bucket).get("Uploads"):
            break
        time.sleep(0.1)
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")  # aborted, not billed
    assert target.names() == set()  # the segment that made it up was rolled back


def test_cancel_during_a_stalled_azure_download(azurite_server, proxy, tmp_path):
    port = proxy.forward(LOCALHOST, int(azurite_server.blob_endpoint.rsplit(":", 1)[1]))
    container = azurite_server.create_container()
    target = azure_target(azurite_server, container, endpoint=f"http://{LOCALHOST}:{port}")
    target.put("movie.mp4", os.urandom(2 * MiB))
    storage = open_storage(target.location)
    fault = proxy.stall(after_bytes=300 * 1024, seconds=STALL, direction="down", times=None)
    token = CancelToken()
    try:
        _assert_cancelled_quickly(
            lambda: storage.download_folder(tmp_path / "in", cancel=token.check),
            token,
            lambda: fault.fired > 0,
        )
    finally:
        storage.close()


def test_cancel_during_a_stalled_ftps_download(tmp_path, tls_files):
    server, proxy = ftp_behind_proxy("ftpes", tmp_path / "ftp", tls_files)
    try:
        target = ftp_target(server, host=LOCALHOST)
        target.put("movie.mp4", os.urandom(4 * MiB))
        storage = open_storage(target.location)
        # Control traffic is small: only a data connection passes 256 KiB.
        fault = proxy.stall(after_bytes=256 * 1024, seconds=STALL, direction="down", times=None)
        token = CancelToken()
        try:
            _assert_cancelled_quickly(
                lambda: storage.download_folder(tmp_path / "in", cancel=token.check),
                token,
                lambda: fault.fired > 0,
            )
        finally:
            storage.close()
    finally:
        proxy.close()
        server.stop()


def test_a_retry_backoff_is_cancelled_within_a_second(http_server, proxy, tmp_path, monkeypatch):
    monkeypatch.setattr(Storage, "backoff_seconds", 20.0)
    name = f"{tmp_path.name}.mp4"
    (http_server.root / name).write_bytes(b"x" * 1000)
    port = proxy.forward(LOCALHOST, http_server.port)
    refusal = proxy.http_error(503, times=None)
    storage = HttpStorage(
        StorageLocation(
            "Http", http_server.url(name, port=port), http_server.user, http_server.password
        )
    )
    token = CancelToken()
    cancelled_at = _cancel_when(lambda: refusal.fired > 0, token)
    with pytest.raises(Cancelled):
        storage.download_folder(tmp_path / "in", cancel=token.check)
    latency = time.monotonic() - cancelled_at[0]
    assert latency < 1.0, f"the backoff noticed the cancel after {latency:.2f} s"
    assert refusal.fired == 1  # cancelled in the first backoff (20 s), no second attempt


def test_pause_checks_cancel_in_small_steps():
    token = CancelToken()
    threading.Timer(0.3, token.cancel).start()
    started = time.monotonic()
    with pytest.raises(Cancelled):
        pause(30.0, token.check)
    assert time.monotonic() - started < 1.0
    pause(0.05, None)  # without a cancel check it simply sleeps


def test_a_transfer_error_is_still_a_storage_error_with_a_cancel_check(http_server, tmp_path):
    """run_cancellable hands the transfer's own failure back unchanged."""
    storage = HttpStorage(StorageLocation("Http", http_server.url("nowhere.mp4")))
    with pytest.raises(StorageError) as caught:
        storage.download_folder(tmp_path / "in", cancel=CancelToken().check)
    assert caught.value.kind in ("missing", "denied")


def test_a_job_cancelled_during_a_stalled_download_ends_5001_within_5_s(
    http_server, proxy, tmp_path
):
    """The whole job: its Http source stalls mid-body, the job is cancelled; FinalError 5001
    (not 2001 after the retries) within 5 s of the cancel, and nothing is published."""
    from api_helpers import tiny_job

    from engine.pipeline import run_job

    name = f"{tmp_path.name}.mp4"
    (http_server.root / name).write_bytes(os.urandom(4 * MiB))
    port = proxy.forward(LOCALHOST, http_server.port)
    fault = proxy.stall(after_bytes=256 * 1024, seconds=STALL, direction="down", times=None)
    job = tiny_job(tmp_path, tmp_path / "out")
    job["ContentAcquisition"] = {
        "Provider": "Http",
        "UriPath": http_server.url(name, port=port),
        "CredentialsName": http_server.user,
        "CredentialsSecret": http_server.password,
    }
    token = CancelToken()
    cancelled_at = _cancel_when(lambda: fault.fired > 0, token)
    events: list[dict] = []
    report = run_job(job, on_event=events.append, cancel=token, data_dir=tmp_path / "data")
    ended = time.monotonic()
    assert cancelled_at, "the job ended before it was cancelled"
    assert ended - cancelled_at[0] < 5.0
    final = events[-1]
    assert final["MessageType"] == "FinalError" and final["ErrorCode"] == 5001, final
    assert report["State"] == "Cancelled"
    assert not (tmp_path / "out").exists()
