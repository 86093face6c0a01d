"""Scaling: ladder encode time and peak memory for sources of growing length. Cost must grow
linearly with duration (the slope, seconds of work per second of source, is printed with the
fit) and peak memory must stay flat; ffmpeg's numbers are measured alongside for reference."""

from __future__ import annotations

import tempfile
from pathlib import Path

from rich.console import Console

from benchmarks.common import Result, compare
from benchmarks.ladder import make_source, planned_rungs, run_ffmpeg, run_vipe


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least squares y = slope * x + intercept; returns (slope, intercept, r squared)."""
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    slope = sxy / sxx
    intercept = mean_y - slope * mean_x
    total = sum((y - mean_y) ** 2 for y in ys)
    residual = sum((y - (slope * x + intercept)) ** 2 for x, y in zip(xs, ys, strict=True))
    return slope, intercept, 1 - residual / total if total else 1.0


def run(quick: bool = False) -> list[Result]:
    durations = (5, 10, 20) if quick else (15, 30, 60)
    width, height = (640, 360) if quick else (1280, 720)
    results = []
    with tempfile.TemporaryDirectory(prefix="vipe-bench-scaling-") as folder:
        scratch = Path(folder)
        for seconds in durations:
            source = make_source(seconds, width, height)
            rungs = planned_rungs(source)
            results.append(
                compare(
                    f"scaling {height}p {seconds}s ({len(rungs)} rungs)",
                    lambda s=source: run_vipe(s, scratch),
                    "ffmpeg CLI",
                    lambda s=source, r=rungs: run_ffmpeg(s, r, scratch),
                    1,
                )
            )
    slope, intercept, r2 = linear_fit([float(d) for d in durations], [r.vipe_s for r in results])
    peaks = [r.vipe_peak_mb for r in results]
    Console().print(
        f"vipe encode time = {slope:.3f} s per source second + {intercept:.2f} s "
        f"(R² {r2:.4f}); peak memory {min(peaks):.0f}–{max(peaks):.0f} MB "
        f"({(max(peaks) / min(peaks) - 1) * 100:.0f}% spread)"
    )
    return results
