"""What goes into `package()` and what comes out of it."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Literal

from packagers.hooks import TrackProtection

FORMATS = ("Dash", "Hls", "Cmaf", "DashOnDemand", "HlsTs")


@dataclass(frozen=True)
class TrackInput:
    """One rendition: an MP4 file holding exactly one video or audio track.

    `priming_samples` is the audio encoder delay (AAC: 1024 for FFmpeg's encoder) for inputs
    that cannot carry it: FFmpeg's `empty_moov` fragmented files drop the edit list. None takes
    it from the input's edit list (none: 0). The output signals it with an edit list in the
    init segment (see `packagers.cmaf`).
    """

    path: Path
    kind: Literal["video", "audio"]
    name: str  # file name stem, e.g. "video-H264-720-2450k", "audio-en"
    language: str | None = None  # BCP 47 ("en"); audio
    label: str | None = None  # human-readable name (DASH Label, HLS NAME)
    role: Literal["main", "description"] = "main"
    quality_group: str = ""  # "SD", "HD", "UHD1", "UHD2", "AUDIO"
    target_kbps: int = 0
    priming_samples: int | None = None
    # the track to read from a file with several (None: the file holds one track), and a
    # one-track file whose sample description replaces that track's (None: its own)
    track_id: int | None = None
    sample_entry_from: Path | None = None
    protection: TrackProtection | None = field(default=None, compare=False)


@dataclass(frozen=True)
class TextInput:
    """A WebVTT subtitle or caption file."""

    path: Path
    name: str  # e.g. "subtitle-en"
    language: str | None = None
    label: str | None = None
    kind: Literal["subtitle", "caption"] = "subtitle"


@dataclass(frozen=True)
class PackageSpec:
    """How to package: the contract's OutputFormat, SegmentFormat and segment length."""

    formats: tuple[str, ...] | list[str]
    byte_range: bool = False  # SegmentFormat ByteRange: one file per rendition
    segment_seconds: float = 4.0
    dash_manifest: str = "manifest.mpd"
    hls_manifest: str = "manifest.m3u8"
    boundaries: tuple[float, ...] | list[float] | None = None  # segment start times (s)


@dataclass(frozen=True)
class StreamInfo:
    """One output stream, as the `EncodingFinished` event reports it."""

    type: Literal["video", "audio", "subtitle", "caption"]
    name: str
    codecs: str
    width: int | None
    height: int | None
    frame_rate: Fraction | None
    bandwidth: int  # peak segment bit rate, bits/s
    average_bandwidth: int  # bits/s over the whole stream
    language: str | None
    label: str | None
    quality_group: str
    init_file: str | None  # relative to the output folder
    file_template: str  # relative to the output folder; `$Number$` for segment files
    segment_count: int
    duration: float  # seconds
    key_id: str | None = None
    iv: str | None = None


@dataclass(frozen=True)
class PackageResult:
    """Files written, relative to the output folder (POSIX separators).

    `files` are the media files (init segments, segments, single files, text, images);
    `manifests` are the MPDs and playlists, written after every file, media playlists before
    master playlists: a publisher uploads `files`, then `manifests` in order.
    """

    files: list[str]
    manifests: list[str]
    streams: list[StreamInfo]
