"""Transcoding with PyAV: one decode of the source feeds every rendition.

The video file is demuxed and decoded once; each decoded frame is prepared once (deinterlace,
constant frame rate, rotation, watermarks), scaled to every rung's size in a cascade (each rung
from the smallest larger picture already scaled, Lanczos; `_LadderScaler`) and encoded once per
rung, each rung with its own encoder on a thread of its own. Audio tracks inside the video
file are decoded in the same pass; separate audio files get a pass of their own. Every
rendition is written as a one-track fragmented MP4 (the packager's input). Nothing is buffered
beyond a few frames, so memory stays flat whatever the source length.

Timestamps: video leaves at a constant frame rate with pts = output frame index, starting at 0.
IDR frames are forced on the frame nearest to each multiple of the segment length, the
same frame indices in every rendition. Audio is aligned to the video's first frame (silence
added or samples dropped at the start), and padded or trimmed to the video's duration so that
every track of the package ends together.

GPU (see `engine.encoders` for the choice): with `plan.hw_decode` the source is decoded on NVDEC
and every frame is downloaded once to system memory (NV12, or P010 for 10-bit), where the
frame preparation and the per-rung scalers work as for a CPU-decoded frame; NVENC renditions
take the scaled NV12/P010 frames (the driver uploads them). Scaling on the GPU (scale_cuda,
frames kept on the device) is not done: the CPU scalers stay the one path for every encoder.
Fallbacks, each reported through `warn`: an NVENC encoder that does not open is replaced by its
CPU fallback before the first frame; one that fails later (session limit, driver reset) is
dropped from the pass, its partial file deleted, and that rendition encoded again from the
start on the CPU in a second pass over the source; a GPU decode that fails restarts the pass
with CPU decoding. An output is therefore whole from one encoder, or the job fails.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.frame import PictureType
from av.video.reformatter import Interpolation, VideoReformatter

from engine.encoders import EncoderChoice
from engine.errors import EncodingError, SourceError
from engine.ffmpeg import close_input, encoder_command, error_message, log_mark
from engine.media import AudioRendition, VideoRendition, VideoTrackInfo
from engine.quality import QualityMeter, QualitySettings
from engine.tracks import FRAGMENTED, EncodedTrack
from engine.watermark import Watermarker

log = logging.getLogger(__name__)

AUDIO_RATE = 48000
# Fragmented MP4 as the packager expects: moov first without samples, one fragment per
# keyframe (video) or per `frag_duration` (audio), each moof the base of its data offsets.
AUDIO_ENCODERS = {"AAC": "aac", "AC3": "ac3", "EAC3": "eac3"}
FRAME_SIZES = {"aac": 1024, "ac3": 1536, "eac3": 1536}  # samples per coded audio frame
# Encoder delay of FFmpeg's audio encoders: the fragmented MP4 cannot carry the edit list that
# skips it, so the packager is told (and writes the edit list into the init segment).
PRIMING = {"aac": 1024, "ac3": 256, "eac3": 256}
LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}

# Frames waiting per rung: enough to keep every rung's encoder busy while the decoder runs
# ahead, few enough that memory stays flat (the rungs share each queued frame).
QUEUED_FRAMES = 4

Progress = Callable[[float], None]  # fraction 0..1
CancelCheck = Callable[[], None]  # raises Cancelled
Warn = Callable[[str, str], None]  # (Warning event code, message)


@dataclass(frozen=True)
class VideoOutput:
    rendition: VideoRendition
    encoder: EncoderChoice
    path: Path
    fallback: EncoderChoice | None = None  # CPU encoder if the hardware one fails


@dataclass(frozen=True)
class AudioOutput:
    rendition: AudioRendition
    path: Path


@dataclass(frozen=True)
class TranscodePlan:
    """Everything the transcoder needs; built by the encoding phase."""

    video_file: Path | None  # None for audio-only jobs
    video_track: VideoTrackInfo | None
    frame_rate: Fraction  # output frame rate
    video: tuple[VideoOutput, ...]
    audio: tuple[AudioOutput, ...]
    segment_seconds: float
    duration: float  # expected output duration (seconds), for progress and audio length
    watermarks: Watermarker | None = None
    normalize_audio: bool = False
    hw_decode: bool = False  # decode the video file on NVDEC (CUDA)
    # Audio length (seconds) of passes without video (packaging-only: the renditions' length);
    # with video in the plan, audio always ends with the encoded video.
    audio_length: float | None = None
    # Measure PSNR/SSIM (and VMAF) of every video rendition in the pass (engine.quality).
    quality: QualitySettings | None = None
    job_id: str | None = None  # for the log lines


def boundary_frames(frame_rate: Fraction, segment_seconds: float):
    """Frame indices that start a segment: the frame nearest to each multiple of the segment
    length (exact rational arithmetic, so every rendition agrees). Nearest, not the first at or
    after: the packager cuts at the key frame within half a frame of each boundary, which for a
    rate that does not divide the segment length (a VFR source's average) the first frame after
    it may miss."""
    step = Fraction(segment_seconds).limit_denominator(1000)
    n = 0
    while True:
        yield math.floor(n * step * frame_rate + Fraction(1, 2))
        n += 1


class _OutputClock:
    """Numbers the output frames (pts = index at the constant output rate) and says which
    start a segment (those become IDR frames in every rung)."""

    def __init__(self, frame_rate: Fraction, segment_seconds: float):
        self.frame_rate = frame_rate
        self.index = 0
        self._boundaries = boundary_frames(frame_rate, segment_seconds)
        self._next = next(self._boundaries)

    def stamp(self, frame: av.VideoFrame) -> bool:
        """Give `frame` the next output timestamp; True when it must be a key frame."""
        keyframe = self.index == self._next
        if keyframe:
            self._next = next(self._boundaries)
        frame.pts, frame.time_base = self.index, 1 / self.frame_rate
        self.index += 1
        return keyframe


def transcode(
    plan: TranscodePlan,
    *,
    progress: Progress | None = None,
    cancel: CancelCheck | None = None,
    warn: Warn | None = None,
) -> list[EncodedTrack]:
    """Encode every rendition of the plan; returns the written tracks (video first).

    `warn(code, message)` hears of every hardware fallback (module docs).
    """
    warn = warn or _log_warning
    tracker = _ProgressTracker(plan, progress)
    audio_by_file: dict[Path, list[AudioOutput]] = {}
    for output in plan.audio:
        audio_by_file.setdefault(output.rendition.source.path, []).append(output)

    results: list[EncodedTrack] = []
    if plan.video_file is not None:
        in_file_audio = audio_by_file.pop(plan.video_file, [])
        video_results, audio_results, failed = _video_pass(
            plan, in_file_audio, tracker, cancel, warn
        )
        if failed:  # hardware encoders that failed mid-way: those renditions again, on the CPU
            video_results += _cpu_pass(plan, failed, tracker, cancel, warn)
            order = {o.rendition.name: i for i, o in enumerate(plan.video)}
            video_results.sort(key=lambda track: order[track.name])
        results += video_results + audio_results
    # Separate audio files end with the video (or, packaging-only, with the copied renditions).
    video_seconds = next((t.duration for t in results if t.kind == "video"), plan.audio_length)
    target = round(video_seconds * AUDIO_RATE) if video_seconds is not None else None
    for path, outputs in audio_by_file.items():
        _, audio_results, _ = _transcode_file(
            plan, path, (), outputs, tracker, cancel, 0.0, audio_target=target
        )
        results += audio_results
    tracker.finish()
    return results


def _log_warning(code: str, message: str) -> None:
    log.warning("%s: %s", code, message)


class _GpuDecodeError(Exception):
    """Decoding on the GPU failed; the pass is run again with CPU decoding."""


def _video_pass(plan, audio_outputs, tracker, cancel, warn: Warn):
    """The pass over the video file, on NVDEC when planned, on the CPU when that fails."""
    assert plan.video_file is not None
    if plan.hw_decode:
        try:
            return _transcode_file(
                plan,
                plan.video_file,
                plan.video,
                audio_outputs,
                tracker,
                cancel,
                None,
                hw_decode=True,
                warn=warn,
            )
        except _GpuDecodeError as error:
            warn("HardwareFallback", f"decoding on the GPU failed ({error}); decoding on the CPU")
    return _transcode_file(
        plan, plan.video_file, plan.video, audio_outputs, tracker, cancel, None, warn=warn
    )


def _cpu_pass(plan, failed: list[VideoOutput], tracker, cancel, warn: Warn) -> list[EncodedTrack]:
    """Encode the renditions whose hardware encoder failed again, from the first frame, with
    their CPU fallback (CPU decoding too: the GPU may be what failed)."""
    assert plan.video_file is not None
    outputs = []
    for output in failed:
        assert output.fallback is not None  # only those with one are queued (_drop_failed)
        outputs.append(replace(output, encoder=output.fallback, fallback=None))
    tracker.add_pass()
    results, _, _ = _transcode_file(
        plan, plan.video_file, tuple(outputs), [], tracker, cancel, None, warn=warn
    )
    return results


class _ProgressTracker:
    """Turns media seconds processed in each pass into one 0..1 fraction."""

    def __init__(self, plan: TranscodePlan, report: Progress | None):
        self.report = report
        passes = 1 if plan.video_file else 0
        passes += len({o.rendition.source.path for o in plan.audio} - {plan.video_file})
        self.total = max(plan.duration, 0.001) * max(passes, 1)
        self.done_passes = 0.0
        self.duration = max(plan.duration, 0.001)
        self.reported = 0.0

    def update(self, seconds: float) -> None:
        if self.report:
            fraction = (self.done_passes + min(seconds, self.duration)) / self.total
            # Never backwards, also when a pass restarts or one is added after a failure.
            self.reported = max(self.reported, min(fraction, 1.0))
            self.report(self.reported)

    def next_pass(self) -> None:
        self.done_passes += self.duration

    def add_pass(self) -> None:
        """One more pass than planned (a CPU re-encode after a hardware failure)."""
        self.total += self.duration

    def finish(self) -> None:
        if self.report:
            self.report(1.0)


# ------------------------------------------------------------------------------------- passes


def _transcode_file(
    plan: TranscodePlan,
    path: Path,
    video_outputs: tuple[VideoOutput, ...],
    audio_outputs: list[AudioOutput],
    tracker: _ProgressTracker,
    cancel: CancelCheck | None,
    start_override: float | None,
    *,
    hw_decode: bool = False,
    warn: Warn = _log_warning,
    audio_target: int | None = None,
):
    """One demux/decode pass over `path`, feeding the given video and audio outputs.

    Audio follows the video this pass encodes: it is released up to the video's end so far and
    padded or trimmed to the video's final length (the container's duration may count a longer
    audio track). A pass without video pads or trims to `audio_target` samples, if given.

    Returns (video tracks, audio tracks, video outputs whose hardware encoder failed).
    """
    hwaccel = None
    if hw_decode and video_outputs:
        from av.codec.hwaccel import HWAccel

        # Software fallback allowed: a profile NVDEC lacks (4:2:2, …) decodes on the CPU.
        hwaccel = HWAccel(device_type="cuda", allow_software_fallback=True)
    mark = log_mark()  # FFmpeg log lines from here on are about this file
    try:
        container = av.open(str(path), options={"ignore_editlist": "0"}, hwaccel=hwaccel)
    except av.FFmpegError as error:
        if hwaccel is not None:
            message = error_message(path, "cannot open for CUDA decoding", error, since=mark)
            raise _GpuDecodeError(message) from None
        raise SourceError(error_message(path, "cannot open", error, since=mark)) from None
    rungs: list[_RungThread] = []
    failed: list[VideoOutput] = []
    audio_pipes: list[_AudioSourcePipe] = []
    try:
        video_stream = None
        preparer = None
        if video_outputs:
            video_stream = (
                container.streams.video[0]
                if plan.video_track is None
                else next(s for s in container.streams if s.index == plan.video_track.index)
            )
            if video_stream.codec_context.is_hwaccel:
                log.info("%s: decoding %s on NVDEC", path.name, video_stream.codec_context.name)
            else:  # (frame threads with CUDA: not worth it)
                video_stream.codec_context.thread_type = "AUTO"
            preparer = _FramePreparer(video_stream, plan)
            for output in video_outputs:
                encoder = _open_encoder(output, plan.frame_rate, warn, plan.quality)
                _log_settings(plan, encoder.output, path, preparer.filters, hwaccel is not None)
                rungs.append(_RungThread(encoder))
        # Group audio outputs by their source (a track, or mono tracks grouped together).
        by_source: dict[tuple, list[AudioOutput]] = {}
        for audio_output in audio_outputs:
            indices = audio_output.rendition.source.track_indices
            by_source.setdefault(indices, []).append(audio_output)
        for indices, outputs in by_source.items():
            streams = [_stream_by_index(container, i, path) for i in indices]
            audio_pipes.append(_AudioSourcePipe(streams, outputs, plan.normalize_audio, path))
        audio_streams = {s.index for pipe in audio_pipes for s in pipe.streams}
        wanted = ([video_stream] if video_stream else []) + [
            s for s in container.streams if s.index in audio_streams
        ]
        for stream in wanted:
            if stream.type == "audio":
                stream.codec_context.thread_type = "AUTO"

        clock = _OutputClock(plan.frame_rate, plan.segment_seconds)
        scaler = _LadderScaler()
        video_start: float | None = start_override
        pending_audio: list[tuple[av.AudioFrame, int]] = []

        def audio_limit() -> int | None:
            if video_stream is None:
                return audio_target
            return round(clock.index * AUDIO_RATE / plan.frame_rate)

        def feed_audio(frame: av.AudioFrame, stream_index: int) -> None:
            for pipe in audio_pipes:
                if stream_index in pipe.stream_indices:
                    pipe.push(stream_index, frame, video_start or 0.0, audio_limit())

        video_packets = 0
        for packet in _demux(container, wanted, path, mark):
            if cancel:
                cancel()
            if packet.size and packet.stream.type == "video":
                video_packets += 1
            for frame in _decode(packet, path, mark):
                if packet.stream.type == "video":
                    if video_start is None:
                        video_start = float(frame.time or 0.0)
                        for audio_frame, index in pending_audio:
                            feed_audio(audio_frame, index)
                        pending_audio.clear()
                    assert preparer is not None  # video frames come only with video outputs
                    for prepared in preparer.prepare(frame):
                        keyframe = clock.stamp(prepared)
                        _encode_all(rungs, scaler, prepared, keyframe, failed, warn)
                    tracker.update(float(clock.index / plan.frame_rate))
                elif video_start is None and video_stream is not None:
                    pending_audio.append((frame, packet.stream.index))  # wait for video start
                else:
                    feed_audio(frame, packet.stream.index)
                    if video_stream is None and frame.time is not None:
                        tracker.update(float(frame.time))
        if preparer:
            for prepared in preparer.flush():
                keyframe = clock.stamp(prepared)
                _encode_all(rungs, scaler, prepared, keyframe, failed, warn)
        for audio_frame, index in pending_audio:  # a video file whose video never decoded
            feed_audio(audio_frame, index)
        if video_outputs and clock.index == 0:
            raise SourceError(error_message(path, "no video frame could be decoded", since=mark))
        # A file cut short after its index (MP4 with the moov first) demuxes without an error;
        # its sample count says what is missing.
        declared = video_stream.frames if video_stream is not None else 0
        if declared and video_packets < declared:
            what = (
                f"the file is truncated: {video_packets} of its {declared} video frames are there"
            )
            raise SourceError(error_message(path, what, since=mark))
        if preparer is not None and preparer.converts_rate and video_outputs is plan.video:
            # (the main pass only: a CPU pass after a hardware failure converts again)
            warn(
                "VariableFrameRate",
                f"{path.name}: variable frame rate converted to a constant "
                f"{_rate_text(plan.frame_rate)} fps by the frames' timestamps: "
                f"{preparer.source_frames} source frames, {preparer.dropped} dropped, "
                f"{preparer.duplicated} duplicated, {clock.index} output frames",
            )
        video_results = _close_all(rungs, clock.index, failed, warn)
        rungs = []
        audio_results = []
        for pipe in audio_pipes:
            audio_results += pipe.close(audio_limit())
        audio_pipes = []
        tracker.next_pass()
        return video_results, audio_results, failed
    except SourceError as error:
        if hwaccel is not None:  # maybe the GPU, not the file: the caller decodes on the CPU
            raise _GpuDecodeError(error.message) from None
        raise
    finally:
        for rung in rungs:
            rung.abort()
        for pipe in audio_pipes:
            pipe.abort()
        close_input(container)  # the decoders may still be busy (an error, a cancellation)


def _rate_text(rate: Fraction) -> str:
    """25, 29.97, 24.233 (three decimals at most)."""
    return f"{float(rate):.3f}".rstrip("0").rstrip(".")


def _log_settings(
    plan: TranscodePlan,
    output: VideoOutput,
    path: Path,
    filters: list[tuple[str, str]],
    hw_decode: bool,
) -> None:
    """Log the rendition's encoder settings as the equivalent `ffmpeg` command line, once
    per encoder opened (a rendition encoded again after a hardware fallback logs its new one)."""
    rendition = output.rendition
    command = encoder_command(
        input_name=path.name,
        output_name=output.path.name,
        encoder=output.encoder,
        width=rendition.width,
        height=rendition.height,
        frame_rate=plan.frame_rate,
        segment_seconds=plan.segment_seconds,
        sample_aspect_ratio=rendition.sample_aspect_ratio,
        filters=filters,
        hw_decode=hw_decode,
        movflags=FRAGMENTED,
        watermarks=plan.watermarks is not None,
    )
    job = f"job {plan.job_id}: " if plan.job_id else ""
    log.info("%srendition %s encodes as: %s", job, rendition.name, command)


def _open_encoder(
    output: VideoOutput, frame_rate: Fraction, warn: Warn, quality: QualitySettings | None = None
) -> _VideoEncoder:
    """The rendition's encoder; a hardware one that does not open (no free session, no
    driver) is replaced by its CPU fallback before the first frame."""
    try:
        return _VideoEncoder(output, frame_rate, quality)
    except EncodingError as error:
        if not output.encoder.hardware or output.fallback is None:
            raise
        warn(  # the message names the rendition
            "HardwareFallback",
            f"{error.message}; encoding it on the CPU with {output.fallback.name}",
        )
        fallback = replace(output, encoder=output.fallback, fallback=None)
        return _VideoEncoder(fallback, frame_rate, quality)


class _RungThread:
    """One rung's scaler and encoder on a thread of its own, fed through a short queue, so
    that the rungs scale and encode in parallel (PyAV releases the GIL in swscale and in the
    encoders). An error stays with the rung until the decoding thread collects it."""

    _STOP = object()

    def __init__(self, encoder: _VideoEncoder):
        self.encoder = encoder
        rendition = encoder.output.rendition
        # the size and format of the frames it takes (_LadderScaler)
        self.size = (rendition.width, rendition.height, encoder.output.encoder.pix_fmt)
        self.queue: queue.Queue = queue.Queue(maxsize=QUEUED_FRAMES)
        self.error: BaseException | None = None
        self.result: EncodedTrack | None = None
        self.finished = False
        self.thread = threading.Thread(
            target=self._run, name=f"vipe-{encoder.output.rendition.name}", daemon=True
        )
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is self._STOP:
                return
            if self.error is not None:
                continue  # keep taking frames so that the producer never blocks
            try:
                if isinstance(item, int):  # the frame count: flush and close the rendition
                    self.result = self.encoder.close(item)
                else:
                    self.encoder.encode(*item)
            except BaseException as error:  # handed over to the decoding thread
                self.error = error

    def put(self, frame: av.VideoFrame, keyframe: bool) -> None:
        self.queue.put((frame, keyframe))

    def close(self, frame_count: int) -> None:
        """Flush and close the rendition after the frames queued so far (on the thread)."""
        self.queue.put(frame_count)

    def finish(self) -> None:
        """Let the thread work through its queue, then end it."""
        if not self.finished:
            self.finished = True
            self.queue.put(self._STOP)
            self.thread.join()

    def abort(self) -> None:
        self.finish()
        self.encoder.abort()


class _LadderScaler:
    """Scales each prepared frame to every rung's size and format, in a cascade: the rungs from
    the largest down, each from the smallest picture of its format already scaled that is at
    least as large in both dimensions (else from the frame itself). Scaling 1080p → 720p → 540p
    → … costs about half of scaling every rung from the full-size frame (the horizontal pass
    reads every line of its input). Bicubic steps would soften the small rungs (on the ladder
    benchmark's 1080p source: 360p rung VMAF 79.5 → 77.1, PSNR-Y −0.4 dB against Bicubic from
    the full frame); Lanczos steps keep them as good (VMAF 81.8, PSNR-Y −0.03 dB). On the
    decoding thread, before the rungs' queues: the cascade is a chain, and the encoders
    outweigh it many times."""

    def __init__(self) -> None:
        # one scaler per (width, height, format): a shared one re-initialises per size
        self.scalers: dict[tuple[int, int, str], VideoReformatter] = {}

    def scale(self, frame: av.VideoFrame, sizes: list[tuple[int, int, str]]):
        """{(width, height, format): the frame at that size}, with `frame`'s timestamp."""
        scaled: dict[tuple[int, int, str], av.VideoFrame] = {}
        for size in sorted(set(sizes), key=lambda s: s[0] * s[1], reverse=True):
            width, height, pix_fmt = size
            larger = [
                picture
                for (w, h, f), picture in scaled.items()
                if f == pix_fmt and w >= width and h >= height
            ]
            source = min(larger, key=lambda p: p.width * p.height) if larger else frame
            scaler = self.scalers.setdefault(size, VideoReformatter())
            picture = scaler.reformat(
                source,
                width=width,
                height=height,
                format=pix_fmt,
                interpolation=Interpolation.LANCZOS,
            )
            # (the frame itself when it is at this size and format already: no copy)
            picture.pts, picture.time_base = frame.pts, frame.time_base
            scaled[size] = picture
        return scaled


def _encode_all(
    rungs: list[_RungThread],
    scaler: _LadderScaler,
    frame,
    keyframe: bool,
    failed,
    warn: Warn,
) -> None:
    for rung in list(rungs):
        if rung.error is not None:
            rung.finish()
            _rung_failed(rung, failed, warn)
            rungs.remove(rung)
    scaled = scaler.scale(frame, [rung.size for rung in rungs])
    for rung in rungs:
        rung.put(scaled[rung.size], keyframe)


def _close_all(rungs: list[_RungThread], frame_count: int, failed, warn: Warn):
    for rung in rungs:  # every rung flushes at once, each on its thread
        rung.close(frame_count)
    results = []
    for rung in rungs:
        rung.finish()
        if rung.error is not None:
            _rung_failed(rung, failed, warn)
        elif rung.result is not None:
            results.append(rung.result)
    return results


def _rung_failed(rung: _RungThread, failed, warn: Warn) -> None:
    error = rung.error
    assert error is not None
    if isinstance(error, EncodingError):
        _drop_failed(rung.encoder, error, failed, warn)
    else:
        raise error


def _drop_failed(encoder: _VideoEncoder, error: EncodingError, failed, warn: Warn) -> None:
    """A hardware encoder failed mid-way: delete its partial output and queue the rendition
    for the CPU pass; a CPU encoder's failure (or one without fallback) fails the job."""
    output = encoder.output
    if not output.encoder.hardware or output.fallback is None:
        raise error
    encoder.abort()
    output.path.unlink(missing_ok=True)  # never leave a partial rendition behind
    warn(
        "HardwareFallback",
        f"{error.message} after {encoder.frames} frames; encoding "
        f"{output.rendition.name} again from the start on the CPU with {output.fallback.name}",
    )
    failed.append(output)


def _stream_by_index(container, index: int, path: Path):
    for stream in container.streams:
        if stream.index == index:
            return stream
    raise SourceError(f"{path.name}: has no track {index}")


def _demux(container, streams, path: Path, mark: int):
    try:
        yield from container.demux(streams)
    except av.FFmpegError as error:
        what = "the file is corrupt or truncated"
        raise SourceError(error_message(path, what, error, since=mark)) from None


def _decode(packet, path: Path, mark: int):
    try:
        return packet.decode()
    except av.FFmpegError as error:
        at = f"{float(packet.pts * packet.time_base)}" if packet.pts is not None else "?"
        what = f"cannot decode {packet.stream.type} at {at} s"
        raise SourceError(error_message(path, what, error, since=mark)) from None


# -------------------------------------------------------------------------------------- video


class _FramePreparer:
    """Once per source frame: deinterlace, rotate, constant frame rate, watermarks."""

    def __init__(self, stream, plan: TranscodePlan):
        track = plan.video_track
        self.watermarks = plan.watermarks
        self.frame_rate = plan.frame_rate
        self.index = 0
        self.source_frames = 0  # frames pushed in (for the VFR conversion's counts)
        self.duplicated = 0  # frames the `fps` filter sent again (the same picture buffer)
        self._last_buffer: int | None = None
        filters: list[tuple[str, str]] = []
        if track is not None and track.interlaced:
            filters.append(("bwdif", "mode=send_frame:parity=auto:deint=interlaced"))
        rotation = track.rotation if track is not None else 0
        if rotation == 90:
            filters.append(("transpose", "clock"))
        elif rotation == 270:
            filters.append(("transpose", "cclock"))
        elif rotation == 180:
            filters += [("hflip", ""), ("vflip", "")]
        self.converts_rate = track is not None and not track.constant_frame_rate
        if self.converts_rate:
            # VFR (decided over the whole stream by the media mapping): each output slot shows
            # the frame whose timestamp is nearest (round=near), frames dropped or duplicated
            # by their real times, so sync and duration are kept
            rate = plan.frame_rate
            filters.append(("fps", f"fps={rate.numerator}/{rate.denominator}:round=near"))
        self.stream = stream
        self.filters = filters
        self.graph: av.filter.Graph | None = None  # built from the first frame (module docs)

    def _build(self, frame: av.VideoFrame):
        # The first frame's format, not the stream's: NVDEC frames arrive as NV12/P010.
        graph = av.filter.Graph()
        nodes = [graph.add_buffer(template=self.stream, format=frame.format)]
        for name, args in self.filters:
            nodes.append(graph.add(name, args))
        nodes.append(graph.add("buffersink"))
        graph.link_nodes(*nodes).configure()
        return graph

    def prepare(self, frame: av.VideoFrame):
        self.source_frames += 1
        if not self.filters:
            yield self._finish(frame)
            return
        if self.graph is None:
            self.graph = self._build(frame)
        self.graph.vpush(frame)
        yield from self._pull(self.graph)

    def flush(self):
        if self.graph is None:
            return
        try:
            self.graph.vpush(None)
        except (av.EOFError, ValueError):
            return
        yield from self._pull(self.graph)

    def _pull(self, graph: av.filter.Graph):
        while True:
            try:
                out = graph.vpull()
            except (BlockingIOError, av.EOFError):
                return
            if self.converts_rate:
                buffer = out.planes[0].buffer_ptr
                self.duplicated += buffer == self._last_buffer
                self._last_buffer = buffer
            yield self._finish(out)

    @property
    def dropped(self) -> int:
        """Source frames the rate conversion left out."""
        return max(0, self.source_frames - (self.index - self.duplicated))

    def _finish(self, frame: av.VideoFrame) -> av.VideoFrame:
        if self.watermarks is not None:
            frame = self.watermarks.apply(frame, float(self.index / self.frame_rate))
        self.index += 1
        return frame


class _VideoEncoder:
    """Scale and encode one rung into its own fragmented MP4."""

    def __init__(
        self, output: VideoOutput, frame_rate: Fraction, quality: QualitySettings | None = None
    ):
        self.output = output
        self.meter: QualityMeter | None = None
        self.mark = log_mark()  # FFmpeg log lines from here on may be this encoder's
        self.container = av.open(
            str(output.path), "w", format="mp4", options={"movflags": FRAGMENTED}
        )
        try:
            self.stream = _open_stream(self.container, output, frame_rate)
        except av.FFmpegError as error:
            self.abort()
            raise EncodingError(self._message("does not open", error)) from None
        self.frames = 0
        if quality is not None:  # decodes this rung's packets and compares (engine.quality)
            self.meter = QualityMeter(self.stream.codec_context, quality, output.rendition.name)

    def encode(self, scaled: av.VideoFrame, keyframe: bool) -> None:
        """Encode a frame already at the rendition's size and format (`_LadderScaler`)."""
        # A rung at the source's own size and format gets the shared frame itself (no copy):
        # the picture type below is read by this encoder only.
        scaled.pict_type = PictureType.I if keyframe else PictureType.NONE
        if self.meter is not None:
            self.meter.reference(scaled)
        try:
            for packet in self.stream.encode(scaled):
                if self.meter is not None:  # before muxing, which rebases the timestamps
                    self.meter.packet(packet)
                self.container.mux(packet)
        except av.FFmpegError as error:
            raise EncodingError(self._message("failed", error)) from None
        self.frames += 1

    def _message(self, what: str, error: BaseException) -> str:
        """'<rendition>: <encoder> <what>: <FFmpeg error>; FFmpeg log: <line>'."""
        what = f"{self.output.encoder.name} {what}"
        return error_message(self.output.rendition.name, what, error, since=self.mark)

    def close(self, frame_count: int) -> EncodedTrack:
        try:
            for packet in self.stream.encode(None):
                if self.meter is not None:
                    self.meter.packet(packet)
                self.container.mux(packet)
            self.container.close()
            quality = self.meter.finish() if self.meter is not None else None
        except av.FFmpegError as error:
            raise EncodingError(self._message("failed when finishing", error)) from None
        return EncodedTrack(
            self.output.path,
            "video",
            self.output.rendition.name,
            self.output.encoder.name,
            self.frames,
            float(frame_count / self.stream.codec_context.framerate)
            if self.stream.codec_context.framerate
            else 0.0,
            quality=quality,
        )

    def abort(self) -> None:
        if self.meter is not None:
            self.meter.abort()
        with contextlib.suppress(Exception):
            self.container.close()


def _open_stream(container, output: VideoOutput, frame_rate: Fraction):
    """Add the rendition's video stream and open its encoder now, so that an encoder that
    cannot open (NVENC without a free session) is known before the first frame.
    (Tests replace this function to simulate NVENC on machines without a GPU.)"""
    rendition, choice = output.rendition, output.encoder
    stream = container.add_stream(choice.name, rate=frame_rate)
    stream.width, stream.height = rendition.width, rendition.height
    stream.pix_fmt = choice.pix_fmt
    stream.time_base = 1 / frame_rate
    stream.codec_context.time_base = 1 / frame_rate
    stream.bit_rate = choice.bit_rate
    # Frame threads, as the ffmpeg CLI gives x264/x265: PyAV's default is slice threads,
    # which use the cores less well and cost quality.
    stream.codec_context.thread_type = "FRAME"
    stream.codec_context.thread_count = 0
    options = {k: v for k, v in choice.options.items() if k != "b"}
    stream.codec_context.options = options
    if choice.codec_tag:
        stream.codec_tag = choice.codec_tag
    if rendition.sample_aspect_ratio != 1:
        stream.codec_context.sample_aspect_ratio = rendition.sample_aspect_ratio
    if choice.color is not None:
        context = stream.codec_context
        context.color_primaries, context.color_trc, context.colorspace = choice.color
    stream.codec_context.open()
    return stream


# -------------------------------------------------------------------------------------- audio


class _AudioSourcePipe:
    """One audio source (a track, or mono tracks grouped into one layout) → its renditions.

    Every track is resampled to 48 kHz float planar; grouped tracks are merged channel by
    channel; the result goes through loudness normalisation when asked and then to each
    rendition's encoder (which downmixes when it has fewer channels).
    """

    def __init__(self, streams, outputs: list[AudioOutput], normalize: bool, path: Path):
        self.streams = streams
        self.stream_indices = [s.index for s in streams]
        self.path = path
        grouped = len(streams) > 1
        self.channels = len(streams) if grouped else streams[0].codec_context.channels
        self.layout = LAYOUTS.get(self.channels) or streams[0].codec_context.layout.name
        self.resamplers = {
            s.index: av.AudioResampler(
                format="fltp", layout="mono" if grouped else self.layout, rate=AUDIO_RATE
            )
            for s in streams
        }
        self.fifos = {s.index: av.AudioFifo() for s in streams}
        self.started: dict[int, bool] = {}
        self.drop: dict[int, int] = {}  # samples still to drop at the start, per track
        self.normalizer = _Loudnorm(self.layout) if normalize else None
        self.encoders = [_AudioEncoder(o) for o in outputs]
        self.samples_out = 0

    def push(self, stream_index: int, frame, video_start: float, target: int | None) -> None:
        for resampled in self.resamplers[stream_index].resample(frame):
            self._write(stream_index, resampled, frame, video_start)
        self._drain(target)

    def _write(self, stream_index: int, resampled, original, video_start: float) -> None:
        fifo = self.fifos[stream_index]
        if not self.started.get(stream_index):
            self.started[stream_index] = True
            start = float(original.time) if original.time is not None else video_start
            offset = round((start - video_start) * AUDIO_RATE)
            if offset > 0:  # audio starts after the video: lead with silence
                fifo.write(_silence(offset, "mono" if len(self.streams) > 1 else self.layout))
            elif offset < 0:  # audio starts before the video: drop what precedes it
                self.drop[stream_index] = -offset
        drop = self.drop.get(stream_index, 0)
        if drop:
            samples = resampled.samples
            if drop >= samples:
                self.drop[stream_index] = drop - samples
                return
            array = resampled.to_ndarray()[:, drop:]
            self.drop[stream_index] = 0
            resampled = _frame_from(array, resampled.layout.name)
        resampled.pts = None
        fifo.write(resampled)

    def _drain(self, target: int | None, final: bool = False) -> None:
        available = min(f.samples for f in self.fifos.values())
        if target is not None:
            available = min(available, max(target - self.samples_out, 0))
        if available <= 0:
            return
        if not final and available < 1024:
            return
        if len(self.streams) == 1:
            frame = _read(self.fifos[self.stream_indices[0]], available)
        else:
            planes = [_read(self.fifos[i], available).to_ndarray()[0] for i in self.stream_indices]
            frame = _frame_from(np.stack(planes), self.layout)
        self.samples_out += available
        self._emit(frame)

    def _emit(self, frame) -> None:
        frames = self.normalizer.process(frame) if self.normalizer else [frame]
        for out in frames:
            for encoder in self.encoders:
                encoder.push(out)

    def close(self, target: int | None) -> list[EncodedTrack]:
        for index, resampler in self.resamplers.items():
            for resampled in resampler.resample(None):
                resampled.pts = None
                self.fifos[index].write(resampled)
        self._drain(target, final=True)
        if target is not None and self.samples_out < target:  # pad to the video's length
            self._emit(_silence(target - self.samples_out, self.layout))
            self.samples_out = target
        if self.normalizer:
            for out in self.normalizer.flush():
                for encoder in self.encoders:
                    encoder.push(out)
        return [encoder.close() for encoder in self.encoders]

    def abort(self) -> None:
        for encoder in self.encoders:
            encoder.abort()


class _Loudnorm:
    """EBU R128 loudness normalisation (-23 LUFS integrated, -1 dBTP) with FFmpeg's loudnorm."""

    def __init__(self, layout: str):
        graph = av.filter.Graph()
        source = graph.add_abuffer(
            format="fltp", sample_rate=AUDIO_RATE, layout=layout, time_base=Fraction(1, AUDIO_RATE)
        )
        loudnorm = graph.add("loudnorm", "I=-23:TP=-1:LRA=7")
        resample = graph.add("aresample", str(AUDIO_RATE))  # loudnorm works at 192 kHz
        aformat = graph.add("aformat", f"sample_fmts=fltp:channel_layouts={layout}")
        sink = graph.add("abuffersink")
        graph.link_nodes(source, loudnorm, resample, aformat, sink).configure()
        self.graph = graph
        self.samples = 0

    def process(self, frame):
        frame.pts = self.samples
        frame.time_base = Fraction(1, AUDIO_RATE)
        self.samples += frame.samples
        self.graph.push(frame)
        return list(self._pull())

    def flush(self):
        try:
            self.graph.push(None)
        except (av.EOFError, ValueError):
            return []
        return list(self._pull())

    def _pull(self):
        while True:
            try:
                yield self.graph.pull()
            except (BlockingIOError, av.EOFError):
                return


class _AudioEncoder:
    def __init__(self, output: AudioOutput):
        self.output = output
        self.mark = log_mark()  # FFmpeg log lines from here on may be this encoder's
        rendition = output.rendition
        self.container = av.open(
            str(output.path),
            "w",
            format="mp4",
            options={"movflags": FRAGMENTED, "frag_duration": "1000000"},
        )
        name = AUDIO_ENCODERS[rendition.codec]
        layout = LAYOUTS[rendition.channels]
        stream = self.container.add_stream(name, rate=AUDIO_RATE)
        assert isinstance(stream, av.AudioStream)
        stream.layout = layout
        stream.bit_rate = rendition.bitrate_kbps * 1000
        stream.time_base = Fraction(1, AUDIO_RATE)
        if rendition.source.language:
            from engine.languages import iso639_2

            stream.metadata["language"] = iso639_2(rendition.source.language) or "und"
        self.stream = stream
        self.encoder_name = name
        self.resampler = av.AudioResampler(
            format=stream.codec_context.format.name, layout=layout, rate=AUDIO_RATE
        )
        self.fifo = av.AudioFifo()
        self.frame_size = FRAME_SIZES[name]
        self.samples = 0

    def push(self, frame) -> None:
        frame.pts = None
        for resampled in self.resampler.resample(frame):
            resampled.pts = None
            self.fifo.write(resampled)
        self._encode_available(final=False)

    def _encode_available(self, final: bool) -> None:
        while self.fifo.samples >= self.frame_size or (final and self.fifo.samples):
            chunk = _read(self.fifo, min(self.frame_size, self.fifo.samples))
            chunk.pts = self.samples
            chunk.time_base = Fraction(1, AUDIO_RATE)
            self.samples += chunk.samples
            try:
                for packet in self.stream.encode(chunk):
                    self.container.mux(packet)
            except av.FFmpegError as error:
                raise EncodingError(self._message("failed", error)) from None

    def close(self) -> EncodedTrack:
        for resampled in self.resampler.resample(None):
            resampled.pts = None
            self.fifo.write(resampled)
        self._encode_available(final=True)
        try:
            for packet in self.stream.encode(None):
                self.container.mux(packet)
            self.container.close()
        except av.FFmpegError as error:
            raise EncodingError(self._message("failed when finishing", error)) from None
        return EncodedTrack(
            self.output.path,
            "audio",
            self.output.rendition.name,
            self.encoder_name,
            self.samples,
            self.samples / AUDIO_RATE,
            PRIMING[self.encoder_name],
        )

    def _message(self, what: str, error: BaseException) -> str:
        what = f"{self.encoder_name} {what}"
        return error_message(self.output.rendition.name, what, error, since=self.mark)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.container.close()


def _read(fifo: av.AudioFifo, samples: int) -> av.AudioFrame:
    """`samples` samples from `fifo`, which holds at least that many."""
    frame = fifo.read(samples)
    assert frame is not None, "the audio FIFO holds fewer samples than asked"
    return frame


def _silence(samples: int, layout: str) -> av.AudioFrame:
    channels = {"mono": 1, "stereo": 2, "5.1": 6}.get(layout, 2)
    return _frame_from(np.zeros((channels, samples), dtype=np.float32), layout)


def _frame_from(array: np.ndarray, layout: str) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(array, dtype=np.float32), "fltp", layout
    )
    frame.sample_rate = AUDIO_RATE
    return frame
