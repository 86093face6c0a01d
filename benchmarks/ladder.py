"""Ladder encode: a 1080p source to the H.264 V2 ladder, vipe (`vipe run`, CMAF output) against
one ffmpeg CLI process doing the same ladder with the same encoder settings (one decode, split,
bicubic scale, libx264 with the same preset, bitrate, maxrate, buffer and forced IDR frames,
AAC audio), writing fragmented MP4s. Target: vipe <= 1.05x ffmpeg's wall time and peak memory
<= 1.5x ffmpeg's.

The encoders are the same (x264's own settings string, threads included, is identical in both
outputs). The scaling is not: ffmpeg scales every rung from the full frame (Bicubic, its usual
command line), vipe in a cascade with Lanczos (engine.transcode._LadderScaler), about half the
scaling work, with encoded rungs at least as good against the source (VMAF, PSNR)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from benchmarks.common import (
    CACHE,
    Result,
    Run,
    compare,
    ffmpeg_exe,
    measure,
    vipe_command,
    write_job,
)

SEGMENT = 4


def make_source(seconds: int, width: int = 1920, height: int = 1080) -> Path:
    """A cached H.264/AAC source with detail and motion (moving gradients, a sweeping bar)."""
    from engine.demo import make_sample_source

    # A folder of its own: a job acquires its whole input folder, and the cache holds others
    path = CACHE / f"source-{width}x{height}-{seconds}s" / "source.mp4"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial.mp4")
        make_sample_source(partial, seconds=seconds, width=width, height=height)
        partial.rename(path)
    return path


def planned_rungs(source: Path) -> list[tuple[int, int, int]]:
    """(width, height, kbps) of vipe's plan for this source, so ffmpeg encodes the same."""
    from engine.job import ContentProcessing
    from engine.ladder import plan_video
    from engine.probe import probe

    processing = ContentProcessing.model_validate({"OutputFormat": ["Cmaf"]})
    video = probe(source).main_video
    assert video is not None, f"{source} has no video"
    return [(r.width, r.height, r.bitrate_kbps) for r in plan_video(video, processing)]


def vipe_job(source: Path, output: Path) -> dict:
    return {
        "ContentAcquisition": {"Provider": "Local", "UriPath": f"file://{source.parent}/"},
        "MediaMappings": {"VideoStreamExpression": f"^{source.name.replace('.', '[.]')}$"},
        "ContentProcessing": {"OutputFormat": ["Cmaf"], "OptimizeFor": "Speed"},
        "ContentPublishing": {"Provider": "Local", "UriPath": f"file://{output}/"},
    }


def run_vipe(source: Path, scratch: Path) -> Run:
    output = scratch / "vipe-out"
    shutil.rmtree(output, ignore_errors=True)
    job = write_job(scratch / "job.json", vipe_job(source, output))
    return measure(vipe_command("run", str(job), "--workdir", str(scratch / "vipe-work")))


def ffmpeg_command(source: Path, rungs: list[tuple[int, int, int]], output: Path) -> list[str]:
    """One ffmpeg process: decode once, split, scale, encode every rung (and AAC audio) with the
    options vipe's `choose_encoder` gives for OptimizeFor Speed."""
    from engine.encoders import PEAK_FACTOR, keyframe_interval
    from engine.probe import probe

    video = probe(source).main_video
    assert video is not None, f"{source} has no video"
    rate = float(video.frame_rate)
    gop = keyframe_interval(rate, SEGMENT)
    split = f"[0:v]split={len(rungs)}" + "".join(f"[s{i}]" for i in range(len(rungs)))
    scales = [f"[s{i}]scale={w}:{h}:flags=bicubic[v{i}]" for i, (w, h, _) in enumerate(rungs)]
    command = [ffmpeg_exe(), "-v", "error", "-y", "-i", str(source),
               "-filter_complex", ";".join([split, *scales])]  # fmt: skip
    fragmented = ["-movflags", "frag_keyframe+empty_moov+default_base_moof"]
    for i, (_, _, kbps) in enumerate(rungs):
        maxrate = round(kbps * PEAK_FACTOR)
        command += [
            "-map", f"[v{i}]", "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
            "-b:v", f"{kbps}k", "-maxrate", f"{maxrate}k", "-bufsize", f"{maxrate}k",
            "-x264-params", f"keyint={gop + 1}:min-keyint=1:scenecut=0:open-gop=0:forced-idr=1",
            "-force_key_frames", f"expr:gte(t,n_forced*{SEGMENT})",
            *fragmented, str(output / f"video-{i}.mp4"),
        ]  # fmt: skip
    command += ["-map", "0:a:0", "-c:a", "aac", "-b:a", "128k", "-ar", "48000", "-ac", "2",
                *fragmented, str(output / "audio.mp4")]  # fmt: skip
    return command


def run_ffmpeg(source: Path, rungs, scratch: Path) -> Run:
    output = scratch / "ffmpeg-out"
    shutil.rmtree(output, ignore_errors=True)
    output.mkdir(parents=True)
    return measure(ffmpeg_command(source, rungs, output))


def run(quick: bool = False) -> Result:
    seconds, runs = (10, 1) if quick else (30, 3)
    source = make_source(seconds)
    rungs = planned_rungs(source)
    with tempfile.TemporaryDirectory(prefix="vipe-bench-ladder-") as folder:
        scratch = Path(folder)
        return compare(
            f"ladder encode 1080p {seconds}s H.264 V2 ({len(rungs)} rungs)",
            lambda: run_vipe(source, scratch),
            "ffmpeg CLI",
            lambda: run_ffmpeg(source, rungs, scratch),
            runs,
        )


if __name__ == "__main__":
    print(run(quick=True))
