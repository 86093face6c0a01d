"""Media Mapping: which acquired file and track is what, the source's duration and rate.

Constant or variable frame rate is decided here, over the whole video stream (`frame_timing`):
the probe looks at the start of the file only."""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import av
import numpy as np

from engine.errors import SourceError
from engine.events import EventType
from engine.mapping import map_media
from engine.pipeline.payloads import content_mapped_fields, rate_text
from engine.pipeline.results import Acquired, Mapped
from engine.probe import regular_intervals

if TYPE_CHECKING:
    from engine.media import VideoTrackInfo
    from engine.pipeline.scope import JobScope


def map_job_media(scope: JobScope, acquired: Acquired) -> Mapped:
    """Map the files (engine.mapping), refuse sources over the policy's size, decide CFR or
    VFR over the whole video stream and measure a VFR source's average rate, and emit
    ContentMapped and ContentPreProcessed."""
    events = scope.events
    media = map_media(list(acquired.files), scope.job.media_mappings, scope.processing)
    for path in media.ignored_files:
        events.warning("IgnoredFile", f"{path.name} is not used by this job")
    for track in media.ignored_tracks:
        events.warning("IgnoredTrack", f"track {track} is not used by this job")
    for replaced in media.replaced_tracks:  # an info event: the union's same-language rule
        events.warning("AudioTrackReplaced", f"audio track {replaced}")
    events.emit(EventType.CONTENT_MAPPED, **content_mapped_fields(media))
    video = media.main_video
    source = media.video_source
    duration = source.duration if source else media.audio_duration
    if video is not None:
        _check_size(video, media.video, scope.policy.max_input_pixels)
    measured = None
    if video is not None and media.video:
        # CFR or VFR is decided over the whole stream: the probe reads only its start, and a
        # source may change its rate later (5 s at 24 fps, then 30, then 15)
        timing = frame_timing(media.video, video, scope.cancel.check)
        if timing is not None and video.constant_frame_rate != timing.constant:
            video = replace(video, constant_frame_rate=timing.constant)
        if not video.constant_frame_rate and timing is not None:
            measured = timing.average
    events.emit(
        EventType.CONTENT_PRE_PROCESSED,
        AudioLanguages=media.audio_languages,
        SubtitleLanguages=media.subtitle_languages,
        CaptionLanguages=media.caption_languages,
        DurationInSeconds=round(duration, 3),
        Width=video.display_width if video else None,
        Height=video.display_height if video else None,
        FrameRate=rate_text(measured or video.frame_rate) if video else None,
    )
    return Mapped(media, video, duration, measured)


def _check_size(video: VideoTrackInfo, path: Path | None, max_pixels: int) -> None:
    """The server's bound on input resolution (`--max-input-pixels`): FinalError 3002."""
    if video.width * video.height > max_pixels:
        name = path.name if path else "the video"
        raise SourceError(
            f"{name}: {video.width}x{video.height} exceeds this server's maximum input size "
            f"of {max_pixels} pixels per frame"
        )


@dataclass(frozen=True)
class FrameTiming:
    """A video track's frame timestamps over its whole length."""

    frames: int
    average: Fraction  # frames per second: the frames counted over the track's time span
    constant: bool  # the intervals are those of a constant rate (`probe.regular_intervals`)


REORDER_DEPTH = 16  # timestamps held back to put B-frames (decode order) in presentation order


def frame_timing(
    path: Path, video: VideoTrackInfo, cancel: Callable[[], None] | None = None
) -> FrameTiming | None:
    """The track's frame count, true average rate and regularity, from every packet's
    timestamp (demuxing only, no decoding; memory flat: a histogram of the intervals).
    Containers such as Matroska state a nominal rate (the default frame duration) that
    variable-rate content does not keep; None when the file cannot be read (the transcoder
    reports what is wrong with it). A plain MP4's track is measured from its sample table
    (`_table_timing`) instead of its packets."""
    from_table = _table_timing(path, video)
    if from_table is not None:
        return from_table
    count, last_duration = 0, 0
    first: int | None = None
    end: int | None = None
    pending: list[int] = []  # a min-heap: timestamps not yet in presentation order
    previous: int | None = None
    intervals: Counter[int] = Counter()

    def release(stamp: int) -> None:
        nonlocal previous
        if previous is not None and stamp > previous:
            intervals[stamp - previous] += 1
        previous = stamp

    try:
        with av.open(str(path)) as container:
            stream = next(s for s in container.streams if s.index == video.index)
            for packet in container.demux(stream):
                if packet.pts is None:
                    continue
                if cancel and count % 1000 == 0:
                    cancel()
                count += 1
                first = packet.pts if first is None else min(first, packet.pts)
                if end is None or packet.pts >= end:
                    end, last_duration = packet.pts, packet.duration or 0
                heapq.heappush(pending, packet.pts)
                if len(pending) > REORDER_DEPTH:
                    release(heapq.heappop(pending))
            time_base = stream.time_base
    except (av.FFmpegError, StopIteration):
        return None
    while pending:
        release(heapq.heappop(pending))
    if count < 2 or first is None or end is None or end <= first or time_base is None:
        return None
    span = Fraction(end - first) * time_base
    # The last frame lasts its own duration, else an average interval.
    span += Fraction(last_duration) * time_base if last_duration else span / (count - 1)
    average = (count / span).limit_denominator(1001)
    return FrameTiming(count, average, regular_intervals(intervals))


def _table_timing(path: Path, video: VideoTrackInfo) -> FrameTiming | None:
    """`frame_timing` from the sample table of an MP4 track whose every sample FFmpeg's
    demuxer returns (`passthrough.table_track`), without reading the packets: the same
    timestamps, put in presentation order by a sort. None: not such a track."""
    from engine.pipeline.passthrough import iso_mp4, table_track

    track = table_track(path, index=video.index) if iso_mp4(path) else None
    if track is None or track.handler != "vide" or len(track.samples) < 2:
        return None
    samples = track.samples
    stamps = samples.decode_time + samples.composition_offset
    order = np.argsort(stamps, kind="stable")
    ordered = stamps[order]
    first, end = int(ordered[0]), int(ordered[-1])
    if end <= first:
        return None
    # the last sample (in decode order) presented at the latest time, as the packet loop keeps
    last = int(np.flatnonzero(stamps == end)[-1])
    last_duration = int(samples.duration[last])
    steps = np.diff(ordered)
    values, counts = np.unique(steps[steps > 0], return_counts=True)
    intervals = Counter(dict(zip(values.tolist(), counts.tolist(), strict=True)))
    time_base = Fraction(1, track.timescale)
    count = len(samples)
    span = Fraction(end - first) * time_base
    span += Fraction(last_duration) * time_base if last_duration else span / (count - 1)
    average = (count / span).limit_denominator(1001)
    return FrameTiming(count, average, regular_intervals(intervals))
