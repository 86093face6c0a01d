"""The real thing on an NVIDIA GPU: the probe, an NVDEC decode, NVENC jobs. Skipped without a
GPU (conftest skips `gpu`-marked tests when there is no nvidia-smi or /dev/nvidia0)."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest
from test_gpu_fallback import (
    FPS,
    NAMES,
    assert_valid_outputs,
    final_error,
    hardware_warnings,
    inspect,
    job,
    make_source,
    run,
    video_streams,
)

from engine.capabilities import gpu_decode, make_sample, probe

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def node():
    return probe()


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return make_source(tmp_path_factory.mktemp("gpu-real-source"))


def test_probe_sees_the_gpu_and_nvdec(node) -> None:
    caps = node.capabilities
    assert node.gpus and caps.gpu_name and caps.driver
    assert node.cuda.ok, node.cuda.detail
    assert "h264" in caps.nvdec_codecs, node.nvdec_checks
    if caps.nvenc_encoders:
        assert caps.nvenc_sessions >= 1
    else:  # an H100/H200-class GPU: the probe must say so, not guess from the codec list
        assert not any(c.ok for c in node.nvenc_checks if c.name == "h264_nvenc")


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_nvdec_decodes_the_same_frames_as_the_cpu(node, codec: str) -> None:
    if codec not in node.capabilities.nvdec_codecs:
        pytest.skip(f"NVDEC of this GPU does not decode {codec}")
    data = make_sample(codec, frames=12)
    count, pix_fmt, hardware = gpu_decode(data)
    assert hardware and count == 12 and pix_fmt in ("nv12", "p010le")
    from av.codec.hwaccel import HWAccel

    with (
        av.open(io.BytesIO(data)) as cpu,
        av.open(io.BytesIO(data), hwaccel=HWAccel("cuda", allow_software_fallback=False)) as gpu,
    ):
        for a, b in zip(cpu.decode(video=0), gpu.decode(video=0), strict=True):
            assert np.array_equal(
                a.reformat(format="yuv420p").to_ndarray(), b.reformat(format="yuv420p").to_ndarray()
            )


def test_auto_job_on_this_gpu(node, source, tmp_path) -> None:
    report, events = run(job(source, tmp_path / "out"), None)  # the real probe
    assert report["Success"], final_error(events)
    caps = node.capabilities
    if caps.nvenc_encoders:
        assert report["Encoder"] == "h264_nvenc"
    else:
        assert f"no NVENC on {caps.gpu_name}" in " ".join(hardware_warnings(events))
    started = next(e for e in events if e["MessageType"] == "VideoEncodingStarted")
    assert started["HardwareDecoding"] is True
    assert_valid_outputs(tmp_path / "out", NAMES.values())


def test_nvenc_job_with_aligned_idrs(node, source, tmp_path) -> None:
    if not node.capabilities.nvenc_encoders:
        pytest.skip(node.capabilities.no_nvenc_reason())
    report, events = run(job(source, tmp_path / "out", "Nvidia"), None)
    assert report["Success"], final_error(events)
    assert {s["Encoder"] for s in video_streams(events).values()} == {"h264_nvenc"}
    assert hardware_warnings(events) == []
    assert_valid_outputs(tmp_path / "out", NAMES.values())
    _, _, drawn = inspect(tmp_path / "out", NAMES[180], numbers=True)
    assert drawn == list(range(2 * FPS))


def test_nvidia_without_nvenc_is_3102_on_this_gpu(node, source, tmp_path) -> None:
    if node.capabilities.nvenc_encoders:
        pytest.skip("this GPU has NVENC")
    report, events = run(job(source, tmp_path / "out", "Nvidia"), None)
    assert final_error(events)["ErrorCode"] == 3102 and report["ErrorCode"] == 3102
