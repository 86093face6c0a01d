"""The one place that decides how a rendition is encoded.

`choose_encoder(...)` maps (codec, OptimizeFor, HardwareAcceleration, node capabilities) to an
FFmpeg encoder name and its options. Every rendition of a job gets IDR frames at the same
instants (the segment boundaries), closed GOPs and no scene-cut keyframes in between, whatever
the encoder, so that CPU and GPU renditions could be mixed in one package.

Preset mapping (CPU):

| OptimizeFor | libx264   | libx265   |
|-------------|-----------|-----------|
| Speed       | veryfast  | superfast |
| Balance     | medium    | fast      |
| Quality     | slow      | medium    |

x265's presets are each roughly one step slower than x264's of the same name, hence the shift.
Rate control is capped VBR: the rung's bitrate as the target, `maxrate` 110% of it (the HLS
authoring rule of peaks within 10% of the nominal bitrate) and a VBV buffer of one second at
maxrate, which bounds any 4-second segment at (1.1 + 1.1 / 4) = 1.375x the target in the worst
case; the manifests then carry the measured peak.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field

import av

from engine.errors import HardwareUnavailableError
from engine.job import HardwareAcceleration, OptimizeFor
from engine.media import HdrInfo

log = logging.getLogger(__name__)

PEAK_FACTOR = 1.10  # maxrate / target bitrate

CPU_PRESETS = {
    "libx264": {
        OptimizeFor.Speed: "veryfast",
        OptimizeFor.Balance: "medium",
        OptimizeFor.Quality: "slow",
    },
    "libx265": {
        OptimizeFor.Speed: "superfast",
        OptimizeFor.Balance: "fast",
        OptimizeFor.Quality: "medium",
    },
}

CPU_ENCODERS = {"H264": "libx264", "H265": "libx265"}
NVENC_ENCODERS = {"H264": "h264_nvenc", "H265": "hevc_nvenc"}


@dataclass(frozen=True)
class NodeCapabilities:
    """What this node can do, as probed (see `engine.capabilities`)."""

    cpu_encoders: frozenset[str] = frozenset({"libx264", "libx265"})
    nvenc_encoders: frozenset[str] = frozenset()  # NVENC encoders that actually opened
    nvenc_sessions: int = 0  # how many NVENC sessions opened at once
    nvdec: bool = False
    gpu_name: str | None = None
    cpu_count: int = field(default_factory=lambda: os.cpu_count() or 1)

    def no_nvenc_reason(self) -> str:
        if self.gpu_name:
            return f"no NVENC on {self.gpu_name}"
        return "no NVIDIA GPU with NVENC on this node"


@dataclass(frozen=True)
class EncoderChoice:
    """How to encode one rendition: the FFmpeg encoder, its options and pixel format."""

    name: str
    options: dict[str, str]
    pix_fmt: str
    bit_rate: int  # target bits per second
    codec_tag: str | None = None  # "hvc1" for H.265 (Apple players need it over "hev1")
    hardware: bool = False
    warning: str | None = None  # set when the job asked for the GPU and got the CPU


def keyframe_interval(frame_rate: float, segment_seconds: float) -> int:
    """Frames between forced IDRs (the encoder must never need to insert one itself)."""
    return max(1, int(-(-segment_seconds * frame_rate // 1)))  # ceil


def choose_encoder(
    codec: str,
    optimize_for: OptimizeFor,
    hardware_acceleration: HardwareAcceleration,
    capabilities: NodeCapabilities,
    *,
    bitrate_kbps: int,
    frame_rate: float,
    segment_seconds: float,
    hdr: HdrInfo | None = None,
) -> EncoderChoice:
    """Encoder name and options for one rendition.

    `hdr` is given when the output must carry HDR10 (H.265 with ExtractAndApplyHDR on an HDR
    source): 10-bit output with the colour description and mastering metadata.
    Raises HardwareUnavailableError (3102) when `Nvidia` is demanded and NVENC is absent.
    """
    if codec not in CPU_ENCODERS:
        raise ValueError(f"no encoder for video format {codec!r}")
    nvenc = NVENC_ENCODERS[codec]
    warning = None
    if hardware_acceleration != HardwareAcceleration.Off:
        if nvenc in capabilities.nvenc_encoders:
            return _nvenc_choice(
                nvenc, codec, optimize_for, bitrate_kbps, frame_rate, segment_seconds, hdr
            )
        if hardware_acceleration == HardwareAcceleration.Nvidia:
            raise HardwareUnavailableError(
                f"HardwareAcceleration Nvidia: {nvenc} is unavailable "
                f"({capabilities.no_nvenc_reason()})"
            )
        if capabilities.gpu_name:
            warning = f"encoding on the CPU: {capabilities.no_nvenc_reason()}"
    return _cpu_choice(
        CPU_ENCODERS[codec], optimize_for, bitrate_kbps, frame_rate, segment_seconds, hdr, warning
    )


def _rate_options(bitrate_kbps: int) -> dict[str, str]:
    maxrate = round(bitrate_kbps * PEAK_FACTOR)
    return {"b": f"{bitrate_kbps}k", "maxrate": f"{maxrate}k", "bufsize": f"{maxrate}k"}


def _cpu_choice(
    encoder: str,
    optimize_for: OptimizeFor,
    bitrate_kbps: int,
    frame_rate: float,
    segment_seconds: float,
    hdr: HdrInfo | None,
    warning: str | None,
) -> EncoderChoice:
    gop = keyframe_interval(frame_rate, segment_seconds)
    options = {"preset": CPU_PRESETS[encoder][optimize_for], **_rate_options(bitrate_kbps)}
    if encoder == "libx264":
        # keyint one above the segment length: the forced IDRs always come first, so x264
        # never places a keyframe of its own; scenecut=0 forbids extra I-frames in between.
        options["x264-params"] = f"keyint={gop + 1}:min-keyint=1:scenecut=0:open-gop=0:forced-idr=1"
        options["forced-idr"] = "1"
        return EncoderChoice(encoder, options, "yuv420p", bitrate_kbps * 1000, warning=warning)
    params = [
        # Infinite GOP: every IDR is a forced one. With a finite keyint x265 under VBV places
        # its own IDR on the frame after a forced one (it does not restart its count there).
        "keyint=-1",
        "scenecut=0",
        "open-gop=0",
        "repeat-headers=0",
        "log-level=error",
    ]
    pix_fmt = "yuv420p"
    if hdr is not None:
        pix_fmt = "yuv420p10le"
        params += _x265_hdr_params(hdr)
    options["x265-params"] = ":".join(params)
    options["forced-idr"] = "1"
    return EncoderChoice(
        encoder, options, pix_fmt, bitrate_kbps * 1000, codec_tag="hvc1", warning=warning
    )


def _x265_hdr_params(hdr: HdrInfo) -> list[str]:
    params = ["hdr10=1", "hdr10-opt=1"]
    for key, value in (
        ("colorprim", hdr.color_primaries),
        ("transfer", hdr.transfer),
        ("colormatrix", hdr.matrix),
        ("master-display", hdr.mastering_display),
        ("max-cll", hdr.content_light),
    ):
        if value:
            params.append(f"{key}={value}")
    return params


NVENC_PRESETS = {OptimizeFor.Speed: "p2", OptimizeFor.Balance: "p4", OptimizeFor.Quality: "p6"}


def _nvenc_choice(
    encoder: str,
    codec: str,
    optimize_for: OptimizeFor,
    bitrate_kbps: int,
    frame_rate: float,
    segment_seconds: float,
    hdr: HdrInfo | None,
) -> EncoderChoice:
    gop = keyframe_interval(frame_rate, segment_seconds)
    options = {
        "preset": NVENC_PRESETS[optimize_for],
        "tune": "hq",
        "rc": "vbr",
        **_rate_options(bitrate_kbps),
        "g": str(gop + 1),
        "forced-idr": "1",  # forced key frames become IDR, as on the CPU path
        "no-scenecut": "1",
        "strict_gop": "1",
        "spatial-aq": "1",
        "temporal-aq": "1",
        "rc-lookahead": "20",
        "bf": "3" if optimize_for != OptimizeFor.Speed else "0",
        "b_ref_mode": "middle" if optimize_for != OptimizeFor.Speed else "disabled",
    }
    pix_fmt = "yuv420p"
    if hdr is not None and codec == "H265":
        pix_fmt = "p010le"
        options["profile"] = "main10"
    return EncoderChoice(
        encoder,
        options,
        pix_fmt,
        bitrate_kbps * 1000,
        codec_tag="hvc1" if codec == "H265" else None,
        hardware=True,
    )


@functools.lru_cache(maxsize=1)
def cpu_capabilities() -> NodeCapabilities:
    """The CPU encoders this PyAV build has (no GPU probing: see `engine.capabilities`)."""
    available = {name for name in ("libx264", "libx265") if name in av.codecs_available}
    return NodeCapabilities(cpu_encoders=frozenset(available))
