"""Where the packager put things: each track on the package timeline with its segments, the
written segments per track, sidecar text and image files. The manifest writers work from these
alone; `packagers.cmaf` places and cuts the tracks and writes them."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property

import numpy as np

from packagers.codecs import AudioChannels, audio_channels, codec_string
from packagers.hooks import ImageInput
from packagers.model import TextInput, TrackInput
from packagers.mp4 import TrackFile


@dataclass(frozen=True)
class Segment:
    """One segment of a track: samples [first, end) in decode order."""

    number: int  # 1-based
    first: int
    end: int
    start: int  # earliest composition time, track timescale (the manifests' timeline)
    duration: int  # until the next segment's start (the last: until the end of the track)


@dataclass
class TimedTrack:
    """A parsed track placed on the package timeline and cut into segments."""

    input: TrackInput
    file: TrackFile
    decode_time: np.ndarray  # output decode times (tfdt timeline)
    composition_offset: np.ndarray  # output composition offsets (signed)
    edit_media_time: int  # > 0: an edit list skips this much media time (audio priming)
    segments: list[Segment] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.input.name

    @property
    def kind(self) -> str:
        return self.input.kind

    @property
    def timescale(self) -> int:
        return self.file.timescale

    @property
    def composition_time(self) -> np.ndarray:
        return self.decode_time + self.composition_offset

    @property
    def presentation_time(self) -> np.ndarray:
        return self.composition_time - self.edit_media_time

    @property
    def composition_end(self) -> int:
        """End of the last presented sample, composition timeline."""
        return int((self.composition_time + self.file.samples.duration).max())

    @property
    def end_seconds(self) -> Fraction:
        """End of presentation on the package timeline."""
        return Fraction(self.composition_end - self.edit_media_time, self.timescale)

    @property
    def duration_seconds(self) -> Fraction:
        start = max(0, int(self.presentation_time.min()))
        return Fraction(self.composition_end - self.edit_media_time - start, self.timescale)

    @cached_property
    def frame_duration(self) -> int:
        """The typical sample duration (median)."""
        return int(np.median(self.file.samples.duration))

    @cached_property
    def codecs(self) -> str:
        """RFC 6381 codec string."""
        return codec_string(self.file.entry)

    @property
    def frame_rate(self) -> Fraction | None:
        """Video frame rate from the typical frame duration."""
        if self.kind != "video":
            return None
        return Fraction(self.timescale, self.frame_duration)

    @property
    def channels(self) -> AudioChannels:
        return audio_channels(self.file.entry)

    @property
    def pixel_aspect(self) -> tuple[int, int]:
        """(hSpacing, vSpacing) from the `pasp` box, 1:1 when absent."""
        pasp = self.file.entry.boxes.get("pasp")
        if pasp and len(pasp) >= 8:
            h_spacing, v_spacing = struct.unpack_from(">II", pasp)
            if h_spacing and v_spacing:
                return h_spacing, v_spacing
        return 1, 1


@dataclass(frozen=True)
class SegmentRef:
    """Where one written segment lies and what it covers."""

    uri: str  # file name, relative to the package folder
    offset: int  # byte offset in `uri` (0 for segment files)
    size: int  # bytes
    start: int  # timeline start, track timescale
    duration: int  # track timescale
    key_frame: tuple[int, int] | None  # (offset, length) of moof + first key frame in `uri`


@dataclass(frozen=True)
class TrackLayout:
    """The files written for one track in one layout."""

    track: TimedTrack
    segments: list[SegmentRef]
    files: list[str]
    init_uri: str | None  # init segment file, or the single file
    init_range: tuple[int, int] | None = None  # (offset, size) in a single file
    index_range: tuple[int, int] | None = None  # the sidx, in a single file
    media_template: str | None = None  # "<name>_$Number$.m4s"; None for a single file

    @property
    def single_file(self) -> bool:
        return self.media_template is None

    @property
    def peak_bandwidth(self) -> int:
        """Highest segment bit rate, bits/s (rounded up)."""
        timescale = self.track.timescale
        return max(-(-ref.size * 8 * timescale // max(ref.duration, 1)) for ref in self.segments)

    @property
    def average_bandwidth(self) -> int:
        total = sum(ref.size for ref in self.segments)
        duration = sum(ref.duration for ref in self.segments)
        return -(-total * 8 * self.track.timescale // max(duration, 1))


@dataclass(frozen=True)
class TextRef:
    """A WebVTT file placed in a package folder."""

    input: TextInput
    uri: str
    bandwidth: int  # bits/s over the presentation
    duration: float  # seconds (the package duration)


@dataclass(frozen=True)
class ImageRef:
    """Thumbnail tiles placed in a package folder as `<name>_<n>.jpg`."""

    input: ImageInput
    uris: tuple[str, ...]
    bandwidth: int  # bits/s: the largest tile over the time it covers

    @property
    def template(self) -> str:
        return f"{self.input.name}_$Number$.jpg"

    @property
    def tile_seconds(self) -> float:
        return self.input.columns * self.input.rows * self.input.interval
