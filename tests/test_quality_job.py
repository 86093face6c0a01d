"""A whole job with `QualityMetrics: true` (contract §5): metrics per rung in `EncodingFinished`
and the report, checked against the ffmpeg CLI on the job's own rendition files; VMAF null with
a Warning where no libvmaf is found; `vipe report` (table and rate–quality chart)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from mediagen import make_media

from engine import quality
from engine.cli import main
from engine.pipeline import run_job

pytestmark = pytest.mark.e2e

LADDER = [{"Height": 180, "BitrateInKbps": 400}, {"Height": 120, "BitrateInKbps": 60}]
FRAMES = 100  # 4 s at 25 fps
PSNR_RANGE = (20.0, 100.0)  # dB: lossy, so below the cap


def make_job(source: Path, out: Path, **processing: Any) -> dict[str, Any]:
    return {
        "ExternalId": "quality-42",
        "ContentAcquisition": {"Provider": "Local", "UriPath": source.parent.as_uri() + "/"},
        "MediaMappings": {"VideoStreamExpression": r"^.*\.mp4$"},
        "ContentProcessing": {
            "OutputFormat": ["Dash"],
            "OptimizeFor": "Speed",
            "SegmentLengthInSeconds": 2,
            "VideoRepresentations": LADDER,
            "QualityMetrics": True,
            **processing,
        },
        "ContentPublishing": {"Provider": "Local", "UriPath": out.as_uri() + "/"},
    }


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return make_media(tmp_path_factory.mktemp("quality-in") / "movie.mp4", duration=4.0)


@pytest.fixture(scope="module")
def job_run(source, tmp_path_factory):
    """The job, its work folder kept (the rendition files are compared with the ffmpeg CLI)."""
    root = tmp_path_factory.mktemp("quality-job")
    events: list[dict[str, Any]] = []
    report = run_job(
        make_job(source, root / "out"),
        on_event=events.append,
        workdir=root / "work",
        keep_workdir=True,
    )
    assert report["Success"], [e for e in events if e["MessageType"] == "FinalError"]
    json.dumps(events)
    (root / "report.json").write_text(json.dumps(report))
    return report, events, root


def streams_of(events) -> list[dict[str, Any]]:
    (finished,) = [e for e in events if e["MessageType"] == "EncodingFinished"]
    return finished["Streams"]


def test_metrics_per_rung_in_events_and_report(job_run):
    report, events, _ = job_run
    video = [s for s in streams_of(events) if s["Type"] == "Video"]
    assert len(video) == 2
    vmaf_expected = quality.vmaf_support()[0] is not None
    for stream in video:
        assert PSNR_RANGE[0] < stream["PsnrY"] < PSNR_RANGE[1]
        assert PSNR_RANGE[0] < stream["Psnr"] < PSNR_RANGE[1]
        assert 0.0 <= stream["Ssim"] <= 1.0
        assert (stream["Vmaf"] is not None) == vmaf_expected
        assert stream["QualityFrames"] == FRAMES and stream["QualityFrameStep"] == 1
    audio = [s for s in streams_of(events) if s["Type"] == "Audio"]
    assert audio and all("Psnr" not in s for s in audio)

    entries = {e["Name"]: e for e in report["QualityMetrics"]}
    assert len(entries) == 2
    for stream in video:
        entry = entries[stream["Name"]]
        assert (entry["Width"], entry["Height"]) == (stream["Width"], stream["Height"])
        for key in ("Psnr", "PsnrY", "Ssim", "Vmaf"):
            assert entry[key] == stream[key]
    high, low = sorted(entries.values(), key=lambda e: -e["BitrateInKbps"])
    assert (high["BitrateInKbps"], low["BitrateInKbps"]) == (400, 60)
    assert high["EncodedBitrateInKbps"] > low["EncodedBitrateInKbps"]
    assert high["Psnr"] >= low["Psnr"] and high["PsnrY"] >= low["PsnrY"]
    assert high["Ssim"] >= low["Ssim"]
    if vmaf_expected:
        assert high["Vmaf"] >= low["Vmaf"]
    warnings = [e["Message"] for e in events if e["MessageType"] == "Warning"]
    assert not any("VMAF" in w for w in warnings) or not vmaf_expected


def test_metrics_equal_the_ffmpeg_cli_on_the_rendition_files(job_run, source):
    """The 180p rung has the source's size, so its encoder input is the source frame itself:
    FFmpeg's `psnr`, `ssim` (and `libvmaf`) filters on the rendition file against the source
    file must give the job's numbers (this checks the pairing inside the job as well)."""
    report, _, root = job_run
    entry = next(e for e in report["QualityMetrics"] if e["Height"] == 180)
    ffmpeg = quality.vmaf_support()[0]
    if ffmpeg is None:
        pytest.skip("no ffmpeg CLI with libvmaf (imageio-ffmpeg)")
    rendition = root / "work" / "encode" / f"{entry['Name']}.mp4"
    graph = "[0:v]split=3[d1][d2][d3];[1:v]split=3[r1][r2][r3];[d1][r1]psnr;[d2][r2]ssim;"
    graph += "[d3][r3]libvmaf"
    command = [ffmpeg, "-hide_banner", "-i", str(rendition), "-i", str(source)]
    result = subprocess.run(
        [*command, "-filter_complex", graph, "-f", "null", "-"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    summary = result.stderr
    psnr = summary.split("PSNR y:")[1]
    assert entry["PsnrY"] == pytest.approx(float(psnr.split()[0]), abs=1e-3)
    assert entry["Psnr"] == pytest.approx(float(psnr.split("average:")[1].split()[0]), abs=1e-3)
    ssim = summary.split("SSIM Y:")[1]
    assert entry["Ssim"] == pytest.approx(float(ssim.split()[0]), abs=2e-6)
    vmaf = float(summary.split("VMAF score:")[1].split()[0])
    assert entry["Vmaf"] == pytest.approx(vmaf, abs=0.01)


def test_without_libvmaf_vmaf_is_null_and_warned_and_sampling(source, tmp_path, monkeypatch):
    """No libvmaf: `"Vmaf": null` and a Warning. Also a long source's sampling, simulated
    with a cap of 30 frames: 100 frames → every 4th measured, and the streams say so."""

    def no_vmaf() -> tuple[None, str]:
        return None, "no libvmaf (test)"

    monkeypatch.setattr(quality, "vmaf_support", no_vmaf)  # imported where used
    monkeypatch.setattr(quality, "MAX_MEASURED_FRAMES", 30)
    events: list[dict[str, Any]] = []
    job = make_job(source, tmp_path / "out", VideoRepresentations=LADDER[1:])
    report = run_job(job, on_event=events.append, workdir=tmp_path / "work")
    assert report["Success"]
    warnings = [e for e in events if e["MessageType"] == "Warning"]
    assert any(w["Message"] == "VMAF unavailable: no libvmaf (test)" for w in warnings)
    (video,) = [s for s in streams_of(events) if s["Type"] == "Video"]
    assert "Vmaf" in video and video["Vmaf"] is None
    assert video["Psnr"] > 20
    assert (video["QualityFrameStep"], video["QualityFrames"]) == (4, 25)
    assert report["QualityMetrics"][0]["Vmaf"] is None
    assert report["QualityMetrics"][0]["QualityFrameStep"] == 4


def test_no_metrics_unless_asked(source, tmp_path):
    events: list[dict[str, Any]] = []
    job = make_job(source, tmp_path / "out", VideoRepresentations=LADDER[1:])
    job["ContentProcessing"]["QualityMetrics"] = False
    report = run_job(job, on_event=events.append, workdir=tmp_path / "work")
    assert report["Success"] and "QualityMetrics" not in report
    assert all("Psnr" not in s for s in streams_of(events))


# ----------------------------------------------------------------------------- vipe report


def test_report_command_prints_the_table(job_run, capsys):
    report, _, root = job_run
    assert main(["report", str(root / "report.json")]) == 0
    table = capsys.readouterr().out
    for entry in report["QualityMetrics"]:
        assert entry["Name"] in table
        assert f"{entry['PsnrY']:.2f}" in table
        assert f"{entry['Ssim']:.4f}" in table


def test_report_command_draws_the_chart(job_run, tmp_path):
    from PIL import Image

    report, _, root = job_run
    png = tmp_path / "ladder.png"
    assert main(["report", str(root / "report.json"), "--plot", str(png)]) == 0
    with Image.open(png) as image:
        assert image.format == "PNG"
        panels = 3 if report["QualityMetrics"][0]["Vmaf"] is not None else 2
        assert image.size == (500 * panels, 420)  # 5 × 4.2 inches per panel at 100 dpi


def test_plot_returns_one_point_per_rung_and_metric(job_run, tmp_path):
    report, _, _ = job_run
    points = quality.plot_rate_quality(report, tmp_path / "chart.png")
    rows = report["QualityMetrics"]
    metrics = ["Psnr", "Ssim"] + (["Vmaf"] if rows[0]["Vmaf"] is not None else [])
    assert sorted({p.metric for p in points}) == sorted(metrics)
    for metric in metrics:
        drawn = [p for p in points if p.metric == metric]
        assert len(drawn) == len(rows) == 2
        by_name = {p.name: p for p in drawn}
        for row in rows:
            point = by_name[row["Name"]]
            assert point.value == row[metric]
            assert point.bitrate_kbps == row["EncodedBitrateInKbps"]
        # Drawn lowest bitrate first: the line runs along the ladder.
        assert [p.bitrate_kbps for p in drawn] == sorted(p.bitrate_kbps for p in drawn)


def test_report_command_without_metrics_fails_cleanly(tmp_path, capsys):
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"JobId": "x", "Success": True}))
    assert main(["report", str(path)]) == 1
    assert main(["report", str(tmp_path / "missing.json")]) == 2
