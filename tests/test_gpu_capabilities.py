"""The capability probe and `vipe doctor`: the real probe on this node (fast and silent without a
GPU), and simulated probe results (an H200 without NVENC, an L4 with it) through the same code."""

from __future__ import annotations

import json
import threading
from dataclasses import replace

import pytest

from engine import capabilities as caps_module
from engine.capabilities import (
    Check,
    GpuInfo,
    NvencSessionPool,
    node_capabilities,
    parse_smi,
    probe,
)
from engine.cli import main
from engine.encoders import NodeCapabilities, cpu_capabilities
from engine.job import HardwareAcceleration


def _no_gpu_here() -> bool:
    return (
        not caps_module._gpus([])
        and not caps_module._cuda_check(tuple(caps_module._hw_devices())).ok
    )


def test_probe_is_fast_and_silent_and_finds_the_cpu_encoders(capfd) -> None:
    node = probe(refresh=True)
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # no FFmpeg, x265 or SVT chatter, GPU or not
    assert {"libx264", "libx265"} <= node.capabilities.cpu_encoders
    assert node.can_encode_h264
    assert node.pyav_version and node.ffmpeg_version and "libavcodec" in node.libraries
    assert "libx264" in node.encoders_built
    json.dumps(node.as_json())
    if _no_gpu_here():
        assert node.seconds < 2.0
        assert node.capabilities.nvenc_encoders == frozenset()
        assert node.capabilities.nvenc_sessions == 0
        assert node.capabilities.nvdec_codecs == frozenset()
        assert node.capabilities.gpu_name is None
        assert not node.cuda.ok and node.nvenc_checks == () and node.nvdec_checks == ()


def test_probe_is_cached_per_process() -> None:
    assert probe() is probe()
    assert node_capabilities(HardwareAcceleration.Auto) is probe().capabilities


def test_hardware_acceleration_none_probes_no_gpu(monkeypatch) -> None:
    def must_not_probe(**_):
        raise AssertionError("probed")

    monkeypatch.setattr(caps_module, "probe", must_not_probe)
    assert node_capabilities(HardwareAcceleration.Off) == cpu_capabilities()


def test_nvidia_smi_rows() -> None:
    text = "0, NVIDIA H200, 570.86.15, 143771\n1, NVIDIA L4, 570.86.15, 23034\n\njunk\n"
    assert parse_smi(text) == [
        GpuInfo(0, "NVIDIA H200", "570.86.15", 143771, "nvidia-smi"),
        GpuInfo(1, "NVIDIA L4", "570.86.15", 23034, "nvidia-smi"),
    ]
    assert parse_smi("0, Tesla T4, 535.1, [N/A]") == [
        GpuInfo(0, "Tesla T4", "535.1", None, "nvidia-smi")
    ]


# ---------------------------------------------------------------------- simulated GPU nodes


def _fake_gpu(monkeypatch, name: str, *, nvenc: bool, sessions: int = 0, av1_nvdec: bool) -> None:
    """Pretend this node has `name`: CUDA opens, NVENC opens or not, NVDEC decodes (the
    samples are really made with the CPU encoders; only the GPU side is pretended)."""
    monkeypatch.setattr(
        caps_module, "_nvml_gpus", lambda: [GpuInfo(0, name, "570.86.15", 81559, "nvml")]
    )
    monkeypatch.setattr(caps_module, "_cuda_check", lambda _: Check("cuda", True, "opened"))
    real_try = caps_module.try_encode

    def try_encode(encoder, options, pix_fmt, frames=caps_module.FRAMES):
        if "nvenc" not in encoder:
            return real_try(encoder, options, pix_fmt, frames)
        return None if nvenc else "[Errno 38] Function not implemented: no encode device"

    monkeypatch.setattr(caps_module, "try_encode", try_encode)
    monkeypatch.setattr(caps_module, "_count_sessions", lambda limit: min(sessions, limit))

    def gpu_decode(data, limit=None):
        if not av1_nvdec and data[4:8] == b"ftyp" and b"av01" in data[:4096]:
            raise RuntimeError("Codec av1 is not supported")
        return caps_module.FRAMES, "nv12", True

    monkeypatch.setattr(caps_module, "gpu_decode", gpu_decode)


def test_an_h200_has_nvdec_but_no_nvenc(monkeypatch) -> None:
    _fake_gpu(monkeypatch, "NVIDIA H200", nvenc=False, av1_nvdec=False)
    node = caps_module._probe(count_sessions=True)
    caps = node.capabilities
    assert caps.gpu_name == "NVIDIA H200" and caps.driver == "570.86.15"
    assert caps.nvenc_encoders == frozenset() and caps.nvenc_sessions == 0
    assert caps.nvdec_codecs == frozenset({"h264", "hevc", "vp9"})  # AV1: CPU decode
    assert caps.no_nvenc_reason() == "no NVENC on NVIDIA H200"
    assert [c.name for c in node.nvenc_checks] == [
        "h264_nvenc",
        "hevc_nvenc",
        "av1_nvenc",
        "hevc_nvenc main10",
    ]
    assert all("no encode device" in c.detail for c in node.nvenc_checks)
    av1 = next(c for c in node.nvdec_checks if c.name == "av1")
    assert not av1.ok and "not supported" in av1.detail


def test_an_l4_has_nvenc_and_counts_sessions(monkeypatch) -> None:
    _fake_gpu(monkeypatch, "NVIDIA L4", nvenc=True, sessions=5, av1_nvdec=True)
    caps = caps_module._probe(count_sessions=True).capabilities
    assert caps.nvenc_encoders == frozenset({"h264_nvenc", "hevc_nvenc"})
    assert caps.nvenc_sessions == 5 and caps.nvenc_10bit
    assert caps.nvdec_codecs == frozenset({"h264", "hevc", "vp9", "av1"})
    quick = caps_module._probe(count_sessions=False)
    assert quick.capabilities.nvenc_sessions == 1  # not counted: known to open once
    assert any("not counted" in note for note in quick.notes)


def test_session_counting_is_bounded(monkeypatch) -> None:
    monkeypatch.setenv("VIPE_NVENC_MAX_SESSIONS", "3")
    assert caps_module._max_sessions() == 3
    monkeypatch.setenv("VIPE_NVENC_MAX_SESSIONS", "lots")
    assert caps_module._max_sessions() == caps_module.MAX_SESSIONS


def test_session_pool_shares_the_probed_sessions_between_jobs() -> None:
    pool = NvencSessionPool()
    assert pool.acquire(4, 3) == 3
    assert pool.acquire(4, 3) == 1  # only one left
    assert pool.acquire(4, 3) == 0
    pool.release(3)
    assert pool.acquire(4, 6) == 3
    pool.release(4)
    assert pool.in_use == 0
    granted: list[int] = []

    def take() -> None:
        granted.append(pool.acquire(8, 3))

    threads = [threading.Thread(target=take) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(granted) == 8 and pool.in_use == 8


# ----------------------------------------------------------------------------- vipe doctor


def test_doctor_prints_the_probe(capsys) -> None:
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for text in ("vipe doctor", "PyAV", "FFmpeg", "libx264", "NVENC sessions", "H264:"):
        assert text in out


def test_doctor_json(capsys) -> None:
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["CanEncodeH264"] is True
    assert "libx264" in report["Capabilities"]["CpuEncoders"]
    assert {"PyAV", "FFmpeg", "Gpus", "Nvenc", "Nvdec", "NvencSessions"} <= set(report)


def test_doctor_quiet_is_silent(capfd) -> None:
    assert main(["doctor", "--quiet"]) == 0
    assert capfd.readouterr() == ("", "")


def test_doctor_fails_when_the_node_cannot_encode_h264(monkeypatch, capsys) -> None:
    real = probe()
    broken = replace(real, capabilities=NodeCapabilities(cpu_encoders=frozenset()))
    monkeypatch.setattr(caps_module, "probe", lambda **_: broken)
    assert main(["doctor"]) == 1
    assert "cannot encode H.264" in capsys.readouterr().out
    assert main(["doctor", "--quiet"]) == 1


def test_doctor_require_nvenc(monkeypatch) -> None:
    real = probe()
    monkeypatch.setattr(
        caps_module, "probe", lambda **_: replace(real, capabilities=NodeCapabilities())
    )
    assert main(["doctor", "--quiet", "--require-nvenc"]) == 1
    with_nvenc = NodeCapabilities(nvenc_encoders=frozenset({"h264_nvenc"}), nvenc_sessions=3)
    monkeypatch.setattr(caps_module, "probe", lambda **_: replace(real, capabilities=with_nvenc))
    assert main(["doctor", "--quiet", "--require-nvenc"]) == 0


@pytest.mark.parametrize("codec", ["h264", "hevc", "vp9", "av1"])
def test_nvdec_samples_are_made_quietly(codec, capfd) -> None:
    data = caps_module.make_sample(codec)
    assert data is None or len(data) > 100
    assert capfd.readouterr() == ("", "")
