"""Typed descriptions of media: what the probe finds in a file (`SourceInfo`), what media
mapping makes of the acquired files (`MediaMap`), and the renditions that planning produces
(`VideoRendition`, `AudioRendition`). All frozen dataclasses: phases pass them along unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

# ------------------------------------------------------------------------------------ probe


@dataclass(frozen=True)
class HdrInfo:
    """HDR colour description of a video track (None fields: not signalled)."""

    color_primaries: str | None  # e.g. "bt2020"
    transfer: str | None  # e.g. "smpte2084" (PQ), "arib-std-b67" (HLG)
    matrix: str | None  # e.g. "bt2020nc"
    mastering_display: str | None = None  # x265 style "G(x,y)B(x,y)R(x,y)WP(x,y)L(max,min)"
    content_light: str | None = None  # "MaxCLL,MaxFALL"

    @property
    def is_hdr(self) -> bool:
        return self.transfer in ("smpte2084", "arib-std-b67")


@dataclass(frozen=True)
class VideoTrackInfo:
    index: int  # stream index in the container
    codec: str  # FFmpeg codec name: h264, hevc, vp9, av1, mpeg2video, ...
    width: int  # coded picture size
    height: int
    sample_aspect_ratio: Fraction  # SAR (pixel shape); 1 for square pixels
    frame_rate: Fraction  # average frame rate
    constant_frame_rate: bool
    interlaced: bool
    rotation: int  # degrees clockwise the picture must be turned for display: 0, 90, 180, 270
    pixel_format: str | None
    bit_depth: int
    bitrate: int | None  # bits per second, when known
    frame_count: int | None  # when known from the container
    hdr: HdrInfo | None
    profile: str | None = None

    @property
    def display_width(self) -> int:
        """Width at display: SAR applied, rotation applied."""
        width, height = self.width * self.sample_aspect_ratio, Fraction(self.height)
        if self.rotation in (90, 270):
            width, height = height, width
        return round(width)

    @property
    def display_height(self) -> int:
        width, height = self.width * self.sample_aspect_ratio, Fraction(self.height)
        if self.rotation in (90, 270):
            width, height = height, width
        return round(height)

    @property
    def display_aspect_ratio(self) -> Fraction:
        """Display aspect ratio (width / height) with SAR and rotation applied."""
        ratio = Fraction(self.width, self.height) * self.sample_aspect_ratio
        return 1 / ratio if self.rotation in (90, 270) else ratio


@dataclass(frozen=True)
class AudioTrackInfo:
    index: int  # stream index in the container
    codec: str
    channels: int
    layout: str  # FFmpeg layout name: mono, stereo, 5.1, ...
    sample_rate: int
    language: str | None  # ISO 639 code from the track metadata, None when absent/"und"
    bitrate: int | None
    title: str | None = None


@dataclass(frozen=True)
class SubtitleTrackInfo:
    index: int
    codec: str  # mov_text, subrip, ass, webvtt, ...
    language: str | None
    title: str | None = None


@dataclass(frozen=True)
class SourceInfo:
    """What the probe found in one media file."""

    path: Path
    container: str  # FFmpeg format name, e.g. "mov,mp4,m4a,3gp,3g2,mj2" or "matroska,webm"
    duration: float  # seconds
    size: int  # bytes
    bitrate: int | None
    video: tuple[VideoTrackInfo, ...] = ()
    audio: tuple[AudioTrackInfo, ...] = ()
    subtitles: tuple[SubtitleTrackInfo, ...] = ()

    @property
    def main_video(self) -> VideoTrackInfo | None:
        return self.video[0] if self.video else None


# ------------------------------------------------------------------------------ media mapping


@dataclass(frozen=True)
class AudioSource:
    """One audio input: a separate file (track 0 of it) or tracks of the video file.

    `track_indices` are the container stream indices used; several mono tracks are grouped
    into one layout (2 -> stereo, 6 -> 5.1) as `AudioMappings` says.
    """

    path: Path
    track_indices: tuple[int, ...]
    language: str
    descriptive: bool = False  # audio description (-ad / DescriptiveAudioFileLanguageExpression)
    channels: int = 2  # channels after grouping


@dataclass(frozen=True)
class TextSource:
    """A subtitle or caption: a separate file, or a subtitle track of the video file."""

    path: Path
    language: str
    kind: str  # "subtitle" or "caption"
    track_index: int | None = None  # None: the whole file is the text track


@dataclass(frozen=True)
class MediaMap:
    """What media mapping decided for the acquired files."""

    video: Path | None  # the main video file (None for audio-only jobs)
    renditions: tuple[Path, ...] = ()  # packaging-only (DoNotEncode): every rendition file
    audio: tuple[AudioSource, ...] = ()
    subtitles: tuple[TextSource, ...] = ()
    captions: tuple[TextSource, ...] = ()
    watermarks: tuple[Path, ...] = ()
    ignored_files: tuple[Path, ...] = ()
    ignored_tracks: tuple[str, ...] = ()  # "file.mkv#3" descriptions, for events and warnings
    # in-file audio that a separate file of the same language replaced: "movie.mkv#1 (en) by
    # audio-en.m4a#0", for AudioTrackReplaced warnings
    replaced_tracks: tuple[str, ...] = ()
    sources: dict[Path, SourceInfo] = field(default_factory=dict)  # probe results by path

    @property
    def video_source(self) -> SourceInfo | None:
        """The probe of the main video file (None for audio-only jobs)."""
        return self.sources.get(self.video) if self.video else None

    @property
    def main_video(self) -> VideoTrackInfo | None:
        """The main video file's video track."""
        source = self.video_source
        return source.main_video if source else None

    @property
    def audio_duration(self) -> float:
        """The longest mapped audio source (what an audio-only job lasts)."""
        durations = [self.sources[a.path].duration for a in self.audio if a.path in self.sources]
        return max(durations, default=0.0)

    @property
    def used_files(self) -> tuple[Path, ...]:
        """Every acquired file this job uses (what DeleteFilesFromSourceWhenDone may delete)."""
        paths = [
            *([self.video] if self.video else []),
            *self.renditions,
            *(a.path for a in self.audio),
            *(s.path for s in self.subtitles),
            *(c.path for c in self.captions),
            *self.watermarks,
        ]
        return tuple(dict.fromkeys(paths))

    @property
    def audio_languages(self) -> list[str]:
        return list(dict.fromkeys(a.language for a in self.audio))

    @property
    def subtitle_languages(self) -> list[str]:
        return list(dict.fromkeys(s.language for s in self.subtitles))

    @property
    def caption_languages(self) -> list[str]:
        return list(dict.fromkeys(c.language for c in self.captions))


# ---------------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class VideoRendition:
    """One rung of the planned ladder."""

    width: int
    height: int
    bitrate_kbps: int
    codec: str  # "H264" or "H265" (contract spelling; the encoder is chosen separately)
    quality_group: str  # SD, HD, UHD1, UHD2
    name: str  # output base name, e.g. "video-H264-720-2450k" (contract §7, Naming applied)
    source: Path | None = None  # packaging-only: the rendition file it comes from
    # Pixel shape (SAR) of the output: 1 unless ForcePixelAspectRatioTo1 is false, when the
    # source's storage proportions are kept and the display shape comes from this.
    sample_aspect_ratio: Fraction = Fraction(1)


@dataclass(frozen=True)
class AudioRendition:
    source: AudioSource
    bitrate_kbps: int
    channels: int  # output channels (never more than the source has)
    codec: str  # "AAC", "AC3" or "EAC3"
    name: str  # e.g. "audio-en" or "audio-en-64k"
    quality_group: str = "AUDIO"
