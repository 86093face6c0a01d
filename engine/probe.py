"""Probe a media file with PyAV: container, tracks, and what the encoder must know about them.

Stream headers give most of `SourceInfo`. A short demux pass adds what headers do not say
reliably: the first video packet timestamps (constant or variable frame rate) and the first
decoded frames (interlacing, rotation, HDR mastering and light-level metadata, which FFmpeg
attaches to frames). Everything else is left to the encoder: a file that is truncated but still
has decodable media probes, and the encoder reports where it ends.

Every failure is a `SourceError` (3002) that names the file (its name, not its folder) and what
is wrong, with FFmpeg's error and its last log line where FFmpeg had a say (`engine.ffmpeg`); no
PyAV exception leaves this module.
"""

from __future__ import annotations

import itertools
import logging
import math
import struct
from collections import Counter
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path

import av
import av.error

from engine.errors import SourceError
from engine.ffmpeg import error_message, error_text, log_mark
from engine.media import AudioTrackInfo, HdrInfo, SourceInfo, SubtitleTrackInfo, VideoTrackInfo

log = logging.getLogger(__name__)

TIMESTAMP_PACKETS = 60  # video packets whose timestamps decide CFR vs VFR
DECODE_FRAMES = 3  # frames decoded for interlacing, rotation and HDR side data
REORDER_MARGIN = 8  # last timestamps not trusted: B-frame reordering (x264/x265 use <= 8)
MAX_PACKETS = 2000  # bound on the demux pass, whatever the interleaving
# Share of irregular frame intervals above which a file counts as VFR: one dropped or doubled
# frame near the start does not make a constant-rate file variable.
VFR_IRREGULAR_SHARE = 0.05

# FFmpeg enum values (libavutil/pixfmt.h) -> the names FFmpeg and x265 use. 2 = unspecified.
_PRIMARIES = {
    1: "bt709",
    4: "bt470m",
    5: "bt470bg",
    6: "smpte170m",
    7: "smpte240m",
    8: "film",
    9: "bt2020",
    10: "smpte428",
    11: "smpte431",
    12: "smpte432",
    22: "ebu3213",
}
_TRANSFERS = {
    1: "bt709",
    4: "gamma22",
    5: "gamma28",
    6: "smpte170m",
    7: "smpte240m",
    8: "linear",
    9: "log100",
    10: "log316",
    11: "iec61966-2-4",
    12: "bt1361e",
    13: "iec61966-2-1",
    14: "bt2020-10",
    15: "bt2020-12",
    16: "smpte2084",
    17: "smpte428",
    18: "arib-std-b67",
}
_MATRICES = {
    0: "gbr",
    1: "bt709",
    4: "fcc",
    5: "bt470bg",
    6: "smpte170m",
    7: "smpte240m",
    8: "ycgco",
    9: "bt2020nc",
    10: "bt2020c",
    11: "smpte2085",
    12: "chroma-derived-nc",
    13: "chroma-derived-c",
    14: "ictcp",
}
_INTERLACED_FIELD_ORDERS = {2, 3, 4, 5}  # AV_FIELD_TT, BB, TB, BT (1 = progressive, 0 = unknown)
_UNDETERMINED = {"", "und"}

_READ_ERRORS = (av.error.FFmpegError, OSError, ValueError, UnicodeDecodeError, EOFError)


def probe(path: Path) -> SourceInfo:
    """Describe the media file at `path`: container, duration, size, bitrate and every video,
    audio and subtitle track.

    Raises `SourceError` when the file is missing, empty, not media, has no audio, video or
    subtitle track, or holds no readable media data at all.
    """
    path = Path(path)
    name = path.name
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise SourceError(f"{name}: file not found") from None
    except OSError as error:
        raise SourceError(f"{name}: cannot be read ({error.strerror or error})") from None
    if size == 0:
        raise SourceError(f"{name}: the file is empty")
    mark = log_mark()  # FFmpeg log lines from here on are about this file
    try:
        container = av.open(str(path), mode="r", metadata_errors="ignore")
    except _READ_ERRORS as error:
        message = error_message(path, "not a readable media file", error, since=mark)
        raise SourceError(message) from error
    try:
        with container:
            return _describe(container, path, size, mark)
    except SourceError:
        raise
    except _READ_ERRORS as error:
        raise SourceError(error_message(path, "cannot be read", error, since=mark)) from error


def _describe(container, path: Path, size: int, mark: int) -> SourceInfo:
    name = path.name
    video_streams = [
        s
        for s in container.streams.video
        if not (s.disposition & av.stream.Disposition.attached_pic)  # cover art, not video
    ]
    audio_streams = list(container.streams.audio)
    subtitle_streams = list(container.streams.subtitles)
    if not (video_streams or audio_streams or subtitle_streams):
        raise SourceError(f"{name}: contains no video, audio or subtitle track")

    first_pass = _read_start(container, video_streams[0] if video_streams else None, path, mark)

    video = tuple(
        _video_track(s, first_pass if i == 0 else None) for i, s in enumerate(video_streams)
    )
    audio = tuple(_audio_track(s) for s in audio_streams)
    subtitles = tuple(
        SubtitleTrackInfo(
            index=s.index,
            codec=_codec_name(s),
            language=_language(s),
            title=_title(s),
        )
        for s in subtitle_streams
    )
    bitrate = container.bit_rate or None
    return SourceInfo(
        path=path,
        container=container.format.name,
        duration=_duration(container),
        size=size,
        bitrate=bitrate,
        video=video,
        audio=audio,
        subtitles=subtitles,
    )


class _StartOfFile:
    """What the demux pass found: video timestamps and the first decoded frames' properties."""

    def __init__(self) -> None:
        self.timestamps: list[int] = []
        self.frames = 0
        self.interlaced = False
        self.rotation: int | None = None
        self.mastering_display: str | None = None
        self.content_light: str | None = None
        self.colors: tuple[int, int, int] | None = None


def _read_start(container, video, path: Path, mark: int) -> _StartOfFile:
    """Demux the start of the file; decode the first frames of the main video track."""
    name = path.name
    found = _StartOfFile()
    packets = 0
    decode_failed: BaseException | None = None
    try:
        for packet in container.demux():
            if packet.size == 0 and packet.pts is None:
                # The empty packet at the end of each stream: flush the decoder.
                if video is not None and packet.stream is video and found.frames < DECODE_FRAMES:
                    decode_failed = _decode(video, None, found) or decode_failed
                continue
            packets += 1
            if video is None:
                break  # audio/subtitle only: one packet proves there is media data
            if packet.stream is video:
                stamp = packet.pts if packet.pts is not None else packet.dts
                if stamp is not None and len(found.timestamps) < TIMESTAMP_PACKETS:
                    found.timestamps.append(stamp)
                if found.frames < DECODE_FRAMES:
                    decode_failed = _decode(video, packet, found) or decode_failed
            if len(found.timestamps) >= TIMESTAMP_PACKETS and found.frames >= DECODE_FRAMES:
                break
            if packets >= MAX_PACKETS:
                break
    except _READ_ERRORS as error:
        # A truncated or damaged file: keep what was read; the encoder reports the rest.
        log.debug("%s: demuxing stopped early: %s", name, error_text(error, path))
        if packets == 0:
            message = error_message(path, "no media data can be read", error, since=mark)
            raise SourceError(message) from error
    if packets == 0:
        what = "contains no media data (truncated or empty tracks)"
        raise SourceError(error_message(path, what, since=mark))
    if video is not None and found.frames == 0:
        if not found.timestamps:
            what = "the video track holds no data (truncated?)"
            raise SourceError(error_message(path, what, since=mark))
        if decode_failed is not None:
            what = "the video track cannot be decoded"
            message = error_message(path, what, decode_failed, since=mark)
            raise SourceError(message) from decode_failed
    return found


def _decode(video, packet, found: _StartOfFile) -> BaseException | None:
    if video.codec_context is None:  # no decoder in this FFmpeg build: headers only
        return None
    try:
        frames = video.codec_context.decode(packet)
    except _READ_ERRORS as error:
        return error
    for frame in frames:
        if found.frames >= DECODE_FRAMES:
            break
        found.frames += 1
        found.interlaced = found.interlaced or bool(frame.interlaced_frame)
        if found.frames == 1:
            found.colors = (frame.color_primaries, frame.color_trc, frame.colorspace)
        _read_side_data(frame, found)
    return None


def _read_side_data(frame, found: _StartOfFile) -> None:
    from av.sidedata.sidedata import Type

    for side_data in frame.side_data:
        try:
            if side_data.type == Type.DISPLAYMATRIX and found.rotation is None:
                # PyAV reports FFmpeg's counter-clockwise angle; vipe wants clockwise.
                found.rotation = _normal_rotation(-frame.rotation)
            elif side_data.type == Type.MASTERING_DISPLAY_METADATA:
                found.mastering_display = found.mastering_display or _mastering_display(
                    bytes(side_data)
                )
            elif side_data.type == Type.CONTENT_LIGHT_LEVEL:
                found.content_light = found.content_light or _content_light(bytes(side_data))
        except (ValueError, struct.error, ZeroDivisionError) as error:
            log.debug("unreadable %s side data: %s", side_data.type, error)


def _mastering_display(data: bytes) -> str | None:
    """AVMasteringDisplayMetadata -> x265's "G(x,y)B(x,y)R(x,y)WP(x,y)L(max,min)".

    The struct holds AVRationals: primaries R, G, B (x, y each), white point (x, y), min and
    max luminance, then has_primaries and has_luminance. x265 counts chromaticity in 0.00002
    and luminance in 0.0001 cd/m².
    """
    values = struct.unpack_from("<20i2i", data)
    rationals = [Fraction(values[i], values[i + 1] or 1) for i in range(0, 20, 2)]
    has_primaries, has_luminance = values[20], values[21]
    if not (has_primaries and has_luminance):
        return None
    rx, ry, gx, gy, bx, by, wx, wy, min_lum, max_lum = rationals

    def chroma(value: Fraction) -> int:
        return round(value * 50000)

    return (
        f"G({chroma(gx)},{chroma(gy)})B({chroma(bx)},{chroma(by)})"
        f"R({chroma(rx)},{chroma(ry)})WP({chroma(wx)},{chroma(wy)})"
        f"L({round(max_lum * 10000)},{round(min_lum * 10000)})"
    )


def _content_light(data: bytes) -> str | None:
    """AVContentLightMetadata (two unsigned ints) -> "MaxCLL,MaxFALL"."""
    max_cll, max_fall = struct.unpack_from("<2I", data)
    return f"{max_cll},{max_fall}"


def _normal_rotation(degrees: float) -> int:
    """Any angle -> 0, 90, 180 or 270 (the nearest quarter turn)."""
    if not math.isfinite(degrees):
        return 0
    return (round(degrees / 90) * 90) % 360


def _video_track(stream, start: _StartOfFile | None) -> VideoTrackInfo:
    context = stream.codec_context
    pixel_format = context.pix_fmt if context is not None else None
    rotation = start.rotation if start is not None else None
    if rotation is None and stream.metadata.get("rotate"):
        try:  # older muxers: a "rotate" tag in clockwise degrees
            rotation = _normal_rotation(float(stream.metadata["rotate"]))
        except ValueError:
            rotation = None
    interlaced = bool(start and start.interlaced)
    if not (start and start.frames) and context is not None:
        interlaced = context.field_order in _INTERLACED_FIELD_ORDERS
    return VideoTrackInfo(
        index=stream.index,
        codec=_codec_name(stream),
        width=context.width if context is not None else 0,
        height=context.height if context is not None else 0,
        sample_aspect_ratio=_sample_aspect_ratio(stream),
        frame_rate=_frame_rate(stream),
        constant_frame_rate=_constant_rate(start.timestamps if start else []),
        interlaced=interlaced,
        rotation=rotation or 0,
        pixel_format=pixel_format,
        bit_depth=_bit_depth(pixel_format, context),
        bitrate=_bitrate(stream),
        frame_count=stream.frames or None,
        hdr=_hdr(context, start),
        profile=stream.profile or None,
    )


def _sample_aspect_ratio(stream) -> Fraction:
    for value in (
        stream.sample_aspect_ratio,
        getattr(stream.codec_context, "sample_aspect_ratio", None),
    ):
        if value:  # None or 0/1: unset, square pixels
            return Fraction(value)
    return Fraction(1)


def _frame_rate(stream) -> Fraction:
    # The average rate (frames / duration) is the right one for VFR; the guessed rate (the
    # container's or codec's nominal rate) when the average is unknown.
    for value in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if value:
            return Fraction(value)
    return Fraction(0)


def _constant_rate(timestamps: list[int]) -> bool:
    """Whether the first frame intervals are regular (one timestamp tick or 1% of slack).

    A first look only: the Media Mapping phase decides over the whole stream
    (`engine.pipeline.media_mapping.frame_timing`), since a rate may change after the start."""
    stamps = sorted(set(timestamps))  # presentation order; B-frames arrive out of it
    # The last packets read in decode order may be P-frames whose B-frames were not read yet
    # (the pass stops early, or the file is truncated): their gaps are not the frame rate.
    stamps = stamps[: len(stamps) - min(REORDER_MARGIN, len(stamps) // 3)]
    return regular_intervals(Counter(b - a for a, b in itertools.pairwise(stamps)))


def regular_intervals(intervals: Mapping[int, int]) -> bool:
    """Whether frame intervals (timestamp ticks -> how many) are those of a constant rate: at
    most `VFR_IRREGULAR_SHARE` of them further than one tick or 1% from the median (the
    slack is the rounding of timestamps in a coarse time base, such as Matroska's ms)."""
    total = sum(intervals.values())
    if total < 3:
        return True
    seen, typical = 0, 0
    for interval in sorted(intervals):  # the median, from the counts
        seen += intervals[interval]
        if seen * 2 >= total:
            typical = interval
            break
    slack = max(1, typical * 0.01)
    irregular = sum(n for interval, n in intervals.items() if abs(interval - typical) > slack)
    return irregular <= total * VFR_IRREGULAR_SHARE


def _bit_depth(pixel_format: str | None, context) -> int:
    if pixel_format:
        try:
            return av.VideoFormat(pixel_format).components[0].bits
        except (ValueError, IndexError):
            pass
    return 8


def _hdr(context, start: _StartOfFile | None) -> HdrInfo | None:
    codes: tuple[int, ...] = (
        (context.color_primaries, context.color_trc, context.colorspace)
        if context is not None
        else (2, 2, 2)
    )
    if start is not None and start.colors is not None:
        # Decoded frames know the bitstream's colour description when the container does not.
        codes = tuple(
            c if c not in (None, 2) else f for c, f in zip(codes, start.colors, strict=True)
        )
    primaries = _PRIMARIES.get(codes[0])
    transfer = _TRANSFERS.get(codes[1])
    matrix = _MATRICES.get(codes[2])
    mastering = start.mastering_display if start else None
    light = start.content_light if start else None
    if not any((primaries, transfer, matrix, mastering, light)):
        return None
    return HdrInfo(
        color_primaries=primaries,
        transfer=transfer,
        matrix=matrix,
        mastering_display=mastering,
        content_light=light,
    )


def _audio_track(stream) -> AudioTrackInfo:
    context = stream.codec_context
    channels = context.channels if context is not None else 0
    layout = context.layout.name if context is not None and channels else ""
    return AudioTrackInfo(
        index=stream.index,
        codec=_codec_name(stream),
        channels=channels,
        layout=layout,
        sample_rate=context.sample_rate if context is not None else 0,
        language=_language(stream),
        bitrate=_bitrate(stream),
        title=_title(stream),
    )


def _codec_name(stream) -> str:
    """FFmpeg's codec name ("subrip", "ass", "av1"), not the decoder's ("srt", "libdav1d")."""
    context = stream.codec_context
    if context is None:
        return "unknown"
    try:
        return context.codec.canonical_name
    except (AttributeError, ValueError):
        return context.name or "unknown"


def _language(stream) -> str | None:
    """The language tag as the container has it (lower case); None when absent or "und"."""
    value = (stream.metadata.get("language") or "").strip().lower()
    return None if value in _UNDETERMINED else value


def _title(stream) -> str | None:
    return stream.metadata.get("title") or stream.metadata.get("TITLE") or None


def _bitrate(stream) -> int | None:
    context = stream.codec_context
    if context is not None and context.bit_rate:
        return int(context.bit_rate)
    # Matroska keeps it in statistics tags (mkvmerge writes BPS, sometimes BPS-eng).
    for key in ("BPS", "BPS-eng"):
        value = stream.metadata.get(key)
        if value and value.isdigit():
            return int(value)
    return None


def _duration(container) -> float:
    """The container's duration, else the longest stream duration, else Matroska tags."""
    if container.duration and container.duration > 0:
        return container.duration / av.time_base
    longest = 0.0
    for stream in container.streams:
        if stream.duration and stream.time_base:
            longest = max(longest, float(stream.duration * stream.time_base))
        tag = stream.metadata.get("DURATION") or stream.metadata.get("DURATION-eng")
        if tag:
            longest = max(longest, _clock_seconds(tag))
    return longest


def _clock_seconds(text: str) -> float:
    """ "01:02:03.500000000" -> 3723.5; 0.0 when unreadable."""
    try:
        hours, minutes, seconds = text.strip().split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return 0.0
