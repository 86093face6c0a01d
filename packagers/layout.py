"""Where the packager put things: written segments per track, sidecar text and image files.
The manifest writers work from these alone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from packagers.hooks import ImageInput
from packagers.model import TextInput

if TYPE_CHECKING:
    from packagers.cmaf import TimedTrack


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
