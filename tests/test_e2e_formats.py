"""End to end, one job per output format and segment format, on a generated 5 s source.

Each package is read back through its manifests (`mpegdash`, `m3u8`) and decoded with PyAV
(`e2e_helpers.check_package`): every planned rendition at its size and codec, key frames at the
same instants in every rendition and on the segment boundaries, segments of
`SegmentLengthInSeconds` (the last one shorter), the source's frame count and frame numbers in
order, audio and video of the same length, every referenced file present and HLS `BANDWIDTH`
above every segment's peak. The events and the report are checked too.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e_helpers import (
    JobRun,
    check_events,
    check_package,
    output_files,
    run_simple,
)

pytestmark = pytest.mark.e2e

CASES = {
    "dash": ({"formats": ["Dash"]}, ["manifest.mpd"]),
    "hls": ({"formats": ["Hls"]}, ["manifest.m3u8"]),
    "dash+hls": ({"formats": ["Dash", "Hls"]}, ["dash/manifest.mpd", "hls/manifest.m3u8"]),
    "cmaf": ({"formats": ["Cmaf"]}, ["manifest.mpd", "manifest.m3u8"]),
    "dash-on-demand": ({"formats": ["DashOnDemand"]}, ["manifest.mpd"]),
    "dash-byte-range": ({"formats": ["Dash"], "SegmentFormat": "ByteRange"}, ["manifest.mpd"]),
    "hls-byte-range": ({"formats": ["Hls"], "SegmentFormat": "ByteRange"}, ["manifest.m3u8"]),
    "hls-ts": ({"formats": ["HlsTs"]}, ["manifest.m3u8"]),
}


@pytest.fixture(scope="module", params=list(CASES))
def packaged(request, e2e_media, tmp_path_factory) -> tuple[str, JobRun]:
    options, _ = CASES[request.param]
    root = tmp_path_factory.mktemp(request.param.replace("+", "-"))
    return request.param, run_simple(root, e2e_media.five_seconds(), **options)


def test_package_reads_back(packaged):
    _, job_run = packaged
    check = check_package(job_run)
    assert len(check.video) == 2 and len(check.audio) == 1
    assert [t.duration for t in check.audio.values()]


def test_manifests_where_the_contract_puts_them(packaged):
    case, job_run = packaged
    _, manifests = CASES[case]
    for name in manifests:
        assert (job_run.output_dir / name).is_file(), name
    published = job_run.one("ContentPublished")
    listed = {job_run.output_dir / m for m in published["Manifests"]}
    assert {job_run.output_dir / m for m in manifests} <= listed
    assert published["FilesCount"] == len(output_files(job_run.output_dir))


def test_segment_files_or_single_files(packaged):
    """ByteRange and DashOnDemand: one file per rendition; otherwise one file per segment."""
    case, job_run = packaged
    names = {p.name for p in output_files(job_run.output_dir)}
    single = case in ("dash-on-demand", "dash-byte-range", "hls-byte-range")
    extension = ".ts" if case == "hls-ts" else ".m4s"
    for rendition in job_run.planned_video:
        name = rendition["Name"]
        if single:
            assert f"{name}.mp4" in names, name
        else:
            assert {f"{name}_1{extension}", f"{name}_3{extension}"} <= names, name
            assert f"{name}_4{extension}" not in names  # 5 s in 2 s segments: three
    if single:
        assert not [n for n in names if n.endswith((".m4s", ".ts"))]


def test_events_and_report(packaged):
    _, job_run = packaged
    check_events(job_run)
    report = job_run.report
    assert report["VideoFormat"] == 0
    assert report["EncodingOptimizedFor"] == 1
    assert report["BitrateVariants"] == "150,300"
    assert report["Encoder"] == "libx264"
    assert report["Drm"] is False
    assert report["ExtractedVideoDurationInSeconds"] == pytest.approx(5.0, abs=0.05)
    assert report["EncodedVideoDurationInSeconds"] == pytest.approx(5.0, abs=0.05)
    success = job_run.one("JobSuccess")
    assert set(success["PhaseDurationsInSeconds"]) >= {
        "Pre-Validation",
        "Acquisition",
        "Media Mapping",
        "Encoding",
        "DRM + Packaging",
        "Publishing",
    }


def test_encoding_finished_names_the_files(packaged):
    case, job_run = packaged
    streams = job_run.one("EncodingFinished")["Streams"]
    assert [s["Type"] for s in streams].count("Video") == 2
    for stream in streams:
        if stream["InitFile"]:
            assert (job_run.output_dir / stream["InitFile"]).is_file(), stream["InitFile"]
        template = stream["FileTemplate"]
        first = template.replace("$Number$", "1")
        assert (job_run.output_dir / first).is_file(), (case, template)


def test_input_left_alone(packaged):
    _, job_run = packaged
    assert [p.name for p in Path(job_run.input_dir).iterdir()] == ["five.mp4"]
