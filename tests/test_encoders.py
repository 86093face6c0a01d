"""The encoder choice: every (codec, OptimizeFor, HardwareAcceleration, probe result) with the
options it passes, and the assignment of NVENC sessions over a ladder. Pure, no media."""

from __future__ import annotations

import itertools
import re
import subprocess
from dataclasses import dataclass
from fractions import Fraction

import pytest

from engine.encoders import (
    CPU_PRESETS,
    NVENC_INFINITE_GOP,
    NVENC_SETTINGS,
    SESSIONS_BUSY,
    NodeCapabilities,
    assign_encoders,
    choose_encoder,
    keyframe_interval,
    nvenc_choice,
)
from engine.errors import EncodingError, HardwareUnavailableError
from engine.job import HardwareAcceleration, OptimizeFor
from engine.media import HdrInfo, VideoRendition

HDR = HdrInfo(
    "bt2020",
    "smpte2084",
    "bt2020nc",
    "G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)L(10000000,1)",
    "1000,400",
)
BOTH = frozenset({"h264_nvenc", "hevc_nvenc"})

# The probe results the choice must handle.
PROBES = {
    "cpu-only": NodeCapabilities(),
    "gpu-without-nvenc": NodeCapabilities(gpu_name="NVIDIA H200", nvdec_codecs=frozenset({"h264"})),
    "nvenc": NodeCapabilities(
        nvenc_encoders=BOTH, nvenc_sessions=8, nvenc_10bit=True, gpu_name="NVIDIA L4"
    ),
    "nvenc-8bit-only": NodeCapabilities(
        nvenc_encoders=BOTH, nvenc_sessions=3, nvenc_10bit=False, gpu_name="Tesla T4"
    ),
    "nvenc-h264-only": NodeCapabilities(
        nvenc_encoders=frozenset({"h264_nvenc"}), nvenc_sessions=2, gpu_name="Quadro P400"
    ),
}

CODECS = ("H264", "H265")
MODES = tuple(HardwareAcceleration)
OPTIMIZE = tuple(OptimizeFor)


@dataclass(frozen=True)
class Expect:
    outcome: str  # "nvenc", "cpu", "3102"
    warning: str | None = None  # a fragment of the expected warning (None: no warning)


def expected(codec: str, mode, probe: str, hdr: bool, session: bool) -> Expect:
    """The table the choice must follow, spelled out case by case."""
    caps = PROBES[probe]
    nvenc = {"H264": "h264_nvenc", "H265": "hevc_nvenc"}[codec]
    ten_bit = hdr and codec == "H265"
    if mode == HardwareAcceleration.Off:
        return Expect("cpu")
    if nvenc not in caps.nvenc_encoders:
        if mode == HardwareAcceleration.Nvidia:
            return Expect("3102")
        if caps.gpu_name is None:
            return Expect("cpu")  # CPU-only node: Auto is the CPU, nothing to warn about
        if caps.nvenc_encoders:
            return Expect("cpu", f"{nvenc} does not work on {caps.gpu_name}")
        return Expect("cpu", f"no NVENC on {caps.gpu_name}")
    if ten_bit and not caps.nvenc_10bit:
        if mode == HardwareAcceleration.Nvidia:
            return Expect("3102")
        return Expect("cpu", "cannot encode 10-bit")
    if not session:  # NVENC present but all sessions in use: the CPU, never a failure
        return Expect("cpu", SESSIONS_BUSY)
    return Expect("nvenc")


CASES = [
    (codec, optimize, mode, probe, hdr, session)
    for codec, optimize, mode, probe, hdr, session in itertools.product(
        CODECS, OPTIMIZE, MODES, PROBES, (False, True), (True, False)
    )
    if not (hdr and codec == "H264")  # HDR output is H.265 only
]


@pytest.mark.parametrize(("codec", "optimize", "mode", "probe", "hdr", "session"), CASES)
def test_choice_for_every_combination(codec, optimize, mode, probe, hdr, session) -> None:
    expect = expected(codec, mode, probe, hdr, session)
    kwargs = {
        "bitrate_kbps": 2450,
        "frame_rate": 25.0,
        "segment_seconds": 4.0,
        "hdr": HDR if hdr else None,
        "nvenc_session": session,
    }
    if expect.outcome == "3102":
        with pytest.raises(HardwareUnavailableError) as raised:
            choose_encoder(codec, optimize, mode, PROBES[probe], **kwargs)
        assert raised.value.code == 3102
        assert "Nvidia" in raised.value.message
        return
    choice = choose_encoder(codec, optimize, mode, PROBES[probe], **kwargs)
    if expect.warning is None:
        assert choice.warning is None
    else:
        assert choice.warning and expect.warning in choice.warning
    if expect.outcome == "nvenc":
        _check_nvenc(choice, codec, optimize, hdr)
    else:
        _check_cpu(choice, codec, optimize, hdr)


def _check_common(choice, codec: str) -> None:
    assert choice.bit_rate == 2_450_000
    # capped VBR: maxrate 110 %, one second of buffer at maxrate
    assert choice.options["maxrate"] == "2695k"
    assert choice.options["bufsize"] == "2695k"
    assert choice.options["forced-idr"] == "1"
    assert choice.codec_tag == ("hvc1" if codec == "H265" else None)


def _check_nvenc(choice, codec: str, optimize, hdr: bool) -> None:
    _check_common(choice, codec)
    settings = NVENC_SETTINGS[optimize]
    options = choice.options
    assert choice.hardware
    assert choice.name == {"H264": "h264_nvenc", "H265": "hevc_nvenc"}[codec]
    assert options["preset"] == settings.preset
    assert options["tune"] == "hq"
    assert options["rc"] == "vbr"
    assert options["multipass"] == settings.multipass
    # IDRs only where the transcoder forces them: infinite GOP, no scene cut
    assert options["g"] == str(NVENC_INFINITE_GOP)
    assert options["no-scenecut"] == "1"
    assert options["strict_gop"] == "1"
    assert options["spatial-aq"] == "1"
    assert options["bf"] == str(settings.b_frames)
    assert options.get("rc-lookahead") == (str(settings.lookahead) if settings.lookahead else None)
    assert options.get("temporal-aq") == ("1" if settings.temporal_aq else None)
    assert options.get("b_ref_mode") == ("middle" if settings.b_frames else None)
    if hdr and codec == "H265":
        assert choice.pix_fmt == "p010le"
        assert options["profile"] == "main10"
        assert choice.color == (9, 16, 9)  # BT.2020, PQ, BT.2020 non-constant
    else:
        assert choice.pix_fmt == "nv12"
        assert options["profile"] == ("high" if codec == "H264" else "main")
        assert choice.color is None


def _check_cpu(choice, codec: str, optimize, hdr: bool) -> None:
    _check_common(choice, codec)
    assert not choice.hardware
    name = {"H264": "libx264", "H265": "libx265"}[codec]
    assert choice.name == name
    assert choice.options["preset"] == CPU_PRESETS[name][optimize]
    params = choice.options["x264-params" if codec == "H264" else "x265-params"]
    # x264 restarts its GOP count at a forced IDR; x265 does not, so it gets an infinite GOP
    keyint = ("keyint=101", "min-keyint=1") if codec == "H264" else ("keyint=-1",)
    for part in (*keyint, "scenecut=0", "open-gop=0"):
        assert part in params.split(":")
    if codec == "H265" and hdr:
        assert choice.pix_fmt == "yuv420p10le"
        assert "hdr10=1" in params and "transfer=smpte2084" in params
        assert "master-display=G(13250,34500)" in params and "max-cll=1000,400" in params
    else:
        assert choice.pix_fmt == "yuv420p"


def test_presets_go_from_fast_to_slow() -> None:
    presets = [NVENC_SETTINGS[o].preset for o in (OptimizeFor.Speed, OptimizeFor.Balance)]
    presets.append(NVENC_SETTINGS[OptimizeFor.Quality].preset)
    assert presets == sorted(presets) and len(set(presets)) == 3
    # temporal AQ only with the lookahead it needs
    assert all(s.lookahead or not s.temporal_aq for s in NVENC_SETTINGS.values())


def test_unknown_codec_and_missing_cpu_encoder() -> None:
    with pytest.raises(ValueError):
        choose_encoder(
            "VP9",
            OptimizeFor.Balance,
            HardwareAcceleration.Auto,
            NodeCapabilities(),
            bitrate_kbps=1000,
            frame_rate=25,
            segment_seconds=4,
        )
    no_x265 = NodeCapabilities(cpu_encoders=frozenset({"libx264"}))
    with pytest.raises(EncodingError) as raised:
        choose_encoder(
            "H265",
            OptimizeFor.Balance,
            HardwareAcceleration.Auto,
            no_x265,
            bitrate_kbps=1000,
            frame_rate=25,
            segment_seconds=4,
        )
    assert raised.value.code == 3101


@pytest.mark.parametrize(
    ("rate", "segment", "interval"),
    [(25, 4, 100), (Fraction(30000, 1001), 4, 120), (Fraction(24000, 1001), 2, 48), (50, 1, 50)],
)
def test_keyframe_interval(rate, segment, interval) -> None:
    assert keyframe_interval(float(rate), segment) == interval


# -------------------------------------------------------------------------------- ladders


def _ladder() -> list[VideoRendition]:
    rungs = [(416, 234, 320), (640, 360, 860), (768, 432, 1130), (960, 540, 1590)]
    rungs += [(1280, 720, 2450), (1920, 1080, 4500)]
    return [
        VideoRendition(w, h, kbps, "H264", "SD" if h < 720 else "HD", f"video-H264-{h}-{kbps}k")
        for w, h, kbps in rungs
    ]


def _assign(caps, mode=HardwareAcceleration.Auto, sessions=None, renditions=None):
    return assign_encoders(
        renditions or _ladder(),
        OptimizeFor.Balance,
        mode,
        caps,
        frame_rate=25.0,
        segment_seconds=4.0,
        sessions=sessions,
    )


@pytest.mark.parametrize("sessions", [0, 1, 2, 3, 6, 8])
def test_sessions_go_to_the_largest_renditions(sessions: int) -> None:
    assignment = _assign(PROBES["nvenc"], sessions=sessions)
    names = [c.name for c in assignment.choices]
    on_gpu = min(sessions, 6)
    # the ladder is in ascending order: the last `on_gpu` rungs get NVENC
    assert names == ["libx264"] * (6 - on_gpu) + ["h264_nvenc"] * on_gpu
    assert assignment.nvenc_sessions == on_gpu
    for choice, fallback in zip(assignment.choices, assignment.fallbacks, strict=True):
        assert (fallback is not None) == choice.hardware
        if fallback is not None:
            assert fallback.name == "libx264" and not fallback.hardware
            assert fallback.bit_rate == choice.bit_rate
    if on_gpu < 6:
        assert len(assignment.warnings) == 1
        warning = assignment.warnings[0]
        assert warning.startswith(SESSIONS_BUSY)
        for rendition in _ladder()[: 6 - on_gpu]:
            assert rendition.name in warning
    else:
        assert assignment.warnings == ()


def test_probed_sessions_are_the_default_and_nvidia_never_fails_for_sessions() -> None:
    caps = PROBES["nvenc-h264-only"]  # 2 sessions
    assignment = _assign(caps, mode=HardwareAcceleration.Nvidia)
    assert [c.hardware for c in assignment.choices] == [False] * 4 + [True] * 2


def test_no_nvenc_gives_one_warning_per_job() -> None:
    assignment = _assign(PROBES["gpu-without-nvenc"])
    assert {c.name for c in assignment.choices} == {"libx264"}
    assert assignment.warnings == ("encoding on the CPU: no NVENC on NVIDIA H200",)
    assert assignment.fallbacks == (None,) * 6
    with pytest.raises(HardwareUnavailableError):
        _assign(PROBES["gpu-without-nvenc"], mode=HardwareAcceleration.Nvidia)


def test_hdr_applies_to_h265_renditions_only() -> None:
    renditions = [
        VideoRendition(1280, 720, 1850, "H265", "HD", "video-H265-720-1850k"),
        VideoRendition(640, 360, 860, "H264", "SD", "video-H264-360-860k"),
    ]
    assignment = assign_encoders(
        renditions,
        OptimizeFor.Quality,
        HardwareAcceleration.Auto,
        PROBES["nvenc"],
        frame_rate=25.0,
        segment_seconds=4.0,
        hdr=HDR,
    )
    h265, h264 = assignment.choices
    assert (h265.name, h265.pix_fmt) == ("hevc_nvenc", "p010le")
    assert (h264.name, h264.pix_fmt) == ("h264_nvenc", "nv12")
    assert assignment.fallbacks[0].pix_fmt == "yuv420p10le"  # the CPU twin is 10-bit too


# ------------------------------------------------- the options exist in FFmpeg's NVENC encoders

GENERIC = {"b", "maxrate", "bufsize", "g", "bf"}  # AVCodecContext options, not NVENC's own


def _encoder_help(name: str) -> str:
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    result = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-h", f"encoder={name}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if "nvenc" not in result.stdout:
        pytest.skip(f"this ffmpeg has no {name}")
    return result.stdout


@pytest.mark.parametrize(("codec", "name"), [("H264", "h264_nvenc"), ("H265", "hevc_nvenc")])
@pytest.mark.parametrize("optimize", OPTIMIZE)
def test_nvenc_options_and_values_exist(codec: str, name: str, optimize) -> None:
    """No GPU here: at least every option name and named value must be one FFmpeg knows."""
    text = _encoder_help(name)
    hdr = HDR if codec == "H265" else None
    choice = nvenc_choice(codec, optimize, 2450, 25.0, 4.0, hdr)
    for key, value in choice.options.items():
        if key in GENERIC:
            continue
        block = re.search(rf"^  -{re.escape(key)}\s+<(\w+)>.*?(?=^  -|\Z)", text, re.M | re.S)
        assert block, f"{name} has no option {key}"
        if block.group(1) == "int" and not value.lstrip("-").isdigit():
            assert re.search(rf"^\s+{re.escape(value)}\s", block.group(0), re.M), (
                f"{name} -{key} has no value {value}"
            )
