"""Test media, generated with PyAV: short, small, deterministic.

Video frames show a moving gradient plus their own frame number drawn as a binary bar code in
the top rows (`read_frame_number` reads it back), so tests can check which frame they got.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

ASS_HEADER = b"""[Script Info]
ScriptType: v4.00+
PlayResX: 384
PlayResY: 288

[V4+ Styles]
Format: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, BackColour, \
Bold, Italic, Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, Outline, \
Shadow, Alignment, MarginL, MarginR, MarginV, Encoding
Style: Default,Arial,16,&Hffffff,&Hffffff,&H0,&H0,0,0,0,0,100,100,0,0,1,1,0,2,10,10,10,0

[Events]
Format: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text
""".replace(b"\\\n", b"")
BAR_BITS = 16  # frame number bits drawn as black/white blocks across the top of each frame


@dataclass
class AudioSpec:
    language: str | None = "eng"
    channels: int = 2
    codec: str = "aac"
    sample_rate: int = 48000
    frequency: float = 440.0


@dataclass
class SubtitleSpec:
    language: str | None = "eng"
    codec: str = "subrip"  # subrip, ass, mov_text (mp4), webvtt
    cues: list[tuple[float, float, str]] = field(
        default_factory=lambda: [(0.5, 1.5, "Hello"), (2.0, 3.0, "World")]
    )


def draw_frame(index: int, width: int, height: int) -> np.ndarray:
    """An RGB frame: a gradient that moves with `index` and the frame number as a bar code."""
    x = np.arange(width, dtype=np.int32)[None, :]
    y = np.arange(height, dtype=np.int32)[:, None]
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[..., 0] = ((x + index * 4) % 256).astype(np.uint8)
    image[..., 1] = ((y + index * 2) % 256).astype(np.uint8)
    image[..., 2] = ((x + y + index * 8) % 256).astype(np.uint8)
    bar_height = max(8, height // 12)
    block = width // BAR_BITS
    for bit in range(BAR_BITS):
        value = 255 if (index >> bit) & 1 else 0
        image[:bar_height, bit * block : (bit + 1) * block] = value
    return image


def read_frame_number(rgb: np.ndarray) -> int:
    """Read back the number `draw_frame` drew (works after scaling and lossy coding)."""
    height, width = rgb.shape[:2]
    bar_height = max(2, height // 12)
    block = width / BAR_BITS
    number = 0
    for bit in range(BAR_BITS):
        left, right = int(bit * block + block / 4), int((bit + 1) * block - block / 4)
        luma = rgb[1 : bar_height - 1, left:right].mean()
        if luma > 128:
            number |= 1 << bit
    return number


def make_media(
    path: Path,
    *,
    duration: float = 4.0,
    width: int = 320,
    height: int = 180,
    fps: int | Fraction = 25,
    video_codec: str | None = "libx264",
    pix_fmt: str = "yuv420p",
    audio: list[AudioSpec] | None = None,
    subtitles: list[SubtitleSpec] | None = None,
    gop: int | None = None,
    sample_aspect_ratio: Fraction | None = None,
    video_options: dict[str, str] | None = None,
    frame_durations: list[int] | None = None,
) -> Path:
    """Write a media file. `audio=None` gives one stereo English AAC track; `audio=[]` none.

    `frame_durations` (in 1/fps units, repeated cyclically) makes a variable-frame-rate file.
    """
    audio = [AudioSpec()] if audio is None else audio
    subtitles = subtitles or []
    path.parent.mkdir(parents=True, exist_ok=True)
    container = av.open(str(path), "w")
    video = None
    if video_codec:
        rate = Fraction(fps)
        video = container.add_stream(video_codec, rate=rate)
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        if frame_durations is not None:  # millisecond timestamps for irregular frame times
            video.time_base = video.codec_context.time_base = Fraction(1, 1000)
        if gop:
            video.codec_context.gop_size = gop
        if video_options:
            video.codec_context.options = dict(video_options)
        if sample_aspect_ratio:
            video.codec_context.sample_aspect_ratio = sample_aspect_ratio
    audio_streams = []
    for spec in audio:
        stream = container.add_stream(spec.codec, rate=spec.sample_rate)
        stream.layout = {1: "mono", 2: "stereo", 6: "5.1"}[spec.channels]
        if spec.language:
            stream.metadata["language"] = spec.language
        audio_streams.append((stream, spec))
    subtitle_streams = []
    for spec in subtitles:
        stream = container.add_stream(spec.codec)
        stream.codec_context.subtitle_header = ASS_HEADER  # the text encoders need one
        stream.codec_context.time_base = Fraction(1, 1000)
        if spec.language:
            stream.metadata["language"] = spec.language
        subtitle_streams.append((stream, spec))

    if video is not None:
        _write_video(container, video, duration, Fraction(fps), frame_durations)
    for stream, spec in audio_streams:
        _write_audio(container, stream, spec, duration)
    for stream, spec in subtitle_streams:
        _write_subtitles(container, stream, spec)
    container.close()
    return path


def _write_video(container, stream, duration, fps, frame_durations):
    count = round(duration * fps)
    pts = 0
    for index in range(count):
        frame = av.VideoFrame.from_ndarray(draw_frame(index, stream.width, stream.height), "rgb24")
        frame = frame.reformat(format=stream.pix_fmt)
        if frame_durations is None:
            frame.pts = index
        else:
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            step = frame_durations[index % len(frame_durations)]
            pts += round(step * 1000 / fps)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)


def _write_audio(container, stream, spec: AudioSpec, duration: float):
    rate, channels = spec.sample_rate, spec.channels
    frame_size = stream.codec_context.frame_size or 1024
    total = int(duration * rate)
    layout = {1: "mono", 2: "stereo", 6: "5.1"}[channels]
    for start in range(0, total, frame_size):
        n = min(frame_size, total - start)
        t = (np.arange(start, start + n) / rate).astype(np.float32)
        tones = [
            0.2 * np.sin(2 * np.pi * spec.frequency * (1 + c / 4) * t) for c in range(channels)
        ]
        frame = av.AudioFrame.from_ndarray(np.stack(tones).astype(np.float32), "fltp", layout)
        frame.sample_rate = rate
        frame.pts = start
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)


def _write_subtitles(container, stream, spec: SubtitleSpec):
    stream.time_base = Fraction(1, 1000)
    for start, end, text in spec.cues:
        payload = text.encode()
        if spec.codec == "ass":
            payload = f"0,0,Default,,0,0,0,,{text}".encode()
        elif spec.codec == "mov_text":
            payload = len(payload).to_bytes(2, "big") + payload
        packet = av.Packet(payload)
        packet.stream = stream
        packet.pts = packet.dts = int(start * 1000)
        packet.duration = int((end - start) * 1000)
        packet.time_base = stream.time_base
        container.mux(packet)
