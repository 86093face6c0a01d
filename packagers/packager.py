"""`package()`: per-rendition track files in, DASH / HLS / CMAF packages out.

One `FormatPackager` per contract OutputFormat (`PACKAGERS`, keyed by the job's spelling).
Folders follow the contract (§5): one format goes straight into the output folder; several go
into one sub-folder each (`dash/`, `hls/`, `hlsts/`), each complete; `Cmaf` and `DashOnDemand`
combine with nothing. Media is written once per layout and copied into further folders that
need the same layout. Manifests are written after every media file of every format exists.
With `PARALLEL_MIN_BYTES` of media or more, the tracks are written in spawned worker
processes, one per usable CPU (`write_tracks`).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar, Literal

from packagers import cmaf, dash, hls, mp4, thumbnails, ts
from packagers.cmaf import TimedTrack
from packagers.errors import PackagingError
from packagers.hooks import ImageInput
from packagers.layout import ImageRef, TextRef, TrackLayout
from packagers.model import FORMATS, PackageResult, PackageSpec, StreamInfo, TextInput, TrackInput

logger = logging.getLogger(__name__)

Layout = Literal["segments", "single", "ts", "ts-single"]
HLS_FMP4_VERSION = 7
HLS_TS_VERSION = 4  # EXT-X-BYTERANGE and EXT-X-I-FRAMES-ONLY need 4
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class PackageContext:
    """The state of one `package()` call that the format packagers share."""

    def __init__(
        self,
        tracks: list[TimedTrack],
        texts: list[TextInput],
        images: list[ImageInput],
        spec: PackageSpec,
        output_dir: Path,
        duration: Fraction,
        cancel: Callable[[], None] | None = None,
    ) -> None:
        self.tracks = tracks
        self.cancel = cancel or _never
        self.texts = texts
        self.images = images
        self.spec = spec
        self.output_dir = output_dir
        self.duration = duration
        self.files: list[str] = []
        self._written: dict[Layout, tuple[Path, list[TrackLayout]]] = {}

    def folder(self, folder: str) -> Path:
        path = self.output_dir / folder
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _record(self, folder: str, names: list[str]) -> None:
        self.files += [f"{folder}/{name}" if folder else name for name in names]

    def media(self, folder: str, layout: Layout) -> list[TrackLayout]:
        """The tracks written in `layout` into `folder` (copied when already written)."""
        target = self.folder(folder)
        if layout in self._written:
            source, layouts = self._written[layout]
            for item in layouts:
                self.cancel()
                for name in item.files:
                    shutil.copyfile(source / name, target / name)
                self._record(folder, item.files)
            return layouts
        layouts = write_tracks(self.tracks, layout, target, self.cancel)
        for item in layouts:
            self._record(folder, item.files)
        self._written[layout] = (target, layouts)
        return layouts

    def text_files(self, folder: str, timestamp_map: bool = False) -> list[TextRef]:
        """Copy the WebVTT files into `folder` as `<name>.vtt`.

        `timestamp_map`: add the `X-TIMESTAMP-MAP` that HLS needs with TS media (whose
        timestamps start at `ts.TIME_OFFSET`)."""
        target = self.folder(folder)
        refs = []
        for text in self.texts:
            uri = f"{text.name}.vtt"
            content = Path(text.path).read_bytes()
            if timestamp_map and b"X-TIMESTAMP-MAP" not in content:
                content = _with_timestamp_map(content, ts.TIME_OFFSET * 90000)
            (target / uri).write_bytes(content)
            self._record(folder, [uri])
            seconds = float(self.duration) or 1.0
            refs.append(TextRef(text, uri, max(1, round(len(content) * 8 / seconds)), seconds))
        return refs

    def image_files(self, folder: str) -> list[ImageRef]:
        """Copy thumbnail tiles into `folder` as `<name>_<n>.jpg`."""
        target = self.folder(folder)
        refs = []
        for image in self.images:
            uris = []
            largest = 0
            for number, tile in enumerate(image.tiles, start=1):
                uri = f"{image.name}_{number}.jpg"
                shutil.copyfile(tile, target / uri)
                largest = max(largest, (target / uri).stat().st_size)
                uris.append(uri)
            # the WebVTT thumbnail track beside the tiles, for players without image tracks
            (target / thumbnails.WEBVTT_NAME).write_text(
                thumbnails.webvtt(image, uris), encoding="utf-8"
            )
            self._record(folder, [*uris, thumbnails.WEBVTT_NAME])
            tile_seconds = image.columns * image.rows * image.interval
            bandwidth = image.bandwidth or max(1, round(largest * 8 / tile_seconds))
            refs.append(ImageRef(image, tuple(uris), bandwidth))
        return refs


def _never() -> None:
    """The default cancel check: packaging is never cancelled."""


# Tracks are independent, so with this many bytes of media or more they are written in
# processes of their own, one per CPU; below it, starting the processes (an interpreter and the
# packager's imports each, about 0.15 s of CPU) costs more than the second core saves.
PARALLEL_MIN_BYTES = 128 * 2**20
_POLL_SECONDS = 0.1


def write_tracks(
    tracks: list[TimedTrack],
    layout: Layout,
    target: Path,
    cancel: Callable[[], None],
) -> list[TrackLayout]:
    """Every track written in `layout` into `target`, in the order of `tracks`.

    A worker encrypts with a copy of the track's protection as it was before any sample: a
    cenc track's IVs start again from its first IV in every layout so written, so the same
    sample gets the same IV and the same ciphertext in each (no keystream serves two
    different plaintexts; in one process the IVs run on across layouts instead)."""
    workers = min(len(tracks), _usable_cpus())
    media_bytes = [int(track.file.samples.size.sum()) for track in tracks]
    if workers < 2 or sum(media_bytes) < PARALLEL_MIN_BYTES:
        return [_write_track(track, layout, target, cancel) for track in tracks]
    import concurrent.futures  # here: a small job does not pay their import at start-up
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # no fork of a process with threads
    stop = context.Event()
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(stop,)
    )
    try:
        # the largest first, so that the last to start is a short one
        order = sorted(range(len(tracks)), key=lambda i: -media_bytes[i])
        futures = {i: pool.submit(_write_in_worker, tracks[i], layout, target) for i in order}
        pending = set(futures.values())
        while pending:
            finished, pending = concurrent.futures.wait(
                pending, timeout=_POLL_SECONDS, return_when=concurrent.futures.FIRST_COMPLETED
            )
            cancel()
            for future in finished:
                future.result()  # a track's error fails the packaging here
        return [TrackLayout(track=track, **futures[i].result()) for i, track in enumerate(tracks)]
    except concurrent.futures.BrokenExecutor as error:  # a worker was killed (OOM, signal)
        stop.set()
        raise PackagingError(f"a packaging worker process died ({error})") from error
    except BaseException:
        stop.set()  # the workers stop before their next segment
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _write_track(
    track: TimedTrack, layout: Layout, target: Path, cancel: Callable[[], None]
) -> TrackLayout:
    if layout == "segments":
        return cmaf.write_segment_files(track, target, cancel)
    if layout == "single":
        return cmaf.write_single_file(track, target, cancel)
    single = layout == "ts-single"
    return ts.write_ts_segments(track, target, single_file=single, cancel=cancel)


def _write_in_worker(track: TimedTrack, layout: Layout, target: Path) -> dict[str, Any]:
    """`_write_track` in a worker process: the layout's fields but its track, whose encryptor
    does not pickle (the caller puts its own track object back)."""
    item = _write_track(track, layout, target, _worker_check)
    return {f.name: getattr(item, f.name) for f in fields(item) if f.name != "track"}


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


_STOP: Any = None  # the pool's stop event, in a worker process


def _init_worker(stop: Any) -> None:
    global _STOP
    _STOP = stop


def _worker_check() -> None:
    if _STOP is not None and _STOP.is_set():
        raise PackagingError("packaging was stopped")


def _with_timestamp_map(content: bytes, mpegts: int) -> bytes:
    """Insert `X-TIMESTAMP-MAP` right after the `WEBVTT` header line."""
    header, newline, rest = content.partition(b"\n")
    line = f"X-TIMESTAMP-MAP=MPEGTS:{mpegts},LOCAL:00:00:00.000".encode()
    return header.rstrip(b"\r") + b"\n" + line + b"\n" + (rest if newline else b"")


@dataclass(frozen=True)
class FormatOutput:
    """What one format produced: its folder, media layouts, text files, and the playlists and
    top-level manifests (MPD, master playlist) to write, as (file name in the folder, text)."""

    folder: str
    layouts: list[TrackLayout]
    texts: list[TextRef]
    manifests: list[tuple[str, str]]
    playlists: list[tuple[str, str]] = field(default_factory=list)


class FormatPackager(ABC):
    """Packages the context's tracks in one output format into one folder."""

    format: ClassVar[str]
    combinable: ClassVar[bool] = True  # may share a job with other formats (sub-folders)
    folder_name: ClassVar[str]

    @abstractmethod
    def package(self, context: PackageContext, folder: str) -> FormatOutput:
        """Write media (through `context`) and return the manifests to write."""


def _hls_playlists(
    layouts: list[TrackLayout], texts: list[TextRef], images: list[ImageRef], version: int
) -> list[tuple[str, str]]:
    """Media, I-frame, subtitle and image playlists."""
    playlists = [(hls.playlist_name(item), hls.media_playlist(item, version)) for item in layouts]
    playlists += [
        (hls.iframe_playlist_name(item), hls.iframe_playlist(item, version))
        for item in layouts
        if item.track.kind == "video"
    ]
    playlists += [(f"{t.input.name}.m3u8", hls.subtitle_playlist(t, version)) for t in texts]
    playlists += [(hls.image_playlist_name(i), hls.image_playlist(i)) for i in images]
    return playlists


def _package_folder(
    context: PackageContext, folder: str, layout: Layout, *, dash_mpd: bool, hls_version: int | None
) -> FormatOutput:
    """Media, sidecar files and manifests of one folder: an MPD, HLS playlists, or both."""
    layouts = context.media(folder, layout)
    texts = context.text_files(folder, timestamp_map=layout.startswith("ts"))
    images = context.image_files(folder)
    manifests, playlists = [], []
    if dash_mpd:
        mpd = dash.write_mpd(layouts, texts, images, duration=context.duration)
        manifests.append((context.spec.dash_manifest, mpd))
    if hls_version is not None:
        master = hls.master_playlist(layouts, texts, images, version=hls_version)
        manifests.append((context.spec.hls_manifest, master))
        playlists = _hls_playlists(layouts, texts, images, hls_version)
    return FormatOutput(folder, layouts, texts, manifests, playlists)


class DashPackager(FormatPackager):
    """MPEG-DASH: live profile with segment files, on-demand profile with ByteRange."""

    format = "Dash"
    folder_name = "dash"

    def package(self, context: PackageContext, folder: str) -> FormatOutput:
        layout: Layout = "single" if context.spec.byte_range else "segments"
        return _package_folder(context, folder, layout, dash_mpd=True, hls_version=None)


class DashOnDemandPackager(FormatPackager):
    """DASH on-demand profile: one indexed file per rendition."""

    format = "DashOnDemand"
    combinable = False
    folder_name = "dash"

    def package(self, context: PackageContext, folder: str) -> FormatOutput:
        return _package_folder(context, folder, "single", dash_mpd=True, hls_version=None)


class HlsPackager(FormatPackager):
    """HLS with fMP4 (CMAF) segments."""

    format = "Hls"
    folder_name = "hls"

    def package(self, context: PackageContext, folder: str) -> FormatOutput:
        layout: Layout = "single" if context.spec.byte_range else "segments"
        return _package_folder(context, folder, layout, dash_mpd=False,
                               hls_version=HLS_FMP4_VERSION)  # fmt: skip


class CmafPackager(FormatPackager):
    """One set of CMAF segments with both an MPD and an HLS master playlist."""

    format = "Cmaf"
    combinable = False
    folder_name = "cmaf"

    def package(self, context: PackageContext, folder: str) -> FormatOutput:
        layout: Layout = "single" if context.spec.byte_range else "segments"
        return _package_folder(context, folder, layout, dash_mpd=True,
                               hls_version=HLS_FMP4_VERSION)  # fmt: skip


class HlsTsPackager(FormatPackager):
    """HLS with MPEG-TS segments (extension)."""

    format = "HlsTs"
    folder_name = "hlsts"

    def package(self, context: PackageContext, folder: str) -> FormatOutput:
        if any(track.input.protection is not None for track in context.tracks):
            raise PackagingError("HlsTs does not support DRM (SAMPLE-AES for TS is not built)")
        layout: Layout = "ts-single" if context.spec.byte_range else "ts"
        return _package_folder(context, folder, layout, dash_mpd=False,
                               hls_version=HLS_TS_VERSION)  # fmt: skip


PACKAGERS: dict[str, type[FormatPackager]] = {
    cls.format: cls
    for cls in (DashPackager, HlsPackager, CmafPackager, DashOnDemandPackager, HlsTsPackager)
}


def _normalise_formats(formats: list[str] | tuple[str, ...]) -> list[str]:
    by_lower = {name.lower(): name for name in FORMATS}
    result = []
    for value in formats:
        name = by_lower.get(str(value).lower())
        if name is None:
            raise PackagingError(f"unknown output format {value!r}; expected one of {FORMATS}")
        if name not in result:
            result.append(name)
    if not result:
        raise PackagingError("no output format given")
    for name in result:
        if not PACKAGERS[name].combinable and len(result) > 1:
            raise PackagingError(f"{name} cannot be combined with other formats: {result}")
    return result


def _check_names(
    tracks: list[TrackInput], texts: list[TextInput], images: list[ImageInput]
) -> None:
    names = [t.name for t in tracks] + [t.name for t in texts] + [i.name for i in images]
    for name in names:
        if not _SAFE_NAME.match(name):
            raise PackagingError(f"rendition name {name!r} is not a plain file name")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise PackagingError(f"rendition names must be unique: {duplicates}")


def _read(track: TrackInput) -> TimedTrack:
    try:
        file = mp4.read_track(Path(track.path), track.track_id)
        if track.sample_entry_from is not None:
            entry = mp4.read_track(Path(track.sample_entry_from)).entry
            file = replace(file, entry=entry)
    except OSError as exc:
        raise PackagingError(f"{track.name}: cannot read {track.path}: {exc}") from exc
    expected = {"video": "vide", "audio": "soun"}[track.kind]
    if file.handler != expected:
        raise PackagingError(f"{track.name}: expected a {track.kind} track in {track.path}")
    return cmaf.place(file, track)


def package(
    tracks: list[TrackInput],
    texts: list[TextInput],
    spec: PackageSpec,
    output_dir: Path,
    images: list[ImageInput] | tuple[ImageInput, ...] = (),
    cancel: Callable[[], None] | None = None,
) -> PackageResult:
    """Package the renditions in every format of `spec` into `output_dir`.

    Raises `PackagingError` for inputs that cannot be packaged as asked (nothing is promised
    about files already written then). `cancel` is called before every segment is written;
    whatever it raises stops the packaging.
    """
    output_dir = Path(output_dir)
    formats = _normalise_formats(spec.formats)
    tracks, texts, images = list(tracks), list(texts), list(images)
    if not tracks:
        raise PackagingError("no video or audio rendition to package")
    _check_names(tracks, texts, images)
    timed = [_read(track) for track in tracks]
    videos = [t for t in timed if t.kind == "video"] or timed
    duration = max(t.end_seconds for t in videos)
    if spec.boundaries is None:
        boundaries = cmaf.default_boundaries(duration, spec.segment_seconds)
    else:
        points = sorted({Fraction(b).limit_denominator(1_000_000) for b in spec.boundaries})
        boundaries = cmaf.fold_remainder(points, duration, None)
    for track in timed:
        if videos is not timed:  # audio ends with the video (not one AAC frame after it)
            cmaf.trim(track, duration)
        track.segments = cmaf.cut(track, boundaries)
    logger.info(
        "packaging %d tracks, %d segments of %.3f s, formats %s",
        len(timed), len(boundaries) + 1, spec.segment_seconds, ",".join(formats),
    )  # fmt: skip

    output_dir.mkdir(parents=True, exist_ok=True)
    context = PackageContext(timed, texts, images, spec, output_dir, duration, cancel)
    outputs = []
    for name in formats:
        packager = PACKAGERS[name]()
        folder = packager.folder_name if len(formats) > 1 else ""
        outputs.append(packager.package(context, folder))
    # manifests last, when every file they point at exists; media playlists before the
    # MPDs and master playlists that lead to them
    manifests = []
    for output, file_name, text in [
        *((o, name, text) for o in outputs for name, text in o.playlists),
        *((o, name, text) for o in outputs for name, text in o.manifests),
    ]:
        (output_dir / output.folder / file_name).write_text(text, encoding="utf-8")
        manifests.append(f"{output.folder}/{file_name}" if output.folder else file_name)
    streams = _streams(outputs[0], duration)
    return PackageResult(files=list(context.files), manifests=manifests, streams=streams)


def _streams(output: FormatOutput, duration: Fraction) -> list[StreamInfo]:
    """StreamInfo per track and text, from the first format's files."""
    prefix = f"{output.folder}/" if output.folder else ""
    streams = []
    for layout in output.layouts:
        track = layout.track
        entry = track.file.entry
        video = track.kind == "video"
        protection = track.input.protection
        # a single file is its own template
        template = layout.media_template or layout.segments[0].uri
        streams.append(
            StreamInfo(
                type=track.input.kind,  # what `track.kind` returns, as its Literal type
                name=track.name,
                codecs=track.codecs,
                width=entry.width if video else None,
                height=entry.height if video else None,
                frame_rate=track.frame_rate,
                bandwidth=layout.peak_bandwidth,
                average_bandwidth=layout.average_bandwidth,
                language=track.input.language,
                label=track.input.label,
                quality_group=track.input.quality_group,
                init_file=None if layout.init_uri is None else prefix + layout.init_uri,
                file_template=prefix + template,
                segment_count=len(layout.segments),
                duration=float(track.duration_seconds),
                key_id=protection.key_id if protection else None,
                iv=protection.iv if protection else None,
            )
        )
    for text in output.texts:
        streams.append(
            StreamInfo(
                type=text.input.kind,
                name=text.input.name,
                codecs="wvtt",
                width=None,
                height=None,
                frame_rate=None,
                bandwidth=text.bandwidth,
                average_bandwidth=text.bandwidth,
                language=text.input.language,
                label=text.input.label,
                quality_group="",
                init_file=None,
                file_template=prefix + text.uri,
                segment_count=1,
                duration=float(duration),
            )
        )
    return streams
