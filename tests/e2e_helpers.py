"""End-to-end test helpers: generated sources, running a job into temporary folders, reading a
package back through its manifests (`mpegdash`, `m3u8`) and checking what PyAV decodes from it.

Everything a package check needs comes from the job's own events: the planned renditions from
`VideoEncodingStarted`, the source's duration and frame rate from `ContentPreProcessed`.
Imported by the `test_e2e_*` modules; the `e2e_media` fixture is the session-wide source cache.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import av
import m3u8
import numpy as np
import pytest
from mediagen import AudioSpec, SubtitleSpec, draw_frame, make_media, read_frame_number
from mpegdash.parser import MPEGDASHParser

from engine.cancel import CancelToken
from engine.pipeline import run_job

FPS = 25
SEGMENT = 2.0  # seconds: a 4 s source gives two segments, a 5 s one three
BASE_FIELDS = (
    "JobId",
    "TenantId",
    "ExternalId",
    "ExternalType",
    "ExternalProvider",
    "MessageType",
    "Timestamp",
)
# Contract §8 phase events, in the order a successful job emits them.
PHASE_EVENTS = (
    "JobCreated",
    "ContentAcquired",
    "ContentMapped",
    "ContentPreProcessed",
    "VideoEncodingStarted",
    "EncodingFinished",
    "ContentPublished",
    "JobSuccess",
)
SMALL_LADDER = [{"Height": 180, "BitrateInKbps": 300}, {"Height": 120, "BitrateInKbps": 150}]
AAC_FRAME = Fraction(1024, 48000)


# ------------------------------------------------------------------------------------ sources


class MediaLibrary:
    """Generated sources, made on first use and kept for the whole session (on disk, so that
    every module's fixture instance shares them)."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def get(self, name: str, make: Callable[[Path], Any]) -> Path:
        path = self.folder / name
        if not path.exists():
            partial = path.with_name(f"partial-{name}")
            make(partial)
            partial.rename(path)
        return path

    # The sources the e2e tests use: 4 s, tiny, 25 fps unless the test is about something else.

    def cfr(self) -> Path:
        """320×180, 25 fps, 4 s, one English stereo AAC track."""
        return self.get("cfr.mp4", lambda p: make_media(p, duration=4.0))

    def five_seconds(self) -> Path:
        """5 s: the last segment (1 s) is shorter than the others (2 s)."""
        return self.get("five.mp4", lambda p: make_media(p, duration=5.0))

    def four_three(self) -> Path:
        return self.get("four-three.mp4", lambda p: make_media(p, width=320, height=240))

    def portrait(self) -> Path:
        return self.get("portrait.mp4", lambda p: make_media(p, width=180, height=320))

    def vfr(self) -> Path:
        """Frames 40 ms and 80 ms apart, alternating: 100 frames over 6 s, 16.67 fps average."""
        return self.get(
            "vfr.mkv",
            lambda p: make_media(p, duration=4.0, fps=25, frame_durations=[1, 2, 1, 2]),
        )

    def jittery(self) -> Path:
        """Frames 36 ms and 44 ms apart, alternating: variable timing around 25 fps."""
        return self.get(
            "jittery.mkv",
            lambda p: make_media(p, duration=4.0, fps=25, frame_durations=[0.9, 1.1]),
        )

    def two_languages_mkv(self) -> Path:
        """MKV: video, English and German audio, an English subrip and a German ass track."""
        return self.get(
            "movie.mkv",
            lambda p: make_media(
                p,
                duration=4.0,
                audio=[AudioSpec("eng"), AudioSpec("ger", frequency=660.0)],
                subtitles=[
                    SubtitleSpec("eng", "subrip"),
                    SubtitleSpec("ger", "ass", [(0.5, 1.5, "Hallo"), (2.0, 3.0, "Welt")]),
                ],
            ),
        )

    def audio_only(self) -> Path:
        return self.get("audio.m4a", lambda p: make_media(p, duration=4.0, video_codec=None))

    def hevc_hdr10(self) -> Path:
        """H.265 Main 10, PQ/BT.2020 with mastering display and content light level."""
        params = ":".join(
            [
                "colorprim=bt2020",
                "transfer=smpte2084",
                "colormatrix=bt2020nc",
                "master-display=G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)"
                "L(10000000,1)",
                "max-cll=1000,400",
                "hdr10=1",
                "repeat-headers=1",
                "log-level=error",
            ]
        )
        return self.get(
            "hdr10.mp4",
            lambda p: make_media(
                p,
                duration=4.0,
                video_codec="libx265",
                pix_fmt="yuv420p10le",
                video_options={"preset": "ultrafast", "x265-params": params},
            ),
        )

    def rendition(self, height: int) -> Path:
        """A pre-encoded rendition for packaging-only jobs: IDR frames forced every 2 s (the
        same instants in every size), no scene-cut keyframes."""
        width = height * 16 // 9 // 2 * 2

        def make(path: Path) -> None:
            make_media(
                path,
                duration=4.0,
                width=width,
                height=height,
                audio=[],
                video_options={
                    "preset": "veryfast",
                    "x264-params": "keyint=50:min-keyint=50:scenecut=0:open-gop=0",
                    "forced-idr": "1",
                    "b": f"{height * 2}k",
                },
            )

        return self.get(f"rendition-{height}.mp4", make)

    def offset(self, video_start: float, audio_start: float, audio_end: float) -> Path:
        """Video of 4 s from `video_start`; audio from `audio_start` to `audio_end` (seconds on
        the file's timeline), silent but for 50 ms bursts at CLICKS (timeline seconds)."""
        name = f"offset-{video_start}-{audio_start}-{audio_end}.mp4"
        return self.get(
            name, lambda p: make_offset_media(p, video_start, audio_start, audio_end, 4.0)
        )

    def ntsc(self) -> Path:
        """29.97 fps: a segment of 2 s is 59.94 frames."""
        return self.get(
            "ntsc.mp4", lambda p: make_media(p, duration=4.0, fps=Fraction(30000, 1001))
        )

    def rotated(self) -> Path:
        """A phone video: stored 320×180 with its audio, shown turned 90° clockwise."""

        def make(path: Path) -> None:
            with av.open(str(self.cfr())) as reader, av.open(str(path), "w") as writer:
                streams = {}
                for stream in reader.streams:
                    streams[stream.index] = writer.add_stream_from_template(stream)
                    if stream.type == "video":
                        streams[stream.index].set_display_rotation(-90)  # FFmpeg: anticlockwise
                for packet in reader.demux():
                    if packet.dts is not None:
                        packet.stream = streams[packet.stream.index]
                        writer.mux(packet)

        return self.get("rotated.mp4", make)

    def medium(self) -> Path:
        """10 s, for jobs that must still be encoding a moment after they start."""
        return self.get("medium.mp4", lambda p: make_media(p, duration=10.0))

    def faststart(self) -> Path:
        """`cfr()` with its index (moov) before the media data."""

        def make(path: Path) -> None:
            with (
                av.open(str(self.cfr())) as source,
                av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as target,
            ):
                streams = {s.index: target.add_stream_from_template(s) for s in source.streams}
                for packet in source.demux():
                    if packet.dts is not None:
                        packet.stream = streams[packet.stream.index]
                        target.mux(packet)

        return self.get("faststart.mp4", make)

    def srt(self) -> Path:
        text = (
            "1\n00:00:00,500 --> 00:00:01,500\nBonjour\n\n2\n00:00:02,000 --> 00:00:03,000\nMonde\n"
        )
        return self.get("subtitle.srt", lambda p: p.write_text(text, encoding="utf-8"))

    def long(self, seconds: int) -> Path:
        """640×360 for the memory test (no frame of it is kept by the test)."""
        return self.get(
            f"long-{seconds}.mp4",
            lambda p: make_media(
                p, duration=seconds, width=640, height=360, video_options={"preset": "ultrafast"}
            ),
        )


CLICKS = (1.2, 3.2)  # seconds on the source timeline: frames 25 and 75 of offset()'s video


def make_offset_media(
    path: Path, video_start: float, audio_start: float, audio_end: float, video_seconds: float
) -> None:
    """An MP4 whose tracks start and end at different times (see `MediaLibrary.offset`)."""
    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = 320, 180, "yuv420p"
        video.codec_context.options = {"preset": "ultrafast"}
        audio = container.add_stream("aac", rate=48000)
        audio.layout = "stereo"
        audio.metadata["language"] = "eng"
        first = round(video_start * FPS)
        for index in range(round(video_seconds * FPS)):
            frame = av.VideoFrame.from_ndarray(draw_frame(index, 320, 180), "rgb24")
            frame = frame.reformat(format="yuv420p")
            frame.pts, frame.time_base = first + index, Fraction(1, FPS)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        mux_clicks(container, audio, round(audio_start * 48000), round(audio_end * 48000), CLICKS)


def mux_clicks(container: Any, audio: Any, start: int, end: int, clicks: tuple[float, ...]) -> None:
    """Encode 48 kHz stereo samples `start`..`end` of the source timeline into `audio`: silence
    with a 50 ms 1 kHz burst at each of `clicks` (seconds); then flush the encoder."""
    for position in range(start, end, 1024):
        t = np.arange(position, min(position + 1024, end)) / 48000
        tone = np.zeros(len(t), dtype=np.float32)
        for click in clicks:
            inside = (t >= click) & (t < click + 0.05)
            tone[inside] = 0.8 * np.sin(2 * np.pi * 1000 * (t[inside] - click))
        frame = av.AudioFrame.from_ndarray(np.stack([tone, tone]), "fltp", "stereo")
        frame.sample_rate, frame.pts, frame.time_base = 48000, position, Fraction(1, 48000)
        container.mux(audio.encode(frame))
    container.mux(audio.encode(None))


def onsets(data: bytes, threshold: float = 0.5) -> list[float]:
    """Presentation times (s) where decoded audio first rises above `threshold` × its peak after
    at least 0.2 s below it: the bursts of `make_offset_media`."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        frames = [(float(f.time or 0.0), f.to_ndarray()) for f in container.decode(stream)]
    peak = max(float(np.abs(samples).max()) for _, samples in frames)
    times: list[float] = []
    last_loud = -1.0
    for start, samples in frames:
        level = np.abs(samples).max(axis=0)
        for index in np.nonzero(level > threshold * peak)[0]:
            time = start + index / rate
            if time - last_loud > 0.2:
                times.append(time)
            last_loud = time
    return times


@pytest.fixture(scope="session")
def e2e_media(tmp_path_factory) -> MediaLibrary:
    """The session's generated sources (registered for every test module by conftest.py)."""
    return MediaLibrary(tmp_path_factory.getbasetemp() / "e2e-media")


def input_folder(root: Path, *sources: Path | tuple[Path, str]) -> Path:
    """An input folder under `root` holding copies of `sources` (optionally renamed)."""
    folder = root / "in"
    folder.mkdir(parents=True, exist_ok=True)
    for source in sources:
        path, name = source if isinstance(source, tuple) else (source, source.name)
        shutil.copyfile(path, folder / name)
    return folder


# ----------------------------------------------------------------------------------- the job


def make_job(
    input_dir: Path,
    output_dir: Path,
    *,
    formats: list[str] | None = None,
    mappings: dict[str, Any] | None = None,
    **processing: Any,
) -> dict[str, Any]:
    """A Local → Local job: Speed, the small ladder and 2 s segments unless overridden."""
    content_processing = {
        "OutputFormat": formats or ["Dash"],
        "OptimizeFor": "Speed",
        "SegmentLengthInSeconds": SEGMENT,
        "VideoRepresentations": SMALL_LADDER,
        **processing,
    }
    return {
        "ExternalId": "e2e-42",
        "ExternalType": "movie",
        "ExternalProvider": "tests",
        "ContentAcquisition": {"Provider": "Local", "UriPath": input_dir.as_uri() + "/"},
        "MediaMappings": {
            k: v
            for k, v in {
                "VideoStreamExpression": r"^.*\.(mp4|mkv|mov)$",
                **(mappings or {}),
            }.items()
            if v is not None
        },
        "ContentProcessing": {k: v for k, v in content_processing.items() if v is not None},
        "ContentPublishing": {"Provider": "Local", "UriPath": output_dir.as_uri() + "/"},
    }


@dataclass
class JobRun:
    """A finished job: its report, its events and its folders."""

    job: dict[str, Any]
    report: dict[str, Any]
    events: list[dict[str, Any]]
    input_dir: Path
    output_dir: Path

    def of_type(self, message_type: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["MessageType"] == message_type]

    def one(self, message_type: str) -> dict[str, Any]:
        found = self.of_type(message_type)
        assert len(found) == 1, f"{len(found)} {message_type} events: {self.types}"
        return found[0]

    @property
    def types(self) -> list[str]:
        return [e["MessageType"] for e in self.events]

    @property
    def final_error(self) -> dict[str, Any] | None:
        errors = self.of_type("FinalError")
        return errors[-1] if errors else None

    @property
    def planned_video(self) -> list[dict[str, Any]]:
        started = self.one("VideoEncodingStarted")["Renditions"]
        return [r for r in started if "Width" in r]

    @property
    def planned_audio(self) -> list[dict[str, Any]]:
        return [r for r in self.one("VideoEncodingStarted")["Renditions"] if "Channels" in r]

    @property
    def source_frame_rate(self) -> Fraction:
        return Fraction(self.one("ContentPreProcessed")["FrameRate"]).limit_denominator(1001)

    @property
    def segment_seconds(self) -> float:
        processing = self.job["ContentProcessing"]
        return float(processing.get("SegmentLengthInSeconds", 4))

    def assert_success(self) -> None:
        assert self.report["Success"], (self.final_error, self.report)
        assert self.final_error is None


def run(
    root: Path,
    job: dict[str, Any],
    *,
    cancel: CancelToken | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> JobRun:
    """Run `job` in this process (work folder under `root`); the job's folders are its own."""
    events: list[dict[str, Any]] = []

    def sink(event: dict[str, Any]) -> None:
        json.dumps(event)  # every event must be JSON-serialisable
        events.append(event)
        if on_event:
            on_event(event)

    report = run_job(job, on_event=sink, cancel=cancel, workdir=root / "work")
    assert not (root / "work").exists(), "the work folder was not removed"
    return JobRun(
        job,
        report,
        events,
        Path(job["ContentAcquisition"]["UriPath"].removeprefix("file://")),
        Path(job["ContentPublishing"]["UriPath"].removeprefix("file://")),
    )


def run_simple(root: Path, *sources: Path | tuple[Path, str], **job_options: Any) -> JobRun:
    """Copy `sources` into `root/in`, run a job with `job_options` into `root/out`."""
    job = make_job(input_folder(root, *sources), root / "out", **job_options)
    return run(root, job)


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`vipe ...` in a subprocess (the same interpreter)."""
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# ------------------------------------------------------------------------- reading a package


@dataclass(frozen=True)
class Piece:
    """Bytes of a file: all of it, or `length` bytes from `offset`."""

    path: Path
    offset: int = 0
    length: int | None = None

    def read(self) -> bytes:
        assert self.path.is_file(), f"missing {self.path}"
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read() if self.length is None else handle.read(self.length)
        if self.length is not None:
            assert len(data) == self.length, f"{self.path.name}: range past the end"
        return data

    @property
    def size(self) -> int:
        return self.length if self.length is not None else self.path.stat().st_size


@dataclass
class Track:
    """One rendition as a manifest addresses it."""

    manifest: str  # "dash" or "hls"
    kind: str  # "video", "audio", "text"
    name: str
    init: Piece | None
    segments: list[Piece]
    durations: list[float]  # seconds, as the manifest says
    attributes: dict[str, Any] = field(default_factory=dict)

    def segment_bytes(self, index: int) -> bytes:
        return (self.init.read() if self.init else b"") + self.segments[index].read()

    def data(self) -> bytes:
        return (self.init.read() if self.init else b"") + b"".join(s.read() for s in self.segments)

    @property
    def files(self) -> set[Path]:
        return {p.path for p in [*([self.init] if self.init else []), *self.segments]}


def _range(text: str) -> tuple[int, int]:
    start, end = map(int, text.split("-"))
    return start, end - start + 1


def _sidx_sizes(data: bytes) -> tuple[int, list[int]]:
    """(first_offset, referenced sizes) of a sidx box starting at data[0]."""
    version = data[8]
    pos = 20
    if version == 0:
        first = int.from_bytes(data[pos + 4 : pos + 8], "big")
        pos += 8
    else:
        first = int.from_bytes(data[pos + 8 : pos + 16], "big")
        pos += 16
    count = int.from_bytes(data[pos + 2 : pos + 4], "big")
    pos += 4
    sizes = []
    for _ in range(count):
        sizes.append(int.from_bytes(data[pos : pos + 4], "big") & 0x7FFFFFFF)
        pos += 12
    return first, sizes


def read_dash(mpd_path: Path) -> tuple[Any, list[Track]]:
    """Parse an MPD with `mpegdash` and address every Representation's bytes."""
    folder = mpd_path.parent
    mpd = MPEGDASHParser.parse(str(mpd_path))
    labels = dash_labels(mpd_path)
    tracks = []
    for number, adaptation in enumerate(mpd.periods[0].adaptation_sets):
        kind = adaptation.content_type or (adaptation.mime_type or "").split("/")[0]
        for rep in adaptation.representations:
            attributes = {
                "width": rep.width,
                "height": rep.height,
                "codecs": rep.codecs or adaptation.codecs,
                "bandwidth": rep.bandwidth,
                "lang": adaptation.lang,
                "label": labels[number],
                "frame_rate": rep.frame_rate or adaptation.frame_rate,
            }
            if (kind == "text" or (rep.base_urls and not rep.segment_bases)) and not (
                rep.segment_templates
            ):
                path = folder / rep.base_urls[0].base_url_value
                tracks.append(Track("dash", kind, rep.id, None, [Piece(path)], [], attributes))
                continue
            if kind == "image":
                continue
            if rep.segment_bases:
                path = folder / rep.base_urls[0].base_url_value
                base = rep.segment_bases[0]
                init = Piece(path, *_range(base.initializations[0].range))
                index_start, index_length = _range(base.index_range)
                first, sizes = _sidx_sizes(Piece(path, index_start, index_length).read())
                position = index_start + index_length + first
                segments = []
                for size in sizes:
                    segments.append(Piece(path, position, size))
                    position += size
                tracks.append(Track("dash", kind, rep.id, init, segments, [], attributes))
                continue
            template = (rep.segment_templates or adaptation.segment_templates)[0]
            timescale = int(template.timescale or 1)
            durations: list[float] = []
            entries = template.segment_timelines[0].Ss
            attributes["timeline_start"] = (entries[0].t or 0) - (
                template.presentation_time_offset or 0
            )
            for entry in entries:
                durations += [entry.d / timescale] * (1 + (entry.r or 0))
            first_number = int(template.start_number if template.start_number is not None else 1)
            init_name = template.initialization.replace("$RepresentationID$", rep.id)
            media = template.media.replace("$RepresentationID$", rep.id)
            segments = [
                Piece(folder / media.replace("$Number$", str(first_number + i)))
                for i in range(len(durations))
            ]
            tracks.append(
                Track(
                    "dash", kind, rep.id, Piece(folder / init_name), segments, durations, attributes
                )
            )
    return mpd, tracks


def dash_labels(mpd_path: Path) -> list[str | None]:
    """The `Label` element of each AdaptationSet of the first Period (`mpegdash` drops it)."""
    namespace = {"d": "urn:mpeg:dash:schema:mpd:2011"}
    root = ElementTree.parse(mpd_path).getroot()
    period = root.find("d:Period", namespace)
    return [
        (a.findtext("d:Label", namespaces=namespace) or a.get("label"))
        for a in period.findall("d:AdaptationSet", namespace)
    ]


def read_hls_media(playlist_path: Path, kind: str, name: str, attributes: dict) -> Track:
    folder = playlist_path.parent
    playlist = m3u8.load(str(playlist_path))
    init = None
    if playlist.segment_map:
        entry = playlist.segment_map[0]
        if entry.byterange:
            length, _, start = entry.byterange.partition("@")
            init = Piece(folder / entry.uri, int(start or 0), int(length))
        else:
            init = Piece(folder / entry.uri)
    segments, durations = [], []
    position: dict[str, int] = {}
    for segment in playlist.segments:
        if segment.byterange:
            length, _, start = segment.byterange.partition("@")
            offset = int(start) if start else position[segment.uri]
            segments.append(Piece(folder / segment.uri, offset, int(length)))
            position[segment.uri] = offset + int(length)
        else:
            segments.append(Piece(folder / segment.uri))
        durations.append(float(segment.duration))
    assert playlist.is_endlist, f"{playlist_path.name}: no EXT-X-ENDLIST"
    for segment in playlist.segments:
        assert segment.duration <= playlist.target_duration + 0.5, playlist_path.name
    return Track("hls", kind, name, init, segments, durations, {**attributes, "playlist": playlist})


def read_hls(master_path: Path) -> tuple[Any, list[Track]]:
    """Parse a master playlist with `m3u8` and every media playlist it references."""
    folder = master_path.parent
    master = m3u8.load(str(master_path))
    assert master.is_variant, f"{master_path.name} is not a master playlist"
    tracks: list[Track] = []
    seen: set[str] = set()
    for variant in master.playlists:
        info = variant.stream_info
        if variant.uri in seen:
            continue
        seen.add(variant.uri)
        kind = "video" if info.resolution else "audio"
        attributes = {
            "width": info.resolution[0] if info.resolution else None,
            "height": info.resolution[1] if info.resolution else None,
            "codecs": info.codecs,
            "bandwidth": info.bandwidth,
            "audio_group": info.audio,
        }
        tracks.append(
            read_hls_media(folder / variant.uri, kind, Path(variant.uri).stem, attributes)
        )
    for media in master.media:
        if not media.uri or media.uri in seen:
            continue
        seen.add(media.uri)
        kind = {"AUDIO": "audio", "SUBTITLES": "text", "CLOSED-CAPTIONS": "text"}[media.type]
        attributes = {"lang": media.language, "label": media.name, "group": media.group_id}
        tracks.append(read_hls_media(folder / media.uri, kind, Path(media.uri).stem, attributes))
    for iframe in master.iframe_playlists:  # I-frame playlists: every range must exist
        read_hls_media(folder / iframe.uri, "iframes", Path(iframe.uri).stem, {})
    return master, tracks


# ---------------------------------------------------------------------------- what PyAV sees


@dataclass
class VideoSeen:
    codec: str
    codec_tag: str
    width: int
    height: int
    pix_fmt: str
    frames: int
    key_times: list[Fraction]  # seconds from the first presented frame
    frame_numbers: list[int]
    color: tuple[Any, Any, Any]  # (primaries, transfer, matrix) of the first decoded frame
    first_frame: np.ndarray | None = None


@dataclass
class AudioSeen:
    codec: str
    channels: int
    sample_rate: int
    duration: Fraction  # presented seconds (encoder priming excluded where signalled)
    peak: float  # largest absolute decoded sample


def _open(data: bytes):
    return av.open(io.BytesIO(data))


def see_video(
    data: bytes, *, numbers: bool = True, keep: Callable[[int, np.ndarray], None] | None = None
) -> VideoSeen:
    """Decode a whole video rendition. `keep(index, rgb)` sees every decoded frame."""
    with _open(data) as container:
        stream = container.streams.video[0]
        time_base = stream.time_base
        times, key_pts = [], []
        decoded: list[int] = []
        color = (None, None, None)
        count = 0
        for packet in container.demux(stream):
            if packet.pts is not None:
                times.append(packet.pts)
                if packet.is_keyframe:
                    key_pts.append(packet.pts)
            for frame in packet.decode():
                if count == 0:
                    color = (frame.color_primaries, frame.color_trc, frame.colorspace)
                if numbers or keep:
                    rgb = frame.to_ndarray(format="rgb24")
                    if numbers:
                        decoded.append(read_frame_number(rgb))
                    if keep:
                        keep(count, rgb)
                count += 1
        start = min(times)
        context = stream.codec_context
        return VideoSeen(
            codec=context.name,
            codec_tag=stream.codec_tag,
            width=context.width,
            height=context.height,
            pix_fmt=context.pix_fmt,
            frames=count,
            key_times=sorted((p - start) * time_base for p in key_pts),
            frame_numbers=decoded,
            color=color,
        )


def see_audio(data: bytes) -> AudioSeen:
    with _open(data) as container:
        stream = container.streams.audio[0]
        starts, ends = [], []
        peak = 0.0
        for packet in container.demux(stream):
            if packet.pts is not None:
                starts.append(packet.pts)
                ends.append(packet.pts + (packet.duration or 0))
            for frame in packet.decode():
                peak = max(peak, float(np.abs(frame.to_ndarray()).max(initial=0)))
        # Negative pts: encoder priming that the init segment's edit list tells players to skip.
        start = max(min(starts), 0) if min(starts) < 0 else min(starts)
        context = stream.codec_context
        return AudioSeen(
            codec=context.name,
            channels=context.channels,
            sample_rate=context.sample_rate,
            duration=(max(ends) - start) * stream.time_base,
            peak=peak,
        )


def count_frames(path: Path) -> int:
    """Video frames of a (CFR) source file: its packets, counted."""
    with av.open(str(path)) as container:
        return sum(1 for p in container.demux(container.streams.video[0]) if p.size)


def segment_frames(track: Track) -> list[tuple[int, bool]]:
    """(video frames, starts with a key frame) of each segment, each demuxed on its own."""
    result = []
    for index in range(len(track.segments)):
        with _open(track.segment_bytes(index)) as container:
            packets = [p for p in container.demux(container.streams.video[0]) if p.size]
        result.append((len(packets), bool(packets) and packets[0].is_keyframe))
    return result


# ------------------------------------------------------------------------------------ checks


def expected_boundaries(frames: int, rate: Fraction, segment: float) -> list[Fraction]:
    """Segment start times: the frame nearest to each multiple of the segment length."""
    step = Fraction(segment).limit_denominator(1000)
    result, n = [], 0
    while True:
        index = math.floor(n * step * rate + Fraction(1, 2))
        if index >= frames:
            return result
        result.append(index / rate)
        n += 1


@dataclass
class PackageCheck:
    """What `check_package` found, for tests that look further."""

    tracks: dict[str, list[Track]]  # manifest path (relative) -> tracks
    video: dict[str, VideoSeen]  # rendition name -> first decode of it
    audio: dict[str, AudioSeen]


def manifests_of(run_: JobRun) -> list[Path]:
    return [run_.output_dir / m for m in run_.one("ContentPublished")["Manifests"]]


def master_manifests(run_: JobRun) -> list[Path]:
    """The MPDs and the HLS master playlists of a package."""
    result = []
    for path in manifests_of(run_):
        is_master = path.suffix == ".m3u8" and "#EXT-X-STREAM-INF" in path.read_text()
        if path.suffix == ".mpd" or is_master:
            result.append(path)
    return result


def check_package(
    run_: JobRun,
    *,
    frame_rate: Fraction | None = None,
    source_frames: int | None = None,
    cfr: bool = True,
    numbers: bool = True,
    expect_audio: bool = True,
    manifests: list[Path] | None = None,
) -> PackageCheck:
    """Every check the issue asks of every e2e job's output (see the module docstring of
    `test_e2e_formats`): manifests parse and reference existing files, planned renditions exist
    at their size and codec, key frames align on segment boundaries, segment lengths, frame
    count, audio/video duration, frame numbers, HLS BANDWIDTH. `manifests`: the MPDs and
    master playlists to read (default: those the job published)."""
    run_.assert_success()
    segment = run_.segment_seconds
    rate = frame_rate or run_.source_frame_rate
    if source_frames is None:
        source_frames = count_frames(run_.input_dir / run_.one("ContentMapped")["VideoFile"])
    masters = master_manifests(run_) if manifests is None else manifests
    assert masters, "no manifest"
    referenced: set[Path] = set()
    tracks_by_manifest: dict[str, list[Track]] = {}
    seen_video: dict[str, VideoSeen] = {}
    seen_audio: dict[str, AudioSeen] = {}
    planned = {r["Name"]: r for r in run_.planned_video}
    codec_names = {"H264": "h264", "H265": "hevc"}
    for manifest in masters:
        if manifest.suffix == ".mpd":
            _, tracks = read_dash(manifest)
        else:
            master, tracks = read_hls(manifest)
            _check_hls_bandwidth(master, tracks)
            referenced |= {manifest.parent / p.uri for p in master.playlists}
            referenced |= {manifest.parent / m.uri for m in master.media if m.uri}
            referenced |= {manifest.parent / p.uri for p in master.iframe_playlists}
        key = manifest.name if manifests else manifest.relative_to(run_.output_dir).as_posix()
        if manifests:
            key = f"{manifest.parent.name}/{key}"
        tracks_by_manifest[key] = tracks
        video = [t for t in tracks if t.kind == "video"]
        assert sorted(t.name for t in video) == sorted(planned), (key, planned)
        key_times: dict[str, list[Fraction]] = {}
        for track in tracks:
            referenced |= track.files
            # audio and video both start at zero on the presentation timeline
            assert track.attributes.get("timeline_start", 0) == 0, (key, track.name)
            if track.kind == "video":
                plan = planned[track.name]
                seen = see_video(track.data(), numbers=numbers and cfr)
                seen_video.setdefault(track.name, seen)
                assert (seen.width, seen.height) == (plan["Width"], plan["Height"]), track.name
                if track.attributes.get("width"):
                    assert track.attributes["width"] == plan["Width"]
                    assert track.attributes["height"] == plan["Height"]
                assert seen.codec == codec_names[plan["Codec"]], (track.name, seen.codec)
                if plan["Codec"] == "H265" and track.init is not None:
                    assert seen.codec_tag == "hvc1", track.name
                assert seen.frames == source_frames, (track.name, seen.frames, source_frames)
                if numbers and cfr:
                    assert seen.frame_numbers == list(range(source_frames)), track.name
                key_times[track.name] = seen.key_times
                _check_segments(track, rate, segment, source_frames)
            elif track.kind == "audio":
                seen_audio.setdefault(track.name, see_audio(track.data()))
                audio = seen_audio[track.name]
                video_seconds = Fraction(source_frames) / rate if planned else None
                if video_seconds is not None:
                    gap = abs(float(audio.duration - video_seconds))
                    assert gap < 0.05, (track.name, float(audio.duration), float(video_seconds))
                _check_manifest_durations(track, segment, AAC_FRAME * 2 + 1 / rate)
        expected = expected_boundaries(source_frames, rate, segment)
        for name, times in key_times.items():
            assert times == expected, (key, name, [float(t) for t in times])
        if expect_audio:
            assert any(t.kind == "audio" for t in tracks), key
    for path in referenced:
        assert path.is_file(), f"referenced but missing: {path}"
    return PackageCheck(tracks_by_manifest, seen_video, seen_audio)


def _check_segments(track: Track, rate: Fraction, segment: float, frames: int) -> None:
    """Every segment starts with a key frame; all but the last hold SegmentLengthInSeconds of
    frames (± 1); the manifest's durations say the same."""
    counts = segment_frames(track)
    assert sum(c for c, _ in counts) == frames, (track.name, counts)
    assert all(key for _, key in counts), (track.name, counts)
    per_segment = segment * rate
    for count, _ in counts[:-1]:
        assert abs(count - per_segment) <= 1, (track.name, counts)
    assert 0 < counts[-1][0] <= per_segment + 1, (track.name, counts)
    if track.durations:
        for (count, _), said in zip(counts, track.durations, strict=True):
            assert abs(said - float(count / rate)) <= float(1 / rate) + 0.001, (
                track.name,
                said,
                count,
            )
    _check_manifest_durations(track, segment, 1 / rate)


def _check_manifest_durations(track: Track, segment: float, tolerance) -> None:
    for said in track.durations[:-1]:
        assert abs(said - segment) <= float(tolerance) + 0.001, (track.name, track.durations)


def _check_hls_bandwidth(master, tracks: list[Track]) -> None:
    """BANDWIDTH ≥ the peak of every segment of the variant (video plus its audio group)."""
    by_name = {t.name: t for t in tracks}
    groups: dict[str, list[Track]] = {}
    for media in master.media:
        if media.type == "AUDIO" and media.uri:
            groups.setdefault(media.group_id, []).append(by_name[Path(media.uri).stem])
    for variant in master.playlists:
        info = variant.stream_info
        main = by_name[Path(variant.uri).stem]
        rates = [p.size * 8 / d for p, d in zip(main.segments, main.durations, strict=True)]
        audio_peak = 0.0
        for audio in groups.get(info.audio, []) if info.audio else []:
            sizes = [p.size * 8 / d for p, d in zip(audio.segments, audio.durations, strict=True)]
            audio_peak = max([audio_peak, *sizes])
        peak = max(rates) + (audio_peak if main.kind == "video" else 0)
        assert info.bandwidth >= peak, (variant.uri, info.bandwidth, peak)
        if info.average_bandwidth:
            assert info.average_bandwidth <= info.bandwidth, variant.uri


def check_events(run_: JobRun, *, success: bool = True) -> None:
    """Base fields on every event, phase events in contract order, progress throttling, the
    EncodingFinished streams and the report fields."""
    job_id = run_.report["JobId"]
    for event in run_.events:
        for name in BASE_FIELDS:
            assert name in event, (event["MessageType"], name)
        assert event["JobId"] == job_id
        assert event["ExternalId"] == run_.job.get("ExternalId", "")
        assert event["ExternalType"] == run_.job.get("ExternalType", "")
        assert event["ExternalProvider"] == run_.job.get("ExternalProvider", "")
    phases = [t for t in run_.types if t in PHASE_EVENTS or t == "FinalError"]
    if success:
        assert phases == list(PHASE_EVENTS), phases
    else:
        assert phases[-1] == "FinalError", phases
        assert phases[:-1] == list(PHASE_EVENTS[: len(phases) - 1]), phases
        assert run_.types[-1] == "FinalError"
    stamps = [e["Timestamp"] for e in run_.events]
    assert stamps == sorted(stamps)
    check_progress(run_.of_type("EncodingProgress"), complete=success)
    if success:
        streams = run_.one("EncodingFinished")["Streams"]
        assert streams
        for stream in streams:
            for name in ("Type", "Label", "Codecs", "BitrateInKbps", "InitFile", "FileTemplate"):
                assert name in stream, name
            if stream["Type"] == "Video":
                assert stream["Width"] and stream["Height"] and stream["FrameRate"]
                assert stream["Label"] in ("SD", "HD", "UHD1", "UHD2")
            if stream["Type"] == "Audio":
                assert stream["Language"] and stream["Label"] == "AUDIO"
            for name in ("Language", "KeyId", "Iv", "Width", "Height", "FrameRate"):
                assert name in stream, name
        assert run_.types[-1] == "JobSuccess"
    check_report(run_, success=success)


def check_progress(events: list[dict[str, Any]], *, complete: bool = True) -> None:
    """At most one per second and per whole percent, increasing, ending at 100."""
    import datetime

    values = [e["Progress"] for e in events]
    assert all(isinstance(v, int) and 0 <= v <= 100 for v in values), values
    assert values == sorted(set(values)), values
    times = [datetime.datetime.fromisoformat(e["Timestamp"]) for e in events]
    for (before, after), value in zip(itertools.pairwise(times), values[1:], strict=True):
        if value < 100:
            # (millisecond timestamps, truncated: a 1 s gap may read 0.999 s)
            assert (after - before).total_seconds() >= 0.998, values
    if complete:
        assert values and values[-1] == 100, values


def check_report(run_: JobRun, *, success: bool = True) -> None:
    import datetime

    report = run_.report
    for name in (
        "JobId",
        "TenantId",
        "ExternalId",
        "ExternalType",
        "ExternalProvider",
        "JobStartTime",
        "JobFinishedTime",
        "Success",
        "State",
        "AcquiredFilesSizeInBytes",
        "PublishedFilesSizeInBytes",
        "ExtractedVideoDurationInSeconds",
        "EncodedVideoDurationInSeconds",
        "VideoFormat",
        "BitrateVariants",
        "BitratesCount",
        "OutputFormat",
        "EncodingOptimizedFor",
        "Drm",
    ):
        assert name in report, name
    start = datetime.datetime.fromisoformat(report["JobStartTime"])
    end = datetime.datetime.fromisoformat(report["JobFinishedTime"])
    assert start.utcoffset() is not None and end.utcoffset() is not None
    assert start <= end
    assert report["ExternalId"] == run_.job.get("ExternalId", "")
    assert report["Success"] is success
    if success:
        assert report["State"] == "Succeeded" and "ErrorCode" not in report
        published = sum(p.stat().st_size for p in run_.output_dir.rglob("*") if p.is_file())
        assert report["PublishedFilesSizeInBytes"] == published
        acquired = run_.one("ContentAcquired")["BytesCount"]
        assert report["AcquiredFilesSizeInBytes"] == acquired
        bitrates = report["BitrateVariants"].split(",") if report["BitrateVariants"] else []
        assert len(bitrates) == report["BitratesCount"]
        formats = run_.job["ContentProcessing"]["OutputFormat"]
        assert report["OutputFormat"] == ",".join(f.upper() for f in formats)
    else:
        assert report["State"] in ("Failed", "Cancelled")
        assert report["ErrorCode"] == run_.final_error["ErrorCode"]


def output_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []
