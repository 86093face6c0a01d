"""Hardware acceleration without a GPU: simulated probe results through whole jobs (`run_job`
with `capabilities=`), checking fallbacks, warnings, FinalError codes, the encoder reported per
rendition, and that every output stays whole and aligned.

NVENC is simulated through the transcoder's test seam `engine.transcode._open_stream`: an NVENC
rendition is really encoded by libx264 with the same GOP settings (and reported as NVENC), and
can be told to fail at open or after N frames, as a session limit or a driver reset would.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import pytest
from mediagen import make_media, read_frame_number

from engine import transcode
from engine.capabilities import NVENC_SESSIONS
from engine.encoders import NodeCapabilities
from engine.pipeline import run_job

FPS = 25
SECONDS = 2
FRAMES = FPS * SECONDS
LADDER = [(180, 300), (144, 200), (90, 100)]  # (height, kbps); source 320x180
NAMES = {h: f"video-H264-{h}-{k}k" for h, k in LADDER}
H200 = NodeCapabilities(gpu_name="NVIDIA H200", driver="570.86.15")
L4 = NodeCapabilities(
    nvenc_encoders=frozenset({"h264_nvenc", "hevc_nvenc"}),
    nvenc_sessions=8,
    nvenc_10bit=True,
    gpu_name="NVIDIA L4",
)


# ------------------------------------------------------------------------------ helpers


def make_source(folder: Path, **options: Any) -> Path:
    make_media(folder / "source.mp4", duration=SECONDS, width=320, height=180, fps=FPS, **options)
    return folder


def job(source: Path, out: Path, hardware: str = "Auto", ladder=LADDER) -> dict[str, Any]:
    return {
        "ContentAcquisition": {"Provider": "Local", "UriPath": f"file://{source}/"},
        "MediaMappings": {"VideoStreamExpression": "^source\\.mp4$"},
        "ContentProcessing": {
            "OutputFormat": ["Cmaf"],
            "HardwareAcceleration": hardware,
            "OptimizeFor": "Speed",
            "SegmentLengthInSeconds": 1,
            "VideoRepresentations": [{"Height": h, "BitrateInKbps": k} for h, k in ladder],
        },
        "ContentPublishing": {"Provider": "Local", "UriPath": f"file://{out}/"},
    }


def run(job_json: dict[str, Any], capabilities: NodeCapabilities | None):
    events: list[dict[str, Any]] = []
    report = run_job(job_json, on_event=events.append, capabilities=capabilities)
    json.dumps(events)  # every event is JSON
    return report, events


def warnings(events) -> list[str]:
    return [e["Message"] for e in events if e["MessageType"] == "Warning"]


def hardware_warnings(events) -> list[str]:
    return [
        e["Message"]
        for e in events
        if e["MessageType"] == "Warning" and e["Code"] == "HardwareFallback"
    ]


def final_error(events) -> dict[str, Any] | None:
    return next((e for e in events if e["MessageType"] == "FinalError"), None)


def video_streams(events) -> dict[str, dict[str, Any]]:
    finished = next(e for e in events if e["MessageType"] == "EncodingFinished")
    return {s["Name"]: s for s in finished["Streams"] if s["Type"] == "Video"}


def rendition_bytes(folder: Path, name: str) -> bytes:
    """A CMAF rendition as one fragmented MP4 (init segment, then the media segments)."""
    segments = sorted(folder.glob(f"{name}_*.m4s"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    assert segments, f"no segments for {name}"
    return (folder / f"{name}_init.mp4").read_bytes() + b"".join(p.read_bytes() for p in segments)


def inspect(folder: Path, name: str, numbers: bool = False) -> tuple[int, list[int], list[int]]:
    """(decoded frames, frame indices of keyframes, frame numbers drawn in the pictures)."""
    data = rendition_bytes(folder, name)
    times, keyframes = [], []
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            if packet.pts is not None:
                index = round(packet.pts * packet.time_base * FPS)
                times.append(index)
                if packet.is_keyframe:
                    keyframes.append(index)
    start = min(times)  # B-frame reordering shifts every timestamp by the same delay
    keyframes = [k - start for k in keyframes]
    drawn = []
    count = 0
    with av.open(io.BytesIO(data)) as container:
        for frame in container.decode(video=0):
            count += 1
            if numbers:
                drawn.append(read_frame_number(frame.to_ndarray(format="rgb24")))
    return count, sorted(keyframes), drawn


def assert_valid_outputs(out: Path, names) -> None:
    """Whole renditions: every frame, IDRs on the same frames (one per 1 s segment)."""
    for name in names:
        count, keyframes, _ = inspect(out, name)
        assert count == FRAMES, name
        assert keyframes == [0, FPS], name


class FailingStream:
    """A stream stand-in whose encoder breaks after `frames` frames (as NVENC on a driver
    reset); everything else goes to the real stream."""

    def __init__(self, stream, frames: int) -> None:
        self._stream = stream
        self._left = frames

    def __getattr__(self, name: str):
        return getattr(self._stream, name)

    def encode(self, frame=None):
        if self._left == 0:  # the next frame, or the flush once every frame went in
            raise av.error.ExternalError(-542398533, "Generic error in an external library")
        if frame is not None:
            self._left -= 1
        return self._stream.encode(frame)


@pytest.fixture
def fake_nvenc(monkeypatch):
    """NVENC that "works" here. Set `open_fails` (rendition names, or "*") or `fail_after`
    ({rendition name: frames}) to break it."""
    behaviour: dict[str, Any] = {"open_fails": set(), "fail_after": {}, "opened": []}
    real = transcode._open_stream

    def opener(container, output, frame_rate):
        choice = output.encoder
        if not choice.hardware:
            return real(container, output, frame_rate)
        name = output.rendition.name
        if name in behaviour["open_fails"] or "*" in behaviour["open_fails"]:
            raise av.error.ExternalError(-542398533, "OpenEncodeSessionEx failed: out of memory")
        behaviour["opened"].append(name)
        # libx264 in NVENC's place, with NVENC's infinite GOP (IDRs only where forced) and
        # its pixel format
        assert choice.options["forced-idr"] == "1" and choice.options["no-scenecut"] == "1"
        stand_in = replace(
            choice,
            name="libx264",
            options={
                "preset": "ultrafast",
                "x264-params": "keyint=infinite:scenecut=0:open-gop=0:forced-idr=1",
                "forced-idr": "1",
            },
        )
        stream = real(container, replace(output, encoder=stand_in), frame_rate)
        if name in behaviour["fail_after"]:
            return FailingStream(stream, behaviour["fail_after"][name])
        return stream

    monkeypatch.setattr(transcode, "_open_stream", opener)
    return behaviour


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return make_source(tmp_path_factory.mktemp("gpu-source"))


@pytest.fixture(autouse=True)
def sessions_released():
    yield
    assert NVENC_SESSIONS.in_use == 0  # every job gives its NVENC sessions back


# -------------------------------------------------------------------------------- no NVENC


def test_auto_on_a_gpu_without_nvenc_encodes_on_the_cpu_with_a_warning(source, tmp_path):
    report, events = run(job(source, tmp_path / "out"), H200)
    assert report["Success"], final_error(events)
    assert hardware_warnings(events) == ["encoding on the CPU: no NVENC on NVIDIA H200"]
    assert {s["Encoder"] for s in video_streams(events).values()} == {"libx264"}
    assert report["Encoder"] == "libx264"
    assert_valid_outputs(tmp_path / "out", NAMES.values())


def test_auto_on_a_cpu_node_says_nothing(source, tmp_path):
    report, events = run(job(source, tmp_path / "out"), NodeCapabilities())
    assert report["Success"]
    assert hardware_warnings(events) == []
    started = next(e for e in events if e["MessageType"] == "VideoEncodingStarted")
    assert started["Encoder"] == "libx264" and started["HardwareDecoding"] is False
    assert [r["Encoder"] for r in started["Renditions"] if "Width" in r] == ["libx264"] * 3


def test_nvidia_without_nvenc_fails_with_3102(source, tmp_path):
    report, events = run(job(source, tmp_path / "out", "Nvidia"), H200)
    error = final_error(events)
    assert error["ErrorCode"] == 3102 and error["Phase"] == "Encoding"
    assert "no NVENC on NVIDIA H200" in error["ErrorMessage"]
    assert report["Success"] is False and report["ErrorCode"] == 3102
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_none_ignores_the_gpu(source, tmp_path, fake_nvenc):
    report, events = run(job(source, tmp_path / "out", "None"), L4)
    assert report["Success"] and report["Encoder"] == "libx264"
    assert fake_nvenc["opened"] == [] and hardware_warnings(events) == []


# -------------------------------------------------------------------------- NVENC sessions


def test_two_sessions_go_to_the_two_largest_renditions(source, tmp_path, fake_nvenc):
    caps = replace(L4, nvenc_sessions=2)
    report, events = run(job(source, tmp_path / "out"), caps)
    assert report["Success"], final_error(events)
    encoders = {name: s["Encoder"] for name, s in video_streams(events).items()}
    assert encoders == {
        NAMES[180]: "h264_nvenc",
        NAMES[144]: "h264_nvenc",
        NAMES[90]: "libx264",
    }
    (warning,) = hardware_warnings(events)
    assert "all 2 NVENC sessions of NVIDIA L4 are in use" in warning and NAMES[90] in warning
    assert set(report["Encoder"].split(",")) == {"h264_nvenc", "libx264"}
    # CPU and GPU renditions of one job switch cleanly: same frames, same IDRs
    assert_valid_outputs(tmp_path / "out", NAMES.values())


def test_sessions_in_use_by_another_job_are_not_taken(source, tmp_path, fake_nvenc):
    caps = replace(L4, nvenc_sessions=2)
    held = NVENC_SESSIONS.acquire(caps.nvenc_sessions, 1)  # a job running beside this one
    try:
        report, events = run(job(source, tmp_path / "out"), caps)
    finally:
        NVENC_SESSIONS.release(held)
    assert report["Success"]
    assert fake_nvenc["opened"] == [NAMES[180]]
    assert video_streams(events)[NAMES[144]]["Encoder"] == "libx264"


# ------------------------------------------------------------------------- NVENC failures


def test_nvenc_that_does_not_open_falls_back_before_the_first_frame(source, tmp_path, fake_nvenc):
    fake_nvenc["open_fails"] = {"*"}
    report, events = run(job(source, tmp_path / "out"), L4)
    assert report["Success"], final_error(events)
    messages = hardware_warnings(events)
    assert len(messages) == 3
    assert all("h264_nvenc does not open" in m and "with libx264" in m for m in messages)
    assert {s["Encoder"] for s in video_streams(events).values()} == {"libx264"}
    assert report["Encoder"] == "libx264"
    assert_valid_outputs(tmp_path / "out", NAMES.values())


@pytest.mark.parametrize("hardware", ["Auto", "Nvidia"])
def test_nvenc_failing_mid_job_reencodes_that_rendition_on_the_cpu(
    source, tmp_path, fake_nvenc, hardware
):
    fake_nvenc["fail_after"] = {NAMES[180]: 10}
    report, events = run(job(source, tmp_path / "out", hardware), L4)
    assert report["Success"], final_error(events)
    (warning,) = hardware_warnings(events)
    assert "h264_nvenc failed" in warning and "after 10 frames" in warning
    assert f"encoding {NAMES[180]} again from the start on the CPU with libx264" in warning
    encoders = {name: s["Encoder"] for name, s in video_streams(events).items()}
    assert encoders == {
        NAMES[180]: "libx264",
        NAMES[144]: "h264_nvenc",
        NAMES[90]: "h264_nvenc",
    }
    assert set(report["Encoder"].split(",")) == {"h264_nvenc", "libx264"}
    out = tmp_path / "out"
    assert_valid_outputs(out, NAMES.values())
    # the re-encoded rendition is the whole picture sequence, in order, from one encoder
    _, _, drawn = inspect(out, NAMES[180], numbers=True)
    assert drawn == list(range(FRAMES))
    progress = [e["Progress"] for e in events if e["MessageType"] == "EncodingProgress"]
    assert progress == sorted(progress) and progress[-1] == 100


def test_nvenc_failing_at_the_flush_is_caught_too(source, tmp_path, fake_nvenc):
    fake_nvenc["fail_after"] = {NAMES[90]: FRAMES}  # all frames in, then the flush breaks
    report, events = run(job(source, tmp_path / "out"), L4)
    assert report["Success"], final_error(events)
    assert video_streams(events)[NAMES[90]]["Encoder"] == "libx264"
    assert_valid_outputs(tmp_path / "out", NAMES.values())


def test_a_cpu_encoder_failure_still_fails_the_job(source, tmp_path, monkeypatch):
    real = transcode._open_stream

    def opener(container, output, frame_rate):
        stream = real(container, output, frame_rate)
        return FailingStream(stream, 5) if output.rendition.name == NAMES[90] else stream

    monkeypatch.setattr(transcode, "_open_stream", opener)
    report, events = run(job(source, tmp_path / "out"), NodeCapabilities())
    error = final_error(events)
    assert error["ErrorCode"] == 3101 and "libx264 failed" in error["ErrorMessage"]
    assert report["Success"] is False


# ---------------------------------------------------------------------------------- NVDEC


def test_gpu_decoding_that_fails_decodes_on_the_cpu(source, tmp_path, monkeypatch):
    from av.codec import hwaccel

    real = hwaccel.HWAccel

    def no_such_gpu(**kwargs):  # device 99 exists nowhere, with or without a GPU
        return real(device_type="cuda", device="99", allow_software_fallback=True)

    monkeypatch.setattr(hwaccel, "HWAccel", no_such_gpu)
    caps = replace(H200, nvdec_codecs=frozenset({"h264"}))
    report, events = run(job(source, tmp_path / "out"), caps)
    assert report["Success"], final_error(events)
    started = next(e for e in events if e["MessageType"] == "VideoEncodingStarted")
    assert started["HardwareDecoding"] is True
    assert any("decoding on the GPU failed" in m for m in hardware_warnings(events))
    assert_valid_outputs(tmp_path / "out", NAMES.values())


def test_no_gpu_decoding_for_codecs_nvdec_lacks(source, tmp_path):
    caps = replace(H200, nvdec_codecs=frozenset({"hevc", "vp9"}))  # the source is H.264
    report, events = run(job(source, tmp_path / "out"), caps)
    assert report["Success"]
    started = next(e for e in events if e["MessageType"] == "VideoEncodingStarted")
    assert started["HardwareDecoding"] is False


def test_frame_rate_is_untouched(source):
    with av.open(str(source / "source.mp4")) as container:
        assert container.streams.video[0].average_rate == Fraction(FPS)
