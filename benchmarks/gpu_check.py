"""GPU device check: what a GPU node really does with vipe, in under three minutes, offline.

    python -m benchmarks.gpu_check --out gpu-check.json

1. `vipe doctor --json` (a child process, as an operator would run it) and the in-process probe.
2. NVDEC: a generated 1080p H.264 and H.265 source decoded on the GPU (CUDA, no software
   fallback) and on the CPU: frames per second of each, the frame counts (must be equal) and
   whether the first frames are bit-identical.
3. A whole job through `engine.pipeline.run_job` with `HardwareAcceleration: Auto`: it must
   succeed; on a GPU without NVENC (H100/H200) it must carry the CPU-fallback `Warning`.
4. Where NVENC opens: the same ladder with `Nvidia` (NVENC) and with `None` (libx264): the
   encoding-phase wall time of each and their ratio, and the PSNR of every rendition against
   the source; plus an HDR10 H.265 job on NVENC, reporting whether the output keeps the colour
   description and the mastering-display metadata.

On a machine without a GPU it runs in seconds: the doctor, a small Auto job on the CPU, and
"no GPU" for the rest. Exit status 0 when every check that ran passed.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import av
import numpy as np
from av.video.reformatter import Interpolation
from rich.console import Console
from rich.table import Table

from engine.capabilities import NodeProbe, probe
from engine.demo import make_sample_source

PASS, FAIL, SKIP = "pass", "fail", "skip"
LADDER = [(1080, 4500), (720, 2450), (360, 860)]  # (height, kbps): the GPU ladder
SMALL_LADDER = [(360, 800), (180, 300)]  # CPU-only machines: quick
PSNR_FRAMES = 50  # frames compared per rendition


class Check:
    """One line of the result: a name, pass/fail/skip, a detail and measurements."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.status = SKIP
        self.detail = ""
        self.data: dict[str, Any] = {}
        self.seconds = 0.0

    def done(self, ok: bool, detail: str, **data: Any) -> Check:
        self.status = PASS if ok else FAIL
        self.detail = detail
        self.data.update(data)
        return self

    def skip(self, detail: str) -> Check:
        self.status, self.detail = SKIP, detail
        return self

    def as_json(self) -> dict[str, Any]:
        return {
            "Name": self.name,
            "Status": self.status,
            "Detail": self.detail,
            "Seconds": round(self.seconds, 2),
            **self.data,
        }


def timed(check: Check, work: Callable[[Check], Check]) -> Check:
    started = time.perf_counter()
    try:
        work(check)
    except Exception as error:  # a check that crashes is a failed check, not a crashed script
        check.done(False, f"{type(error).__name__}: {error}")
    check.seconds = time.perf_counter() - started
    return check


# ------------------------------------------------------------------------------------ doctor


def doctor_check(check: Check) -> Check:
    command = [sys.executable, "-m", "engine.cli", "doctor", "--json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        return check.done(False, f"rc {result.returncode}, no JSON: {result.stderr[-500:]}")
    caps = report["Capabilities"]
    detail = (
        f"rc {result.returncode}; GPU {caps['Gpu'] or 'none'}; NVENC "
        f"{','.join(caps['NvencEncoders']) or 'none'} ({report['NvencSessions']} sessions); "
        f"NVDEC {','.join(caps['NvdecCodecs']) or 'none'}"
    )
    return check.done(result.returncode == 0 and report["CanEncodeH264"], detail, Doctor=report)


# ------------------------------------------------------------------------------------- NVDEC


def make_video(path: Path, encoder: str, seconds: float, width: int, height: int) -> Path:
    """A moving test picture with some noise (so that the decoders have work), no audio."""
    rate = 25
    options = {"preset": "ultrafast"}
    if encoder == "libx265":
        options["x265-params"] = "log-level=none"
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 24, (height, width), dtype=np.uint8)
    x = np.arange(width)[None, :]
    y = np.arange(height)[:, None]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.options = options
        for index in range(round(seconds * rate)):
            luma = ((x * 2 + y + index * 6) % 220 + np.roll(noise, index, axis=1)).astype(np.uint8)
            planes = np.concatenate(
                [luma, np.full((height // 2, width), 128 + (index % 32), np.uint8)]
            )
            frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def decode(path: Path, gpu: bool, keep: int = 5) -> tuple[int, float, list[np.ndarray]]:
    """(frames, seconds, the first `keep` frames as yuv420p arrays)."""
    hwaccel = None
    if gpu:
        from av.codec.hwaccel import HWAccel

        hwaccel = HWAccel(device_type="cuda", allow_software_fallback=False)
    started = time.perf_counter()
    kept: list[np.ndarray] = []
    count = 0
    with av.open(str(path), hwaccel=hwaccel) as container:
        stream = container.streams.video[0]
        if gpu and not stream.codec_context.is_hwaccel:
            raise RuntimeError("the decoder did not take the CUDA device")
        if not gpu:
            stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if count < keep:
                kept.append(frame.reformat(format="yuv420p").to_ndarray())
            count += 1
    return count, time.perf_counter() - started, kept


def nvdec_check(check: Check, source: Path) -> Check:
    cpu_frames, cpu_s, cpu_kept = decode(source, gpu=False)
    gpu_frames, gpu_s, gpu_kept = decode(source, gpu=True)
    identical = len(cpu_kept) == len(gpu_kept) and all(
        np.array_equal(a, b) for a, b in zip(cpu_kept, gpu_kept, strict=True)
    )
    detail = (
        f"GPU {gpu_frames / gpu_s:.0f} fps, CPU {cpu_frames / cpu_s:.0f} fps; "
        f"frames {gpu_frames} vs {cpu_frames}; first frames bit-identical: {identical}"
    )
    return check.done(
        gpu_frames == cpu_frames and gpu_frames > 0,
        detail,
        GpuFps=round(gpu_frames / gpu_s, 1),
        CpuFps=round(cpu_frames / cpu_s, 1),
        GpuFrames=gpu_frames,
        CpuFrames=cpu_frames,
        BitIdentical=identical,
    )


# -------------------------------------------------------------------------------------- jobs


def job_json(
    source_dir: Path,
    out_dir: Path,
    hardware: str,
    ladder: list[tuple[int, int]],
    *,
    video_format: str = "H264",
    hdr: bool = False,
) -> dict[str, Any]:
    return {
        "ExternalId": f"gpu-check-{hardware}",
        "ContentAcquisition": {"Provider": "Local", "UriPath": f"file://{source_dir}/"},
        "MediaMappings": {
            "VideoStreamExpression": "^.*\\.mp4$",
            "FailOnNoAudioTracks": False,
        },
        "ContentProcessing": {
            "OutputFormat": ["Cmaf"],
            "VideoFormat": video_format,
            "OptimizeFor": "Balance",
            "SegmentLengthInSeconds": 1,  # an IDR every 25 frames: alignment is visible
            "HardwareAcceleration": hardware,
            "ExtractAndApplyHDR": hdr,
            "VideoRepresentations": [{"Height": h, "BitrateInKbps": k} for h, k in ladder],
        },
        "ContentPublishing": {"Provider": "Local", "UriPath": f"file://{out_dir}/"},
    }


def run(job: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]], float]:
    from engine.pipeline import run_job

    events: list[dict[str, Any]] = []
    started = time.perf_counter()
    report = run_job(job, on_event=events.append)
    return report, events, time.perf_counter() - started


def _warnings(events: list[dict[str, Any]]) -> list[str]:
    return [e["Message"] for e in events if e["MessageType"] == "Warning"]


def _final_error(events: list[dict[str, Any]]) -> str:
    errors = [e for e in events if e["MessageType"] == "FinalError"]
    return f"{errors[0]['ErrorCode']}: {errors[0]['ErrorMessage']}" if errors else ""


def _streams(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    finished = [e for e in events if e["MessageType"] == "EncodingFinished"]
    return [s for s in finished[0]["Streams"] if s["Type"] == "Video"] if finished else []


def auto_check(check: Check, node: NodeProbe, work: Path, source_dir: Path, ladder) -> Check:
    report, events, wall = run(job_json(source_dir, work / "out-auto", "Auto", ladder))
    caps = node.capabilities
    warnings = _warnings(events)
    fallback = [w for w in warnings if "NVENC" in w]
    needs_warning = bool(caps.gpu_name) and not caps.nvenc_encoders
    ok = report["Success"] and (fallback or not needs_warning)
    detail = (
        f"success {report['Success']} in {wall:.1f} s, encoders {report['Encoder']}"
        + (f"; warning: {fallback[0]}" if fallback else "")
        + (f"; FinalError {_final_error(events)}" if not report["Success"] else "")
        + ("; MISSING the CPU-fallback warning" if needs_warning and not fallback else "")
    )
    return check.done(
        bool(ok), detail, Report=report, Warnings=warnings, Streams=_rendition_encoders(events)
    )


def _rendition_encoders(events) -> dict[str, str | None]:
    return {s["Name"]: s.get("Encoder") for s in _streams(events)}


def rendition_bytes(folder: Path, name: str) -> bytes:
    """A CMAF rendition as one fragmented MP4: its init segment and media segments in order."""
    segments = sorted(folder.glob(f"{name}_*.m4s"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    return (folder / f"{name}_init.mp4").read_bytes() + b"".join(p.read_bytes() for p in segments)


def keyframes(rendition: bytes) -> tuple[int, list[int]]:
    """(frames, frame indices of the keyframes) of a rendition; indices count from its first
    frame (B-frame reordering shifts every timestamp by the same delay)."""
    times, keys = [], []
    with av.open(io.BytesIO(rendition)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or 25
        for packet in container.demux(stream):
            if packet.pts is None:
                continue
            index = round(packet.pts * packet.time_base * rate)
            times.append(index)
            if packet.is_keyframe:
                keys.append(index)
    start = min(times, default=0)
    return len(times), sorted(k - start for k in keys)


def psnr(source: Path, rendition: bytes, width: int, height: int, frames: int) -> float:
    """Luma PSNR of a rendition against the source scaled to its size (bicubic)."""
    total, count = 0.0, 0
    with av.open(str(source)) as src, av.open(io.BytesIO(rendition)) as out:
        pairs = zip(src.decode(video=0), out.decode(video=0), strict=False)
        for index, (a, b) in enumerate(pairs):
            if index >= frames:
                break
            ref = a.reformat(width, height, "yuv420p", interpolation=Interpolation.BICUBIC)
            ref_y = ref.to_ndarray()[:height].astype(np.float64)
            out_y = b.reformat(format="yuv420p").to_ndarray()[:height].astype(np.float64)
            total += float(np.mean((ref_y - out_y) ** 2))
            count += 1
    mse = total / max(count, 1)
    return 99.0 if mse == 0 else 10 * math.log10(255**2 / mse)


def nvenc_check(check: Check, work: Path, source_dir: Path, source: Path, ladder) -> Check:
    results: dict[str, Any] = {}
    for label, hardware in (("nvenc", "Nvidia"), ("libx264", "None")):
        out = work / f"out-{label}"
        report, events, wall = run(job_json(source_dir, out, hardware, ladder))
        if not report["Success"]:
            return check.done(False, f"{label} job failed: {_final_error(events)}")
        success = next(e for e in events if e["MessageType"] == "JobSuccess")
        encoding_s = success["PhaseDurationsInSeconds"]["Encoding"]
        scores, idr = {}, {}
        for s in _streams(events):
            data = rendition_bytes(out, s["Name"])
            scores[s["Name"]] = round(psnr(source, data, s["Width"], s["Height"], PSNR_FRAMES), 2)
            idr[s["Name"]] = keyframes(data)
        results[label] = {
            "EncodingSeconds": encoding_s,
            "JobSeconds": round(wall, 2),
            "Encoders": report["Encoder"],
            "Psnr": scores,
            "Keyframes": idr,
            "Warnings": _warnings(events),
        }
    ratio = results["nvenc"]["EncodingSeconds"] / max(results["libx264"]["EncodingSeconds"], 1e-6)
    all_nvenc = results["nvenc"]["Encoders"] == "h264_nvenc"
    # Every rendition, NVENC or libx264: the same frame count and IDRs on the same frames
    # (one per 1-second segment), so that CPU and GPU renditions can be mixed.
    layouts = [v for r in results.values() for v in r["Keyframes"].values()]
    aligned = bool(layouts) and all(layout == layouts[0] for layout in layouts)
    frames, idr_frames = layouts[0] if layouts else (0, [])
    psnr_text = ", ".join(
        f"{name.split('-')[2]}p {results['nvenc']['Psnr'][name]} vs "
        f"{results['libx264']['Psnr'].get(name, '?')} dB"
        for name in results["nvenc"]["Psnr"]
    )
    detail = (
        f"encoding {results['nvenc']['EncodingSeconds']:.1f} s (NVENC) vs "
        f"{results['libx264']['EncodingSeconds']:.1f} s (libx264), ratio {ratio:.2f}; "
        f"PSNR {psnr_text}; encoders {results['nvenc']['Encoders']}; IDR frames "
        f"{'aligned' if aligned else 'NOT aligned'} ({idr_frames} of {frames})"
    )
    return check.done(all_nvenc and aligned, detail, Ratio=round(ratio, 3), **results)


def make_hdr_source(path: Path, seconds: float = 2.0, width: int = 640, height: int = 360) -> Path:
    """10-bit H.265 PQ/BT.2020 with mastering-display and light-level SEI, and AAC audio."""
    params = (
        "log-level=none:hdr10=1:colorprim=bt2020:transfer=smpte2084:colormatrix=bt2020nc:"
        "master-display=G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)L(10000000,1):"
        "max-cll=1000,400"
    )
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx265", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p10le"
        stream.codec_context.options = {"preset": "ultrafast", "x265-params": params}
        x = np.arange(width)[None, :]
        for index in range(round(seconds * 25)):
            rgb = np.zeros((height, width, 3), np.uint8)
            rgb[..., 0] = (x + index * 4) % 256
            rgb[..., 1] = 128
            frame = av.VideoFrame.from_ndarray(rgb, "rgb24").reformat(format="yuv420p10le")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def hdr_check(check: Check, work: Path) -> Check:
    source_dir = work / "hdr-in"
    source_dir.mkdir()
    make_hdr_source(source_dir / "hdr.mp4")
    out = work / "out-hdr"
    report, events, _ = run(
        job_json(source_dir, out, "Nvidia", [(360, 1200)], video_format="H265", hdr=True)
    )
    if not report["Success"]:
        return check.done(False, f"HDR job failed: {_final_error(events)}")
    stream = _streams(events)[0]
    with av.open(io.BytesIO(rendition_bytes(out, stream["Name"]))) as container:
        frame = next(container.decode(video=0))
        side = sorted(str(s.type) for s in frame.side_data)
        pix_fmt, trc = frame.format.name, frame.color_trc
    mastering = any("MASTERING" in s for s in side)
    detail = (
        f"encoder {stream.get('Encoder')}, {pix_fmt}, transfer {trc} (16 = PQ), "
        f"mastering-display SEI {'kept' if mastering else 'NOT kept'}"
    )
    # The colour description is the must; the SEI depends on the FFmpeg build (reported).
    return check.done(
        stream.get("Encoder") == "hevc_nvenc" and trc == 16,
        detail,
        SideData=side,
        MasteringDisplay=mastering,
    )


# -------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    parser.add_argument("--seconds", type=float, default=4.0, help="source length (GPU)")
    args = parser.parse_args(argv)
    console = Console()
    started = time.perf_counter()
    checks: list[Check] = []
    checks.append(timed(Check("vipe doctor"), doctor_check))
    node = probe()
    caps = node.capabilities
    gpu = bool(node.gpus) or node.cuda.ok
    with tempfile.TemporaryDirectory(prefix="vipe-gpu-check-") as tmp:
        work = Path(tmp)
        for codec, encoder in (("H.264", "libx264"), ("H.265", "libx265")):
            check = Check(f"NVDEC 1080p {codec}")
            if not node.cuda.ok:
                checks.append(check.skip(f"no GPU ({node.cuda.detail})"))
                continue
            source = make_video(work / f"{encoder}.mp4", encoder, args.seconds, 1920, 1080)
            checks.append(timed(check, lambda c, s=source: nvdec_check(c, s)))
        source_dir = work / "in"
        seconds, size, ladder = (
            (args.seconds, (1920, 1080), LADDER) if gpu else (2, (640, 360), SMALL_LADDER)
        )
        source = make_sample_source(source_dir / "source.mp4", int(seconds), *size)
        checks.append(
            timed(
                Check("job, HardwareAcceleration Auto"),
                lambda c: auto_check(c, node, work, source_dir, ladder),
            )
        )
        check = Check("ladder NVENC vs libx264")
        if caps.nvenc_encoders:
            checks.append(timed(check, lambda c: nvenc_check(c, work, source_dir, source, ladder)))
        else:
            checks.append(check.skip(caps.no_nvenc_reason() if gpu else "no GPU"))
        check = Check("HDR10 H.265 on NVENC")
        if caps.nvenc_10bit:
            checks.append(timed(check, lambda c: hdr_check(c, work)))
        else:
            checks.append(check.skip("no 10-bit hevc_nvenc" if gpu else "no GPU"))
    result = {
        "Gpu": caps.gpu_name or "no GPU",
        "Driver": caps.driver,
        "NvencEncoders": sorted(caps.nvenc_encoders),
        "NvencSessions": caps.nvenc_sessions,
        "NvdecCodecs": sorted(caps.nvdec_codecs),
        "Seconds": round(time.perf_counter() - started, 1),
        "Passed": all(c.status != FAIL for c in checks),
        "Checks": [c.as_json() for c in checks],
    }
    table = Table(title=f"vipe GPU check: {result['Gpu']} ({result['Seconds']} s)")
    for column in ("check", "result", "s", "detail"):
        table.add_column(column)
    colours = {PASS: "green", FAIL: "red", SKIP: "yellow"}
    for c in checks:
        status = f"[{colours[c.status]}]{c.status}[/{colours[c.status]}]"
        table.add_row(c.name, status, f"{c.seconds:.1f}", c.detail)
    console.print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0 if result["Passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
