"""The one-track fragmented MP4 files an encoding phase hands to packaging, written by the
transcoder or copied by a packaging-only job (engine.pipeline.passthrough). Apart from
engine.transcode so that a packaging-only job does not import the transcoder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.quality import RenditionQuality

# The movflags that write such a file: every key frame starts a fragment, no sample table in
# the moov.
FRAGMENTED = "frag_keyframe+empty_moov+default_base_moof"


@dataclass(frozen=True)
class EncodedTrack:
    """One rendition written as a one-track fragmented MP4."""

    path: Path
    kind: str  # "video" or "audio"
    name: str
    encoder: str
    frames: int  # video frames, or audio samples
    duration: float
    priming: int = 0  # audio samples of encoder delay at the start
    # a rendition read in place: its track in `path`, which may hold several, and the one-track
    # file whose sample description the package takes (`TrackInput` has both)
    track_id: int | None = None
    sample_entry_from: Path | None = None
    quality: RenditionQuality | None = None  # video, when the plan asks for metrics
