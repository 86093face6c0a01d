"""HLS playlists (RFC 8216 and Apple's authoring specification): master, media, I-frame,
subtitle and image playlists.

- Media playlists `<name>.m3u8` beside their segments: `#EXT-X-MAP` (fMP4), `#EXTINF` with three
  decimals, `#EXT-X-BYTERANGE` for single-file layouts, `#EXT-X-KEY` lines from the DRM hook.
- I-frame playlists `<name>_iframes.m3u8`: one entry per segment, the byte range of the
  segment's moof and key frame (fMP4, as Apple requires) or of PAT, PMT and the key frame's
  PES (TS).
- Master: audio `#EXT-X-MEDIA` in one group per audio codec, subtitles and captions in one
  `SUBTITLES` group, one `#EXT-X-STREAM-INF` per video rendition and audio group. BANDWIDTH is
  the video's peak segment bit rate plus the highest peak in the audio group, so it bounds
  every combination of segments; AVERAGE-BANDWIDTH likewise with averages.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from fractions import Fraction

from packagers.layout import ImageRef, SegmentRef, TextRef, TrackLayout

DESCRIBES_VIDEO = "public.accessibility.describes-video"
CAPTION_CHARACTERISTICS = (
    "public.accessibility.transcribes-spoken-dialog,public.accessibility.describes-music-and-sound"
)
SUBTITLE_GROUP = "subtitles"


def playlist_name(layout: TrackLayout) -> str:
    return f"{layout.track.name}.m3u8"


def iframe_playlist_name(layout: TrackLayout) -> str:
    return f"{layout.track.name}_iframes.m3u8"


def _seconds(value: int, timescale: int) -> str:
    return f"{value / timescale:.3f}"


def bit_rates(layout: TrackLayout, size: Callable[[SegmentRef], int]) -> tuple[int, int]:
    """(peak, average) bit rate of `size(segment)` bytes per segment over the durations as the
    playlist writes them (to the millisecond), so that a client measuring bytes / EXTINF never
    finds more than the playlist says."""
    timescale = layout.track.timescale
    pairs = [
        (size(ref), max(Fraction(_seconds(ref.duration, timescale)), Fraction(1, 1000)))
        for ref in layout.segments
    ]
    peak = max((math.ceil(bytes_ * 8 / seconds) for bytes_, seconds in pairs), default=0)
    total_seconds = sum(seconds for _, seconds in pairs)
    average = math.ceil(sum(b for b, _ in pairs) * 8 / total_seconds) if pairs else 0
    return peak, average


def _segment_size(ref: SegmentRef) -> int:
    return ref.size


def _key_frame_size(ref: SegmentRef) -> int:
    return ref.key_frame[1] if ref.key_frame else 0


def _target_duration(durations: Sequence[Fraction]) -> int:
    """EXT-X-TARGETDURATION: the longest segment rounded to the nearest second (RFC 8216
    4.3.3.1: each EXTINF, rounded, must not exceed it). Playlists write EXTINF to the
    millisecond, so that is what is rounded."""
    longest = max(durations, default=Fraction(1))
    return max(1, math.floor(Fraction(round(longest * 1000), 1000) + Fraction(1, 2)))


def _quote(value: str) -> str:
    return '"' + value.replace('"', "'") + '"'


def _attributes(pairs: list[tuple[str, str | int | None]]) -> str:
    return ",".join(f"{key}={value}" for key, value in pairs if value is not None)


def _byte_range(length: int, offset: int) -> str:
    return f"{length}@{offset}"


def _header(version: int, target_duration: int, *tags: str) -> list[str]:
    return [
        "#EXTM3U",
        f"#EXT-X-VERSION:{version}",
        f"#EXT-X-TARGETDURATION:{target_duration}",
        "#EXT-X-PLAYLIST-TYPE:VOD",
        *tags,
    ]


def _track_header(layout: TrackLayout, version: int, tag: str) -> list[str]:
    """Header, `#EXT-X-MAP` and the DRM hook's `#EXT-X-KEY` lines of a track's playlist."""
    timescale = layout.track.timescale
    target = _target_duration([Fraction(ref.duration, timescale) for ref in layout.segments])
    return _header(version, target, tag) + _map(layout) + _keys(layout)


def media_playlist(layout: TrackLayout, version: int) -> str:
    """The media playlist of one track."""
    timescale = layout.track.timescale
    lines = _track_header(layout, version, "#EXT-X-INDEPENDENT-SEGMENTS")
    for ref in layout.segments:
        lines.append(f"#EXTINF:{_seconds(ref.duration, timescale)},")
        if layout.single_file:
            lines.append(f"#EXT-X-BYTERANGE:{_byte_range(ref.size, ref.offset)}")
        lines.append(ref.uri)
    lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def _map(layout: TrackLayout) -> list[str]:
    if layout.init_uri is None:  # TS: no initialization section
        return []
    if layout.init_range is not None:
        start, size = layout.init_range
        return [f'#EXT-X-MAP:URI="{layout.init_uri}",BYTERANGE="{_byte_range(size, start)}"']
    return [f'#EXT-X-MAP:URI="{layout.init_uri}"']


def _keys(layout: TrackLayout) -> list[str]:
    protection = layout.track.input.protection
    return list(protection.hls_keys()) if protection is not None else []


def iframe_playlist(layout: TrackLayout, version: int) -> str:
    """One I-frame per segment (its first, key, frame), addressed by byte range."""
    timescale = layout.track.timescale
    lines = _track_header(layout, version, "#EXT-X-I-FRAMES-ONLY")
    for ref in layout.segments:
        if ref.key_frame is None:
            continue
        offset, length = ref.key_frame
        lines.append(f"#EXTINF:{_seconds(ref.duration, timescale)},")
        lines.append(f"#EXT-X-BYTERANGE:{_byte_range(length, offset)}")
        lines.append(ref.uri)
    lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def subtitle_playlist(text: TextRef, version: int) -> str:
    """A text track as one segment: the whole WebVTT file (fine for VOD)."""
    lines = _header(version, max(1, math.ceil(text.duration)))
    lines += [f"#EXTINF:{text.duration:.3f},", text.uri, "#EXT-X-ENDLIST"]
    return "\n".join(lines) + "\n"


def image_playlist(image: ImageRef) -> str:
    """Thumbnail tiles (`#EXT-X-IMAGES-ONLY`, `#EXT-X-TILES`), as Apple and Roku read them."""
    spec = image.input
    tile = image.tile_seconds
    lines = _header(7, max(1, math.ceil(tile)), "#EXT-X-IMAGES-ONLY")
    per_tile = spec.columns * spec.rows
    for index, uri in enumerate(image.uris):
        covered = min(tile, max(0.0, spec.duration - index * tile))
        lines.append(f"#EXTINF:{covered:.3f},")
        lines.append(
            "#EXT-X-TILES:"
            + _attributes(
                [
                    ("RESOLUTION", f"{spec.thumbnail_width}x{spec.thumbnail_height}"),
                    ("LAYOUT", f"{spec.columns}x{spec.rows}"),
                    ("DURATION", f"{tile / per_tile:.3f}"),
                ]
            )
        )
        lines.append(uri)
    lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def image_playlist_name(image: ImageRef) -> str:
    return f"{image.input.name}.m3u8"


def audio_group_id(layout: TrackLayout) -> str:
    """One audio group per codec: `audio-aac`, `audio-ac-3`, `audio-ec-3`."""
    codecs = layout.track.codecs
    family = "aac" if codecs.startswith("mp4a.40.") else codecs.replace(".", "-")
    return f"audio-{family}"


def master_playlist(
    layouts: list[TrackLayout],
    texts: list[TextRef],
    images: list[ImageRef],
    *,
    version: int,
    iframes: bool = True,
) -> str:
    """The master (multivariant) playlist."""
    videos = [layout for layout in layouts if layout.track.kind == "video"]
    audios = [layout for layout in layouts if layout.track.kind == "audio"]
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{version}", "#EXT-X-INDEPENDENT-SEGMENTS"]
    session_keys: list[str] = []
    for layout in layouts:
        protection = layout.track.input.protection
        if protection is not None:
            session_keys += [k for k in protection.hls_session_keys() if k not in session_keys]
    lines += session_keys
    lines.append("")

    groups: dict[str, list[TrackLayout]] = {}
    for layout in audios:
        groups.setdefault(audio_group_id(layout), []).append(layout)
    for group_id, members in groups.items():
        lines += _audio_media(group_id, members)
    subtitles = SUBTITLE_GROUP if texts else None
    lines += _subtitle_media(texts)
    if groups or texts:
        lines.append("")

    if videos:
        # each video with each audio group, or alone when there is no audio
        variants: list[tuple[str | None, list[TrackLayout]]] = [*groups.items()] or [(None, [])]
        for video in videos:
            for audio_group, members in variants:
                lines += _stream_inf(video, members, audio_group, subtitles)
    else:  # audio-only package: the main audio renditions are the variants
        for group_id, members in groups.items():
            for audio in members:
                if audio.track.input.role == "main":
                    lines += _stream_inf(audio, [], group_id, subtitles)
    if iframes:
        for video in videos:
            if not any(ref.key_frame for ref in video.segments):
                continue
            peak, average = bit_rates(video, _key_frame_size)
            track = video.track
            entry = track.file.entry
            lines.append(
                "#EXT-X-I-FRAME-STREAM-INF:"
                + _attributes(
                    [
                        ("BANDWIDTH", peak),
                        ("AVERAGE-BANDWIDTH", average),
                        ("CODECS", _quote(track.codecs)),
                        ("RESOLUTION", f"{entry.width}x{entry.height}"),
                        ("URI", _quote(iframe_playlist_name(video))),
                    ]
                )
            )
    for image in images:
        spec = image.input
        lines.append(
            "#EXT-X-IMAGE-STREAM-INF:"
            + _attributes(
                [
                    ("BANDWIDTH", image.bandwidth),
                    ("RESOLUTION", f"{spec.thumbnail_width}x{spec.thumbnail_height}"),
                    ("CODECS", '"jpeg"'),
                    ("URI", _quote(image_playlist_name(image))),
                ]
            )
        )
    return "\n".join(lines).rstrip("\n") + "\n"


def _audio_media(group_id: str, members: list[TrackLayout]) -> list[str]:
    lines = []
    names: set[str] = set()
    default_given = False
    for layout in members:
        spec = layout.track.input
        name = spec.label or spec.language or spec.name
        if spec.role == "description" and not spec.label:
            name += " (description)"
        if name in names:
            name = f"{name} ({spec.name})"
        names.add(name)
        default = spec.role == "main" and not default_given
        default_given |= default
        lines.append(
            "#EXT-X-MEDIA:"
            + _attributes(
                [
                    ("TYPE", "AUDIO"),
                    ("GROUP-ID", _quote(group_id)),
                    ("LANGUAGE", _quote(spec.language) if spec.language else None),
                    ("NAME", _quote(name)),
                    ("DEFAULT", "YES" if default else "NO"),
                    ("AUTOSELECT", "YES"),
                    (
                        "CHARACTERISTICS",
                        _quote(DESCRIBES_VIDEO) if spec.role == "description" else None,
                    ),
                    ("CHANNELS", _quote(str(layout.track.channels.count))),
                    ("URI", _quote(playlist_name(layout))),
                ]
            )
        )
    return lines


def _subtitle_media(texts: list[TextRef]) -> list[str]:
    lines = []
    names: set[str] = set()
    for text in texts:
        spec = text.input
        name = spec.label or spec.language or spec.name
        if name in names:
            name = f"{name} ({spec.name})"
        names.add(name)
        lines.append(
            "#EXT-X-MEDIA:"
            + _attributes(
                [
                    ("TYPE", "SUBTITLES"),
                    ("GROUP-ID", _quote(SUBTITLE_GROUP)),
                    ("LANGUAGE", _quote(spec.language) if spec.language else None),
                    ("NAME", _quote(name)),
                    ("DEFAULT", "NO"),
                    ("AUTOSELECT", "YES"),
                    ("FORCED", "NO"),
                    (
                        "CHARACTERISTICS",
                        _quote(CAPTION_CHARACTERISTICS) if spec.kind == "caption" else None,
                    ),
                    ("URI", _quote(f"{spec.name}.m3u8")),
                ]
            )
        )
    return lines


def _stream_inf(
    main: TrackLayout,
    audio_group: list[TrackLayout],
    group_id: str | None,
    subtitles: str | None,
) -> list[str]:
    """One variant: `main` (video, or audio in audio-only packages) with an audio group."""
    track = main.track
    peak, average = bit_rates(main, _segment_size)
    audio_rates = [bit_rates(audio, _segment_size) for audio in audio_group]
    peak += max((rates[0] for rates in audio_rates), default=0)
    average += max((rates[1] for rates in audio_rates), default=0)
    codecs = [track.codecs]
    for audio in audio_group:
        if audio.track.codecs not in codecs:
            codecs.append(audio.track.codecs)
    pairs: list[tuple[str, str | int | None]] = [
        ("BANDWIDTH", peak),
        ("AVERAGE-BANDWIDTH", average),
        ("CODECS", _quote(",".join(codecs))),
    ]
    if track.kind == "video":
        entry = track.file.entry
        rate = track.frame_rate or Fraction(0)
        pairs += [
            ("RESOLUTION", f"{entry.width}x{entry.height}"),
            ("FRAME-RATE", f"{float(rate):.3f}"),
        ]
    pairs += [
        ("AUDIO", _quote(group_id) if group_id else None),
        ("SUBTITLES", _quote(subtitles) if subtitles else None),
        ("CLOSED-CAPTIONS", "NONE"),
    ]
    return ["#EXT-X-STREAM-INF:" + _attributes(pairs), playlist_name(main)]
