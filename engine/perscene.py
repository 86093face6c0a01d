"""EncodingMode PerScene (contract §5.5): content-aware rate control that aims every scene of
every rung at `PerSceneEncoding.TargetVmafScore`, with the rung's configured bitrate as a cap.

Three parts, the middle one pure (tests/test_perscene.py tables):

1. `analyse` — one decode pass over the source, before the transcode. Every prepared frame
   (the transcoder's own `_FramePreparer`: deinterlace, rotation, constant rate, so frame
   indices are the output's) is shrunk to 64x36 luma for scene-cut detection. Every
   `CLIP_SPACING_S` seconds (a still picture: every `STILL_MAX_GAP_S`) a clip of
   `CLIP_FRAMES` frames is taken and, at two or three rung sizes (`probed_rungs`),
   probe-encoded with the rung's own encoder and preset (one thread) at the `PROBE_CRFS`
   (calibrated: `PROBE_BIAS`); the decoded probes are scored by libvmaf (vmaf_v0.6.1, the
   same ffmpeg as QualityMetrics; one process per probed rung) against the clip scaled to
   the rung's size. Of a clip only frames 1..`CLIP_SCORED` are scored: the first is its
   I-frame, the tail after them gives them references to come, as in the full encode.
   Clips are probed on a worker thread while the decode goes on, one clip at a time, so
   memory stays flat. The frames of the measurement windows (`measure_windows`) are kept,
   scaled to every rung, on disk (`ReferenceStore`). From an MP4/MOV the transcoder takes
   frame for frame, the decoder skips the frames nothing references (most B-frames) outside
   the clips and windows: a frame's index is the rank of its timestamp among the packets'.
2. `plan_rates` — per probed rung and scene, the CRF where the scene's VMAF-vs-CRF curve
   (clips of the scene averaged; calibrated by `PROBE_BIAS`) crosses the target plus
   `TARGET_MARGIN` (piecewise linear, monotone, extrapolated with the end slopes, clamped to
   `CRF_RANGE`); the other rungs interpolate each scene's CRF and rate in log(pixels)
   (`interpolate_size`). The rung gets one base CRF (the frame-weighted mean), x264/x265
   zones `b=2^((base - crf_scene)/6)` that move the scenes to their own CRF (a zone factor b
   scales the rate like CRF - 6 log2 b, measured) and a VBV maxrate (`vbv_maxrate`).
3. `rate_choice` — the encoder settings: CRF + VBV with that maxrate (`VBV_SHARE` of the
   configured bitrate, up to `PEAK_SHARE` when easy scenes leave room) and bufsize = the
   larger of cap and maxrate (1 s: a 4 s segment peaks at 1.375x the cap at most, as in
   Default), zones in x264-params/x265-params; everything about keyframes (forced segment
   IDRs, no scene-cut keyframes, closed GOPs) stays exactly as in Default. NVENC: constant
   quality (`rc=vbr`, `cq`, no target bitrate) under the same maxrate/bufsize; NVENC has no
   zones, so the rung's base CQ applies to every scene (code path only: not run on a GPU).

After the transcode, `packet_rates` gives per rung the average and peak bitrate (from the
encoded packets, per segment), `near_duplicates` says which rungs to drop (within 10 % of the
next lower kept rung; the top rung is never dropped: when it is the near-duplicate, the lower
one goes), and `window_quality` scores every kept rung on the measurement windows against the
stored references (unless QualityMetrics or watermarks have the transcoder measure, see
engine.pipeline.per_scene): VMAF mean and 5th percentile of per-segment means.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from av.video.frame import PictureType
from av.video.reformatter import Interpolation

from engine.encoders import CPU_PRESETS, EncoderChoice
from engine.quality import (
    RenditionQuality,
    _Scores,
    _VmafPipe,
    compare_planes,
    frame_planes,
    psnr_db,
)
from engine.transcode import TranscodePlan, VideoOutput, _FramePreparer, boundary_frames

DEFAULT_TARGET = 95.0
# Probe calibration. The full encode's libvmaf VMAF at the chosen CRF came out +0.6 to +2.0
# above the raw probe scores on the rungs below their cap (benchmarks/perscene.py, 1280x720:
# slide +0.9 to +1.5, flat animation +0.6 to +2.0, photo pan +1.6 to +1.9). `PROBE_BIAS` is
# added to every probe score; the plan aims at the target + `TARGET_MARGIN` on that
# calibrated scale (for a target of 95 those rungs measured 94.6-96.0). Earlier figures
# (+1.3 to +3.8, pan +4.7) came from two faults since fixed: the scored frames ended the
# clip, so mb-tree starved them (now the tail of `CLIP_FRAMES`), and the first CRF's probe
# reached the encoder with every frame at pts 0 (`_Prober.probe`). Probes without mb-tree
# were tried before those fixes: optimistic by up to 3.2 on flat animation.
PROBE_BIAS = 1.3
TARGET_MARGIN = 0.3
PROBE_CRFS = {"H264": (18.0, 26.0, 34.0), "H265": (20.0, 28.0, 36.0)}
CRF_RANGE = (12.0, 45.0)
# A probe at the lowest CRF is skipped when the middle CRF's rate is over this many times the
# rung's cap (`_Prober.probe`)
CAPPED_PROBE = 2.0
MIN_SLOPE = 0.25  # VMAF points per CRF step, at least, when extrapolating
CLIP_FRAMES = 6  # per probe clip, encoded: an I-frame, the scored frames, the tail
CLIP_SCORED = 2  # frames 1..CLIP_SCORED are scored; the tail after them is there so that
# they are referenced as in a long encode (mb-tree/cu-tree starves a clip's last frames)
CLIP_SPACING_S = 2.5
# A clip is skipped when the picture is still: its 64x36 luma differs from the last probed
# clip's first frame by less than `STILL_DIFFERENCE` (0..255, mean absolute) and that clip is
# under `STILL_MAX_GAP_S` old (a slide probes every 8 s, not every 2.5 s). Measured 2 s apart on
# the benchmark's sources: slide 0.2-0.4, flat animation 4.7-9.3, pan and grain 27-70, a cut
# 40-114.
STILL_DIFFERENCE = 2.0
STILL_MAX_GAP_S = 8.0
THUMB = (64, 36)  # scene-cut detection size
CUT_ABS = 18.0  # mean absolute luma difference (0..255) that may be a cut
CUT_RELATIVE = 3.0  # ... and this many times the recent mean difference
MIN_SCENE_S = 1.0
NEAR_DUPLICATE = 0.10
# VBV maxrate as a share of the cap: the encoder may also spend the initial buffer (0.9 s at
# maxrate), so over a 20 s source the average stays under the cap (measured: at maxrate = cap
# a capped 20 s rung averaged up to 2.5 % above it)
VBV_SHARE = 0.96
# Hard scenes may peak above the cap, up to Default's own maxrate (engine.encoders
# PEAK_FACTOR), when the easy scenes' predicted rates (times `KBPS_SAFETY`) leave room for it
# under VBV_SHARE of the cap on average (`vbv_maxrate`)
PEAK_SHARE = 1.10
# In a rung whose hard scenes are capped, the other scenes aim this much higher (`plan_rates`)
CAPPED_EASY_BONUS = 2.0
KBPS_SAFETY = 2.0
MAX_ZONE_FACTOR = 8.0
# After the encode (unless QualityMetrics has the transcoder measure every rung), each rung's
# VMAF comes from `WINDOWS_PER_SEGMENT` pairs of consecutive frames spread over every segment
# (at most `MAX_MEASURED_SEGMENTS` segments, spread evenly), scored against the same frames of
# the analysis pass scaled to the rung (`measure_windows`, `ReferenceStore`, `window_quality`)
WINDOW_FRAMES = 2
WINDOWS_PER_SEGMENT = 4
MAX_MEASURED_SEGMENTS = 60
# Rung sizes probed (`probed_rungs`): the smallest, the largest and, from four rungs on, the
# one nearest their geometric middle; the other rungs' scene CRFs and rates are interpolated
# in log(pixels) (`interpolate_size`)
PROBED_RUNGS = 3

Progress = Callable[[float], None]
Cancel = Callable[[], None]


# ----------------------------------------------------------------------------------- scenes


def detect_cuts(differences: Sequence[float], frame_rate: float) -> list[int]:
    """Scene starts (frame indices, 0 first) from the mean absolute luma difference between
    each frame and the one before (`differences[i]` for frame i; `differences[0]` unused).
    A cut: above `CUT_ABS` and `CUT_RELATIVE` times the mean of the ten differences before it
    or of the ten after it, whichever is lower (so a cut from a busy scene into a quiet one
    counts as well as the other way round), and the largest within two frames; a cut less
    than `MIN_SCENE_S` after the last scene start is ignored."""
    starts = [0]
    min_gap = max(1, round(MIN_SCENE_S * frame_rate))
    for i in range(1, len(differences)):
        before = differences[max(1, i - 10) : i]
        after = differences[i + 1 : i + 11]
        levels = [float(np.mean(d)) for d in (before, after) if d]
        level = min(levels) if levels else 0.0
        value = differences[i]
        peak = value >= max(differences[max(1, i - 2) : i + 3])  # not a busy frame before one
        if peak and value > CUT_ABS and value > CUT_RELATIVE * max(level, 1.0):
            if i - starts[-1] >= min_gap:
                starts.append(i)
    return starts


# ---------------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class ClipProbe:
    """One probe clip at one rung: where it starts, VMAF and estimated kbps at each CRF."""

    start: int  # output frame index of the clip's first frame
    vmaf: tuple[float, ...]  # per PROBE_CRFS value
    kbps: tuple[float, ...]


@dataclass(frozen=True)
class Analysis:
    """What the analysis pass found: scene starts, frame count, probes per rung name."""

    frames: int
    frame_rate: float
    scene_starts: tuple[int, ...]
    crfs: tuple[float, ...]
    probes: dict[str, tuple[ClipProbe, ...]]  # the probed rungs only
    seconds: float = 0.0  # wall time of the pass
    # every rung's name -> width x height, ladder order; empty: the probed rungs only
    pixels: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RungRate:
    """A rung's PerScene rate control: base CRF, zones (first frame, last frame, factor)."""

    name: str
    crf: float
    zones: tuple[tuple[int, int, float], ...]
    scene_crfs: tuple[float, ...]
    predicted_vmaf: float  # frame-weighted mean of the scenes' predicted VMAF (probes)
    predicted_kbps: float  # frame-weighted probe estimate (before the cap)
    scenes: int = 1
    target: float = DEFAULT_TARGET
    maxrate_kbps: int = 0  # VBV maxrate; 0: VBV_SHARE of the cap
    probed: bool = True  # False: interpolated from the probed rungs' sizes
    # the measurement windows and this rung's reference frames (`ReferenceStore`); none:
    # the transcoder measures the rung (QualityMetrics)
    windows: tuple[tuple[int, int], ...] = ()
    reference: str = ""


def crf_for_target(crfs: Sequence[float], vmafs: Sequence[float], target: float) -> float:
    """The CRF where VMAF(crf), piecewise linear through the probe points (made monotone
    non-increasing), equals `target`; end slopes (at least `MIN_SLOPE`) beyond the probes;
    clamped to `CRF_RANGE`."""
    points = sorted(zip(crfs, vmafs, strict=True))
    xs = [p[0] for p in points]
    ys = list(np.minimum.accumulate([p[1] for p in points]))
    if target >= ys[0]:
        slope = max((ys[0] - ys[1]) / (xs[1] - xs[0]), MIN_SLOPE) if len(xs) > 1 else MIN_SLOPE
        crf = xs[0] - (target - ys[0]) / slope
    elif target <= ys[-1]:
        slope = max((ys[-2] - ys[-1]) / (xs[-1] - xs[-2]), MIN_SLOPE) if len(xs) > 1 else MIN_SLOPE
        crf = xs[-1] + (ys[-1] - target) / slope
    else:
        crf = xs[-1]
        for x0, y0, x1, y1 in zip(xs, ys, xs[1:], ys[1:], strict=False):
            if y0 >= target >= y1:
                crf = x0 if y0 == y1 else x0 + (y0 - target) * (x1 - x0) / (y0 - y1)
                break
    return float(min(max(crf, CRF_RANGE[0]), CRF_RANGE[1]))


def vmaf_at(crfs: Sequence[float], vmafs: Sequence[float], crf: float) -> float:
    """VMAF(crf) on the curve `crf_for_target` inverts (monotone, end slopes extended, at
    least `MIN_SLOPE`), capped at 100."""
    points = sorted(zip(crfs, vmafs, strict=True))
    xs = [x for x, _ in points]
    ys = list(np.minimum.accumulate([y for _, y in points]))
    if len(xs) == 1:
        return min(100.0, ys[0] - (crf - xs[0]) * MIN_SLOPE)
    if crf < xs[0]:
        slope = max((ys[0] - ys[1]) / (xs[1] - xs[0]), MIN_SLOPE)
        return min(100.0, ys[0] + (xs[0] - crf) * slope)
    if crf > xs[-1]:
        slope = max((ys[-2] - ys[-1]) / (xs[-1] - xs[-2]), MIN_SLOPE)
        return ys[-1] - (crf - xs[-1]) * slope
    return float(np.interp(crf, xs, ys))


def _interpolate(crfs: Sequence[float], values: Sequence[float], crf: float, log: bool) -> float:
    """`values` (per probe CRF, ascending CRFs) at `crf`: piecewise linear (in log with
    `log`), extended beyond the probes with the end slopes (a CRF below the probes' costs
    more than the lowest probe, not the same)."""
    xs = list(crfs)
    ys = list(np.log(np.maximum(values, 1e-6)) if log else np.asarray(values, dtype=float))
    if len(xs) > 1 and crf < xs[0]:
        value = ys[0] + (crf - xs[0]) * (ys[1] - ys[0]) / (xs[1] - xs[0])
    elif len(xs) > 1 and crf > xs[-1]:
        value = ys[-1] + (crf - xs[-1]) * (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    else:
        value = float(np.interp(crf, xs, ys))
    return math.exp(value) if log else float(value)


def _scene_of(start: int, scene_starts: Sequence[int]) -> int:
    """The scene holding most of a clip starting at `start`."""
    middle = start + CLIP_FRAMES // 2
    return max(i for i, s in enumerate(scene_starts) if s <= middle)


def probed_rungs(pixels: Sequence[int]) -> list[int]:
    """Indices of the rungs to probe (module docs of `PROBED_RUNGS`): the smallest and the
    largest by pixel count and, from four rungs on, the one whose log(pixels) is nearest the
    middle of theirs; ladder order."""
    if len(pixels) <= 2:
        return list(range(len(pixels)))
    order = sorted(range(len(pixels)), key=lambda i: pixels[i])
    chosen = {order[0], order[-1]}
    if len(pixels) >= 4 and PROBED_RUNGS >= 3:
        middle = (math.log(pixels[order[0]]) + math.log(pixels[order[-1]])) / 2
        inner = order[1:-1]
        chosen.add(min(inner, key=lambda i: (abs(math.log(pixels[i]) - middle), pixels[i])))
    return sorted(chosen)


def interpolate_size(known: dict[int, float], pixels: int) -> float:
    """A value at `pixels` from the values at the probed pixel counts in `known`: linear in
    log(pixels) between the nearest two, the end value beyond them."""
    sizes = sorted(known)
    logs = [math.log(max(k, 1)) for k in sizes]
    return float(np.interp(math.log(max(pixels, 1)), logs, [known[k] for k in sizes]))


def vbv_maxrate(scene_kbps: Sequence[float], lengths: Sequence[int], cap_kbps: int) -> int:
    """The rung's VBV maxrate: `VBV_SHARE` x the cap unless a scene is predicted to need
    more; then the largest in [`VBV_SHARE`, `PEAK_SHARE`] x the cap at which the scenes'
    predicted rates times `KBPS_SAFETY`, each held to the maxrate, average at most
    `VBV_SHARE` of the cap (easy scenes leave hard ones room above the cap)."""
    low, high = VBV_SHARE * cap_kbps, PEAK_SHARE * cap_kbps
    total = sum(lengths)
    if total <= 0:
        return max(1, round(low))
    budget = VBV_SHARE * cap_kbps * total
    if max((k for k, n in zip(scene_kbps, lengths, strict=True) if n > 0), default=0.0) <= low:
        return max(1, round(low))  # no scene needs more than the cap: no room is taken

    def spent(maxrate: float) -> float:
        return sum(
            min(KBPS_SAFETY * k, maxrate) * n for k, n in zip(scene_kbps, lengths, strict=True)
        )

    if spent(high) <= budget:
        return max(1, round(high))
    if spent(low) >= budget:
        return max(1, round(low))
    for _ in range(50):  # spent() is continuous and non-decreasing: bisect
        middle = (low + high) / 2
        low, high = (middle, high) if spent(middle) <= budget else (low, middle)
    return max(1, math.floor(low))


def _scene_curves(
    analysis: Analysis, probes: Sequence[ClipProbe], starts: Sequence[int], ends: Sequence[int]
) -> list[tuple[list[float], list[float]]]:
    """Per scene: (VMAF per CRF, kbps per CRF) of its clips (averaged; log-mean kbps), or of
    the nearest clip when it has none."""
    curves = []
    for index, (first, end) in enumerate(zip(starts, ends, strict=True)):
        own = [p for p in probes if _scene_of(p.start, starts) == index]
        if not own:
            middle = (first + end) / 2
            own = [min(probes, key=lambda p: abs(p.start + CLIP_FRAMES / 2 - middle))]
        vmaf = np.mean([p.vmaf for p in own], axis=0)
        kbps = np.exp(np.mean([np.log(np.maximum(p.kbps, 1e-3)) for p in own], axis=0))
        curves.append((list(vmaf), list(kbps)))
    return curves


def _across(
    at: dict[int, tuple[list[float], list[float], list[float]]],
    pixels: int,
    part: int,
    scene: int,
    log: bool = False,
) -> float:
    """One scene's CRF (part 0), kbps (1, interpolated in log) or VMAF (2) at `pixels`, from
    the probed rungs' (`at`: pixel count -> parts)."""
    values = {size: parts[part][scene] for size, parts in at.items()}
    if not log:
        return interpolate_size(values, pixels)
    logs = {size: math.log(max(v, 1e-3)) for size, v in values.items()}
    return math.exp(interpolate_size(logs, pixels))


def plan_rates(
    analysis: Analysis, target: float, caps: dict[str, int] | None = None
) -> list[RungRate]:
    """Per rung: each scene's CRF for `target` (module docs), the base CRF and zones, and the
    VBV maxrate under the rung's cap in `caps` (`vbv_maxrate`; none given: 0, meaning
    `VBV_SHARE` of the cap). Probe scores are calibrated (+ `PROBE_BIAS`) and the plan aims
    at `target` + `TARGET_MARGIN` on that scale. Rungs of `analysis.pixels` without probes
    get each scene's CRF and rate interpolated in log(pixels) between the probed rungs. A
    scene without a probe clip of its own uses the nearest clip. In a rung where some scenes
    are predicted above the maxrate (capped: below the target whatever is done) and others
    not, those others aim `CAPPED_EASY_BONUS` higher: they cost little, and Default's rate
    control gives them its spare bits, so the rung's mean stays at Default's."""
    starts = list(analysis.scene_starts)
    ends = [*starts[1:], analysis.frames]
    lengths = [e - s for s, e in zip(starts, ends, strict=True)]
    crfs = analysis.crfs
    aim = target + TARGET_MARGIN - PROBE_BIAS  # on the probes' own scale
    aims = (aim, aim + CAPPED_EASY_BONUS)
    # per probed rung and aim: (scene CRFs, scene kbps, scene calibrated VMAF)
    Parts = tuple[list[float], list[float], list[float]]
    probed: dict[str, list[Parts]] = {}
    for name, probes in analysis.probes.items():
        if not probes:
            continue
        curves = _scene_curves(analysis, probes, starts, ends)
        probed[name] = []
        for level in aims:
            scene_crfs, scene_kbps, scene_vmaf = [], [], []
            for vmaf, kbps in curves:
                crf = round(crf_for_target(crfs, vmaf, level), 1)
                scene_crfs.append(crf)
                scene_vmaf.append(min(100.0, vmaf_at(crfs, vmaf, crf) + PROBE_BIAS))
                scene_kbps.append(_interpolate(crfs, kbps, crf, log=True))
            probed[name].append((scene_crfs, scene_kbps, scene_vmaf))
    if not probed:
        return []
    pixels = analysis.pixels or {name: 0 for name in probed}
    known = {name: pixels.get(name, 0) for name in probed}
    weights = np.asarray(lengths, dtype=float)
    scenes = range(len(starts))
    plans = []
    for name, size in pixels.items():
        levels: list[Parts] = []
        for level in range(len(aims)):
            if name in probed:
                levels.append(probed[name][level])
                continue
            at = {known[n]: probed[n][level] for n in probed}  # pixels -> parts
            levels.append(
                (
                    [round(_across(at, size, 0, s), 1) for s in scenes],
                    [_across(at, size, 1, s, log=True) for s in scenes],
                    [_across(at, size, 2, s) for s in scenes],
                )
            )
        scene_crfs, scene_kbps, scene_vmaf = (list(part) for part in levels[0])
        cap = (caps or {}).get(name)
        maxrate = vbv_maxrate(scene_kbps, lengths, cap) if cap else 0
        capped = [k > maxrate for k in scene_kbps] if maxrate else []
        if any(capped) and not all(capped):
            for s in scenes:
                if not capped[s]:
                    scene_crfs[s], scene_kbps[s], scene_vmaf[s] = (p[s] for p in levels[1])
            maxrate = vbv_maxrate(scene_kbps, lengths, cap) if cap else 0
        base = round(float(np.average(scene_crfs, weights=weights)), 1)
        zones = []
        if len(set(scene_crfs)) > 1:
            for first, end, crf in zip(starts, ends, scene_crfs, strict=True):
                factor = min(max(2 ** ((base - crf) / 6), 1 / MAX_ZONE_FACTOR), MAX_ZONE_FACTOR)
                if abs(factor - 1) > 0.01:
                    zones.append((first, end - 1, round(factor, 3)))
        plans.append(
            RungRate(
                name,
                base,
                tuple(zones),
                tuple(scene_crfs),
                float(np.average(scene_vmaf, weights=weights)),
                float(np.average(scene_kbps, weights=weights)),
                len(starts),
                target,
                maxrate,
                name in probed,
            )
        )
    return plans


def rate_choice(choice: EncoderChoice, rate: RungRate, cap_kbps: int) -> EncoderChoice:
    """`choice` (Default's settings) with PerScene rate control: CRF/CQ, zones, VBV at the cap.
    Keyframe settings are left exactly as they are."""
    options = {k: v for k, v in choice.options.items() if k not in ("b", "maxrate", "bufsize")}
    maxrate = rate.maxrate_kbps or max(1, round(cap_kbps * VBV_SHARE))
    bufsize = max(cap_kbps, maxrate)  # one second at the larger of the two
    if choice.hardware:  # NVENC: constant quality under the cap, no zones (module docs)
        options.update(
            {
                "rc": "vbr",
                "cq": str(max(1, min(51, round(rate.crf)))),
                "maxrate": f"{maxrate}k",
                "bufsize": f"{bufsize}k",
            }
        )
        return replace(choice, options=options, bit_rate=0)
    key = "x264-params" if choice.name == "libx264" else "x265-params"
    params = [options[key]] if options.get(key) else []
    params += [f"crf={rate.crf:g}", f"vbv-maxrate={maxrate}", f"vbv-bufsize={bufsize}"]
    if rate.zones:
        params.append("zones=" + "/".join(f"{a},{b},b={f:g}" for a, b, f in rate.zones))
    options[key] = ":".join(params)
    return replace(choice, options=options, bit_rate=0)


def near_duplicates(kbps: Sequence[float]) -> list[int]:
    """Indices (ladder order, lowest first) of rungs to drop: a rung within `NEAR_DUPLICATE`
    of the bitrate of the next lower kept rung goes; the top rung is never dropped (when it is
    the near-duplicate, the lower one goes instead)."""
    if not kbps:
        return []
    kept = [0]
    dropped = []
    top = len(kbps) - 1
    for i in range(1, len(kbps)):
        if kbps[i] <= kbps[kept[-1]] * (1 + NEAR_DUPLICATE):
            if i == top:
                dropped.append(kept.pop())
                kept.append(i)
            else:
                dropped.append(i)
        else:
            kept.append(i)
    return sorted(dropped)


def segment_scores(
    frame_scores: Sequence[tuple[int, float]], starts: Sequence[int], frames: int
) -> list[float]:
    """Mean VMAF per segment (segments start at `starts`), from (frame index, score) pairs;
    segments without a scored frame are left out."""
    ends = [*list(starts[1:]), frames]
    scores = []
    for first, end in zip(starts, ends, strict=True):
        inside = [s for i, s in frame_scores if first <= i < end]
        if inside:
            scores.append(float(np.mean(inside)))
    return scores


def segment_starts(frame_rate: Fraction, segment_seconds: float, frames: int) -> list[int]:
    """The output frame indices that start a segment (as the transcoder forces IDRs)."""
    starts = []
    for index in boundary_frames(frame_rate, segment_seconds):
        if index >= frames:
            break
        starts.append(index)
    return starts


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (linear), None for no values."""
    return float(np.percentile(values, q)) if values else None


@dataclass(frozen=True)
class PerSceneQuality(RenditionQuality):
    """A PerScene rung's measured quality and rate, with the fields it adds to its stream in
    `EncodingFinished` and to its `QualityMetrics` entry in the report."""

    cap_kbps: int = 0
    average_kbps: float = 0.0
    peak_kbps: float = 0.0  # the largest segment's rate
    vmaf_p5: float | None = None  # 5th percentile of per-segment VMAF means
    scenes: int = 0
    crf: float = 0.0
    target_vmaf: float = DEFAULT_TARGET
    segment_vmaf: tuple[float, ...] = field(default=())
    predicted_vmaf: float | None = None  # what the probes predicted (the model's error)

    def per_scene_fields(self) -> dict[str, Any]:
        """The PerScene fields (contract §5.3)."""
        return {
            "PerScene": {
                "TargetVmaf": self.target_vmaf,
                "CapBitrateInKbps": self.cap_kbps,
                "AverageBitrateInKbps": round(self.average_kbps, 1),
                "PeakBitrateInKbps": round(self.peak_kbps, 1),
                "VmafMean": self.vmaf,
                "VmafP5Segments": None if self.vmaf_p5 is None else round(self.vmaf_p5, 3),
                "Scenes": self.scenes,
                "Crf": self.crf,
                "PredictedVmaf": None
                if self.predicted_vmaf is None
                else round(self.predicted_vmaf, 2),
            }
        }

    def stream_fields(self) -> dict[str, Any]:
        return {**super().stream_fields(), **self.per_scene_fields()}

    def report_entry(self, name: str, bitrate_kbps: int, width: int, height: int) -> dict:
        return {
            **super().report_entry(name, bitrate_kbps, width, height),
            **self.per_scene_fields(),
        }


def packet_rates(
    path: Any, starts: Sequence[int], frame_rate: Fraction, frames: int
) -> tuple[float, float]:
    """(average kbps, peak segment kbps) of an encoded rung of `frames` frames, from its
    packets' sizes (segments start at `starts`)."""
    rate = float(frame_rate)
    sizes = [0] * max(len(starts), 1)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            if packet.size == 0 or packet.pts is None or packet.time_base is None:
                continue
            index = round(float(packet.pts * packet.time_base) * rate)
            segment = max((i for i, s in enumerate(starts) if s <= index), default=0)
            sizes[segment] += packet.size
    duration = frames / rate
    average = sum(sizes) * 8 / 1000 / duration if duration > 0 else 0.0
    ends = [*starts[1:], frames]
    peak = 0.0
    for size, first, end in zip(sizes, starts, ends, strict=False):
        if end > first:
            peak = max(peak, size * 8 / 1000 / ((end - first) / rate))
    return average, peak


def measure_windows(starts: Sequence[int], frames: int) -> list[tuple[int, int]]:
    """The frames measured after the encode, as [first, end) windows: in every segment
    (segments start at `starts`; `frames` in all) `WINDOWS_PER_SEGMENT` windows of
    `WINDOW_FRAMES` consecutive frames (VMAF's motion feature compares neighbours) centred
    at evenly spread points (all of a segment too short for them); at most
    `MAX_MEASURED_SEGMENTS` segments, spread evenly (the first and the last among them)."""
    ends = [*starts[1:], frames] if starts else []
    segments = [(a, b) for a, b in zip(starts, ends, strict=True) if b > a]
    if len(segments) > MAX_MEASURED_SEGMENTS:
        last = len(segments) - 1
        count = MAX_MEASURED_SEGMENTS
        picks = sorted({round(i * last / (count - 1)) for i in range(count)})
        segments = [segments[i] for i in picks]
    windows = []
    for first, end in segments:
        length = end - first
        if length <= WINDOWS_PER_SEGMENT * WINDOW_FRAMES:
            windows.append((first, end))
            continue
        for k in range(WINDOWS_PER_SEGMENT):
            centre = first + (2 * k + 1) * length // (2 * WINDOWS_PER_SEGMENT)
            start = min(max(first, centre - WINDOW_FRAMES // 2), end - WINDOW_FRAMES)
            windows.append((start, start + WINDOW_FRAMES))
    return windows


def _yuv420(frame: av.VideoFrame, width: int, height: int) -> av.VideoFrame:
    """`frame` at `width` x `height` in 8-bit 4:2:0, scaled as the transcoder scales a rung."""
    return frame.reformat(
        width=width, height=height, format="yuv420p", interpolation=Interpolation.BICUBIC
    )


class ReferenceStore:
    """The analysis pass's frames inside the measurement windows, scaled to every rung's
    size (8-bit 4:2:0, as the transcoder scales them), one raw file per rung in `folder`:
    the reference of `window_quality`, so the encode pass measures nothing."""

    def __init__(self, folder: Path, sizes: dict[str, tuple[int, int]]):
        folder.mkdir(parents=True, exist_ok=True)
        self.sizes = sizes
        self.paths = {name: folder / f"{n}.yuv" for n, name in enumerate(sizes)}
        for path in self.paths.values():
            path.write_bytes(b"")
        self.indices: list[int] = []

    def add(self, index: int, frame: av.VideoFrame) -> None:
        for name, (width, height) in self.sizes.items():
            planes = frame_planes(_yuv420(frame, width, height))
            with self.paths[name].open("ab") as out:
                for plane in planes:
                    out.write(np.ascontiguousarray(plane).tobytes())
        self.indices.append(index)


def rung_frames(
    path: Path, frame_rate: Fraction, wanted: Collection[int]
) -> Iterator[tuple[int, av.VideoFrame]]:
    """The frames the decoder gives of a rung that vipe wrote (a fragmented MP4 at the
    constant `frame_rate`: output frame i at pts start + i frame durations), each with its
    output frame index (from its pts, checked to be on that grid). Every `wanted` frame comes
    out, decoded as in a full decode; of the others, the decoder skips those nothing
    references (most B-frames: `skip_frame` per packet, by the packet's own pts), and the
    demuxing stops after the last wanted frame (a later packet's dts is past it, so its pts
    is too)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_type = "AUTO"
        if stream.time_base is None or stream.start_time is None:
            raise RuntimeError(f"{path}: a video stream without a time base or start time")
        ticks_per_frame = 1 / (stream.time_base * frame_rate)
        start = stream.start_time
        last = max(wanted, default=-1)

        def index_of(pts: int | None) -> int:
            index = None if pts is None else (pts - start) / ticks_per_frame
            if index is None or index.denominator != 1:
                raise RuntimeError(f"{path}: pts {pts} is not on the {frame_rate} fps grid")
            return int(index)

        for packet in container.demux(stream):
            past = packet.dts is not None and packet.dts - start > last * ticks_per_frame
            if packet.size and not past:
                needed = index_of(packet.pts) in wanted
                stream.codec_context.skip_frame = "DEFAULT" if needed else "NONREF"
            for frame in stream.decode(None if past else packet):  # None: flush
                yield index_of(frame.pts), frame
            if past:
                break


def window_quality(
    path: Path,
    width: int,
    height: int,
    windows: Sequence[tuple[int, int]],
    reference: Path,
    ffmpeg: str,
    label: str,
    *,
    frame_rate: Fraction,
    frames: int,
    bitrate_kbps: float,
) -> RenditionQuality:
    """An encoded rung's quality on the measurement windows: their frames decoded
    (`rung_frames`, which skips what no window needs) against the stored references
    (`ReferenceStore`, the windows' frames in order): PSNR, SSIM (engine.quality) and libvmaf
    VMAF per frame (the contract's usual quality fields, §5.5). `frames` and `bitrate_kbps`
    are the rung's (`packet_rates`), for the result's step and bitrate."""
    wanted = [i for first, end in windows for i in range(first, end)]
    order = {index: k for k, index in enumerate(wanted)}
    shapes = [(height, width), ((height + 1) // 2, (width + 1) // 2)]
    shapes.append(shapes[1])
    frame_size = sum(h * w for h, w in shapes)
    stored = reference.stat().st_size // frame_size if reference.exists() else 0
    scores = _Scores(3)
    pipe = _VmafPipe(ffmpeg, width, height, "yuv420p", 1, 1, label)
    pushed: list[int] = []
    try:
        with reference.open("rb") as store:
            for index, frame in rung_frames(path, frame_rate, order):
                k = order.get(index, -1)
                if not 0 <= k < stored:
                    continue
                store.seek(k * frame_size)
                raw = np.frombuffer(store.read(frame_size), np.uint8)
                ref, offset = [], 0
                for h, w in shapes:
                    ref.append(raw[offset : offset + h * w].reshape(h, w))
                    offset += h * w
                distorted = frame_planes(_yuv420(frame, width, height))
                scores.add(compare_planes(ref, distorted, 255))
                pipe.push(ref[0], np.ascontiguousarray(distorted[0]))
                pushed.append(index)
    except BaseException:
        pipe.abort()
        raise
    vmaf, error = pipe.finish()
    frame_scores = tuple(
        (pushed[n], score) for n, score in pipe.frame_scores if 0 <= n < len(pushed)
    )
    count = max(scores.count, 1)
    return RenditionQuality(
        psnr=round(psnr_db(scores.weighted / count, 255), 4),
        psnr_y=round(psnr_db(scores.mse[0] / count, 255), 4),
        ssim=round(scores.ssim / count, 6),
        vmaf=round(vmaf, 4) if vmaf is not None else None,
        frames=scores.count,
        step=max(1, round(frames / count)),
        bitrate_kbps=bitrate_kbps,
        vmaf_error=error if pushed else "no frame of the measurement windows",
        vmaf_frames=frame_scores,
    )


# ---------------------------------------------------------------------------------- analysis


class _Prober:
    """One rung's probes: encodes a clip at each CRF, scores it with libvmaf (one ffmpeg for
    the rung's whole pass, the CRFs' decoded clips one after the other; the clip's first
    frame is not scored)."""

    def __init__(
        self, output: VideoOutput, frame_rate: Fraction, crfs: Sequence[float], ffmpeg: str
    ):
        self.output = output
        self.frame_rate = frame_rate
        self.crfs = list(crfs)
        rendition = output.rendition
        self.pipe = _VmafPipe(
            ffmpeg, rendition.width, rendition.height, "yuv420p", 1, 1, rendition.name
        )
        # (start, kbps per crf, (first scored frame number, count) per crf)
        self.clips: list[tuple[int, list[float], list[tuple[int, int]]]] = []
        self.pushed = 0

    def _context(self, crf: float) -> av.VideoCodecContext:
        choice = self.output.encoder
        name = (
            choice.name
            if not choice.hardware
            else ("libx264" if "264" in choice.name else "libx265")
        )
        context = av.CodecContext.create(name, "w")
        assert isinstance(context, av.VideoCodecContext)
        rendition = self.output.rendition
        context.width, context.height = rendition.width, rendition.height
        context.pix_fmt = "yuv420p"
        context.time_base = 1 / self.frame_rate
        context.framerate = self.frame_rate
        preset = choice.options.get("preset", "medium")
        if choice.hardware:
            preset = CPU_PRESETS[name][next(iter(CPU_PRESETS[name]))]
        key = "x264-params" if name == "libx264" else "x265-params"
        extra = ":log-level=error" if name == "libx265" else ""
        # one thread: a 4-frame clip leaves frame threads nothing to share, only their start-up
        context.options = {
            "preset": preset,
            "threads": "1",
            key: f"crf={crf:g}:scenecut=0{extra}",
        }
        return context

    def probe(self, start: int, frames: list[av.VideoFrame], segment_frames: int) -> None:
        rendition = self.output.rendition
        scaled = [
            f.reformat(
                width=rendition.width,
                height=rendition.height,
                format="yuv420p",
                interpolation=Interpolation.BICUBIC,
            )
            for f in frames
        ]
        references = [s.to_ndarray()[: rendition.height] for s in scaled]
        rates: list[float] = []
        spans: list[tuple[int, int]] = []
        # the highest CRF first (the cheapest); the lowest is left out when the middle one
        # already costs CAPPED_PROBE x the rung's cap: a scene needing it is capped anyway,
        # and at the lowest CRF the probe of such a clip is the dearest encode of the pass
        for crf in reversed(self.crfs):
            if (
                crf == self.crfs[0]
                and len(self.crfs) >= 3
                and rates[-1] > CAPPED_PROBE * rendition.bitrate_kbps
            ):
                rates.append(math.nan)
                spans.append((self.pushed, 0))
                continue
            context = self._context(crf)
            bits: list[int] = []
            decoder = av.CodecContext.create("h264" if context.name == "libx264" else "hevc", "r")
            decoded: list[np.ndarray] = []
            packets = []
            for i, frame in enumerate(scaled):
                # in the encoder's time base: a frame keeps the source's, and the encoder would
                # rescale its pts from that (the first CRF's probe got all frames at pts 0)
                frame.time_base = context.time_base
                frame.pts = i
                frame.pict_type = PictureType.I if i == 0 else PictureType.NONE
                packets += context.encode(frame)
            packets += context.encode(None)
            for packet in packets:
                if packet.pts is not None and 0 < packet.pts <= CLIP_SCORED:
                    bits.append(packet.size * 8)
                elif packet.pts == 0:
                    bits.insert(0, packet.size * 8)
                for out in decoder.decode(packet):
                    decoded.append(out.to_ndarray()[: rendition.height])
            for out in decoder.decode(None):
                decoded.append(out.to_ndarray()[: rendition.height])
            scored = slice(1, 1 + CLIP_SCORED)
            pairs = list(zip(references[scored], decoded[scored], strict=False))
            for reference, distorted in pairs:
                self.pipe.push(reference, distorted)
            spans.append((self.pushed, len(pairs)))
            self.pushed += len(pairs)
            first = bits[0] if bits else 0
            rest = bits[1:] or [first]
            per_frame = float(np.mean(rest)) + (first - float(np.mean(rest))) / max(
                segment_frames, 1
            )
            rates.append(per_frame * float(self.frame_rate) / 1000)
        self.clips.append((start, rates[::-1], spans[::-1]))

    def finish(self) -> tuple[ClipProbe, ...]:
        mean, error = self.pipe.finish()
        if mean is None:
            raise RuntimeError(error or "no VMAF")
        scores = dict(self.pipe.frame_scores)
        probes = []
        for start, rates, spans in self.clips:
            vmafs = []
            for first, count in spans:
                values = [scores[k] for k in range(first, first + count) if k in scores]
                vmafs.append(float(np.mean(values)) if values else 0.0)
            if math.isnan(rates[0]):  # the lowest CRF left out: the next two's slopes
                step = (self.crfs[1] - self.crfs[0]) / (self.crfs[2] - self.crfs[1])
                vmafs[0] = min(100.0, vmafs[1] + (vmafs[1] - vmafs[2]) * step)
                rates[0] = rates[1] * (rates[1] / max(rates[2], 1e-3)) ** step
            probes.append(ClipProbe(start, tuple(vmafs), tuple(rates)))
        return tuple(probes)

    def abort(self) -> None:
        self.pipe.abort()


def _thumbnail(frame: av.VideoFrame) -> np.ndarray:
    """About `THUMB` luma samples of `frame` (8-bit planar or NV12: a strided view of the luma
    plane, no scaling; other formats through the scaler), as int16."""
    if frame.format.name in ("yuv420p", "yuvj420p", "yuv422p", "yuv444p", "nv12"):
        plane = frame.planes[0]
        luma = np.frombuffer(memoryview(plane), np.uint8).reshape(plane.height, plane.line_size)
        step_y = max(1, plane.height // THUMB[1])
        step_x = max(1, plane.width // THUMB[0])
        return luma[: plane.height : step_y, : plane.width : step_x].astype(np.int16)
    thumb = frame.reformat(width=THUMB[0], height=THUMB[1], format="gray")
    return thumb.to_ndarray().astype(np.int16)


def analyse(
    plan: TranscodePlan,
    ffmpeg: str,
    *,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    windows: Sequence[tuple[int, int]] = (),
    store: ReferenceStore | None = None,
) -> Analysis:
    """The analysis pass over `plan.video_file` (module docs) for the rungs of `plan.video`;
    the frames inside `windows` go to `store`."""
    import time

    assert plan.video_file is not None
    began = time.monotonic()
    codec = plan.video[0].rendition.codec
    crfs = PROBE_CRFS.get(codec, PROBE_CRFS["H264"])
    rate = plan.frame_rate
    segment_frames = max(1, round(plan.segment_seconds * rate))
    spacing = max(CLIP_FRAMES + 1, round(CLIP_SPACING_S * rate))
    pixels = {o.rendition.name: o.rendition.width * o.rendition.height for o in plan.video}
    chosen = probed_rungs(list(pixels.values()))
    still_gap = round(STILL_MAX_GAP_S * rate)
    probers = [_Prober(plan.video[i], rate, crfs, ffmpeg) for i in chosen]
    differences: list[float] = []
    stored = {i for first, end in windows for i in range(first, end)}
    previous: np.ndarray | None = None
    clip: list[av.VideoFrame] = []
    clip_start: int | None = None
    last_clip: tuple[int, np.ndarray] | None = None  # start and thumbnail of the last clip
    # The probes of a clip run on a worker thread while the decode goes on (the encoders
    # and decoders leave the GIL); one clip at a time, so memory stays flat
    worker = ThreadPoolExecutor(1, thread_name_prefix="perscene-probe")
    probing: Future | None = None

    def probe_clip(start: int, frames: list[av.VideoFrame]) -> None:
        for prober in probers:
            prober.probe(start, frames, segment_frames)

    def needed(estimate: int) -> bool:  # a clip's or a window's frame, within 2 frames
        return any(
            i % spacing < CLIP_FRAMES or i in stored for i in range(estimate - 2, estimate + 3)
        )

    index = 0
    try:
        with av.open(str(plan.video_file)) as container:
            stream = (
                container.streams.video[0]
                if plan.video_track is None
                else next(s for s in container.streams if s.index == plan.video_track.index)
            )
            stream.codec_context.thread_type = "AUTO"
            preparer = _FramePreparer(stream, replace(plan, watermarks=None))
            # Frames nothing references (most B-frames) are not decoded outside the clips and
            # windows (`needed`) where the transcoder takes the source frame for frame (no
            # filter) from an MP4/MOV (every packet timed): a decoded frame's index is then
            # the rank of its timestamp among the packets' (`packet_times`), and a skipped
            # frame's difference is that of the next decoded frame (over the gap)
            skipping = not preparer.filters and "mp4" in container.format.name
            packet_times: list[int] = []
            start = stream.start_time or 0
            seconds_per_tick = float(stream.time_base or 0)

            def take(frame: av.VideoFrame, at: int | None = None) -> None:
                nonlocal previous, clip_start, last_clip, probing, index
                luma = _thumbnail(frame)
                difference = 0.0 if previous is None else float(np.abs(luma - previous).mean())
                while at is not None and index < at:  # frames not decoded
                    differences.append(difference)
                    index += 1
                differences.append(difference)
                previous = luma
                if store is not None and index in stored:
                    store.add(index, frame)
                if index % spacing == 0:
                    clip.clear()
                    still = (
                        last_clip is not None
                        and index - last_clip[0] < still_gap
                        and float(np.abs(luma - last_clip[1]).mean()) < STILL_DIFFERENCE
                    )
                    clip_start = None if still else index
                    if not still:
                        last_clip = (index, luma)
                if clip_start is not None and clip_start <= index < clip_start + CLIP_FRAMES:
                    clip.append(frame)
                    if len(clip) == CLIP_FRAMES:
                        if probing is not None:
                            probing.result()
                        probing = worker.submit(probe_clip, clip_start, list(clip))
                        clip.clear()
                index += 1

            for packet in container.demux(stream):
                if cancel:
                    cancel()
                if skipping and packet.size:
                    if packet.pts is None:
                        raise RuntimeError("a packet without a timestamp in an MP4/MOV")
                    if not packet.is_discard:
                        bisect.insort(packet_times, packet.pts)
                    estimate = round((packet.pts - start) * seconds_per_tick * float(rate))
                    stream.codec_context.skip_frame = "DEFAULT" if needed(estimate) else "NONREF"
                for decoded in packet.decode():
                    assert isinstance(decoded, av.VideoFrame)
                    at = None
                    if skipping:
                        if decoded.pts is None:
                            raise RuntimeError("a frame without a timestamp in an MP4/MOV")
                        at = bisect.bisect_left(packet_times, decoded.pts)
                    for prepared in preparer.prepare(decoded):
                        take(prepared, at)
                    if progress and plan.duration:
                        progress(min(1.0, index / float(rate) / plan.duration))
            for prepared in preparer.flush():
                take(prepared)
            if skipping:  # skipped frames at the end
                differences += [0.0] * (len(packet_times) - index)
                index = max(index, len(packet_times))
        if probing is not None:
            probing.result()
        probes = {p.output.rendition.name: p.finish() for p in probers}
    except BaseException:
        worker.shutdown(wait=True, cancel_futures=True)
        for prober in probers:
            prober.abort()
        raise
    finally:
        worker.shutdown(wait=True)
    return Analysis(
        frames=index,
        frame_rate=float(rate),
        scene_starts=tuple(detect_cuts(differences, float(rate))),
        crfs=tuple(crfs),
        probes=probes,
        seconds=time.monotonic() - began,
        pixels=pixels,
    )
