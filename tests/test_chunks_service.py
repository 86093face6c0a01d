"""Chunking in the service's in-process pool (issue 17): `vipe serve --chunk-workers N` runs
jobs with the one-node chunking of `vipe run --parallel N`."""

from __future__ import annotations

from pathlib import Path

import pytest
from api_helpers import ApiServer, TokenIssuer, tiny_job, wait_final
from mediagen import make_media

from engine import cli
from engine.chunks import ChunkSettings

SECONDS = 8
FPS = 25


@pytest.fixture(scope="module")
def issuer(tmp_path_factory) -> TokenIssuer:
    return TokenIssuer(tmp_path_factory.mktemp("jwt"))


@pytest.fixture(scope="module")
def source(media_dir) -> Path:
    """8 s of 160x90 video without audio: four 2 s chunks."""
    folder = media_dir / "chunks-service"
    if not (folder / "eight.mp4").exists():
        make_media(folder / "eight.mp4", duration=SECONDS, width=160, height=90, audio=[])
    return folder


def chunk_job(source: Path, output: Path) -> dict:
    job = tiny_job(source, output, SegmentLengthInSeconds=2)
    job["MediaMappings"]["FailOnNoAudioTracks"] = False
    return job


def test_serve_with_chunk_workers_encodes_in_chunks(tmp_path, issuer, source):
    settings = ChunkSettings(workers=2, seconds=2.0)
    with (
        ApiServer(tmp_path / "data", issuer.auth_settings(), workers=1, chunking=settings) as api,
        api.client(f"Bearer {issuer.token('tenant-a')}") as client,
    ):
        answer = client.post("/Job", json=chunk_job(source, tmp_path / "out"))
        assert answer.status_code == 201, answer.text
        job_id = answer.json()["JobId"]
        view = wait_final(client, job_id, timeout=120)
        assert view["State"] == "Succeeded", view
        report = client.get(f"/reporting/{job_id}").json()
    assert report["Chunks"] == 4, report
    details = report["ChunkDetails"]
    assert [d["Chunk"] for d in details] == [0, 1, 2, 3]
    assert sum(d["Frames"] for d in details) == SECONDS * FPS
    assert (tmp_path / "out" / "manifest.mpd").exists()


def test_serve_without_chunk_workers_runs_in_one_pass(tmp_path, issuer, source):
    with (
        ApiServer(tmp_path / "data", issuer.auth_settings(), workers=1) as api,
        api.client(f"Bearer {issuer.token('tenant-a')}") as client,
    ):
        answer = client.post("/Job", json=chunk_job(source, tmp_path / "out"))
        job_id = answer.json()["JobId"]
        assert wait_final(client, job_id, timeout=120)["State"] == "Succeeded"
        report = client.get(f"/reporting/{job_id}").json()
    assert report["Chunks"] == 1 and "ChunkDetails" not in report


def test_serve_flags_and_environment_set_the_chunking(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr("engine.service.api.serve", seen.append)
    monkeypatch.delenv("VIPE_BROKER_URL", raising=False)
    data = str(tmp_path / "data")
    flags = ["--chunk-workers", "3", "--chunk-seconds", "9"]
    assert cli.main(["serve", "--data-dir", data, *flags]) == 0
    assert seen[-1].chunking == ChunkSettings(workers=3, seconds=9.0)
    monkeypatch.setenv("VIPE_CHUNK_WORKERS", "2")
    assert cli.main(["serve", "--data-dir", data]) == 0
    assert seen[-1].chunking == ChunkSettings(workers=2, seconds=60.0)
    monkeypatch.delenv("VIPE_CHUNK_WORKERS")
    assert cli.main(["serve", "--data-dir", data]) == 0
    assert seen[-1].chunking is None
