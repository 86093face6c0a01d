"""`vipe demo`: make a sample source with PyAV and a job for it, so a fresh install can run a
whole job on the embedded default (Local storage, no server) with nothing downloaded."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def make_sample_source(path: Path, seconds: int = 8, width: int = 1280, height: int = 720) -> Path:
    """An H.264/AAC MP4: moving colour bars with a sweeping bar, and a stereo tone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = 25
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=rate)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.codec_context.options = {"preset": "veryfast", "crf": "20"}
        audio = container.add_stream("aac", rate=48000)
        audio.layout = "stereo"
        audio.metadata["language"] = "eng"
        x = np.arange(width)[None, :]
        y = np.arange(height)[:, None]
        for index in range(seconds * rate):
            image = np.empty((height, width, 3), np.uint8)
            image[..., 0] = (x * 255 // width + index * 3) % 256
            image[..., 1] = (y * 255 // height + index * 2) % 256
            image[..., 2] = 128 + 127 * np.sin((x + y + index * 8) / 40.0)
            bar = (index * 16) % width
            image[:, bar : bar + 24] = 255
            frame = av.VideoFrame.from_ndarray(image, "rgb24")
            frame.pts = index
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        samples = seconds * 48000
        for start in range(0, samples, 1024):
            t = np.arange(start, min(start + 1024, samples)) / 48000
            tone = 0.2 * np.sin(2 * np.pi * 440 * t).astype(np.float32)
            chunk = av.AudioFrame.from_ndarray(np.stack([tone, tone]), "fltp", "stereo")
            chunk.sample_rate, chunk.pts, chunk.time_base = 48000, start, Fraction(1, 48000)
            container.mux(audio.encode(chunk))
        container.mux(audio.encode(None))
    return path


def make_demo(folder: Path) -> Path:
    """Write `folder/in/sample.mp4` and `folder/job.json` (a CMAF job to `folder/out/`)."""
    folder = folder.resolve()
    make_sample_source(folder / "in" / "sample.mp4")
    job = {
        "ExternalId": "vipe-demo",
        "ContentAcquisition": {"Provider": "Local", "UriPath": f"file://{folder / 'in'}/"},
        "MediaMappings": {"VideoStreamExpression": "^.*\\.(mp4|mov|mkv)$"},
        "ContentProcessing": {"OutputFormat": ["Cmaf"]},
        "ContentPublishing": {"Provider": "Local", "UriPath": f"file://{folder / 'out'}/"},
    }
    path = folder / "job.json"
    path.write_text(json.dumps(job, indent=2) + "\n")
    return path
