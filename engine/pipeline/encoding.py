"""Encoding: plan the renditions (pure, `plan_encoding`), choose encoders, transcode.

One decode feeds every rung (engine.transcode). Packaging-only jobs copy their renditions
instead (engine.pipeline.passthrough).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

from engine import ladder
from engine.encoders import EncoderAssignment, NodeCapabilities, assign_encoders
from engine.errors import MappingError
from engine.events import EventType
from engine.job import ContentProcessing, EncodingMode, HardwareAcceleration
from engine.media import AudioRendition, HdrInfo, VideoRendition, VideoTrackInfo
from engine.pipeline.passthrough import copy_renditions
from engine.pipeline.payloads import audio_rendition_fields, video_rendition_fields
from engine.pipeline.results import Encoded, Mapped

if TYPE_CHECKING:
    from engine.perscene import RungRate
    from engine.pipeline.scope import JobScope
    from engine.quality import QualitySettings
    from engine.tracks import EncodedTrack
    from engine.transcode import TranscodePlan, VideoOutput
    from engine.watermark import Watermarker

# The rates a VFR source's average snaps to when within 1% (a phone's 29.98 → 30000/1001).
COMMON_RATES = (
    Fraction(24000, 1001),
    Fraction(24),
    Fraction(25),
    Fraction(30000, 1001),
    Fraction(30),
    Fraction(50),
    Fraction(60000, 1001),
    Fraction(60),
)


@dataclass(frozen=True)
class EncodingPlan:
    """What to encode: the ladder's video and audio renditions, the constant output frame
    rate, the expected output duration and whether NVDEC decodes the source."""

    video: tuple[VideoRendition, ...]
    audio: tuple[AudioRendition, ...]
    frame_rate: Fraction
    duration: float
    hw_decode: bool


def output_frame_rate(video: VideoTrackInfo, measured: Fraction | None = None) -> Fraction:
    """The constant output rate: the source's, or for VFR sources their average (`measured`,
    else the probe's), snapped to the nearest common rate when within 1%."""
    rate = Fraction(video.frame_rate) if video.frame_rate else Fraction(25)
    if video.constant_frame_rate:
        return rate
    if measured:
        rate = measured
    nearest = min(COMMON_RATES, key=lambda common: abs(rate - common))
    if abs(rate - nearest) / nearest < Fraction(1, 100):
        return nearest
    return rate.limit_denominator(1001)


def plan_encoding(
    mapped: Mapped, processing: ContentProcessing, capabilities: NodeCapabilities
) -> EncodingPlan:
    """The renditions of a job from its mapped media and settings (pure: no I/O)."""
    video = mapped.video
    renditions = ladder.plan_video(video, processing) if video else []
    audio = ladder.plan_audio(list(mapped.media.audio), processing)
    if not renditions and not audio:
        raise MappingError("nothing to encode: no video and no audio rendition planned")
    frame_rate = output_frame_rate(video, mapped.measured_rate) if video else Fraction(25)
    if mapped.media.video_source is not None:  # whole frames at the output rate
        duration = float(max(1, round(mapped.duration * frame_rate)) / frame_rate)
    else:
        duration = mapped.duration
    hw_decode = (
        processing.hardware_acceleration != HardwareAcceleration.Off
        and video is not None
        and video.codec in capabilities.nvdec_codecs
    )
    return EncodingPlan(tuple(renditions), tuple(audio), frame_rate, duration, hw_decode)


def encode(scope: JobScope, mapped: Mapped) -> Encoded:
    """Transcode the planned renditions into `encode/` of the work folder."""
    processing = scope.processing
    if processing.packaging_only:
        if processing.quality_metrics:
            scope.events.warning(
                "QualityMetricsSkipped", "QualityMetrics: packaging-only mode encodes nothing"
            )
        return copy_renditions(scope, mapped)
    # Imported here, not at start-up: a packaging-only job (above) uses none of them.
    from engine.capabilities import NVENC_SESSIONS
    from engine.transcode import AudioOutput, TranscodePlan, VideoOutput

    plan = plan_encoding(mapped, processing, scope.capabilities)
    folder = scope.workdir / "encode"
    folder.mkdir(parents=True, exist_ok=True)
    assignment = _assign_encoders(scope, plan, mapped)
    try:
        for message in assignment.warnings:
            scope.events.warning("HardwareFallback", message)
        outputs = tuple(
            VideoOutput(rendition, choice, folder / f"{rendition.name}.mp4", fallback)
            for rendition, choice, fallback in zip(
                plan.video, assignment.choices, assignment.fallbacks, strict=True
            )
        )
        transcode_plan = TranscodePlan(
            video_file=mapped.media.video if plan.video else None,
            video_track=mapped.video,
            frame_rate=plan.frame_rate,
            video=outputs,
            audio=tuple(AudioOutput(r, folder / f"{r.name}.mp4") for r in plan.audio),
            segment_seconds=processing.segment_length_in_seconds,
            duration=plan.duration,
            watermarks=_watermarker(scope, mapped),
            normalize_audio=processing.normalize_audio,
            hw_decode=plan.hw_decode,
            quality=_quality_settings(scope, plan),
            job_id=scope.job_id,
        )
        _encoding_started(scope, plan, outputs)
        transcode_plan, tracks, chunks, rates = _transcode(scope, plan, transcode_plan)
    finally:
        NVENC_SESSIONS.release(assignment.nvenc_sessions)
    renditions = plan.video
    if rates:  # measured rates and VMAF; near-duplicate rungs dropped
        from engine.pipeline.per_scene import per_scene_outcome

        tracks, renditions = per_scene_outcome(scope, transcode_plan, tracks, rates)
    video_tracks = [t for t in tracks if t.kind == "video"]
    return Encoded(
        tuple(tracks),
        renditions,
        plan.audio,
        None,
        plan.duration,
        video_tracks[0].duration if video_tracks else plan.duration,
        _quality_entries(scope, renditions, tracks),
        chunks,
    )


def _assign_encoders(scope: JobScope, plan: EncodingPlan, mapped: Mapped) -> EncoderAssignment:
    """The encoder of every rung, with this job's share of the node's NVENC sessions (the
    largest rungs get them, see engine.encoders); what it does not use goes back now, the
    caller gives back the rest (`assignment.nvenc_sessions`) after the transcode."""
    from engine.capabilities import NVENC_SESSIONS

    processing = scope.processing
    sessions = NVENC_SESSIONS.acquire(scope.capabilities.nvenc_sessions, len(plan.video))
    try:
        assignment = assign_encoders(
            plan.video,
            processing.optimize_for,
            processing.hardware_acceleration,
            scope.capabilities,
            frame_rate=float(plan.frame_rate),
            segment_seconds=processing.segment_length_in_seconds,
            hdr=_hdr_metadata(scope, mapped.video),
            sessions=sessions,
            # H.265 keeps a 10-bit (or deeper) source's depth: Main 10 (H.264 stays 8-bit)
            ten_bit=mapped.video is not None and mapped.video.bit_depth >= 10,
        )
    except BaseException:
        NVENC_SESSIONS.release(sessions)
        raise
    NVENC_SESSIONS.release(sessions - assignment.nvenc_sessions)
    return assignment


def _transcode(
    scope: JobScope, plan: EncodingPlan, transcode_plan: TranscodePlan
) -> tuple[TranscodePlan, list[EncodedTrack], tuple[dict, ...], dict[str, RungRate]]:
    """Run the transcode: PerScene analysis first when asked (engine.pipeline.per_scene; its
    zones count frames of the whole source, so such a job is not encoded in chunks), in chunks
    when the node chunks and the job allows (engine.pipeline.chunked), else in one pass. The
    (possibly PerScene-tuned) plan, the tracks, the report's ChunkDetails, the PerScene rates."""
    # PerScene and chunks are imported only by the jobs that use them (start-up of short jobs).
    from engine.transcode import transcode

    share = 0.0
    rates: dict[str, RungRate] = {}
    if scope.processing.encoding_mode == EncodingMode.PerScene and plan.video:
        from engine.pipeline.per_scene import PER_SCENE_SHARE, per_scene_plan

        share = PER_SCENE_SHARE
        transcode_plan, rates = per_scene_plan(scope, transcode_plan)
    chunked = None
    if not rates and scope.chunking is not None:  # without chunk settings it never chunks
        from engine.pipeline.chunked import encode_chunked

        chunked = encode_chunked(scope, transcode_plan)
    if chunked is not None:
        tracks, chunks = chunked
        return transcode_plan, list(tracks), chunks, rates
    tracks = transcode(
        transcode_plan,
        progress=lambda f: scope.events.progress(
            EventType.ENCODING_PROGRESS, 100 * (share + (1 - share) * f)
        ),
        cancel=scope.cancel.check,
        warn=scope.events.warning,
    )
    return transcode_plan, tracks, (), rates


def _encoding_started(
    scope: JobScope, plan: EncodingPlan, outputs: tuple[VideoOutput, ...]
) -> None:
    """VideoEncodingStarted: the planned renditions and the encoder chosen for each."""
    encoders = list(dict.fromkeys(o.encoder.name for o in outputs)) or ["aac"]
    scope.events.emit(
        EventType.VIDEO_ENCODING_STARTED,
        Renditions=[
            video_rendition_fields(r, Encoder=o.encoder.name)
            for r, o in zip(plan.video, outputs, strict=True)
        ]
        + [audio_rendition_fields(r) for r in plan.audio],
        Encoder=",".join(encoders),
        HardwareDecoding=plan.hw_decode,
    )


def _quality_settings(scope: JobScope, plan: EncodingPlan) -> QualitySettings | None:
    """QualityMetrics: how the transcoder measures (engine.quality); a Warning when VMAF
    cannot be computed on this node (the streams then carry `"Vmaf": null`)."""
    if not scope.processing.quality_metrics or not plan.video:
        return None
    from engine.quality import quality_settings, vmaf_support

    ffmpeg, reason = vmaf_support()
    if ffmpeg is None:
        scope.events.warning("VmafUnavailable", f"VMAF unavailable: {reason}")
    return quality_settings(round(plan.duration * plan.frame_rate), ffmpeg)


def _quality_entries(
    scope: JobScope, renditions: tuple[VideoRendition, ...], tracks: list[EncodedTrack]
) -> tuple[dict, ...]:
    """The measured renditions as the report's `QualityMetrics`, in ladder order."""
    measured = {t.name: t.quality for t in tracks if t.quality is not None}
    entries = []
    for rendition in renditions:
        metrics = measured.get(rendition.name)
        if metrics is None:
            continue
        if metrics.vmaf_error:
            scope.events.warning(
                "VmafUnavailable", f"VMAF unavailable: {rendition.name}: {metrics.vmaf_error}"
            )
        entries.append(
            metrics.report_entry(
                rendition.name, rendition.bitrate_kbps, rendition.width, rendition.height
            )
        )
    return tuple(entries)


def _hdr_metadata(scope: JobScope, video: VideoTrackInfo | None) -> HdrInfo | None:
    if not scope.processing.extract_and_apply_hdr or video is None:
        return None
    if video.hdr is None or not video.hdr.is_hdr:
        scope.events.warning(
            "NotHdr", "ExtractAndApplyHDR is set but the source carries no HDR signalling"
        )
        return None
    return video.hdr


def _watermarker(scope: JobScope, mapped: Mapped) -> Watermarker | None:
    marks = scope.processing.visible_video_watermarks or []
    video = mapped.video
    if not marks or video is None:
        return None
    from engine.watermark import Watermarker, WatermarkSpec

    files = {p.name: p for p in mapped.media.watermarks}
    specs = [
        WatermarkSpec(
            image=files[m.watermark_file_name],
            x_percent=m.position_x_percentage,
            y_percent=m.position_y_percentage,
            size_percent=m.size_percentage,
            opacity=m.opacity_percentage / 100,
            start=m.start_seconds,
            end=m.end_seconds,
            fade_in=m.fade_in_duration_in_ms / 1000,
            fade_out=m.fade_out_duration_in_ms / 1000,
        )
        for m in marks
    ]
    width, height = video.width, video.height
    if video.rotation in (90, 270):
        width, height = height, width
    try:
        return Watermarker(specs, width, height)
    except ValueError as error:
        raise MappingError(f"watermark: {error}") from None
