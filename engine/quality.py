"""Quality metrics of video renditions (contract §5 `QualityMetrics`): PSNR, SSIM and VMAF.

What is compared: the reference is the encoder's input, i.e. the prepared source frame
(deinterlaced, rotated, constant rate, watermarked) scaled to the rung's size; the distorted
frame is the rung's encoded output decoded again. The metrics thus measure what the encoder
lost at that size and bitrate, not the scaling (a 360p rung is compared with the source scaled
to 360p, as the issue and common ladder practice ask).

How (in the transcoding pass, no second pass): each rung's `QualityMeter` decodes the packets
its encoder emits, as they come out, with a decoder of its own, and pairs every decoded frame
with the encoder input of the same pts, held in a small FIFO (a dict keyed by pts) until the
encoder's delay (lookahead, B-frames) lets the frame out. Memory stays flat: the FIFO holds at
most the encoder's delay in frames (all planes of the measured frames; with VMAF, the luma of
the others too). A second pass would decode the source and prepare and scale every frame N
times again, the cost of the transcode minus the encoding; the in-pass meter adds only the
decoding of the rungs (cheap next to encoding them) and the metric arithmetic. Measured on a
10 s 640×360 source, 3 rungs (360/270/180p), Balance, 2 shared cores (CPU seconds, user+sys
with children, best of 3): 8.0 s without metrics, 10.2 s with PSNR/SSIM (+28 %), 14.0 s with
PSNR/SSIM and VMAF (+75 %); the numpy SSIM takes ~45 ms on a 1080p frame.

Sampling: up to `MAX_MEASURED_FRAMES` output frames every frame is measured; a longer output is
measured every `step`-th frame (`step = ceil(frames / MAX_MEASURED_FRAMES)`), reported with the
scores (`QualityFrames`, `QualityFrameStep`).

The metrics (numpy, the algorithms of FFmpeg's `psnr` and `ssim` filters, so they agree):
- PSNR in dB from the mean squared error over all measured frames (as FFmpeg's summary line):
  `PsnrY` of luma, `Psnr` of Y, U and V weighted by their pixel counts (4:1:1 for 4:2:0).
  Identical frames have an infinite PSNR, which JSON cannot carry: every PSNR is capped at
  `PSNR_CAP_DB` (100 dB), so "100.0" means identical (or better than 100 dB, which 8- and 10-bit
  samples only reach when identical).
- SSIM of luma in [0, 1] (1 = identical): x264's/FFmpeg's 8×8 windows on a 4-pixel grid, the mean
  over windows, then over the measured frames.
- VMAF (model `vmaf_v0.6.1`, built into libvmaf, works offline) when an ffmpeg with libvmaf is
  found (`imageio-ffmpeg`'s, or `ffmpeg` on the PATH): each rung streams its reference and
  decoded luma (VMAF uses luma only) into its own ffmpeg process through a pipe, every frame
  (VMAF's motion feature needs neighbours) with libvmaf's `n_subsample` set to the same step.
  Without such an ffmpeg, `Vmaf` is null and the pipeline emits a `Warning` "VMAF unavailable".
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import queue
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

log = logging.getLogger(__name__)

PSNR_CAP_DB = 100.0
MAX_MEASURED_FRAMES = 600  # frames measured per rendition before sampling sets in
VMAF_MODEL = "version=vmaf_v0.6.1"
# Formats the metrics are computed in: planar YUV, from the encoder's input format.
MEASURE_FORMATS = {"nv12": "yuv420p", "p010le": "yuv420p10le"}
# x264's/FFmpeg's SSIM constants for 8-bit sums over 8×8 windows (rounded as they round them).
SSIM_C1_8BIT = int(0.01 * 0.01 * 255 * 255 * 64 + 0.5)
SSIM_C2_8BIT = int(0.03 * 0.03 * 255 * 255 * 64 * 63 + 0.5)


# ------------------------------------------------------------------------------- the metrics


def psnr_db(mse: float, peak: int = 255) -> float:
    """PSNR in dB of a mean squared error, capped at `PSNR_CAP_DB` (identical → the cap)."""
    if mse <= 0:
        return PSNR_CAP_DB
    return min(10 * math.log10(peak * peak / mse), PSNR_CAP_DB)


def plane_mse(reference: np.ndarray, distorted: np.ndarray) -> float:
    """Mean squared error of two planes of the same shape."""
    difference = reference.astype(np.int32) - distorted.astype(np.int32)
    # Squares fit int32 up to 15-bit samples; the sum is exact in int64.
    return float(np.square(difference).sum(dtype=np.int64)) / difference.size


def ssim_plane(reference: np.ndarray, distorted: np.ndarray, peak: int = 255) -> float:
    """SSIM of two planes as FFmpeg's `ssim` filter (and x264) compute it: sums over 4×4
    blocks, 8×8 windows made of 2×2 blocks (so windows overlap by 4 pixels), the mean of the
    windows' SSIM. Planes smaller than 8×8 fall back to one window over the whole plane."""
    height, width = reference.shape
    rows, cols = height // 4, width // 4
    if rows < 2 or cols < 2:
        return _ssim_window(reference.astype(np.float64), distorted.astype(np.float64), peak)
    # int32 holds the window sums up to 10-bit samples (4 * 16 * 2 * 1023² < 2³¹); faster.
    exact = np.int32 if peak <= 1023 else np.int64
    a: np.ndarray = reference[: rows * 4, : cols * 4].astype(exact)
    b: np.ndarray = distorted[: rows * 4, : cols * 4].astype(exact)

    def blocks(x: np.ndarray) -> np.ndarray:
        # Sums over 4×4 blocks: the four rows of each block, then four columns (explicit
        # adds on views are several times faster than a reshaped .sum(axis=(1, 3))).
        x = x.reshape(rows, 4, cols * 4)
        x = (x[:, 0] + x[:, 1] + x[:, 2] + x[:, 3]).reshape(rows, cols, 4)
        return x[..., 0] + x[..., 1] + x[..., 2] + x[..., 3]

    def windows(x: np.ndarray) -> np.ndarray:
        return (x[:-1, :-1] + x[1:, :-1] + x[:-1, 1:] + x[1:, 1:]).astype(np.float64)

    s1, s2 = windows(blocks(a)), windows(blocks(b))
    ss = windows(blocks(a * a + b * b))
    s12 = windows(blocks(a * b))
    if peak == 255:
        c1, c2 = float(SSIM_C1_8BIT), float(SSIM_C2_8BIT)
    else:
        c1, c2 = 0.01 * 0.01 * peak * peak * 64, 0.03 * 0.03 * peak * peak * 64 * 63
    variances = ss * 64 - s1 * s1 - s2 * s2
    covariance = s12 * 64 - s1 * s2
    ssim = ((2 * s1 * s2 + c1) * (2 * covariance + c2)) / (
        (s1 * s1 + s2 * s2 + c1) * (variances + c2)
    )
    return float(ssim.mean())


def _ssim_window(a: np.ndarray, b: np.ndarray, peak: int) -> float:
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    mean_a, mean_b = a.mean(), b.mean()
    cov = ((a - mean_a) * (b - mean_b)).mean()
    value = ((2 * mean_a * mean_b + c1) * (2 * cov + c2)) / (
        (mean_a**2 + mean_b**2 + c1) * (a.var() + b.var() + c2)
    )
    return float(value)


def measure_format(pix_fmt: str) -> str:
    """The planar YUV format metrics of frames in `pix_fmt` are computed in."""
    return MEASURE_FORMATS.get(pix_fmt, pix_fmt)


def frame_planes(frame: av.VideoFrame, pix_fmt: str | None = None) -> list[np.ndarray]:
    """The planes of `frame` (converted to `pix_fmt` first, if given) as 2-D arrays (views of
    the frame's memory: copy what outlives the frame)."""
    if pix_fmt and frame.format.name != pix_fmt:
        frame = frame.reformat(format=pix_fmt)
    wide = frame.format.components[0].bits > 8
    dtype = np.dtype("<u2") if wide else np.dtype(np.uint8)
    planes = []
    for plane in frame.planes:
        array = np.frombuffer(memoryview(plane), dtype)
        array = array.reshape(plane.height, plane.line_size // dtype.itemsize)
        planes.append(array[:, : plane.width])
    return planes


def peak_of(pix_fmt: str) -> int:
    """The largest sample value of a format (255 for 8-bit, 1023 for 10-bit)."""
    return (1 << av.VideoFormat(pix_fmt).components[0].bits) - 1


@dataclass(frozen=True)
class FrameScores:
    """One frame pair's scores."""

    mse: tuple[float, ...]  # per plane
    weighted_mse: float  # planes weighted by their pixel counts
    ssim_y: float
    peak: int

    @property
    def psnr_y(self) -> float:
        return psnr_db(self.mse[0], self.peak)

    @property
    def psnr(self) -> float:
        return psnr_db(self.weighted_mse, self.peak)


def compare_planes(
    reference: list[np.ndarray], distorted: list[np.ndarray], peak: int = 255
) -> FrameScores:
    """PSNR and SSIM inputs of one frame pair (same format and size)."""
    mse = tuple(plane_mse(a, b) for a, b in zip(reference, distorted, strict=True))
    sizes = [p.size for p in reference]
    weighted = sum(m * s for m, s in zip(mse, sizes, strict=True)) / sum(sizes)
    return FrameScores(mse, weighted, ssim_plane(reference[0], distorted[0], peak), peak)


def compare_frames(reference: av.VideoFrame, distorted: av.VideoFrame) -> FrameScores:
    """Scores of two frames of the same size (the distorted one converted to the reference's
    format if they differ)."""
    fmt = measure_format(reference.format.name)
    return compare_planes(frame_planes(reference, fmt), frame_planes(distorted, fmt), peak_of(fmt))


# ----------------------------------------------------------------------------- per rendition


@dataclass(frozen=True)
class QualitySettings:
    """How the transcoder measures: every `step`-th frame, VMAF with `vmaf_ffmpeg` if set."""

    step: int = 1
    vmaf_ffmpeg: str | None = None
    vmaf_threads: int = 1


def sampling_step(expected_frames: int, max_frames: int = MAX_MEASURED_FRAMES) -> int:
    """1 (every frame) up to `max_frames` frames, else the step that measures about that many."""
    return max(1, math.ceil(max(expected_frames, 0) / max(max_frames, 1)))


def quality_settings(
    expected_frames: int, vmaf_ffmpeg: str | None, max_frames: int | None = None
) -> QualitySettings:
    """The settings for an output of about `expected_frames` frames (`max_frames`: default
    `MAX_MEASURED_FRAMES`)."""
    threads = max(1, min(4, (os.cpu_count() or 2) // 2))
    step = sampling_step(expected_frames, max_frames or MAX_MEASURED_FRAMES)
    return QualitySettings(step, vmaf_ffmpeg, threads)


@dataclass(frozen=True)
class RenditionQuality:
    """A rendition's scores against its encoder input (module docs)."""

    psnr: float  # dB, Y/U/V weighted by pixel count, capped at PSNR_CAP_DB
    psnr_y: float  # dB, luma
    ssim: float  # luma, 0..1
    vmaf: float | None  # 0..100; None: not measured (see vmaf_error)
    frames: int  # frames measured (PSNR/SSIM)
    step: int  # every step-th frame measured
    bitrate_kbps: float  # the encoded bitstream's average bitrate
    vmaf_error: str | None = None  # why VMAF is missing, when it was asked for and failed
    # (output frame index, VMAF) of every scored frame; per-segment scores (EncodingMode
    # PerScene, engine.perscene) are made from them
    vmaf_frames: tuple[tuple[int, float], ...] = ()

    def stream_fields(self) -> dict[str, Any]:
        """The quality fields of a stream in `EncodingFinished`."""
        return {
            "Psnr": self.psnr,
            "PsnrY": self.psnr_y,
            "Ssim": self.ssim,
            "Vmaf": self.vmaf,
            "QualityFrames": self.frames,
            "QualityFrameStep": self.step,
        }

    def report_entry(self, name: str, bitrate_kbps: int, width: int, height: int) -> dict:
        """One rendition's item of the reporting entry's `QualityMetrics` list."""
        return {
            "Name": name,
            "BitrateInKbps": bitrate_kbps,
            "EncodedBitrateInKbps": round(self.bitrate_kbps, 1),
            "Width": width,
            "Height": height,
            **self.stream_fields(),
        }


class _Scores:
    """Running sums over the measured frames."""

    def __init__(self, planes: int) -> None:
        self.mse = [0.0] * planes
        self.weighted = 0.0
        self.ssim = 0.0
        self.count = 0

    def add(self, scores: FrameScores) -> None:
        for i, value in enumerate(scores.mse):
            self.mse[i] += value
        self.weighted += scores.weighted_mse
        self.ssim += scores.ssim_y
        self.count += 1


def _video_decoder(name: str) -> av.VideoCodecContext:
    """A decoder for the video codec `name` (the codec of a video encoder)."""
    decoder = av.CodecContext.create(name, "r")
    if not isinstance(decoder, av.VideoCodecContext):  # only to narrow the type: never true
        raise TypeError(f"{name} is not a video codec")
    return decoder


class QualityMeter:
    """Measures one rung in the transcoding pass (module docs): `reference(frame)` with each
    encoder input frame (its pts the output frame index), `packet(packet)` with each packet the
    encoder emits (before it is muxed), `finish()` after the encoder is flushed."""

    def __init__(
        self, encoder: av.VideoCodecContext, settings: QualitySettings, label: str
    ) -> None:
        self.encoder = encoder
        self.settings = settings
        self.label = label
        if encoder.pix_fmt is None:  # set on every encoder before it opens
            raise ValueError(f"{label}: the encoder has no pixel format")
        self.format = measure_format(encoder.pix_fmt)
        self.peak = peak_of(self.format)
        self.decoder: av.VideoCodecContext | None = None
        # pts → planes of the encoder input (all planes for measured frames, luma only for
        # the frames only VMAF sees); bounded by the encoder's delay.
        self.pending: dict[int, list[np.ndarray]] = {}
        self.scores = _Scores(len(av.VideoFormat(self.format).components))
        self.bits = 0
        self.decoded = 0
        self.vmaf: _VmafPipe | None = None
        if settings.vmaf_ffmpeg:
            self.vmaf = _VmafPipe(
                settings.vmaf_ffmpeg,
                encoder.width,
                encoder.height,
                self.format,
                settings.step,
                settings.vmaf_threads,
                label,
            )

    def _measured(self, index: int) -> bool:
        return index % self.settings.step == 0

    def reference(self, frame: av.VideoFrame) -> None:
        index = frame.pts
        if index is None:
            return
        measured = self._measured(index)
        if not measured and self.vmaf is None:
            return
        planes = frame_planes(frame, self.format)
        kept = planes if measured else planes[:1]
        self.pending[index] = [p.copy() for p in kept]

    def packet(self, packet: av.Packet) -> None:
        self.bits += packet.size * 8
        if self.decoder is None:
            self.decoder = _video_decoder(self.encoder.codec.canonical_name)
            if self.encoder.extradata:
                self.decoder.extradata = self.encoder.extradata
        for frame in self.decoder.decode(packet):
            self._compare(frame)

    def _compare(self, frame: av.VideoFrame) -> None:
        index = frame.pts if frame.pts is not None else self.decoded
        self.decoded += 1
        reference = self.pending.pop(index, None)
        for stale in [k for k in self.pending if k < index]:  # frames the encoder dropped
            del self.pending[stale]
        if reference is None:
            return
        distorted = frame_planes(frame, self.format)
        if self._measured(index):
            self.scores.add(compare_planes(reference, distorted, self.peak))
        if self.vmaf is not None:
            self.vmaf.push(reference[0], distorted[0])

    def finish(self) -> RenditionQuality:
        """Drain the decoder (after the encoder's flush); the rendition's scores."""
        if self.decoder is not None:
            for frame in self.decoder.decode(None):
                self._compare(frame)
        self.pending.clear()
        vmaf, vmaf_error = (None, None)
        vmaf_frames: tuple[tuple[int, float], ...] = ()
        if self.vmaf is not None:
            vmaf, vmaf_error = self.vmaf.finish()
            vmaf_frames = self.vmaf.frame_scores
            self.vmaf = None
        count = max(self.scores.count, 1)
        rate = self.encoder.framerate or (1 / self.encoder.time_base)
        duration = self.decoded / rate if rate else 0.0
        return RenditionQuality(
            psnr=round(psnr_db(self.scores.weighted / count, self.peak), 4),
            psnr_y=round(psnr_db(self.scores.mse[0] / count, self.peak), 4),
            ssim=round(self.scores.ssim / count, 6),
            vmaf=round(vmaf, 4) if vmaf is not None else None,
            frames=self.scores.count,
            step=self.settings.step,
            bitrate_kbps=float(self.bits / 1000 / duration) if duration > 0 else 0.0,
            vmaf_error=vmaf_error,
            vmaf_frames=vmaf_frames,
        )

    def abort(self) -> None:
        self.pending.clear()
        if self.vmaf is not None:
            self.vmaf.abort()
            self.vmaf = None


# --------------------------------------------------------------------------------------- VMAF


class _VmafPipe:
    """One ffmpeg process computing VMAF for one rung: each frame written to its stdin is the
    reference luma with the distorted luma below it, plus neutral chroma (one raw input, so no
    second pipe and no timestamp matching); the filter graph crops the two halves apart. A writer
    thread with a small queue keeps the transcoder going while ffmpeg computes."""

    QUEUE = 8  # frames in flight: bounded, so memory stays flat

    def __init__(
        self, ffmpeg: str, width: int, height: int, fmt: str, step: int, threads: int, label: str
    ) -> None:
        self.label = label
        self.folder = Path(tempfile.mkdtemp(prefix="vipe-vmaf-"))
        self.log = self.folder / "vmaf.json"
        self.stderr = open(self.folder / "stderr.txt", "wb")  # noqa: SIM115
        wide = peak_of(fmt) > 255
        yuv = "yuv420p10le" if wide else "yuv420p"
        # 4:2:0 with neutral chroma (VMAF reads luma only). Not "gray": FFmpeg takes gray as
        # full range and would squeeze the luma converting it to YUV.
        chroma = np.full(((height * 2 + 1) // 2, (width + 1) // 2), 512 if wide else 128)
        self.chroma = chroma.astype("<u2" if wide else np.uint8).tobytes() * 2
        graph = (
            f"[0:v]split[a][b];[a]crop={width}:{height}:0:0[ref];"
            f"[b]crop={width}:{height}:0:{height}[dist];"
            f"[dist][ref]libvmaf=model={VMAF_MODEL}:n_subsample={step}:n_threads={threads}"
            f":log_fmt=json:log_path={self.log}"
        )
        command = [
            ffmpeg,
            "-hide_banner",
            "-loglevel",
            "error",
            "-f",
            "rawvideo",
            "-pix_fmt",
            yuv,
            "-s",
            f"{width}x{height * 2}",
            "-r",
            "25",  # nominal: libvmaf pairs the halves of one input frame, timing plays no part
            "-i",
            "pipe:0",
            "-filter_complex",
            graph,
            "-f",
            "null",
            "-",
        ]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self.stderr
        )
        self.queue: queue.Queue = queue.Queue(self.QUEUE)
        self.error: str | None = None
        self.frame_scores: tuple[tuple[int, float], ...] = ()  # set by finish()
        self.thread = threading.Thread(target=self._write, name=f"vmaf-{label}", daemon=True)
        self.thread.start()

    def push(self, reference: np.ndarray, distorted: np.ndarray) -> None:
        self.queue.put((reference, distorted))

    def _write(self) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        while True:
            item = self.queue.get()
            if item is None:
                break
            if self.error is not None:
                continue  # the process is gone: drain, so that push never blocks
            try:
                for plane in item:
                    stdin.write(np.ascontiguousarray(plane).tobytes())
                stdin.write(self.chroma)
            except (BrokenPipeError, OSError) as error:
                self.error = f"ffmpeg stopped reading ({error})"
        with contextlib.suppress(OSError):
            stdin.close()

    def finish(self) -> tuple[float | None, str | None]:
        """(the mean VMAF, None) or (None, why not)."""
        self.queue.put(None)
        self.thread.join()
        try:
            code = self.process.wait(timeout=600)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = -1
        self.stderr.close()
        try:
            if code != 0:
                detail = (self.folder / "stderr.txt").read_text(errors="replace").strip()
                return None, f"ffmpeg exited with {code}: {detail[-300:] or self.error}"
            scores = json.loads(self.log.read_text())
            pooled = scores["pooled_metrics"]["vmaf"]
            self.frame_scores = tuple(
                (int(f["frameNum"]), float(f["metrics"]["vmaf"])) for f in scores.get("frames", [])
            )
            return float(pooled["mean"]), None
        except (OSError, ValueError, KeyError) as error:
            return None, f"no VMAF score in ffmpeg's log: {error}"
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.process.kill()
        self.queue.put(None)
        self.thread.join(timeout=10)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        self.stderr.close()
        shutil.rmtree(self.folder, ignore_errors=True)


@functools.cache
def vmaf_support() -> tuple[str | None, str]:
    """(path of an ffmpeg whose libvmaf scores with the built-in model, "") or (None, why not).

    Tried: `imageio-ffmpeg`'s ffmpeg, then `ffmpeg` on the PATH; each must score three tiny
    frames with `vmaf_v0.6.1` (built into libvmaf: nothing is downloaded). Cached per process.
    """
    candidates: list[str] = []
    reasons: list[str] = []
    try:
        import imageio_ffmpeg

        candidates.append(imageio_ffmpeg.get_ffmpeg_exe())
    except ImportError:
        reasons.append("imageio-ffmpeg is not installed")
    except Exception as error:  # its binary missing for this platform
        reasons.append(f"imageio-ffmpeg has no ffmpeg: {error}")
    on_path = shutil.which("ffmpeg")
    if on_path and on_path not in candidates:
        candidates.append(on_path)
    elif not on_path:
        reasons.append("no ffmpeg on the PATH")
    for ffmpeg in candidates:
        problem = _try_vmaf(ffmpeg)
        if problem is None:
            return ffmpeg, ""
        reasons.append(f"{ffmpeg}: {problem}")
    return None, "; ".join(reasons) or "no ffmpeg with libvmaf found"


def _try_vmaf(ffmpeg: str) -> str | None:
    """None if `ffmpeg` computes VMAF on three generated frames, else what went wrong."""
    width, height = 64, 64
    try:
        pipe = _VmafPipe(ffmpeg, width, height, "yuv420p", 1, 1, "check")
    except OSError as error:
        return f"does not start: {error}"
    ramp = np.add.outer(np.arange(height), np.arange(width)).astype(np.uint8)
    for shift in range(3):
        reference = np.roll(ramp, shift, axis=1)
        pipe.push(reference, np.clip(reference.astype(np.int16) + 3, 0, 255).astype(np.uint8))
    score, problem = pipe.finish()
    if score is None:
        return problem or "no score"
    return None


# ------------------------------------------------------------------------- report and chart


@dataclass(frozen=True)
class PlotPoint:
    """One point drawn by `plot_rate_quality`."""

    metric: str  # "Psnr", "Ssim" or "Vmaf"
    name: str  # the rendition
    bitrate_kbps: float
    value: float


def quality_rows(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The `QualityMetrics` items of a reporting entry, lowest bitrate first."""
    rows = entry.get("QualityMetrics") or []
    return sorted(rows, key=_bitrate)


def _bitrate(row: dict[str, Any]) -> float:
    return float(row.get("EncodedBitrateInKbps") or row.get("BitrateInKbps") or 0)


def plot_rate_quality(entry: dict[str, Any], path: Path) -> list[PlotPoint]:
    """Draw bitrate against PSNR, SSIM (and VMAF when measured) for the rungs of a reporting
    entry into a PNG at `path`: one panel per metric, one labelled point per rung. Returns the
    points drawn. Needs matplotlib (`pip install vipe[dev]` or `pip install matplotlib`)."""
    rows = quality_rows(entry)
    if not rows:
        raise ValueError("the report has no QualityMetrics (run the job with QualityMetrics)")
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, never a display
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("the chart needs matplotlib: pip install matplotlib") from None
    metrics = [("Psnr", "PSNR (dB, YUV)"), ("Ssim", "SSIM (Y)")]
    if any(row.get("Vmaf") is not None for row in rows):
        metrics.append(("Vmaf", "VMAF"))
    figure, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4.2), squeeze=False)
    points: list[PlotPoint] = []
    for axis, (key, title) in zip(axes[0], metrics, strict=True):
        drawn = [
            PlotPoint(key, str(row.get("Name", "?")), _bitrate(row), float(row[key]))
            for row in rows
            if row.get(key) is not None
        ]
        axis.plot([p.bitrate_kbps for p in drawn], [p.value for p in drawn], "o-")
        for point, row in zip(drawn, [r for r in rows if r.get(key) is not None], strict=True):
            label = f"{row.get('Width')}×{row.get('Height')} @{row.get('BitrateInKbps')}k"
            axis.annotate(
                label,
                (point.bitrate_kbps, point.value),
                textcoords="offset points",
                xytext=(4, -14),
                fontsize=7,
            )
        axis.margins(x=0.2, y=0.12)  # room for the labels
        axis.set_title(title)
        axis.set_xlabel("bitrate (kbps, encoded)")
        axis.grid(True, alpha=0.3)
        points += drawn
    job = entry.get("ExternalId") or entry.get("JobId") or ""
    figure.suptitle(f"rate–quality ladder {job}".strip())
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return points


__all__ = [
    "MAX_MEASURED_FRAMES",
    "PSNR_CAP_DB",
    "FrameScores",
    "PlotPoint",
    "QualityMeter",
    "QualitySettings",
    "RenditionQuality",
    "compare_frames",
    "compare_planes",
    "frame_planes",
    "plot_rate_quality",
    "psnr_db",
    "quality_rows",
    "quality_settings",
    "sampling_step",
    "ssim_plane",
    "vmaf_support",
]
