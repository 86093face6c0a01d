"""The own fields of the events a job emits (contract §8), built from the phases' results.

Pure functions: what an event says is decided here, when it is emitted is the runner's and the
phases' business.
"""

from __future__ import annotations

from fractions import Fraction
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.job import Job
    from engine.media import AudioRendition, MediaMap, VideoRendition
    from engine.quality import RenditionQuality
    from engine.validation import FieldError
    from packagers.model import StreamInfo


def rate_text(rate: Fraction) -> str:
    """A frame rate as events show it: `25`, or `29.970`."""
    return str(rate.numerator) if rate.denominator == 1 else f"{float(rate):.3f}"


def job_created_fields(job: Job, warnings: list[FieldError] | tuple[FieldError, ...]) -> dict:
    """The JobCreated event's own fields: the job without any secret."""
    processing = job.content_processing.model_dump(
        mode="json",
        by_alias=True,
        exclude_none=True,
        exclude={"content_key", "drm_managed"},
    )
    if job.content_processing.drm_managed is not None:
        processing["DrmManaged"] = job.content_processing.drm_managed.model_dump(
            mode="json",
            by_alias=True,
            exclude_none=True,
            exclude={"management_key", "key_seed_id", "thumbprints"},
        )
    return {
        "ContentAcquisitionProvider": job.content_acquisition.provider.value,
        "ContentAcquisitionUriPath": job.content_acquisition.uri_path,
        "MessagePublisherTypes": [p.type.value for p in job.message_publishers or []],
        "ContentPreProcessing": job.media_mappings.model_dump(
            mode="json", by_alias=True, exclude_none=True
        ),
        "ContentProcessing": processing,
        "Warnings": [w.as_json() for w in warnings],
    }


def content_mapped_fields(media: MediaMap) -> dict[str, Any]:
    """ContentMapped: which file is what, and what is left out."""
    return {
        "VideoFile": media.video.name if media.video else None,
        "VideoRenditionFiles": [p.name for p in media.renditions],
        "AudioFiles": [
            {
                "File": a.path.name,
                "Language": a.language,
                "Tracks": list(a.track_indices),
                "Descriptive": a.descriptive,
            }
            for a in media.audio
        ],
        "SubtitleFiles": [
            {"File": s.path.name, "Language": s.language, "Track": s.track_index}
            for s in media.subtitles
        ],
        "CaptionFiles": [
            {"File": c.path.name, "Language": c.language, "Track": c.track_index}
            for c in media.captions
        ],
        "WatermarkFiles": [p.name for p in media.watermarks],
        "IgnoredFiles": [p.name for p in media.ignored_files],
        "IgnoredTracks": list(media.ignored_tracks),
    }


def video_rendition_fields(rendition: VideoRendition, **extra: Any) -> dict[str, Any]:
    """A planned video rendition as `VideoEncodingStarted` lists it."""
    return {
        "Name": rendition.name,
        "Width": rendition.width,
        "Height": rendition.height,
        "BitrateInKbps": rendition.bitrate_kbps,
        "Codec": rendition.codec,
        **extra,
    }


def audio_rendition_fields(rendition: AudioRendition) -> dict[str, Any]:
    """A planned audio rendition as `VideoEncodingStarted` lists it."""
    return {
        "Name": rendition.name,
        "Language": rendition.source.language,
        "Channels": rendition.channels,
        "BitrateInKbps": rendition.bitrate_kbps,
        "Codec": rendition.codec,
    }


def stream_fields(
    stream: StreamInfo, encoder: str | None = None, metrics: RenditionQuality | None = None
) -> dict[str, Any]:
    """One packaged stream as `EncodingFinished` lists it."""
    fields: dict[str, Any] = {
        "Type": stream.type.capitalize(),
        "Label": stream.quality_group or stream.type.upper(),
        "Name": stream.name,
        "Codecs": stream.codecs,
        "Width": stream.width,
        "Height": stream.height,
        "FrameRate": rate_text(stream.frame_rate) if stream.frame_rate else None,
        "BitrateInKbps": round(stream.average_bandwidth / 1000),
        "PeakBitrateInKbps": round(stream.bandwidth / 1000),
        "Language": stream.language,
        "KeyId": stream.key_id,
        "Iv": stream.iv,
        "InitFile": stream.init_file,
        "FileTemplate": stream.file_template,
    }
    if encoder:  # the encoder that wrote this rendition (a CPU fallback shows here)
        fields["Encoder"] = encoder
    if metrics is not None:  # QualityMetrics: Psnr, PsnrY, Ssim, Vmaf (engine.quality)
        fields.update(metrics.stream_fields())
    return fields
