"""Split and stitch: the chunk encoder and the stitcher (chunks planned by `engine.chunks`).

A chunk is a range of output frames [first, end) that starts on a segment boundary (an IDR in
every rung, `engine.transcode.boundary_frames`). Its encoder (`encode_chunk`) seeks the source to
the nearest earlier keyframe, decodes and prepares frames as the one-pass transcoder does,
discards the pre-roll (frames before `first`) and encodes every rung of the range with the
rung's own encoder settings into one fMP4 per rung and chunk. Output frames are numbered by
their source timestamp, `round((t - video_start) * rate)`, which for a constant-frame-rate
source is the one-pass transcoder's frame count; a chunk whose numbering has a gap or a repeat
(a source that is not really constant-rate) raises `ChunkMismatch` and the job is encoded in one
pass instead.

The stitcher (`stitch`) joins each rung's chunk files by remuxing their packets, untouched and
shifted by the chunk's first frame, into one fragmented MP4: timestamps continuous, every
keyframe where the one-pass encode puts it, no frame duplicated or lost (each chunk holds
exactly its range). The codec configuration must be the same in every chunk: the stitcher
compares the decoder configuration (avcC/hvcC: SPS/PPS/VPS) of every chunk with the first and
raises `ChunkMismatch` when one differs (then the job is encoded in one pass). x264 and x265 with
the same settings write the same parameter sets whatever the content (x264's ABR/VBV modes fix
the PPS's initial QP; nothing in the SPS depends on the pictures), which the tests check.

Audio is not chunked: `encode_audio` runs the audio renditions as their own pass, aligned to the
video's first frame as the one-pass transcoder aligns them.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path

import av

from engine.chunks import Chunk
from engine.errors import EncodingError, SourceError
from engine.ffmpeg import close_input, error_message, log_mark
from engine.media import VideoTrackInfo
from engine.transcode import (
    AUDIO_RATE,
    FRAGMENTED,
    AudioOutput,
    CancelCheck,
    EncodedTrack,
    Progress,
    TranscodePlan,
    VideoOutput,
    Warn,
    _close_all,
    _decode,
    _demux,
    _encode_all,
    _FramePreparer,
    _LadderScaler,
    _open_encoder,
    _ProgressTracker,
    _RungThread,
    _transcode_file,
    boundary_frames,
)
from engine.watermark import Watermarker

# How far before a chunk's start the seek goes when the first try lands after it (seconds;
# `None`: from the start of the file).
SEEK_BACKOFF: tuple[float | None, ...] = (0.0, 2.0, 10.0, None)


class ChunkMismatch(Exception):
    """A chunk cannot be stitched seamlessly (its frames or its codec configuration differ
    from what one pass gives); the caller encodes the job in one pass instead."""


def worker_name() -> str:
    """Which worker encoded a chunk: host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


# ------------------------------------------------------------------------------ chunk encoder


@dataclass(frozen=True)
class ChunkTask:
    """One chunk to encode (picklable: it travels to a worker process)."""

    chunk: Chunk
    video_file: Path
    video_track: VideoTrackInfo | None
    frame_rate: Fraction
    video_start: float  # the source's first video frame (seconds): output frame 0
    outputs: tuple[VideoOutput, ...]  # this chunk's file per rung
    segment_seconds: float
    watermarks: Watermarker | None = None
    job_id: str | None = None


@dataclass(frozen=True)
class ChunkResult:
    """An encoded chunk: its files (one per rung, in the task's order), where and how long."""

    chunk: Chunk
    tracks: tuple[EncodedTrack, ...]
    frames: int
    worker: str
    seconds: float
    preroll: int = 0  # decoded frames discarded before the chunk's first
    extra: dict = field(default_factory=dict)


def video_start(path: Path, track: VideoTrackInfo | None) -> float:
    """The time of the first decoded video frame (what the one-pass transcoder calls 0)."""
    mark = log_mark()
    try:
        container = av.open(str(path), options={"ignore_editlist": "0"})
    except av.FFmpegError as error:
        raise SourceError(error_message(path, "cannot open", error, since=mark)) from None
    try:
        stream = _video_stream(container, track)
        for packet in container.demux(stream):
            for frame in _decode(packet, path, mark):
                return float(frame.time or 0.0)
    except av.FFmpegError as error:
        raise SourceError(error_message(path, "cannot decode", error, since=mark)) from None
    finally:
        close_input(container)
    raise SourceError(error_message(path, "no video frame could be decoded", since=mark))


def _video_stream(container, track: VideoTrackInfo | None):
    if track is None:
        return container.streams.video[0]
    return next(s for s in container.streams if s.index == track.index)


def encode_chunk(
    task: ChunkTask,
    *,
    cancel: CancelCheck | None = None,
    progress: Progress | None = None,
    warn: Warn | None = None,
) -> ChunkResult:
    """Encode output frames [first, end) of every rung into the task's files."""
    started = time.monotonic()
    chunk = task.chunk
    warn = warn or (lambda code, message: None)
    path = task.video_file
    mark = log_mark()
    try:
        container = av.open(str(path), options={"ignore_editlist": "0"})
    except av.FFmpegError as error:
        raise SourceError(error_message(path, "cannot open", error, since=mark)) from None
    rungs: list[_RungThread] = []
    failed: list[VideoOutput] = []
    try:
        stream = _video_stream(container, task.video_track)
        stream.codec_context.thread_type = "AUTO"
        for output in task.outputs:
            if output.encoder.hardware:
                raise ChunkMismatch(f"{output.rendition.name}: hardware encoders are not chunked")
            rungs.append(_RungThread(_open_encoder(output, task.frame_rate, warn)))
        scaler = _LadderScaler()  # the one-pass transcode's cascade: the same pictures
        boundaries = boundary_frames(task.frame_rate, task.segment_seconds)
        next_key = next(boundaries)
        while next_key < chunk.first:
            next_key = next(boundaries)
        rate = task.frame_rate
        expected = chunk.first
        preroll = 0
        total = (chunk.end - chunk.first) if chunk.end is not None else None
        for frame in _chunk_frames(container, stream, task, mark, cancel):
            index = round((Fraction(frame.time or 0.0) - Fraction(task.video_start)) * rate)
            if index < chunk.first:
                preroll += 1
                continue
            if chunk.end is not None and index >= chunk.end:
                break
            if index != expected:  # a gap or a repeat: not the one-pass numbering
                raise ChunkMismatch(
                    f"chunk {chunk.index}: frame {index} where {expected} was expected"
                )
            if task.watermarks is not None:
                frame = task.watermarks.apply(frame, float(index / rate))
            keyframe = index == next_key
            if keyframe:
                next_key = next(boundaries)
            # Each chunk file starts at 0 (as a one-pass file does); the stitcher shifts it.
            frame.pts, frame.time_base = index - chunk.first, 1 / rate
            _encode_all(rungs, scaler, frame, keyframe, failed, warn)
            expected += 1
            if progress is not None and total:
                progress((expected - chunk.first) / total)
        count = expected - chunk.first
        if count == 0 or (chunk.end is not None and expected != chunk.end):
            raise ChunkMismatch(
                f"chunk {chunk.index}: {count} frames where {total or 'some'} were expected"
            )
        tracks = _close_all(rungs, count, failed, warn)
        rungs = []
        if failed or len(tracks) != len(task.outputs):
            raise EncodingError(f"chunk {chunk.index}: an encoder failed")
        return ChunkResult(
            chunk,
            tuple(tracks),
            count,
            worker_name(),
            round(time.monotonic() - started, 3),
            preroll,
        )
    finally:
        for rung in rungs:
            rung.abort()
        close_input(container)


def _chunk_frames(
    container, stream, task: ChunkTask, mark: int, cancel: CancelCheck | None
) -> Iterator[av.VideoFrame]:
    """The prepared frames from the nearest keyframe before the chunk's first frame on. The
    seek goes further back (and at last to the start) when it lands after that frame."""
    chunk, rate = task.chunk, task.frame_rate
    target = task.video_start + float(chunk.first / rate) - 0.5 / float(rate)
    path = task.video_file
    for backoff in SEEK_BACKOFF if chunk.first > 0 else (None,):
        if backoff is None:
            container.seek(0, backward=True, any_frame=False, stream=stream)
        else:
            seconds = max(target - backoff, 0.0)
            assert stream.time_base is not None
            container.seek(
                int(seconds / stream.time_base), backward=True, any_frame=False, stream=stream
            )
        # A fresh preparer per try: filters (deinterlacing) must not see frames twice.
        preparer = _FramePreparer(stream, _plan_for_preparer(task))
        first = True
        demux = _demux(container, stream, path, mark)
        try:
            for packet in demux:
                if cancel is not None:
                    cancel()
                for decoded in _decode(packet, path, mark):
                    for prepared in preparer.prepare(decoded):
                        if first:
                            first = False
                            start = prepared.time or 0.0
                            landed = round((start - task.video_start) * float(rate))
                            if landed > chunk.first and backoff is not None:
                                raise _SeekTooLate
                        yield prepared
            for prepared in preparer.flush():
                yield prepared
            return
        except _SeekTooLate:
            continue
        finally:
            demux.close()
    raise ChunkMismatch(f"chunk {chunk.index}: the source cannot be read from its start")


class _SeekTooLate(Exception):
    pass


def _plan_for_preparer(task: ChunkTask) -> TranscodePlan:
    # Watermarks are applied by the chunk encoder (timed by output index, not by count).
    return TranscodePlan(
        video_file=task.video_file,
        video_track=task.video_track,
        frame_rate=task.frame_rate,
        video=(),
        audio=(),
        segment_seconds=task.segment_seconds,
        duration=0.0,
    )


# ----------------------------------------------------------------------------------- stitcher


def decoder_configuration(path: Path) -> bytes:
    """The video track's decoder configuration (avcC/hvcC payload: SPS, PPS, VPS)."""
    with av.open(str(path)) as container:
        return bytes(container.streams.video[0].codec_context.extradata or b"")


def stitch(chunks: list[tuple[Chunk, Path]], frame_rate: Fraction, output: Path) -> int:
    """Join one rung's chunk files (in order) into `output`, a continuous fragmented MP4;
    returns the frame count. Raises ChunkMismatch when the codec configuration differs."""
    reference = decoder_configuration(chunks[0][1])
    for chunk, path in chunks[1:]:
        if decoder_configuration(path) != reference:
            raise ChunkMismatch(
                f"chunk {chunk.index} of {output.stem}: its codec configuration (SPS/PPS) "
                "differs from the first chunk's"
            )
    frames = 0
    out = av.open(str(output), "w", format="mp4", options={"movflags": FRAGMENTED})
    try:
        out_stream = None
        for chunk, path in chunks:
            with av.open(str(path)) as source:
                in_stream = source.streams.video[0]
                if out_stream is None:
                    out_stream = out.add_stream_from_template(in_stream)
                    out_stream.time_base = 1 / frame_rate
                assert in_stream.time_base is not None
                shift = int(chunk.first / frame_rate / in_stream.time_base)
                for packet in source.demux(in_stream):
                    if packet.size == 0:  # the demuxer's end-of-stream marker
                        continue
                    if packet.pts is not None:
                        packet.pts += shift
                    if packet.dts is not None:
                        packet.dts += shift
                    packet.stream = out_stream
                    out.mux(packet)
                    frames += 1
        out.close()
    except BaseException:
        with contextlib.suppress(Exception):
            out.close()
        output.unlink(missing_ok=True)
        raise
    return frames


# -------------------------------------------------------------------------------------- audio


def encode_audio(
    plan: TranscodePlan,
    video_start_seconds: float,
    video_frames: int,
    *,
    progress: Progress | None = None,
    cancel: CancelCheck | None = None,
) -> list[EncodedTrack]:
    """The plan's audio renditions as their own pass per file, each aligned to the video's
    first frame (in-file audio) or to 0 (separate files) and as long as the video, as the
    one-pass transcoder does."""
    by_file: dict[Path, list[AudioOutput]] = {}
    for output in plan.audio:
        by_file.setdefault(output.rendition.source.path, []).append(output)
    audio_plan = replace(plan, video_file=None, video=())
    tracker = _ProgressTracker(audio_plan, progress)
    target = round(video_frames * AUDIO_RATE / plan.frame_rate)
    results: list[EncodedTrack] = []
    for path, outputs in by_file.items():
        start = video_start_seconds if path == plan.video_file else 0.0
        _, tracks, _ = _transcode_file(
            audio_plan, path, (), outputs, tracker, cancel, start, audio_target=target
        )
        results += tracks
    return results
