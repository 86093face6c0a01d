"""The encoding phase's EncodingMode PerScene steps (the method is in engine.perscene):
before the transcode the analysis pass and each rung's rate control, after it each rung's
measured rate and VMAF and the dropping of near-duplicate rungs."""

from __future__ import annotations

import logging
import math
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import perscene
from engine.events import EventType
from engine.quality import quality_settings, vmaf_support

if TYPE_CHECKING:
    from engine.media import VideoRendition
    from engine.pipeline.scope import JobScope
    from engine.transcode import EncodedTrack, TranscodePlan, VideoOutput

log = logging.getLogger(__name__)

PER_SCENE_SHARE = 0.2  # of EncodingProgress, for the analysis pass
MEASURED_FRAMES = 120  # frames per rung scored in the final encode (unless QualityMetrics)
MEASURED_PER_SEGMENT = 12  # ... and at least this many per segment
MEASURE_THREADS = 2  # rungs measured at once after the encode
REFERENCE_FOLDER = "perscene-reference"  # in the work folder: the measurement's references


def per_scene_plan(
    scope: JobScope, plan: TranscodePlan
) -> tuple[TranscodePlan, dict[str, perscene.RungRate]]:
    """The analysis pass, then the plan with each rung's PerScene rate control (CRF/CQ, scene
    zones, VBV at the rung's configured bitrate) and per-frame VMAF measurement. Without
    libvmaf, Default's rate control stays, with a `PerSceneUnavailable` Warning."""
    ffmpeg, reason = vmaf_support()
    if ffmpeg is None:
        scope.events.warning(
            "PerSceneUnavailable", f"EncodingMode PerScene needs VMAF ({reason}): Default used"
        )
        return plan, {}
    settings = scope.processing.per_scene_encoding
    target = settings.target_vmaf_score if settings else perscene.DEFAULT_TARGET
    # Without QualityMetrics (which measures every rung in the transcode, sampled over all
    # frames), the rungs are measured after the encode on windows of every segment against
    # the analysis pass's frames: the transcode then measures nothing (it cost 40 % of a
    # Default encode). Watermarked jobs keep the transcoder's measurement (its reference is
    # the watermarked frame).
    measured_in_transcode = (
        plan.quality is not None and plan.quality.vmaf_ffmpeg is not None
    ) or plan.watermarks is not None
    windows: list[tuple[int, int]] = []
    store = None
    if not measured_in_transcode:
        frames = round(plan.duration * plan.frame_rate)
        starts = perscene.segment_starts(plan.frame_rate, plan.segment_seconds, frames)
        windows = perscene.measure_windows(starts, frames)
        sizes = {o.rendition.name: (o.rendition.width, o.rendition.height) for o in plan.video}
        store = perscene.ReferenceStore(scope.workdir / REFERENCE_FOLDER, sizes)
    analysis = perscene.analyse(
        plan,
        ffmpeg,
        progress=lambda f: scope.events.progress(
            EventType.ENCODING_PROGRESS, 100 * PER_SCENE_SHARE * f
        ),
        cancel=scope.cancel.check,
        windows=windows,
        store=store,
    )
    caps = {o.rendition.name: o.rendition.bitrate_kbps for o in plan.video}
    rates = {r.name: r for r in perscene.plan_rates(analysis, target, caps)}
    if store is not None:
        rates = {
            name: replace(r, windows=tuple(windows), reference=str(store.paths[name]))
            for name, r in rates.items()
        }
    log.info(
        "PerScene analysis: %d frames, scenes at %s, %.1f s",
        analysis.frames,
        list(analysis.scene_starts),
        analysis.seconds,
    )
    outputs = _rate_controlled(plan.video, rates)
    quality = plan.quality
    if measured_in_transcode and (quality is None or quality.vmaf_ffmpeg is None):
        # watermarked: every few frames (MEASURED_PER_SEGMENT per segment at least)
        segments = max(1, math.ceil(plan.duration / plan.segment_seconds))
        frames = round(plan.duration * plan.frame_rate)
        quality = quality_settings(
            frames, ffmpeg, max(MEASURED_FRAMES, MEASURED_PER_SEGMENT * segments)
        )
    return replace(plan, video=tuple(outputs), quality=quality), rates


def _rate_controlled(
    video: tuple[VideoOutput, ...], rates: dict[str, perscene.RungRate]
) -> list[VideoOutput]:
    """Each rung's output with its PerScene rate control (Default's where it has no rate)."""
    outputs = []
    for output in video:
        rate = rates.get(output.rendition.name)
        if rate is None:  # too short to probe: Default's rate control for this rung
            outputs.append(output)
            continue
        cap = output.rendition.bitrate_kbps
        encoder = perscene.rate_choice(output.encoder, rate, cap)
        fallback = output.fallback and perscene.rate_choice(output.fallback, rate, cap)
        outputs.append(replace(output, encoder=encoder, fallback=fallback))
        log.info(
            "%s: CRF %s (scenes %s), zones %s, predicted VMAF %.2f at %.0f kbps (cap %d, "
            "maxrate %d, %s)",
            output.rendition.name,
            rate.crf,
            rate.scene_crfs,
            rate.zones,
            rate.predicted_vmaf,
            rate.predicted_kbps,
            cap,
            rate.maxrate_kbps,
            "probed" if rate.probed else "interpolated",
        )
    return outputs


def per_scene_outcome(
    scope: JobScope,
    plan: TranscodePlan,
    tracks: list[EncodedTrack],
    rates: dict[str, perscene.RungRate],
) -> tuple[list[EncodedTrack], tuple[VideoRendition, ...]]:
    """Each rung's chosen bitrate (average, peak segment) and VMAF (mean, 5th percentile of
    the per-segment means) as its `PerSceneQuality`; the kept renditions carry their average
    bitrate; near-duplicate rungs are dropped with an info Warning `RenditionDropped`."""
    by_name = {t.name: t for t in tracks if t.kind == "video"}
    renditions = [o.rendition for o in plan.video if o.rendition.name in by_name]
    starts = {
        r.name: perscene.segment_starts(
            plan.frame_rate, plan.segment_seconds, by_name[r.name].frames
        )
        for r in renditions
    }
    packet_rates = {
        r.name: perscene.packet_rates(
            by_name[r.name].path, starts[r.name], plan.frame_rate, by_name[r.name].frames
        )
        for r in renditions
    }
    averages = [packet_rates[r.name][0] for r in renditions]
    dropped = {renditions[i].name for i in perscene.near_duplicates(averages)}
    began = time.monotonic()
    # the kept rungs only, two at a time: decoding and libvmaf (a child process) leave the
    # GIL; the largest first, so that the last rung to start is a short one
    measured_order = sorted(
        (r for r in renditions if r.name not in dropped),
        key=lambda r: r.width * r.height,
        reverse=True,
    )
    with ThreadPoolExecutor(MEASURE_THREADS) as pool:
        futures = {
            r.name: pool.submit(
                _measure,
                plan,
                by_name[r.name],
                r,
                rates.get(r.name),
                starts[r.name],
                packet_rates[r.name],
            )
            for r in measured_order
        }
        measured = {name: future.result() for name, future in futures.items()}
    log.info("PerScene: rungs measured in %.1f s", time.monotonic() - began)
    kept_tracks = []
    for track in tracks:
        if track.name in dropped:
            scope.events.emit(
                EventType.WARNING,
                Code="RenditionDropped",
                Level="Info",
                Message=(
                    f"EncodingMode PerScene: {track.name} dropped: its "
                    f"{packet_rates[track.name][0]:.0f} kbps are within "
                    f"{perscene.NEAR_DUPLICATE:.0%} of the next lower rendition's"
                ),
            )
            track.path.unlink(missing_ok=True)
            continue
        if track.name in measured:
            track = replace(track, quality=measured[track.name])
        kept_tracks.append(track)
    kept = tuple(
        replace(r, bitrate_kbps=max(1, round(measured[r.name].average_kbps)))
        for r in renditions
        if r.name not in dropped
    )
    shutil.rmtree(scope.workdir / REFERENCE_FOLDER, ignore_errors=True)
    return kept_tracks, kept


def _measure(
    plan: TranscodePlan,
    track: EncodedTrack,
    rendition: VideoRendition,
    rate: perscene.RungRate | None,
    starts: list[int],
    rates: tuple[float, float],
) -> perscene.PerSceneQuality:
    """A kept rung's `PerSceneQuality`: its packet rates (average, peak) and its VMAF on the
    measurement windows (or the transcoder's measurement); `starts`: its segments' first
    frames."""
    average, peak = rates
    base = track.quality
    ffmpeg = vmaf_support()[0]
    if base is None and rate is not None and rate.reference and ffmpeg is not None:
        base = perscene.window_quality(
            track.path,
            rendition.width,
            rendition.height,
            rate.windows,
            Path(rate.reference),
            ffmpeg,
            rendition.name,
            frame_rate=plan.frame_rate,
            frames=track.frames,
            bitrate_kbps=average,
        )
    segments = perscene.segment_scores(base.vmaf_frames, starts, track.frames) if base else []
    fields: dict[str, Any] = dict(vars(base)) if base is not None else _unmeasured(average)
    return perscene.PerSceneQuality(
        **fields,
        cap_kbps=rendition.bitrate_kbps,
        average_kbps=average,
        peak_kbps=peak,
        vmaf_p5=perscene.percentile(segments, 5),
        scenes=rate.scenes if rate else 0,
        crf=rate.crf if rate else 0.0,
        target_vmaf=rate.target if rate else perscene.DEFAULT_TARGET,
        segment_vmaf=tuple(round(v, 3) for v in segments),
        predicted_vmaf=rate.predicted_vmaf if rate else None,
    )


def _unmeasured(average: float) -> dict[str, Any]:
    """RenditionQuality's fields when the rung was not measured."""
    return {
        "psnr": 0.0,
        "psnr_y": 0.0,
        "ssim": 0.0,
        "vmaf": None,
        "frames": 0,
        "step": 1,
        "bitrate_kbps": average,
        "vmaf_error": "not measured",
    }
