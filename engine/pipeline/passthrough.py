"""Packaging-only mode (`VideoFormat: DoNotEncode`, contract §5.4).

Every matched file is an already-encoded rendition. From an MP4 (ISO brands) holding H.264
(`avc1`) or H.265 (`hvc1`) with a plain edit list the packager reads the video track in place,
picked out by its track id, and the checks read its sample table (sync samples, durations);
copied AAC (`mp4a`) audio likewise (see `_in_place`). Any other file's video is copied (no
re-encode) into a one-track fragmented MP4 for the packager. Either way, after checking what
packaging needs: H.264 or H.265 only, one codec for all, GOPs of at most 5 s, and keyframes
at the same instants in every rendition (segments must align). Audio is copied when it is AAC
already, else encoded to AAC. Segment boundaries are the first common keyframe at or after each
multiple of the segment length.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import av

from engine import ladder
from engine.errors import MappingError, PackagingError, SourceError
from engine.events import EventType
from engine.ffmpeg import error_message
from engine.media import AudioRendition, MediaMap, VideoRendition
from engine.pipeline.payloads import video_rendition_fields
from engine.pipeline.results import Encoded, Mapped
from engine.tracks import FRAGMENTED, EncodedTrack
from packagers import mp4
from packagers.errors import PackagingError as PackagerError
from packagers.mp4 import TrackFile

if TYPE_CHECKING:
    from engine.pipeline.scope import JobScope

log = logging.getLogger(__name__)

MAX_GOP_SECONDS = 5.0


def copy_renditions(scope: JobScope, mapped: Mapped) -> Encoded:
    """The Encoding phase of a packaging-only job: every rendition copied, audio copied or
    encoded to AAC, and the segment boundaries common to every rendition."""
    processing = scope.processing
    media = mapped.media
    folder = scope.workdir / "encode"
    folder.mkdir(parents=True, exist_ok=True)
    files = list(media.renditions) or ([media.video] if media.video else [])
    if not files:
        raise MappingError("DoNotEncode: no rendition file matched VideoStreamExpression")
    tracks = [media.sources[path].main_video for path in files]
    present = [track for track in tracks if track is not None]
    if len(present) != len(tracks):
        missing = [p.name for p, t in zip(files, tracks, strict=True) if t is None]
        raise MappingError(f"DoNotEncode: no video track in {', '.join(missing)}")
    bitrates = [
        track.bitrate or media.sources[p].bitrate for p, track in zip(files, present, strict=True)
    ]
    renditions = ladder.plan_passthrough(
        present, bitrates, [t.codec for t in present], processing.naming, paths=files
    )
    keyframes: dict[str, list[Fraction]] = {}
    encoded: list[EncodedTrack] = []
    for rendition in renditions:
        scope.cancel.check()
        track, keyframes[rendition.name] = _video_copy(rendition, folder)
        encoded.append(track)
    boundaries = _common_boundaries(keyframes, processing.segment_length_in_seconds)
    duration = max(t.duration for t in encoded)

    audio = ladder.plan_audio(list(media.audio), processing)
    copied, to_encode = _split_audio(audio, media)
    encoded += [_audio_copy(rendition, folder) for rendition in copied]
    if to_encode:
        # Imported here: most packaging-only jobs copy their audio and never load the transcoder.
        from engine.transcode import AudioOutput, TranscodePlan, transcode

        plan = TranscodePlan(
            video_file=None,
            video_track=None,
            frame_rate=Fraction(25),
            video=(),
            audio=tuple(AudioOutput(r, folder / f"{r.name}.mp4") for r in to_encode),
            segment_seconds=processing.segment_length_in_seconds,
            duration=duration,
            normalize_audio=processing.normalize_audio,
            audio_length=duration,  # encoded audio ends with the renditions
        )
        encoded += transcode(plan, cancel=scope.cancel.check)
    scope.events.emit(
        EventType.VIDEO_ENCODING_STARTED,
        Renditions=[video_rendition_fields(r, File=_rendition_file(r).name) for r in renditions],
        Encoder="copy",
    )
    scope.events.progress(EventType.ENCODING_PROGRESS, 100)
    return Encoded(
        tuple(encoded),
        tuple(renditions),
        tuple(copied + to_encode),
        tuple(float(b) for b in boundaries),
        duration,
        duration,
    )


def _video_copy(rendition: VideoRendition, folder: Path) -> tuple[EncodedTrack, list[Fraction]]:
    """A video rendition as a track to package, read in place where its file allows (else
    stream-copied into `folder`), and its keyframe times."""
    source = _rendition_file(rendition)
    target = folder / f"{rendition.name}.mp4"
    in_place = _in_place_video(source, target)
    if in_place is None:
        times, frames, duration = _copy_video(source, target)
        return EncodedTrack(target, "video", rendition.name, "copy", frames, duration), times
    track_id, times, frames, duration = in_place
    track = EncodedTrack(source, "video", rendition.name, "copy", frames, duration)
    return replace(track, track_id=track_id, sample_entry_from=target), times


def _audio_copy(rendition: AudioRendition, folder: Path) -> EncodedTrack:
    """An audio rendition already in AAC, read in place where its file allows (else
    stream-copied into `folder`)."""
    target = folder / f"{rendition.name}.mp4"
    source, index = rendition.source.path, rendition.source.track_indices[0]
    in_place = _in_place_audio(source, index, target)
    if in_place is None:
        samples, seconds = _copy_audio(source, index, target)
        return EncodedTrack(target, "audio", rendition.name, "copy", samples, seconds)
    track_id, samples, seconds = in_place
    track = EncodedTrack(source, "audio", rendition.name, "copy", samples, seconds)
    return replace(track, track_id=track_id, sample_entry_from=target)


def _rendition_file(rendition: VideoRendition) -> Path:
    """The file a packaging-only rendition is copied from (`plan_passthrough` sets it)."""
    if rendition.source is None:
        raise PackagingError(f"{rendition.name}: no rendition file")
    return rendition.source


def _split_audio(audio: list[AudioRendition], media: MediaMap):
    """Renditions whose source track is AAC with the same channel count are copied."""
    copied, to_encode = [], []
    seen_sources = set()
    for rendition in audio:
        source = rendition.source
        info = media.sources.get(source.path)
        track = (
            next((a for a in info.audio if a.index in source.track_indices), None) if info else None
        )
        same = (
            track is not None
            and len(source.track_indices) == 1
            and track.codec == "aac"
            and rendition.codec == "AAC"
            and rendition.channels == track.channels
            and source not in seen_sources
        )
        if same and track is not None:
            seen_sources.add(source)
            copied.append(
                replace(
                    rendition,
                    bitrate_kbps=round((track.bitrate or 0) / 1000) or rendition.bitrate_kbps,
                )
            )
        else:
            to_encode.append(rendition)
    return copied, to_encode


# ISO base media brands (not QuickTime's `qt  `) whose files are read in place
_ISO_BRANDS = {b"isom", b"iso2", b"iso4", b"iso5", b"iso6", b"mp41", b"mp42", b"avc1", b"dash"}
_IN_PLACE_ENTRIES = {"avc1", "hvc1"}  # others (avc3, hev1) keep the stream copy


def _in_place_video(source: Path, target: Path) -> tuple[int, list[Fraction], int, float] | None:
    """Read the first video track of `source` in place when that gives the package the
    stream copy would (see `_in_place`): (track id, keyframe times, frame count, duration),
    measured from the sample table (sync samples) as `_copy_video` measures them from the
    packets. None: stream-copy it."""
    found = _in_place(source, target, None)
    if found is None:
        return None
    track, _ = found
    samples = track.samples
    composition = samples.decode_time + samples.composition_offset
    first = int(composition.min())
    end = int((composition + samples.duration).max())
    time_base = Fraction(1, track.timescale)
    times = sorted((int(t) - first) * time_base for t in composition[samples.sync])
    duration = float((end - first) * time_base)
    return track.track_id, _check_gops(source, times, duration), len(samples), duration


def _in_place_audio(source: Path, index: int, target: Path) -> tuple[int, int, float] | None:
    """Audio stream `index` of `source` read in place: (track id, samples, seconds) as
    `_copy_audio` counts them; None: stream-copy it."""
    found = _in_place(source, target, index)
    if found is None:
        return None
    track, rate = found
    seconds = float(Fraction(int(track.samples.duration.sum()), track.timescale))
    return track.track_id, round(seconds * (rate or 48000)), seconds


# ISO base media brands (not QuickTime's `qt  `) whose files are read in place
_ISO_BRANDS = {b"isom", b"iso2", b"iso4", b"iso5", b"iso6", b"mp41", b"mp42", b"avc1", b"dash"}
_IN_PLACE_ENTRIES = {"avc1", "hvc1", "mp4a"}  # others (avc3, hev1, ...) keep the stream copy


def _in_place(source: Path, target: Path, audio_index: int | None) -> tuple[TrackFile, int] | None:
    """The track of the first video stream (`audio_index` None) or of audio stream
    `audio_index` of `source`, and its codec's sample rate, when the packager can read it in
    place and package what the stream copy would give it: a `table_track` that is
    `avc1`/`hvc1`/`mp4a`. `target` gets the stream copy's first sample only: its sample
    description (which the muxer rewrites: bit rates, ES id, compressor name) goes into the
    package. None: stream-copy the whole track instead."""
    if not iso_mp4(source):
        return None
    copied = _copy_first_sample(source, audio_index, target)
    if copied is None:
        return None
    track_id, rate = copied
    track = table_track(source, track_id=track_id, audio=audio_index is not None)
    try:
        written = mp4.read_track(target)
    except (OSError, PackagerError):
        return None
    if (
        track is None
        or track.entry.fourcc not in _IN_PLACE_ENTRIES
        or written.timescale != track.timescale
        or written.handler != track.handler
    ):
        return None
    return track, rate


def iso_mp4(source: Path) -> bool:
    """Whether `source` starts with an `ftyp` of an ISO base media brand (not QuickTime)."""
    try:
        with open(source, "rb") as handle:
            head = handle.read(12)
    except OSError:
        return False
    return len(head) == 12 and head[4:8] == b"ftyp" and head[8:12] in _ISO_BRANDS


def table_track(
    source: Path, *, track_id: int | None = None, index: int | None = None, audio: bool = False
) -> TrackFile | None:
    """Track `track_id` (or stream `index`) of an `iso_mp4` file when FFmpeg's demuxer
    returns every sample of its table, so what it would measure from the packets can be read
    from the table: an unfragmented file whose edit list, if any, is leading empty edits and
    one edit that cuts no video frame and at most an audio track's first frame (its
    priming). Else None."""
    try:
        track = mp4.read_track(source, track_id, index=index)
    except (OSError, PackagerError):
        return None  # the demuxer reports what is wrong with the file
    samples = track.samples
    if track.fragmented:
        return None
    composition = samples.decode_time + samples.composition_offset
    first = int(composition.min())
    end = int((composition + samples.duration).max())
    empty = 0  # leading empty edits (a delay)
    while empty < len(track.edits) and track.edits[empty][1] == -1:
        empty += 1
    edits = track.edits[empty:]
    if edits:
        if len(edits) != 1 or not track.movie_timescale:
            return None
        length, media_time = edits[0]
        cut = first + (int(samples.duration[0]) if audio else 0)
        # nothing cut before the edit's start (but audio priming), nothing past its end (a
        # movie tick of rounding)
        if media_time < 0 or media_time > cut:
            return None
        if (length + 1) * track.timescale < (end - media_time) * track.movie_timescale:
            return None
    return track


def _copy_first_sample(
    source: Path, audio_index: int | None, target: Path
) -> tuple[int, int] | None:
    """Stream-copy the first packet of the first video stream (`audio_index` None) or of
    audio stream `audio_index` into `target`, as `_copy_video`/`_copy_audio` would write the
    whole stream: (its track id, its codec's sample rate), or None."""
    try:
        with av.open(str(source)) as container:
            streams = container.streams
            stream: av.VideoStream | av.AudioStream
            if audio_index is None:
                stream = streams.video[0]
                output, copy = _open_copy(stream, target)
            else:
                stream = next(s for s in streams.audio if s.index == audio_index)
                output, copy = _open_audio_copy(stream, target)
            for packet in container.demux(stream):
                if packet.dts is not None and (audio_index is not None or packet.pts is not None):
                    packet.stream = copy
                    output.mux(packet)
                    break
            output.close()
            rate = stream.codec_context.sample_rate if isinstance(stream, av.AudioStream) else 0
            return stream.id, rate or 0
    except (av.FFmpegError, OSError, StopIteration):
        return None


def _open_copy(stream, target: Path):
    """The fragmented MP4 a video stream is stream-copied into, and its stream."""
    output = av.open(str(target), "w", format="mp4", options={"movflags": FRAGMENTED})
    copy = output.add_stream_from_template(stream)
    if stream.codec_context.name == "hevc":
        copy.codec_tag = "hvc1"
    return output, copy


def _copy_video(source: Path, target: Path) -> tuple[list[Fraction], int, float]:
    """Stream-copy the first video track; returns keyframe times, frame count, duration."""
    try:
        container = av.open(str(source))
    except av.FFmpegError as error:
        raise SourceError(error_message(source, "cannot open", error)) from None
    try:
        stream = container.streams.video[0]
        output, copy = _open_copy(stream, target)
        keyframes: list[Fraction] = []
        frames = 0
        first: int | None = None
        end = 0
        time_base = stream.time_base or Fraction(1, 90000)
        for packet in container.demux(stream):
            pts = packet.pts
            if packet.dts is None or pts is None:
                continue
            first = pts if first is None else min(first, pts)
            if packet.is_keyframe:
                keyframes.append(Fraction(pts) * time_base)
            end = max(end, pts + (packet.duration or 0))
            frames += 1
            packet.stream = copy
            output.mux(packet)
        output.close()
    except av.FFmpegError as error:
        raise SourceError(error_message(source, "cannot read the video", error)) from None
    finally:
        container.close()
    start = Fraction(first or 0) * time_base
    times = sorted(t - start for t in keyframes)
    duration = float(Fraction(end) * time_base - start)
    return _check_gops(source, times, duration), frames, duration


def _check_gops(source: Path, times: list[Fraction], duration: float) -> list[Fraction]:
    """`times` (keyframes from 0), after checking the video starts with one and no GOP is
    longer than MAX_GOP_SECONDS."""
    gaps = [b - a for a, b in zip(times, [*times[1:], Fraction(duration)], strict=True)]
    if not times or times[0] != 0:
        raise PackagingError(f"{source.name}: the video does not start with a keyframe")
    if max(gaps, default=0) > MAX_GOP_SECONDS:
        raise PackagingError(
            f"{source.name}: a GOP of {float(max(gaps)):.2f} s exceeds {MAX_GOP_SECONDS:.0f} s; "
            "packaging-only mode needs keyframes at least every 5 seconds"
        )
    return times


def _common_boundaries(keyframes: dict[str, list[Fraction]], segment: float) -> list[Fraction]:
    """Segment starts: the first keyframe at/after each multiple of the segment length; every
    rendition must have a keyframe there (within half a millisecond)."""
    names = list(keyframes)
    reference = keyframes[names[0]]
    for name in names[1:]:
        other = keyframes[name]
        if len(other) != len(reference) or any(
            abs(a - b) > Fraction(1, 2000) for a, b in zip(reference, other, strict=True)
        ):
            raise PackagingError(
                f"the renditions' keyframes are not aligned ({names[0]} and {name} differ): "
                "packaging-only mode needs the same GOP structure in every rendition"
            )
    step = Fraction(segment).limit_denominator(1000)
    boundaries: list[Fraction] = []
    n = 1
    for time in reference[1:]:
        if time >= n * step:
            boundaries.append(time)
            n = int(time // step) + 1
    return boundaries


def _open_audio_copy(stream, target: Path):
    """The fragmented MP4 an audio stream is stream-copied into, and its stream."""
    output = av.open(
        str(target),
        "w",
        format="mp4",
        options={"movflags": FRAGMENTED, "frag_duration": "1000000"},
    )
    return output, output.add_stream_from_template(stream)


def _copy_audio(source: Path, index: int, target: Path) -> tuple[int, float]:
    with av.open(str(source)) as container:
        stream = next(s for s in container.streams.audio if s.index == index)
        output, copy = _open_audio_copy(stream, target)
        samples = 0
        for packet in container.demux(stream):
            if packet.dts is None:
                continue
            samples += packet.duration or 0
            packet.stream = copy
            output.mux(packet)
        output.close()
        rate = stream.codec_context.sample_rate or 48000
        seconds = float(samples * (stream.time_base or Fraction(1, rate)))
        return round(seconds * rate), seconds
