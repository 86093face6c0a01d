"""End to end, packaging only (`VideoFormat: DoNotEncode`, contract §5.4): two pre-encoded
renditions with the same forced key frames are packaged as they are, with the audio of a
separate file encoded to AAC; renditions whose key frames differ fail with 4101."""

from __future__ import annotations

import io

import av
import pytest
from e2e_helpers import (
    check_events,
    check_package,
    input_folder,
    make_job,
    output_files,
    read_dash,
    run,
)
from mediagen import make_media

pytestmark = pytest.mark.e2e

MAPPINGS = {
    "VideoStreamExpression": r"^movie_\d+\.mp4$",
    "AudioFileLanguageExpression": r"^movie-(\w+)\.m4a$",
}


@pytest.fixture(scope="module")
def packaged(e2e_media, tmp_path_factory):
    root = tmp_path_factory.mktemp("passthrough")
    folder = input_folder(
        root,
        (e2e_media.rendition(180), "movie_180.mp4"),
        (e2e_media.rendition(144), "movie_144.mp4"),
        (e2e_media.audio_only(), "movie-en.m4a"),
    )
    job = make_job(
        folder,
        root / "out",
        formats=["Dash", "Hls"],
        VideoFormat="DoNotEncode",
        VideoRepresentations=None,
        mappings=MAPPINGS,
    )
    return run(root, job)


def test_package_reads_back(packaged):
    check = check_package(packaged, source_frames=100)
    check_events(packaged)
    assert sorted((v.width, v.height) for v in check.video.values()) == [(256, 144), (320, 180)]
    assert packaged.one("VideoEncodingStarted")["Encoder"] == "copy"
    assert packaged.report["VideoFormat"] == 2
    assert packaged.report["Encoder"] == "copy"


def test_video_not_reencoded(packaged, e2e_media):
    """The packaged samples are the source's bytes, one for one."""
    _, tracks = read_dash(packaged.output_dir / "dash" / "manifest.mpd")
    by_height = {t.attributes["height"]: t for t in tracks if t.kind == "video"}
    for height, track in by_height.items():
        with av.open(str(e2e_media.rendition(height))) as source:
            original = [bytes(p) for p in source.demux(video=0) if p.size]
        with av.open(io.BytesIO(track.data())) as output:
            packaged_samples = [bytes(p) for p in output.demux(video=0) if p.size]
        assert packaged_samples == original, height


def test_misaligned_key_frames_fail(e2e_media, tmp_path):
    other = make_media(
        tmp_path / "media" / "movie_144.mp4",
        duration=4.0,
        width=256,
        height=144,
        audio=[],
        video_options={
            "preset": "veryfast",
            "x264-params": "keyint=40:min-keyint=40:scenecut=0",
        },
    )
    folder = input_folder(
        tmp_path,
        (e2e_media.rendition(180), "movie_180.mp4"),
        other,
        (e2e_media.audio_only(), "movie-en.m4a"),
    )
    job = make_job(
        folder,
        tmp_path / "out",
        VideoFormat="DoNotEncode",
        VideoRepresentations=None,
        mappings=MAPPINGS,
    )
    job_run = run(tmp_path, job)
    assert job_run.final_error["ErrorCode"] == 4101
    assert "aligned" in job_run.final_error["ErrorMessage"]
    assert output_files(tmp_path / "out") == []
    check_events(job_run, success=False)
