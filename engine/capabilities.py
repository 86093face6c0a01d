"""What this node can encode and decode, found by trying rather than by reading codec lists.

FFmpeg's codec list says what was compiled in, not what works: PyAV's wheels carry h264_nvenc
and the CUDA decoders on every machine, and a datacenter GPU such as the H100/H200 has NVDEC but
no NVENC at all. So the probe:

- reads the GPUs, their names and the driver version from NVML (libnvidia-ml through ctypes),
  or from `nvidia-smi` when NVML cannot be loaded;
- opens a CUDA device through FFmpeg; without one, nothing below is tried (that is the whole
  cost on a CPU-only node: a failed dlopen, a few milliseconds, no output);
- opens h264_nvenc, hevc_nvenc (8-bit with the options of OptimizeFor Quality, and main10 with
  P010 input) and av1_nvenc, and encodes a few frames of 320x240 with each;
- counts how many h264_nvenc sessions open at once, up to `MAX_SESSIONS`;
- decodes a few generated frames of H.264, H.265, VP9 and AV1 with CUDA hardware decoding and
  no software fallback (FFmpeg's `get_format` gets no software format to fall back to, so a
  decode that succeeds ran on NVDEC), checking the frame count.

The result is cached per process (`probe()`); `vipe doctor` prints it. CPU encoders are checked
the same way (libx264 and libx265 must open), so a node that cannot encode H.264 at all is
caught before it takes a job.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av
import numpy as np

from engine.encoders import (
    NodeCapabilities,
    cpu_capabilities,
    cpu_choice,
    nvenc_choice,
)
from engine.job import HardwareAcceleration, OptimizeFor
from engine.media import HdrInfo

log = logging.getLogger(__name__)

WIDTH, HEIGHT = 320, 240  # above every NVENC and NVDEC minimum (VP9/AV1 NVDEC: 128x128)
FRAMES = 5  # frames encoded or decoded per check
# Sessions opened at once at most: a ladder has up to 7 rungs, and every probe session holds
# GPU memory for a moment. VIPE_NVENC_MAX_SESSIONS changes it.
MAX_SESSIONS = 16
NVENC_CHECKS = ("h264_nvenc", "hevc_nvenc", "av1_nvenc")
# source codec -> (CPU encoder that makes the sample, container format, encoder options)
NVDEC_SAMPLES: dict[str, tuple[str, str, dict[str, str]]] = {
    "h264": ("libx264", "mp4", {"preset": "ultrafast"}),
    "hevc": ("libx265", "mp4", {"preset": "ultrafast", "x265-params": "log-level=none"}),
    "vp9": ("libvpx-vp9", "webm", {"deadline": "realtime", "cpu-used": "8"}),
    "av1": ("libsvtav1", "mp4", {"preset": "10"}),
}
SMI_TIMEOUT = 5.0  # seconds; nvidia-smi hangs on a wedged driver


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    driver: str | None
    memory_mib: int | None
    source: str  # "nvml" or "nvidia-smi"


@dataclass(frozen=True)
class Check:
    """One thing the probe tried: an encoder opened, a codec decoded."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class NodeProbe:
    """Everything the probe found; `capabilities` is what the encoder choice uses."""

    capabilities: NodeCapabilities
    gpus: tuple[GpuInfo, ...]
    cuda: Check
    cpu_checks: tuple[Check, ...]
    nvenc_checks: tuple[Check, ...]
    nvdec_checks: tuple[Check, ...]
    pyav_version: str
    ffmpeg_version: str
    libraries: dict[str, str]
    encoders_built: tuple[str, ...]  # encoders compiled into this FFmpeg (of those vipe uses)
    hw_devices: tuple[str, ...]  # hardware device types compiled into this FFmpeg
    seconds: float
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def can_encode_h264(self) -> bool:
        return self.capabilities.can_encode("H264")

    def as_json(self) -> dict[str, Any]:
        caps = self.capabilities
        return {
            "PyAV": self.pyav_version,
            "FFmpeg": self.ffmpeg_version,
            "Libraries": self.libraries,
            "HardwareDevices": list(self.hw_devices),
            "EncodersBuilt": list(self.encoders_built),
            "Gpus": [
                {
                    "Index": g.index,
                    "Name": g.name,
                    "Driver": g.driver,
                    "MemoryMiB": g.memory_mib,
                    "Source": g.source,
                }
                for g in self.gpus
            ],
            "Cuda": _check_json(self.cuda),
            "CpuEncoders": [_check_json(c) for c in self.cpu_checks],
            "Nvenc": [_check_json(c) for c in self.nvenc_checks],
            "Nvdec": [_check_json(c) for c in self.nvdec_checks],
            "NvencSessions": caps.nvenc_sessions,
            "Capabilities": {
                "CpuEncoders": sorted(caps.cpu_encoders),
                "NvencEncoders": sorted(caps.nvenc_encoders),
                "Nvenc10Bit": caps.nvenc_10bit,
                "NvdecCodecs": sorted(caps.nvdec_codecs),
                "Gpu": caps.gpu_name,
                "Driver": caps.driver,
            },
            "CanEncodeH264": self.can_encode_h264,
            "ProbeSeconds": round(self.seconds, 3),
            "Notes": list(self.notes),
        }


def _check_json(check: Check) -> dict[str, Any]:
    return {"Name": check.name, "Ok": check.ok, "Detail": check.detail}


# ----------------------------------------------------------------------------- entry points

_lock = threading.Lock()
_cached: NodeProbe | None = None


def probe(*, refresh: bool = False, count_sessions: bool = True) -> NodeProbe:
    """Probe this node once per process (thread-safe); `refresh` probes again.

    `count_sessions=False` skips opening many NVENC sessions (for frequent health checks,
    which must not take sessions from running jobs); the result is then not cached.
    """
    global _cached
    with _lock:
        if _cached is not None and not refresh:
            return _cached
        result = _probe(count_sessions=count_sessions)
        if count_sessions:
            _cached = result
        return result


def node_capabilities(
    hardware_acceleration: HardwareAcceleration | None = None,
) -> NodeCapabilities:
    """The capabilities a job runs with: no probing at all for `HardwareAcceleration: None` or
    on a node without a GPU, else the (cached) probe."""
    if hardware_acceleration == HardwareAcceleration.Off or (_cached is None and _no_gpu()):
        return cpu_capabilities()
    return probe().capabilities


def _no_gpu() -> bool:
    """No GPU in NVML (or nvidia-smi) and no CUDA device: the probe would find nothing but the
    CPU encoders, whose trial encodes (libx265's start-up above all) cost a short job tens of
    milliseconds; a job needs only the encoders this build has (`cpu_capabilities`)."""
    return not _gpus([]) and not _cuda_check(tuple(_hw_devices())).ok


class NvencSessionPool:
    """NVENC sessions in use by the jobs of this process, so that concurrent jobs together
    stay within the probed number (sessions of other processes are not seen; an encoder
    that then fails to open falls back to the CPU)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.in_use = 0

    def acquire(self, limit: int, wanted: int) -> int:
        """Take up to `wanted` of `limit` sessions; returns how many were granted."""
        with self._lock:
            granted = max(0, min(wanted, limit - self.in_use))
            self.in_use += granted
            return granted

    def release(self, count: int) -> None:
        with self._lock:
            self.in_use = max(0, self.in_use - count)


NVENC_SESSIONS = NvencSessionPool()


# ---------------------------------------------------------------------------------- probing


def _probe(*, count_sessions: bool) -> NodeProbe:
    started = time.perf_counter()
    notes: list[str] = []
    gpus = _gpus(notes)
    cpu_checks = tuple(_cpu_check(codec) for codec in ("H264", "H265"))
    hw_devices = tuple(_hw_devices())
    cuda = _cuda_check(hw_devices)
    nvenc_checks: list[Check] = []
    nvdec_checks: list[Check] = []
    sessions = 0
    if cuda.ok:
        nvenc_checks = [_nvenc_check(name) for name in NVENC_CHECKS]
        ten_bit = _nvenc_10bit_check()
        nvenc_checks.append(ten_bit)
        if count_sessions and any(c.ok and c.name == "h264_nvenc" for c in nvenc_checks):
            sessions = _count_sessions(_max_sessions())
        elif not count_sessions:
            notes.append("NVENC sessions not counted (quick probe)")
        nvdec_checks = [_nvdec_check(codec) for codec in NVDEC_SAMPLES]
    ok = {c.name for c in nvenc_checks if c.ok}
    nvenc = frozenset(ok & {"h264_nvenc", "hevc_nvenc"})
    if nvenc and not count_sessions:
        sessions = 1  # known to open at least once
    capabilities = NodeCapabilities(
        cpu_encoders=frozenset(c.name for c in cpu_checks if c.ok),
        nvenc_encoders=nvenc,
        nvenc_sessions=sessions if nvenc else 0,
        nvenc_10bit="hevc_nvenc main10" in ok,
        nvdec_codecs=frozenset(c.name for c in nvdec_checks if c.ok),
        gpu_name=gpus[0].name if gpus else None,
        driver=gpus[0].driver if gpus else None,
    )
    if len(gpus) > 1:
        notes.append(f"{len(gpus)} GPUs: vipe encodes and decodes on the first CUDA device")
    return NodeProbe(
        capabilities=capabilities,
        gpus=gpus,
        cuda=cuda,
        cpu_checks=cpu_checks,
        nvenc_checks=tuple(nvenc_checks),
        nvdec_checks=tuple(nvdec_checks),
        pyav_version=av.__version__,
        ffmpeg_version=str(getattr(av, "ffmpeg_version_info", "unknown")),
        libraries={k: ".".join(map(str, v)) for k, v in av.library_versions.items()},
        encoders_built=tuple(
            sorted(
                name
                for name in (
                    "libx264",
                    "libx265",
                    "h264_nvenc",
                    "hevc_nvenc",
                    "av1_nvenc",
                    "libsvtav1",
                    "libvpx-vp9",
                    "aac",
                    "ac3",
                    "eac3",
                )
                if name in av.codecs_available
            )
        ),
        hw_devices=hw_devices,
        seconds=time.perf_counter() - started,
        notes=tuple(notes),
    )


def _max_sessions() -> int:
    try:
        return max(1, int(os.environ.get("VIPE_NVENC_MAX_SESSIONS", MAX_SESSIONS)))
    except ValueError:
        return MAX_SESSIONS


def _hw_devices() -> list[str]:
    from av.codec.hwaccel import hwdevices_available

    return list(hwdevices_available())


def _error(error: BaseException) -> str:
    return str(error).strip() or type(error).__name__


# -- GPUs ------------------------------------------------------------------------------------


def _gpus(notes: list[str]) -> tuple[GpuInfo, ...]:
    try:
        gpus = _nvml_gpus()
    except OSError:
        gpus = None  # no libnvidia-ml: no driver on this node (or not mounted in)
    except Exception as error:  # a broken driver must not break the probe
        notes.append(f"NVML: {_error(error)}")
        gpus = None
    if gpus is None:
        gpus = _smi_gpus(notes)
    return tuple(gpus)


class _NvmlMemory(ctypes.Structure):
    _fields_ = [
        ("total", ctypes.c_ulonglong),
        ("free", ctypes.c_ulonglong),
        ("used", ctypes.c_ulonglong),
    ]


def _nvml_gpus() -> list[GpuInfo]:
    """GPUs from NVML; raises OSError when the library is not there."""
    nvml = ctypes.CDLL("libnvidia-ml.so.1")
    if nvml.nvmlInit_v2() != 0:
        raise RuntimeError("nvmlInit failed (driver not loaded?)")
    try:
        buffer = ctypes.create_string_buffer(96)
        driver = None
        if nvml.nvmlSystemGetDriverVersion(buffer, 96) == 0:
            driver = buffer.value.decode(errors="replace")
        count = ctypes.c_uint(0)
        if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
            return []
        gpus = []
        for index in range(count.value):
            handle = ctypes.c_void_p()
            if nvml.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle)) != 0:
                continue
            name = "NVIDIA GPU"
            if nvml.nvmlDeviceGetName(handle, buffer, 96) == 0:
                name = buffer.value.decode(errors="replace")
            memory = _NvmlMemory()
            mib = None
            if nvml.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(memory)) == 0:
                mib = memory.total // (1024 * 1024)
            gpus.append(GpuInfo(index, name, driver, mib, "nvml"))
        return gpus
    finally:
        nvml.nvmlShutdown()


def _smi_gpus(notes: list[str]) -> list[GpuInfo]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        result = subprocess.run(
            [
                smi,
                "--query-gpu=index,name,driver_version,memory.total",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            timeout=SMI_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        notes.append(f"nvidia-smi: {_error(error)}")
        return []
    if result.returncode != 0:
        notes.append(f"nvidia-smi: {(result.stderr or result.stdout).strip()[:200]}")
        return []
    return parse_smi(result.stdout)


def parse_smi(text: str) -> list[GpuInfo]:
    """Rows of `nvidia-smi --query-gpu=index,name,driver_version,memory.total
    --format=csv,noheader,nounits`."""
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 4 or not parts[0].isdigit():
            continue
        memory = int(parts[3]) if parts[3].isdigit() else None
        gpus.append(GpuInfo(int(parts[0]), parts[1], parts[2] or None, memory, "nvidia-smi"))
    return gpus


# -- CUDA, encoders, decoders ----------------------------------------------------------------


def _cuda_check(hw_devices: tuple[str, ...]) -> Check:
    if "cuda" not in hw_devices:
        return Check("cuda", False, "this FFmpeg has no CUDA support")
    from av.codec.hwaccel import HWAccel

    try:
        HWAccel(device_type="cuda").create(av.Codec("h264", "r"))
    except Exception as error:  # FFmpegError, or NotImplementedError without a CUDA config
        return Check("cuda", False, f"no CUDA device: {_error(error)}")
    return Check("cuda", True, "CUDA device opened")


def _frames(pix_fmt: str, count: int = FRAMES) -> Iterator[av.VideoFrame]:
    """Small moving gradients (an encoder may skip work on constant frames)."""
    x = np.arange(WIDTH, dtype=np.uint16)[None, :]
    y = np.arange(HEIGHT, dtype=np.uint16)[:, None]
    for index in range(count):
        rgb = np.empty((HEIGHT, WIDTH, 3), np.uint8)
        rgb[..., 0] = (x + index * 8) % 256
        rgb[..., 1] = (y + index * 4) % 256
        rgb[..., 2] = (x + y) % 256
        frame = av.VideoFrame.from_ndarray(rgb, "rgb24").reformat(format=pix_fmt)
        frame.pts = index
        yield frame


def try_encode(
    name: str, options: dict[str, str], pix_fmt: str, frames: int = FRAMES
) -> str | None:
    """Open `name` and encode a few frames; None when it worked, else the error."""
    try:
        context = av.CodecContext.create(name, "w")
        if not isinstance(context, av.VideoCodecContext):
            raise TypeError(f"{name} is not a video encoder")
        context.width, context.height = WIDTH, HEIGHT
        context.pix_fmt = pix_fmt
        context.time_base = Fraction(1, 25)
        context.framerate = Fraction(25)
        context.bit_rate = 500_000
        context.options = {k: v for k, v in options.items() if k != "b"}
        context.open()
        packets = []
        for frame in _frames(pix_fmt, frames):
            packets += context.encode(frame)
        packets += context.encode(None)
    except Exception as error:  # FFmpegError and friends: the encoder does not work here
        return _error(error)
    # At least one packet proves the encoder works; an exact count would wrongly fail an
    # encoder whose lookahead holds frames back in a way this short probe cannot flush.
    if not packets or len(packets) > frames:
        return f"{len(packets)} packets for {frames} frames"
    return None


def _cpu_check(codec: str) -> Check:
    choice = cpu_choice(codec, OptimizeFor.Speed, 500, 25.0, 4.0)
    if choice.name not in av.codecs_available:
        return Check(choice.name, False, "not in this FFmpeg build")
    error = try_encode(choice.name, choice.options, choice.pix_fmt)
    return Check(choice.name, error is None, error or f"encoded {FRAMES} frames")


def _nvenc_check(name: str) -> Check:
    if name not in av.codecs_available:
        return Check(name, False, "not in this FFmpeg build")
    if name == "av1_nvenc":  # not used for jobs (no AV1 output yet): default settings
        options, pix_fmt = {"preset": "p4", "rc": "vbr"}, "nv12"
    else:
        # The most demanding settings vipe uses (B-frames as references, lookahead, temporal
        # AQ, two passes): an NVENC too old for them counts as no NVENC, not as a job failure.
        codec = "H264" if name == "h264_nvenc" else "H265"
        choice = nvenc_choice(codec, OptimizeFor.Quality, 500, 25.0, 4.0)
        options, pix_fmt = choice.options, choice.pix_fmt
    error = try_encode(name, options, pix_fmt)
    return Check(name, error is None, error or f"encoded {FRAMES} frames")


def _nvenc_10bit_check() -> Check:
    name = "hevc_nvenc main10"
    if "hevc_nvenc" not in av.codecs_available:
        return Check(name, False, "not in this FFmpeg build")
    hdr = HdrInfo("bt2020", "smpte2084", "bt2020nc")
    choice = nvenc_choice("H265", OptimizeFor.Quality, 500, 25.0, 4.0, hdr)
    error = try_encode("hevc_nvenc", choice.options, choice.pix_fmt)
    return Check(name, error is None, error or f"encoded {FRAMES} 10-bit frames")


def _count_sessions(limit: int) -> int:
    """How many h264_nvenc encoders are open at the same time (all closed afterwards)."""
    open_contexts = []
    try:
        for _ in range(limit):
            try:
                context = av.CodecContext.create("h264_nvenc", "w")
                context.width, context.height = WIDTH, HEIGHT
                context.pix_fmt = "nv12"
                context.time_base = Fraction(1, 25)
                context.options = {"preset": "p1"}
                context.open()
            except Exception:
                break
            open_contexts.append(context)
        return len(open_contexts)
    finally:
        open_contexts.clear()  # freeing the contexts closes the sessions


def make_sample(codec: str, frames: int = FRAMES) -> bytes | None:
    """A few frames of `codec` ("h264", "hevc", "vp9", "av1") made with a CPU encoder, or None
    when this FFmpeg has no encoder for it."""
    encoder, container_format, options = NVDEC_SAMPLES[codec]
    if encoder not in av.codecs_available:
        return None
    buffer = io.BytesIO()
    with _quiet_svt(), av.open(buffer, "w", format=container_format) as container:
        stream = container.add_stream(encoder, rate=25)
        if not isinstance(stream, av.VideoStream):  # narrows: the samples are all video
            raise TypeError(f"{encoder} is not a video encoder")
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.options = dict(options)
        for frame in _frames("yuv420p", frames):
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


@contextlib.contextmanager
def _quiet_svt() -> Iterator[None]:
    # SVT-AV1 prints its banner straight to stderr unless SVT_LOG asks for errors only.
    previous = os.environ.get("SVT_LOG")
    os.environ["SVT_LOG"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("SVT_LOG", None)
        else:
            os.environ["SVT_LOG"] = previous


def gpu_decode(data: bytes | str, *, limit: int | None = None) -> tuple[int, str, bool]:
    """Decode the video of `data` (bytes or a path) with CUDA and no software fallback:
    (frames, pixel format of the downloaded frames, whether the decoder was hardware)."""
    from av.codec.hwaccel import HWAccel

    source = io.BytesIO(data) if isinstance(data, bytes) else data
    hwaccel = HWAccel(device_type="cuda", allow_software_fallback=False)
    with av.open(source, "r", hwaccel=hwaccel) as container:
        stream = container.streams.video[0]
        hardware = stream.codec_context.is_hwaccel
        count, pix_fmt = 0, ""
        for frame in container.decode(stream):
            count += 1
            pix_fmt = frame.format.name
            if limit and count >= limit:
                break
    return count, pix_fmt, hardware


def _nvdec_check(codec: str, sample: Callable[[str], bytes | None] = make_sample) -> Check:
    try:
        data = sample(codec)
    except Exception as error:
        return Check(codec, False, f"could not make a sample: {_error(error)}")
    if data is None:
        return Check(codec, False, "untested: no CPU encoder for a sample")
    try:
        count, pix_fmt, hardware = gpu_decode(data)
    except Exception as error:  # NVDEC refuses the codec (e.g. AV1 on an H100/H200)
        return Check(codec, False, _error(error))
    if not hardware:
        return Check(codec, False, "FFmpeg has no CUDA decoder config for it")
    if count != FRAMES:
        return Check(codec, False, f"{count} frames decoded of {FRAMES}")
    return Check(codec, True, f"{count} frames on NVDEC ({pix_fmt})")


__all__ = [
    "NVENC_SESSIONS",
    "Check",
    "GpuInfo",
    "NodeProbe",
    "NvencSessionPool",
    "gpu_decode",
    "make_sample",
    "node_capabilities",
    "parse_smi",
    "probe",
    "try_encode",
]
