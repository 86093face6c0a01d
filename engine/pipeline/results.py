"""What each phase returns: frozen results holding everything later phases need.

A phase reads the results of earlier phases and returns its own; it writes no shared state. The
report (contract §9) is built from these results at the end of a run (`report_facts`), and a
checkpoint stores the result of its phase (`engine.pipeline.checkpoints`).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.report import ReportFacts

if TYPE_CHECKING:
    from drm.credentials import ServiceKey
    from drm.keys import KeySet
    from engine.media import AudioRendition, MediaMap, VideoRendition, VideoTrackInfo
    from engine.tracks import EncodedTrack
    from packagers.model import PackageResult
    from storage.base import Storage


@dataclass(frozen=True)
class Prepared:
    """Pre-Validation: the job's storages (opened and checked), its keys, the service key."""

    input_storage: Storage
    output_storage: Storage
    keys: KeySet | None
    service_key: ServiceKey | None


@dataclass(frozen=True)
class Acquired:
    """Acquisition: the input files in the work folder."""

    files: tuple[Path, ...]
    bytes: int

    def summary(self) -> dict[str, Any]:
        """ContentAcquired's fields (emitted again when the phase is resumed)."""
        return {"FilesCount": len(self.files), "BytesCount": self.bytes}


@dataclass(frozen=True)
class Mapped:
    """Media Mapping: what each file is, the main video track, the source's duration and, for
    a VFR source, its measured average frame rate."""

    media: MediaMap
    video: VideoTrackInfo | None
    duration: float
    measured_rate: Fraction | None = None

    def image_source(self) -> tuple[Path, VideoTrackInfo] | None:
        """The video that stills and thumbnails come from: the source in the work folder, or
        in packaging-only mode the rendition with the most pixels."""
        media = self.media
        best: tuple[Path, VideoTrackInfo] | None = None
        for path in list(media.renditions) or ([media.video] if media.video else []):
            source = media.sources.get(path)
            track = source.main_video if source else None
            if track is None:
                continue
            if best is None or track.width * track.height > best[1].width * best[1].height:
                best = (path, track)
        return best


@dataclass(frozen=True)
class Encoded:
    """Encoding: every rendition as a one-track fragmented MP4."""

    tracks: tuple[EncodedTrack, ...]
    video: tuple[VideoRendition, ...]
    audio: tuple[AudioRendition, ...]
    boundaries: tuple[float, ...] | None  # packaging-only: the renditions' keyframe times
    duration: float  # the planned output duration (text tracks and thumbnails follow it)
    encoded_duration: float  # what the report says was encoded
    quality: tuple[dict[str, Any], ...] = ()  # the report's QualityMetrics entries
    # The report's ChunkDetails: one entry per chunk when the video was encoded in chunks.
    chunks: tuple[dict[str, Any], ...] = ()

    @property
    def chunk_count(self) -> int:
        """`Chunks` of EncodingFinished and the report (1: encoded in one pass)."""
        return len(self.chunks) or 1

    @property
    def encoders(self) -> list[str]:
        """The encoders that wrote the video renditions (CPU fallbacks included)."""
        names = [t.encoder for t in self.tracks if t.kind == "video"]
        return list(dict.fromkeys(names)) or ["aac"]


@dataclass(frozen=True)
class Packaged:
    """DRM + Packaging: the package folder and its streams as `EncodingFinished` lists them."""

    folder: Path
    result: PackageResult
    streams: tuple[dict[str, Any], ...]

    @property
    def video_seconds(self) -> float | None:
        """The video's duration as packaged (what image percent positions refer to)."""
        videos = [s.duration for s in self.result.streams if s.type == "video"]
        return max(videos) if videos else None


@dataclass(frozen=True)
class Published:
    """Publishing: what reached the output storage."""

    files: tuple[str, ...]
    bytes: int
    manifests: tuple[str, ...]


def report_facts(
    acquired: Acquired | None,
    mapped: Mapped | None,
    encoded: Encoded | None,
    published: Published | None,
) -> ReportFacts:
    """What the report says about the phases that finished (state and times are the runner's)."""
    facts = ReportFacts()
    if acquired is not None:
        facts.acquired_bytes = acquired.bytes
    if mapped is not None:
        facts.source_duration = mapped.duration
    if encoded is not None:
        facts.bitrates_kbps = [r.bitrate_kbps for r in encoded.video]
        facts.encoders = encoded.encoders
        facts.encoded_duration = encoded.encoded_duration
        facts.quality = list(encoded.quality)
        facts.chunks = encoded.chunk_count
        facts.chunk_details = list(encoded.chunks)
    if published is not None:
        facts.published_bytes = published.bytes
    return facts
