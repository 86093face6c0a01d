"""Media Mapping: which acquired file and track is what, the source's duration and rate."""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import av

from engine.errors import SourceError
from engine.events import EventType
from engine.mapping import map_media
from engine.pipeline.payloads import content_mapped_fields, rate_text
from engine.pipeline.results import Acquired, Mapped

if TYPE_CHECKING:
    from engine.media import VideoTrackInfo
    from engine.pipeline.scope import JobScope


def map_job_media(scope: JobScope, acquired: Acquired) -> Mapped:
    """Map the files (engine.mapping), refuse sources over the policy's size, measure a VFR
    source's average rate, and emit ContentMapped and ContentPreProcessed."""
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
    if video is not None and media.video and not video.constant_frame_rate:
        measured = measured_frame_rate(media.video, video, scope.cancel.check)
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


def measured_frame_rate(
    path: Path, video: VideoTrackInfo, cancel: Callable[[], None] | None = None
) -> Fraction | None:
    """A track's true average rate: its frames counted over its time span (demuxing only, no
    decoding). For VFR sources: containers such as Matroska state a nominal rate (the default
    frame duration) that variable-rate content does not keep."""
    count, first, end, last_duration = 0, None, None, 0
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
            time_base = stream.time_base
    except (av.FFmpegError, StopIteration):
        return None  # the transcoder reports what is wrong with the file
    if count < 2 or first is None or end is None or end <= first or time_base is None:
        return None
    span = Fraction(end - first) * time_base
    # The last frame lasts its own duration, else an average interval.
    span += Fraction(last_duration) * time_base if last_duration else span / (count - 1)
    return (count / span).limit_denominator(1001)
