"""Split and stitch: wall time of a 1080p ladder, one pass vs `vipe run --parallel N`.

Every run is a whole `vipe run` (decode, encode, package) of the same job; the chunked runs
split the video into `CHUNK_SECONDS` chunks. Printed: the node's cores, each N's time, its
speed-up over one pass and over one ffmpeg CLI process encoding the same ladder, and the
overhead of chunking itself (N=1 against one pass: the figure that must stay within 5%).
On a many-core node the same script shows how far N processes scale.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from rich.console import Console

from benchmarks.common import Result, Run, measure, median_run, vipe_command, write_job
from benchmarks.ladder import make_source, planned_rungs, run_ffmpeg, vipe_job

CHUNK_SECONDS = 8


def run_vipe_chunked(source: Path, scratch: Path, parallel: int | None) -> Run:
    """`vipe run` of the ladder job, in one pass (`parallel` None) or in chunks."""
    output = scratch / "vipe-out"
    shutil.rmtree(output, ignore_errors=True)
    job = write_job(scratch / "job.json", vipe_job(source, output))
    args = ["run", str(job), "--workdir", str(scratch / "vipe-work")]
    if parallel is not None:
        args += ["--parallel", str(parallel), "--chunk-seconds", str(CHUNK_SECONDS)]
    return measure(vipe_command(*args))


def run(quick: bool = False) -> list[Result]:
    seconds, runs = (24, 1) if quick else (48, 3)
    cores = os.cpu_count() or 1
    counts = [n for n in (1, 2, 4, 8) if n <= max(4, cores)]
    console = Console()
    with tempfile.TemporaryDirectory(prefix="vipe-bench-chunked-") as folder:
        scratch = Path(folder)
        source = make_source(seconds)
        rungs = planned_rungs(source)
        times: dict[str, list[Run]] = {"one pass": [], "ffmpeg": []}
        times.update({f"N={n}": [] for n in counts})
        for _ in range(runs):  # alternated, so that the machine's load hits every variant
            times["one pass"].append(run_vipe_chunked(source, scratch, None))
            times["ffmpeg"].append(run_ffmpeg(source, rungs, scratch))
            for n in counts:
                times[f"N={n}"].append(run_vipe_chunked(source, scratch, n))
    median = {k: median_run(v) for k, v in times.items()}
    one_pass, ffmpeg = median["one pass"].wall_s, median["ffmpeg"].wall_s
    console.print(
        f"{cores} cores; {seconds} s 1080p source, {len(rungs)} rungs, {CHUNK_SECONDS} s chunks; "
        f"one pass {one_pass:.2f} s, ffmpeg CLI {ffmpeg:.2f} s (medians of {runs})"
    )
    results = []
    for n in counts:
        wall = median[f"N={n}"].wall_s
        console.print(
            f"  --parallel {n}: {wall:.2f} s, speed-up {one_pass / wall:.2f}× over one pass, "
            f"{ffmpeg / wall:.2f}× over the ffmpeg CLI"
            + (f"; chunking overhead {(wall / one_pass - 1) * 100:+.1f}%" if n == 1 else "")
        )
        results.append(
            Result(
                name=f"chunked 1080p {seconds}s --parallel {n}",
                vipe_s=round(wall, 3),
                anchor="vipe one pass",
                anchor_s=round(one_pass, 3),
                ratio=round(wall / one_pass, 3),
                vipe_peak_mb=round(median[f"N={n}"].peak_mb, 1),
                anchor_peak_mb=round(median["one pass"].peak_mb, 1),
                vipe_cpu_s=round(median[f"N={n}"].cpu_s, 3),
                anchor_cpu_s=round(median["one pass"].cpu_s, 3),
                runs=runs,
                extra={
                    "cores": cores,
                    "speedup_over_one_pass": round(one_pass / wall, 3),
                    "speedup_over_ffmpeg": round(ffmpeg / wall, 3),
                    "ffmpeg_s": round(ffmpeg, 3),
                },
            )
        )
    return results
