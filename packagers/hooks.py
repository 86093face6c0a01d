"""Extension points of the packager: DRM (per track) and thumbnail image tracks (per package).

The packager does no encryption itself. A DRM plug-in subclasses `TrackProtection` and is
attached to a track with `TrackInput(protection=...)`; the packager then calls it at these
points, in this order, for each track:

1. `sinf(entry)` while writing the init segment. A `sinf` box (frma/schm/schi+tenc) turns the
   sample entry into `encv`/`enca` with that box appended; None leaves the track in clear.
2. `init_boxes()` while writing the init segment: boxes appended to `moov` (`pssh` per DRM system).
3. `protect_sample(data, entry)` for every sample, in decode order, segment by segment. It
   returns a `ProtectedSample`: the bytes to write in `mdat` and the auxiliary information
   (per-sample IV, subsample map). The packager writes that information as `senc`, `saiz` and
   `saio` in the sample's `traf` (`saio` pointing into `senc`, default-base-is-moof). When no
   sample has an IV or subsamples (cbcs with a constant IV and whole-sample encryption) but the
   track is encrypted (`sinf` gave a box), only a `senc` holding the sample count is written,
   as Shaka Packager does.
4. `dash_elements()` while writing the MPD: elements added to the track's AdaptationSet
   (`ContentProtection`). Tracks whose elements differ (a key per quality group) are put in
   separate AdaptationSets, linked by `urn:mpeg:dash:adaptation-set-switching:2016`.
5. `hls_keys()` while writing the track's HLS media playlist(s): `#EXT-X-KEY` lines, written
   after `#EXT-X-MAP`; `hls_session_keys()` for the master playlist (`#EXT-X-SESSION-KEY`
   lines, duplicates removed).

`key_id` and `iv` are reported in `StreamInfo` (the `EncodingFinished` event's KeyId and Iv).

Thumbnail tiles are described by `ImageInput` and passed to `package(images=...)`: the packager
copies the tile files into each package folder and writes the DASH image AdaptationSet (DASH-IF
`http://dashif.org/thumbnail_tile`) and the HLS image playlist (`#EXT-X-IMAGES-ONLY`,
`#EXT-X-TILES`) referenced by `#EXT-X-IMAGE-STREAM-INF`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from packagers.mp4 import SampleEntry


@dataclass(frozen=True)
class ProtectedSample:
    """One sample after the per-sample transform, with its CENC auxiliary information."""

    data: bytes
    iv: bytes = b""  # per-sample IV (8 or 16 bytes); empty with a constant IV
    subsamples: tuple[tuple[int, int], ...] = ()  # (clear bytes, protected bytes) pairs


class TrackProtection:
    """Base class of a per-track DRM plug-in; every hook defaults to "nothing to add".

    A plug-in must pickle: large packages are written in worker processes, each given a copy
    of its tracks (`packagers.packager.write_tracks`); `protect_sample` runs there."""

    key_id: str | None = None  # GUID of the content key, reported in StreamInfo
    iv: str | None = None  # constant IV (hex), reported in StreamInfo when there is one

    def sinf(self, entry: SampleEntry) -> bytes | None:
        """The complete `sinf` box for this track's sample entry, or None to stay in clear."""
        return None

    def init_boxes(self) -> Sequence[bytes]:
        """Complete boxes to append to the init segment's `moov` (e.g. `pssh`)."""
        return ()

    def protect_sample(self, data: bytes, entry: SampleEntry) -> ProtectedSample:
        """Transform one sample (encrypt it); called for every sample in decode order."""
        return ProtectedSample(data)

    def dash_elements(self) -> Sequence[ET.Element]:
        """Extra children of the track's DASH AdaptationSet (e.g. `ContentProtection`).

        Prefixed names need their namespace in the tag (`{urn:mpeg:cenc:2013}pssh`); the MPD
        writer declares `cenc` and `mspr` prefixes for those namespaces."""
        return ()

    def hls_keys(self) -> Sequence[str]:
        """`#EXT-X-KEY:...` lines for the track's media playlists."""
        return ()

    def hls_session_keys(self) -> Sequence[str]:
        """`#EXT-X-SESSION-KEY:...` lines for the master playlist."""
        return ()


@dataclass(frozen=True)
class ImageInput:
    """Trick-play thumbnail tiles: JPEG files of `columns`×`rows` thumbnails each.

    `tiles` are the tile images in time order; each covers `columns * rows * interval`
    seconds (the last one may be partly filled). They are copied into the package as
    `<name>_<n>.jpg`.
    """

    name: str  # e.g. "thumbnails-384x216"
    tiles: tuple[Path, ...]
    thumbnail_width: int
    thumbnail_height: int
    columns: int
    rows: int
    interval: float  # seconds shown per thumbnail
    duration: float  # seconds covered by all thumbnails (the video duration)
    bandwidth: int | None = None  # bits/s for the manifests; None: measured from the tiles
