"""Thumbnail timing and the WebVTT thumbnail track (`thumbnails.vtt`, contract §6 extension).

One thumbnail stands for `interval` seconds of video, starting at its own instant: thumbnail
`i` shows the frame at `i * interval` and covers `[i * interval, (i + 1) * interval)`, the last
one cut at the duration. `cue_bounds` is the single source of those times, in whole
milliseconds, so that the tiles (engine), the WebVTT cues and the playlists agree, and adjacent
cues share their boundary exactly: no gap and no overlap, whatever the rounding.

The WebVTT track is what players without DASH-IF/HLS image track support use (video.js, Plyr,
JW Player, Shaka's own UI): one cue per thumbnail whose text is the tile file with a media
fragment naming the thumbnail's region, `thumbnails-384x216_1.jpg#xywh=384,0,384,216`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from packagers.hooks import ImageInput

WEBVTT_NAME = "thumbnails.vtt"


def thumbnail_count(duration: float, interval: float) -> int:
    """How many thumbnails cover `duration` seconds at one per `interval`: at least one, and
    never one that would start at (or after) the end once rounded to milliseconds."""
    if interval <= 0:
        raise ValueError(f"thumbnail interval must be positive, not {interval}")
    end = _ms(duration)
    count = max(1, math.ceil(end / (interval * 1000)))
    while count > 1 and _ms((count - 1) * interval) >= end:
        count -= 1
    return count


def cue_bounds(duration: float, interval: float) -> list[tuple[int, int]]:
    """(start, end) of every thumbnail in milliseconds; consecutive, from 0 to the duration."""
    end = max(1, _ms(duration))
    count = thumbnail_count(duration, interval)
    edges = [min(_ms(i * interval), end) for i in range(count)] + [end]
    return list(itertools.pairwise(edges))


@dataclass(frozen=True)
class ThumbnailCue:
    start_ms: int
    end_ms: int
    uri: str  # the tile file
    x: int
    y: int
    width: int
    height: int

    @property
    def target(self) -> str:
        return f"{self.uri}#xywh={self.x},{self.y},{self.width},{self.height}"


def thumbnail_cues(image: ImageInput, uris: Sequence[str] | None = None) -> list[ThumbnailCue]:
    """The cues of `image`'s thumbnails, in time order. `uris` are the tile file names as
    placed in the package (default `<name>_<n>.jpg`, the packager's names)."""
    per_tile = image.columns * image.rows
    bounds = cue_bounds(image.duration, image.interval)
    tiles = math.ceil(len(bounds) / per_tile)
    if uris is None:
        uris = [f"{image.name}_{n}.jpg" for n in range(1, tiles + 1)]
    names = list(uris)
    if len(names) < tiles:
        raise ValueError(f"{len(bounds)} thumbnails need {tiles} tiles, {len(names)} given")
    cues = []
    for index, (start, end) in enumerate(bounds):
        tile, cell = divmod(index, per_tile)
        row, column = divmod(cell, image.columns)
        cues.append(
            ThumbnailCue(
                start,
                end,
                names[tile],
                column * image.thumbnail_width,
                row * image.thumbnail_height,
                image.thumbnail_width,
                image.thumbnail_height,
            )
        )
    return cues


def webvtt(image: ImageInput, uris: Sequence[str] | None = None) -> str:
    """The text of `thumbnails.vtt` for `image`."""
    lines = ["WEBVTT", ""]
    for cue in thumbnail_cues(image, uris):
        lines += [f"{_clock(cue.start_ms)} --> {_clock(cue.end_ms)}", cue.target, ""]
    return "\n".join(lines)


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _clock(ms: int) -> str:
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}"


__all__ = [
    "WEBVTT_NAME",
    "ThumbnailCue",
    "cue_bounds",
    "thumbnail_count",
    "thumbnail_cues",
    "webvtt",
]
