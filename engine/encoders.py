"""The one place that decides how a rendition is encoded.

`choose_encoder(...)` maps (codec, OptimizeFor, HardwareAcceleration, node capabilities) to an
FFmpeg encoder name and its options; `assign_encoders(...)` applies it to a whole ladder and
hands out the node's NVENC sessions. Every rendition of a job gets IDR frames at the same
instants (the segment boundaries), closed GOPs and no scene-cut keyframes in between, whatever
the encoder, so that CPU and GPU renditions can be mixed in one package.

Preset mapping:

| OptimizeFor | libx264   | libx265   | NVENC (h264_nvenc, hevc_nvenc)                          |
|-------------|-----------|-----------|---------------------------------------------------------|
| Speed       | veryfast  | superfast | p2, one pass, no B-frames, no lookahead, spatial AQ     |
| Balance     | medium    | fast      | p4, quarter-res 2nd pass, 3 B-frames, lookahead 16, AQ  |
| Quality     | slow      | medium    | p6, full-res 2nd pass, 3 B-frames, lookahead 32, AQ     |

x265's presets are each roughly one step slower than x264's of the same name, hence the shift.
NVENC always runs with `tune=hq`; "AQ" is spatial plus temporal adaptive quantisation (temporal
AQ needs the lookahead, so Speed has spatial AQ only).

Rate control is capped VBR on every encoder: the rung's bitrate as the target, `maxrate` 110% of
it (the HLS authoring rule of peaks within 10% of the nominal bitrate) and a VBV buffer of one
second at maxrate, which bounds any 4-second segment at (1.1 + 1.1 / 4) = 1.375x the target in the
worst case; the manifests then carry the measured peak.

Keyframes: the transcoder marks the first frame of every segment as an I-frame; each encoder is
told to turn a forced I-frame into an IDR (`forced-idr`), never to insert keyframes of its own
(no scene cut; for x264 a GOP one above the segment length, as x264 restarts its count at a
forced IDR; for x265 and NVENC an infinite GOP, so that every IDR is a forced one), and to keep
GOPs closed. That is what makes a libx264 and an h264_nvenc rendition of one job switchable
segment by segment (`benchmarks/gpu_check.py` checks the IDR frames of NVENC on a GPU).

NVENC sessions (`assign_encoders`): a node opens only so many NVENC sessions at once (GeForce
drivers cap it, and every session costs GPU memory); the probe counts them. When a job has more
NVENC-eligible renditions than free sessions, the largest renditions (most pixels, then the
highest bitrate) get NVENC, because they cost the CPU most, and the smallest go to the CPU
encoder, with a `HardwareFallback` warning. This never fails a job, `Nvidia` included: NVENC
is there, it is only busy.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypedDict

import av

from engine.errors import EncodingError, HardwareUnavailableError
from engine.job import HardwareAcceleration, OptimizeFor
from engine.media import HdrInfo, VideoRendition

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
SESSIONS_BUSY = "NVENC sessions exhausted"  # start of the warning when sessions run out


@dataclass(frozen=True)
class NvencSettings:
    """The NVENC settings of one OptimizeFor value."""

    preset: str  # p1 (fastest) … p7 (best)
    multipass: str  # disabled, qres (quarter-resolution first pass), fullres
    lookahead: int  # frames; 0 = off
    b_frames: int
    temporal_aq: bool  # needs the lookahead


NVENC_SETTINGS = {
    OptimizeFor.Speed: NvencSettings("p2", "disabled", 0, 0, False),
    OptimizeFor.Balance: NvencSettings("p4", "qres", 16, 3, True),
    OptimizeFor.Quality: NvencSettings("p6", "fullres", 32, 3, True),
}
NVENC_PRESETS = {key: value.preset for key, value in NVENC_SETTINGS.items()}
NVENC_INFINITE_GOP = 2**31 - 1  # the largest AVCodecContext.gop_size

# FFmpeg's colour codes (AVColorPrimaries, AVColorTransferCharacteristic, AVColorSpace) for the
# names `engine.probe` reports; NVENC writes them into the VUI colour description.
COLOR_PRIMARIES = {"bt709": 1, "bt2020": 9, "smpte431": 11, "smpte432": 12}
COLOR_TRANSFERS = {"bt709": 1, "smpte2084": 16, "arib-std-b67": 18, "bt2020-10": 14}
COLOR_MATRICES = {"bt709": 1, "bt2020nc": 9, "bt2020c": 10}


@dataclass(frozen=True)
class NodeCapabilities:
    """What this node can do, as probed (see `engine.capabilities`)."""

    cpu_encoders: frozenset[str] = frozenset({"libx264", "libx265"})
    nvenc_encoders: frozenset[str] = frozenset()  # NVENC encoders that actually opened
    nvenc_sessions: int = 0  # how many NVENC sessions opened at once
    nvenc_10bit: bool = False  # hevc_nvenc opened with main10 and P010 input
    nvdec_codecs: frozenset[str] = frozenset()  # source codecs (h264, hevc, …) NVDEC decoded
    gpu_name: str | None = None
    driver: str | None = None
    cpu_count: int = field(default_factory=lambda: os.cpu_count() or 1)

    @property
    def nvdec(self) -> bool:
        return bool(self.nvdec_codecs)

    def no_nvenc_reason(self, encoder: str | None = None) -> str:
        """Why `encoder` (or NVENC at all) is not used, for warnings and errors."""
        if encoder and self.nvenc_encoders and encoder not in self.nvenc_encoders:
            return f"{encoder} does not work on {self.gpu_name or 'this GPU'}"
        if self.gpu_name:
            return f"no NVENC on {self.gpu_name}"
        return "no NVIDIA GPU with NVENC on this node"

    def can_encode(self, codec: str) -> bool:
        """Whether some encoder for `codec` ("H264", "H265") works here."""
        return CPU_ENCODERS[codec] in self.cpu_encoders or NVENC_ENCODERS[codec] in (
            self.nvenc_encoders
        )


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
    # (primaries, transfer, matrix) FFmpeg codes for the codec context; NVENC's HDR10 output
    # takes its colour description from there (x265 gets it in x265-params instead)
    color: tuple[int, int, int] | None = None


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
    nvenc_session: bool = True,
    ten_bit: bool = False,
) -> EncoderChoice:
    """Encoder name and options for one rendition.

    `hdr` is given when the output must carry HDR10 (H.265 with ExtractAndApplyHDR on an HDR
    source): 10-bit output with the colour description and mastering metadata.
    `ten_bit`: H.265 output in 10 bits (Main 10) without HDR signalling, for a source of 10
    bits or more (H.264 stays 8-bit whatever this says).
    `nvenc_session` is False when the node's NVENC sessions are all taken (see
    `assign_encoders`): the rendition then goes to the CPU with a warning, whatever the mode.
    Raises HardwareUnavailableError (3102) when `Nvidia` is demanded and NVENC is absent or
    cannot encode this rendition (10-bit HDR on an NVENC without main10).
    """
    if codec not in CPU_ENCODERS:
        raise ValueError(f"no encoder for video format {codec!r}")
    nvenc = NVENC_ENCODERS[codec]
    cpu = CPU_ENCODERS[codec]
    warning = None
    if hardware_acceleration != HardwareAcceleration.Off:
        deep = (hdr is not None or ten_bit) and codec == "H265"
        if nvenc in capabilities.nvenc_encoders and deep and not capabilities.nvenc_10bit:
            reason = f"{nvenc} on {capabilities.gpu_name or 'this GPU'} cannot encode 10-bit"
            what = "HDR10" if hdr is not None else "10-bit"
            if hardware_acceleration == HardwareAcceleration.Nvidia:
                raise HardwareUnavailableError(f"HardwareAcceleration Nvidia: {reason} ({what})")
            warning = f"encoding the {what} renditions on the CPU: {reason}"
        elif nvenc in capabilities.nvenc_encoders:
            if nvenc_session:
                return nvenc_choice(
                    codec, optimize_for, bitrate_kbps, frame_rate, segment_seconds, hdr, ten_bit
                )
            warning = (
                f"{SESSIONS_BUSY}: all {capabilities.nvenc_sessions} NVENC sessions of "
                f"{capabilities.gpu_name or 'the GPU'} are in use"
            )
        elif hardware_acceleration == HardwareAcceleration.Nvidia:
            raise HardwareUnavailableError(
                f"HardwareAcceleration Nvidia: {nvenc} is unavailable "
                f"({capabilities.no_nvenc_reason(nvenc)})"
            )
        elif capabilities.gpu_name:
            # Only where there is a GPU to fall back from: on a CPU-only node Auto is the CPU.
            warning = f"encoding on the CPU: {capabilities.no_nvenc_reason(nvenc)}"
    if cpu not in capabilities.cpu_encoders:
        raise EncodingError(f"no encoder for {codec} on this node: {cpu} is missing")
    return cpu_choice(
        codec, optimize_for, bitrate_kbps, frame_rate, segment_seconds, hdr, warning, ten_bit
    )


def _rate_options(bitrate_kbps: int) -> dict[str, str]:
    maxrate = round(bitrate_kbps * PEAK_FACTOR)
    return {"b": f"{bitrate_kbps}k", "maxrate": f"{maxrate}k", "bufsize": f"{maxrate}k"}


def cpu_choice(
    codec: str,
    optimize_for: OptimizeFor,
    bitrate_kbps: int,
    frame_rate: float,
    segment_seconds: float,
    hdr: HdrInfo | None = None,
    warning: str | None = None,
    ten_bit: bool = False,
) -> EncoderChoice:
    """libx264 / libx265 settings for one rendition (`ten_bit`: libx265 in Main 10)."""
    encoder = CPU_ENCODERS[codec]
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
    if hdr is not None or ten_bit:
        pix_fmt = "yuv420p10le"  # libx265 chooses the Main 10 profile from the input format
    if hdr is not None:
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


def nvenc_choice(
    codec: str,
    optimize_for: OptimizeFor,
    bitrate_kbps: int,
    frame_rate: float,
    segment_seconds: float,
    hdr: HdrInfo | None = None,
    ten_bit: bool = False,
) -> EncoderChoice:
    """h264_nvenc / hevc_nvenc settings for one rendition (see the module's table);
    `ten_bit`: hevc_nvenc in Main 10 from P010 frames.

    `frame_rate` and `segment_seconds` are not needed (infinite GOP, forced IDRs); they are
    taken for symmetry with `cpu_choice`."""
    settings = NVENC_SETTINGS[optimize_for]
    options = {
        "preset": settings.preset,
        "tune": "hq",
        "rc": "vbr",
        "multipass": settings.multipass,
        **_rate_options(bitrate_kbps),
        # Infinite GOP (as for x265): every IDR is a forced one, whether or not NVENC restarts
        # its GOP count at a forced IDR.
        "g": str(NVENC_INFINITE_GOP),
        "forced-idr": "1",  # a frame the transcoder marks as I becomes an IDR
        "no-scenecut": "1",  # no keyframes of NVENC's own between the segment boundaries
        "strict_gop": "1",  # keep the GOP length; no rate-driven GOP changes
        "spatial-aq": "1",
        "bf": str(settings.b_frames),
    }
    if settings.lookahead:
        options["rc-lookahead"] = str(settings.lookahead)
    if settings.temporal_aq:
        options["temporal-aq"] = "1"
    if settings.b_frames:
        # B-frames as references ("middle") gain a few percent at the same quality.
        options["b_ref_mode"] = "middle"
    pix_fmt = "nv12"  # NVENC's native 8-bit layout: the scaler writes it, no conversion later
    color = None
    name = NVENC_ENCODERS[codec]
    if codec == "H264":
        options["profile"] = "high"
    elif hdr is None and ten_bit:
        pix_fmt = "p010le"
        options["profile"] = "main10"
    elif hdr is not None:
        # HDR10: 10-bit main10 from P010 frames, the colour description in the VUI; the
        # mastering-display and light-level SEI come from the frames' side data (decoded from
        # the source and kept by the scaler), which FFmpeg's NVENC writes out.
        pix_fmt = "p010le"
        options["profile"] = "main10"
        color = (
            COLOR_PRIMARIES.get(hdr.color_primaries or "", 2),
            COLOR_TRANSFERS.get(hdr.transfer or "", 2),
            COLOR_MATRICES.get(hdr.matrix or "", 2),
        )
    else:
        options["profile"] = "main"
    return EncoderChoice(
        name,
        options,
        pix_fmt,
        bitrate_kbps * 1000,
        codec_tag="hvc1" if codec == "H265" else None,
        hardware=True,
        color=color,
    )


# ------------------------------------------------------------------------------------ ladders


@dataclass(frozen=True)
class EncoderAssignment:
    """The encoders of one job's ladder, in rendition order."""

    choices: tuple[EncoderChoice, ...]
    # For each NVENC choice, the CPU choice that re-encodes the rendition if NVENC fails in
    # the middle of the job; None for CPU choices.
    fallbacks: tuple[EncoderChoice | None, ...]
    warnings: tuple[str, ...]  # distinct, in order

    @property
    def nvenc_sessions(self) -> int:
        return sum(1 for c in self.choices if c.hardware)


class _RungSettings(TypedDict):
    """The settings `choose_encoder` and `cpu_choice` share for one rung."""

    bitrate_kbps: int
    frame_rate: float
    segment_seconds: float
    hdr: HdrInfo | None
    ten_bit: bool


def assign_encoders(
    renditions: Sequence[VideoRendition],
    optimize_for: OptimizeFor,
    hardware_acceleration: HardwareAcceleration,
    capabilities: NodeCapabilities,
    *,
    frame_rate: float,
    segment_seconds: float,
    hdr: HdrInfo | None = None,
    sessions: int | None = None,
    ten_bit: bool = False,
) -> EncoderAssignment:
    """`choose_encoder` for every rung, with at most `sessions` (default: the probed number)
    NVENC sessions: the largest renditions get them, the rest go to the CPU (module docs).
    `hdr` and `ten_bit` (a source of 10 bits or more) apply to the H.265 renditions only."""
    free = capabilities.nvenc_sessions if sessions is None else sessions
    by_size = sorted(
        range(len(renditions)),
        key=lambda i: (renditions[i].width * renditions[i].height, renditions[i].bitrate_kbps),
        reverse=True,
    )
    with_session = set(by_size[: max(free, 0)])
    choices: list[EncoderChoice] = []
    fallbacks: list[EncoderChoice | None] = []
    for index, rendition in enumerate(renditions):
        rung_hdr = hdr if rendition.codec == "H265" else None
        common: _RungSettings = {
            "bitrate_kbps": rendition.bitrate_kbps,
            "frame_rate": frame_rate,
            "segment_seconds": segment_seconds,
            "hdr": rung_hdr,
            "ten_bit": ten_bit and rendition.codec == "H265",
        }
        choice = choose_encoder(
            rendition.codec,
            optimize_for,
            hardware_acceleration,
            capabilities,
            nvenc_session=index in with_session,
            **common,
        )
        choices.append(choice)
        fallback = None
        if choice.hardware and CPU_ENCODERS[rendition.codec] in capabilities.cpu_encoders:
            fallback = cpu_choice(rendition.codec, optimize_for, **common)
        fallbacks.append(fallback)
    warnings = [c.warning for c in choices if c.warning]
    busy = [r.name for r, c in zip(renditions, choices, strict=True) if _is_session_warning(c)]
    if busy:  # one message that names the renditions, instead of the same one per rendition
        warnings = [
            f"{w}: {', '.join(busy)} on the CPU" if w.startswith(SESSIONS_BUSY) else w
            for w in warnings
        ]
    return EncoderAssignment(tuple(choices), tuple(fallbacks), tuple(dict.fromkeys(warnings)))


def _is_session_warning(choice: EncoderChoice) -> bool:
    return bool(choice.warning and choice.warning.startswith(SESSIONS_BUSY))


@functools.lru_cache(maxsize=1)
def cpu_capabilities() -> NodeCapabilities:
    """The CPU encoders this PyAV build has (no GPU probing: see `engine.capabilities`)."""
    available = {name for name in ("libx264", "libx265") if name in av.codecs_available}
    return NodeCapabilities(cpu_encoders=frozenset(available))
