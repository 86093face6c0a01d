"""Thumbnail tiles: vipe (`engine.images.make_thumbnails`, seek + partial GOP decode) against the
ffmpeg CLI doing the same job the way a user would write it (`fps=1/N,scale,tile`, which decodes
every frame), on a generated 10-minute 720p H.264 source with 2 s GOPs (B-frames, the x264
`veryfast` preset, noise for a realistic bit rate). Both write 10×10 JPEG tiles of 384×216
thumbnails, one every 5 s (the contract default for a 10-minute video). Target: vipe <= 0.2x
ffmpeg's wall time.

`python -m benchmarks.thumbnails [--quick]` runs it alone; `--vipe SOURCE FOLDER` is the vipe
side as the child process that `measure` times.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import CACHE, Result, Run, compare, ffmpeg_exe, measure

INTERVAL = 5
COLUMNS = ROWS = 10
WIDTH, HEIGHT = 384, 216
GOP_SECONDS = 2
RATE = 25
CHUNK_SECONDS = 60  # encoded once, then repeated (stream copy) up to the wanted length


def make_source(seconds: int, gop_seconds: int = GOP_SECONDS) -> Path:
    """A cached 1280×720 25 fps H.264 MP4 of `seconds`, keyframes every `gop_seconds`.

    One minute of `testsrc2` with temporal noise is encoded with libx264 (veryfast, 3 Mbit/s,
    fixed GOP, B-frames) and concatenated by stream copy: decoding costs as much as a real
    source of that bit rate, at a tenth of the encoding time."""
    path = CACHE / f"thumbs-720p-{seconds}s-gop{gop_seconds}.mp4"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    chunk = CACHE / f"thumbs-720p-chunk-gop{gop_seconds}.mp4"
    gop = gop_seconds * RATE
    if not chunk.exists():
        partial = chunk.with_suffix(".partial.mp4")
        subprocess.run(
            [ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi",
             "-i", f"testsrc2=size=1280x720:rate={RATE}:duration={CHUNK_SECONDS}",
             "-vf", "noise=alls=12:allf=t", "-c:v", "libx264", "-preset", "veryfast",
             "-b:v", "3000k", "-maxrate", "4500k", "-bufsize", "6000k",
             "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0",
             "-pix_fmt", "yuv420p", str(partial)],
            check=True,
        )  # fmt: skip
        partial.rename(chunk)
    repeats = -(-seconds // CHUNK_SECONDS)
    listing = CACHE / f"thumbs-concat-{seconds}-{gop_seconds}.txt"
    listing.write_text("".join(f"file '{chunk.name}'\n" for _ in range(repeats)))
    partial = path.with_suffix(".partial.mp4")
    subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(listing),
         "-t", str(seconds), "-c", "copy", str(partial)],
        check=True,
    )  # fmt: skip
    listing.unlink()
    partial.rename(path)
    return path


def vipe_thumbnails(source: Path, folder: Path) -> int:
    """The vipe side: probe, plan and write the tiles, as the pipeline does."""
    from engine.images import make_thumbnails, plan_thumbnails
    from engine.probe import probe

    info = probe(source)
    video = info.main_video
    plan = plan_thumbnails(
        info.duration, video.display_aspect_ratio, interval=INTERVAL, columns=COLUMNS, rows=ROWS
    )
    image = make_thumbnails(source, video, plan, folder)
    return len(image.tiles)


def run_vipe(source: Path, scratch: Path) -> Run:
    output = scratch / "vipe-out"
    shutil.rmtree(output, ignore_errors=True)
    command = [sys.executable, "-m", "benchmarks.thumbnails", "--vipe", str(source), str(output)]
    return measure(command, cwd=Path(__file__).resolve().parent.parent)


def run_ffmpeg(source: Path, scratch: Path) -> Run:
    output = scratch / "ffmpeg-out"
    shutil.rmtree(output, ignore_errors=True)
    output.mkdir(parents=True)
    return measure(
        [ffmpeg_exe(), "-v", "error", "-y", "-i", str(source),
         "-vf", f"fps=1/{INTERVAL},scale={WIDTH}:{HEIGHT},tile={COLUMNS}x{ROWS}",
         "-q:v", "4", str(output / "thumbnails_%d.jpg")]
    )  # fmt: skip


def run(quick: bool = False) -> Result:
    seconds, runs = (120, 1) if quick else (600, 3)
    source = make_source(seconds)
    with tempfile.TemporaryDirectory(prefix="vipe-bench-thumbnails-") as folder:
        scratch = Path(folder)
        return compare(
            f"thumbnails 720p {seconds}s, {GOP_SECONDS}s GOP, every {INTERVAL}s",
            lambda: run_vipe(source, scratch),
            "ffmpeg fps/scale/tile",
            lambda: run_ffmpeg(source, scratch),
            runs,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.thumbnails")
    parser.add_argument("--quick", action="store_true", help="a 2-minute source, one run")
    parser.add_argument("--vipe", nargs=2, metavar=("SOURCE", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.vipe:
        vipe_thumbnails(Path(args.vipe[0]), Path(args.vipe[1]))
        return 0
    result = run(quick=args.quick)
    for key, value in result.as_json().items():
        print(f"{key:>15}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
