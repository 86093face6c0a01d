"""The reporting entry of a job (contract §9)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.job import Job, OptimizeFor, VideoFormat

VIDEO_FORMAT_CODES = {VideoFormat.H264: 0, VideoFormat.H265: 1, VideoFormat.DoNotEncode: 2}
OPTIMIZE_CODES = {OptimizeFor.Balance: 0, OptimizeFor.Speed: 1, OptimizeFor.Quality: 2}


@dataclass
class ReportFacts:
    """What a running job learns for its report, filled in phase by phase."""

    start_time: str = ""
    finished_time: str | None = None
    state: str = "Queued"  # Queued, Running, Succeeded, Failed, Cancelled
    acquired_bytes: int = 0
    published_bytes: int = 0
    source_duration: float = 0.0
    encoded_duration: float = 0.0
    bitrates_kbps: list[int] = field(default_factory=list)
    encoders: list[str] = field(default_factory=list)
    error_code: int | None = None
    quality: list[dict[str, Any]] = field(default_factory=list)
    chunks: int = 1  # video chunks encoded (1: one pass)
    chunk_details: list[dict[str, Any]] = field(default_factory=list)  # worker, time


def reporting_entry(
    job_id: str, tenant_id: str, job: Job | None, facts: ReportFacts, external=("", "", "")
) -> dict[str, Any]:
    """The §9 entry: the contract's fields in its spelling (plus State, ErrorCode, Encoder)."""
    processing = job.content_processing if job else None
    if job is not None:
        external = (job.external_id, job.external_type, job.external_provider)
    entry: dict[str, Any] = {
        "JobId": job_id,
        "TenantId": tenant_id,
        "ExternalId": external[0],
        "ExternalType": external[1],
        "ExternalProvider": external[2],
        "JobStartTime": facts.start_time,
        "JobFinishedTime": facts.finished_time,
        "Success": facts.state == "Succeeded",
        "State": facts.state,
        "AcquiredFilesSizeInBytes": facts.acquired_bytes,
        "PublishedFilesSizeInBytes": facts.published_bytes,
        "ExtractedVideoDurationInSeconds": round(facts.source_duration, 3),
        "EncodedVideoDurationInSeconds": round(facts.encoded_duration, 3),
        "VideoFormat": VIDEO_FORMAT_CODES[processing.video_format] if processing else None,
        "BitrateVariants": ",".join(str(b) for b in facts.bitrates_kbps),
        "BitratesCount": len(facts.bitrates_kbps),
        "OutputFormat": ",".join(f.value.upper() for f in processing.formats) if processing else "",
        "EncodingOptimizedFor": OPTIMIZE_CODES[processing.optimize_for] if processing else None,
        "Drm": bool(processing and processing.encrypted),
        "Encoder": ",".join(dict.fromkeys(facts.encoders)),
        "Chunks": facts.chunks,
    }
    if facts.chunk_details:
        entry["ChunkDetails"] = facts.chunk_details
    if facts.error_code is not None:
        entry["ErrorCode"] = facts.error_code
    if facts.quality:
        entry["QualityMetrics"] = facts.quality
    return entry
