"""Still images (`ImageExtraction`) and trick-play thumbnail tiles (`Thumbnails`), contract §6.

Both need a few frames at given instants of a long video, so neither decodes the whole source.
`FrameGrabber` visits the instants in time order, in one pass: for each it seeks to the keyframe
at or before the instant (only when that keyframe lies ahead of what is already demuxed) and
decodes forward only as far as the frame shown at that instant. Which frame that is follows the
player: the frame whose display interval contains the instant, i.e. the last frame whose
timestamp is at or before it. Instants are seconds from the first decodable frame (the first
frame the transcoder also starts the output with), so 0 is that frame, never a grey frame
decoded from a broken reference or a frame before the first keyframe; an instant at or past the
end is the last frame.

The cost: one seek per keyframe interval that holds an instant, and the frames from that
keyframe to the instant. Non-reference H.264 pictures (nal_ref_idc 0: no other picture refers to
them) that cannot be an instant's frame are not decoded at all, which changes no pixel of the
frames returned; FFmpeg's `skip_frame` is not used, as it cannot spare only those. A thumbnail
then costs about the reference frames of half a GOP: thumbnails every 5 s of a 10-minute 720p
source with 2 s GOPs decode 1142 of its 15000 frames (`benchmarks/thumbnails.py`). The
instants are shared out, in contiguous runs, among a few grabbers working side by side (one per
CPU, at most `MAX_WORKERS`): each run is still one pass forward in time.

Sources without a keyframe index (MPEG-TS) are sought by timestamp, stepping back until a
keyframe at or before the instant is found; Matroska stores no decode times, so nothing there
relies on them.

Decisions (documented in the job reference's own terms):
- Stills are written at full display resolution with square pixels: sample aspect ratio and
  rotation applied (the probe's `display_width` × `display_height`). `Quality` is the IJG/libjpeg
  quality scale, 1–100, passed through unchanged.
- Thumbnail size: `Width` and `Height` both given, or neither (384×216), is a box: the picture
  keeps its display aspect ratio, fitted and centred, with black bars where the ratios differ
  (a 4:3 source gives 288×216 pictures in 384×216 cells). Every thumbnail and every tile then has
  the size the file names and manifests announce. One side given: the other follows the display
  aspect ratio, rounded to an even number, no bars.
- Interval: `DurationInSeconds`, else 2 s for videos under a minute, 5 s up to 30 minutes, 10 s
  beyond. Thumbnail `i` shows the frame at `i × interval` and stands for the interval that starts
  there (`packagers.thumbnails.cue_bounds`).
- Tiles are `TileColumns` × `TileRows` thumbnails, filled row by row. The last tile keeps the
  full size with the unused cells black: DASH-IF IOP signals one width and height for every tile
  of the image Representation, and HLS one LAYOUT per playlist.
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from engine.errors import ImageExtractionError
from engine.ffmpeg import close_input, error_message, log_mark
from engine.media import VideoTrackInfo
from packagers.hooks import ImageInput
from packagers.thumbnails import thumbnail_count

log = logging.getLogger(__name__)

CancelCheck = Callable[[], None]

DEFAULT_THUMBNAIL_BOX = (384, 216)
THUMBNAIL_QUALITY = 80  # JPEG quality of tiles: small tiles, thumbnails still legible
JPEG_MAX_SIDE = 65_535
# A tile is composed in memory (RGB, 3 bytes a pixel): 2^27 pixels is 384 MiB, e.g. 10×10
# thumbnails of 1152×1152. Larger sheets fail the job instead of the worker.
MAX_TILE_PIXELS = 1 << 27
MAX_WORKERS = 4  # grabbers side by side (each a decoder and its share of the instants)
END = sys.maxsize  # "the last frame", as a stream timestamp


# ------------------------------------------------------------------------- planning (pure)


def default_interval(duration: float) -> float:
    """Seconds per thumbnail when the job does not say: 2 under a minute, 5 up to 30 minutes,
    10 beyond (contract §6)."""
    if duration < 60:
        return 2.0
    if duration <= 30 * 60:
        return 5.0
    return 10.0


def image_times(percents: Sequence[float], duration: float) -> list[float]:
    """Seconds from the first frame for positions in percent of `duration`; 100 (or more) is
    "the last frame", whatever the rounding of the duration."""
    return [math.inf if p >= 100 else max(0.0, p) * duration / 100 for p in percents]


def image_names(pattern: str, count: int) -> list[str]:
    """File names from `Pattern`: every `%` becomes the 1-based image number."""
    if "%" not in pattern:
        raise ImageExtractionError(f"Pattern {pattern!r} has no % for the image number")
    return [pattern.replace("%", str(number)) for number in range(1, count + 1)]


def _even(value: float) -> int:
    return max(2, 2 * round(value / 2))


@dataclass(frozen=True)
class ThumbnailGeometry:
    """A thumbnail cell and the picture inside it (smaller than the cell when letterboxed)."""

    width: int
    height: int
    picture_width: int
    picture_height: int

    @property
    def x(self) -> int:
        return (self.width - self.picture_width) // 2

    @property
    def y(self) -> int:
        return (self.height - self.picture_height) // 2


def thumbnail_geometry(
    width: int | None, height: int | None, aspect_ratio: Fraction | float
) -> ThumbnailGeometry:
    """Cell and picture size from the job's `Width`/`Height` and the display aspect ratio."""
    ratio = float(aspect_ratio) if aspect_ratio else 16 / 9
    if width and not height:
        height = _even(width / ratio)
        return ThumbnailGeometry(width, height, width, height)
    if height and not width:
        width = _even(height * ratio)
        return ThumbnailGeometry(width, height, width, height)
    box_width, box_height = (width, height) if width and height else DEFAULT_THUMBNAIL_BOX
    if ratio >= box_width / box_height:  # wider than the box: full width, bars top and bottom
        picture = (box_width, min(box_height, _even(box_width / ratio)))
    else:
        picture = (min(box_width, _even(box_height * ratio)), box_height)
    return ThumbnailGeometry(box_width, box_height, *picture)


@dataclass(frozen=True)
class ThumbnailPlan:
    """Everything about the thumbnails of one video, before any frame is decoded."""

    geometry: ThumbnailGeometry
    interval: float
    duration: float
    columns: int
    rows: int

    @property
    def name(self) -> str:
        return f"thumbnails-{self.geometry.width}x{self.geometry.height}"

    @property
    def count(self) -> int:
        return thumbnail_count(self.duration, self.interval)

    @property
    def per_tile(self) -> int:
        return self.columns * self.rows

    @property
    def tile_count(self) -> int:
        return math.ceil(self.count / self.per_tile)

    @property
    def times(self) -> list[float]:
        """The instant each thumbnail shows, seconds from the first frame."""
        return [index * self.interval for index in range(self.count)]

    @property
    def tile_size(self) -> tuple[int, int]:
        return self.geometry.width * self.columns, self.geometry.height * self.rows


def plan_thumbnails(
    duration: float,
    aspect_ratio: Fraction | float,
    *,
    width: int | None = None,
    height: int | None = None,
    interval: float | None = None,
    columns: int = 10,
    rows: int = 10,
) -> ThumbnailPlan:
    """The thumbnail plan for a video of `duration` seconds (job `Thumbnails` fields as
    keywords). Raises ImageExtractionError when a tile would be too large to write."""
    geometry = thumbnail_geometry(width, height, aspect_ratio)
    plan = ThumbnailPlan(geometry, interval or default_interval(duration), duration, columns, rows)
    tile_width, tile_height = plan.tile_size
    if max(tile_width, tile_height) > JPEG_MAX_SIDE:
        raise ImageExtractionError(
            f"a {columns}×{rows} tile of {geometry.width}×{geometry.height} thumbnails is "
            f"{tile_width}×{tile_height} pixels; a JPEG side is at most {JPEG_MAX_SIDE}"
        )
    if tile_width * tile_height > MAX_TILE_PIXELS:
        raise ImageExtractionError(
            f"a {columns}×{rows} tile of {geometry.width}×{geometry.height} thumbnails is "
            f"{tile_width}×{tile_height} pixels, more than the {MAX_TILE_PIXELS} allowed"
        )
    return plan


# --------------------------------------------------------------------------- frame access


class FrameGrabber:
    """Frames of one video stream at given instants, decoding as little as possible.

    `grab(times)` yields `(position in times, frame)` in time order. `decoded` and `seeks` count
    the work done (tests and logs read them).
    """

    thread_type = "AUTO"  # FFmpeg decoding threads: frame and slice threading

    def __init__(
        self,
        path: Path,
        stream_index: int | None = None,
        cancel: CancelCheck | None = None,
        *,
        thread_type: str | None = None,
    ):
        self.path = Path(path)
        self._mark = log_mark()  # FFmpeg's log lines from here on belong to this file
        self.cancel = cancel
        if thread_type is not None:
            self.thread_type = thread_type
        self._open(stream_index)
        self.decoded = 0
        self.seeks = 0
        self.skipped = 0
        # A missing timestamp is one frame on from the one before.
        rate = self.stream.average_rate or self.stream.guessed_rate or Fraction(25)
        self._frame_ticks = max(1, round(1 / (Fraction(rate) * self.time_base)))
        self._nal_length = _h264_nal_length(self.decoder)  # None: never skip a picture
        self._skipped: list[int] = []  # pts of pictures not decoded in this run
        self._seen: list[int] = []  # pts of the packets demuxed in this run, sorted
        self._packets: Iterator[av.Packet] | None = None
        self._pushed_back: av.Packet | None = None
        self._frames: deque[av.VideoFrame] = deque()  # decoded, not looked at yet
        self._prev: av.VideoFrame | None = None  # latest frame at or before the last instant
        self._prev_pts = -END
        self._last_dts: int | None = None  # the last packet demuxed
        self._last_pts: int | None = None
        self._eof = False  # the decoder is drained: at the end, or ahead of a seek
        self._at_end = False
        self._fed = False  # packets went into the decoder since its last reset
        self._last_key: int | None = None
        self._max_gop = 0  # longest keyframe distance seen, ticks
        self._key_delay = 0  # keyframe pts - dts (B-frame reordering), ticks
        self._target = -END  # the instant being looked for, ticks (none yet)
        # No instant of this run lies beyond the horizon, so frames past it are not needed;
        # None: not known yet (see `_frame_at`)
        self._horizon: int | None = END
        self._upcoming: int | None = None
        self._first_key: int | None = None
        self._first_dts: int | None = None
        self._start()
        # 0 is the first decodable frame: decoding starts at the first keyframe (packets before
        # it refer to pictures that are not in the file); a stream without any keyframe flag
        # (intra refresh) is left to the decoder from its first packet
        self._pushed_back = self._next_key()
        if self._pushed_back is None:
            self._rewind()
        first = self._peek()
        if first is None:
            self.close()
            raise ImageExtractionError(f"{self.path.name}: no video frame could be decoded")
        self.origin = self._pts(first)

    def _open(self, stream_index: int | None) -> None:
        try:
            self.container = av.open(str(self.path))
        except av.FFmpegError as error:
            message = error_message(self.path, "cannot open", error, since=self._mark)
            raise ImageExtractionError(message) from None
        videos = [
            s
            for s in self.container.streams.video
            if stream_index is None or s.index == stream_index
        ]
        if not videos:
            self.container.close()
            raise ImageExtractionError(f"{self.path.name}: no video track to take images from")
        self.stream = videos[0]
        self.stream.thread_type = self.thread_type
        self.decoder = self.stream.codec_context
        self.time_base = self.stream.time_base or Fraction(1, 90000)
        self.index = self.stream.index_entries
        formats = set(self.container.format.name.split(","))
        # Whose index lists the keyframes (mov/mp4 sample tables, Matroska cues, AVI idx1);
        # elsewhere (MPEG-TS) FFmpeg's index only remembers where seeks landed.
        self._indexed = bool(formats & {"mov", "mp4", "matroska", "webm", "avi"})
        # Whose decode timestamps are stored, not guessed (Matroska keeps only pts).
        self._stored_dts = bool(formats & {"mov", "mp4", "mpegts"})

    def close(self) -> None:
        close_input(self.container)  # frame-threaded decoders: safe with FFmpeg's log on

    def __enter__(self) -> FrameGrabber:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def grab(self, times: Sequence[float]) -> Iterator[tuple[int, av.VideoFrame]]:
        """The frame shown at each instant of `times` (seconds from the first frame; `inf` for
        the last frame), in time order, with its position in `times`."""
        order = sorted(range(len(times)), key=lambda i: times[i])
        targets = [self._ticks(times[i]) for i in order]
        for step, position in enumerate(order):
            upcoming = targets[step + 1] if step + 1 < len(targets) else None
            yield position, self._frame_at(targets[step], upcoming)

    # -- one instant ----------------------------------------------------------------------

    def _ticks(self, seconds: float) -> int:
        if math.isinf(seconds):
            return END
        # floor: an instant on a frame boundary is the later frame; the epsilon absorbs float
        # noise in `percent × duration` (far below one tick)
        return self.origin + math.floor(seconds / float(self.time_base) + 1e-6)

    def _frame_at(self, target: int, upcoming: int | None) -> av.VideoFrame:
        self._target = target
        if self._should_seek(target):
            self._seek(target)
        # Frames after the next instant matter only when this run goes on to it. With a
        # keyframe index that is known now; otherwise once the demuxer has passed the instant.
        self._upcoming = upcoming
        self._horizon = None
        if upcoming is None:
            self._horizon = target
        elif self._indexed and len(self.index):
            self._horizon = target if self._would_seek(upcoming) else upcoming
        self._advance(target)
        if any(self._prev_pts < skipped <= target for skipped in self._skipped):
            # a picture skipped while looking for an earlier instant is this one's: go back
            self._seek(target)
            self._horizon = target
            self._advance(target)
        if self._prev is None:  # the first frame is after the instant: only before the start
            frame = self._peek()
            if frame is None:
                raise ImageExtractionError(f"{self.path.name}: no frame at {target}")
            return frame
        return self._prev

    def _advance(self, target: int) -> None:
        """Take every frame shown at or before `target`."""
        while True:
            frame = self._peek()
            if frame is None or self._pts(frame) > target:
                return
            self._take()

    def _should_seek(self, target: int) -> bool:
        if self._packets is None:
            return True
        if self._eof:  # drained: at the very end nothing follows; else the decoder restarts
            return not self._at_end
        if self._prev is not None and self._frames and self._pts(self._frames[0]) > target:
            return False  # the next decoded frame is already past the instant
        return self._would_seek(target)

    def _would_seek(self, target: int) -> bool:
        """Whether reaching `target` from here is cheaper by seeking: a keyframe lies between
        what is demuxed and the instant."""
        if self._last_dts is None:
            return True
        if self._indexed and len(self.index):
            # index timestamps are decode times; a keyframe shows `_key_delay` later
            found = self.index.search_timestamp(target - self._key_delay)
            if found < 0 and target == END:
                found = len(self.index) - 1
            return found >= 0 and self.index[found].timestamp > self._last_dts
        # no index (MPEG-TS, raw streams): seek when the instant is more than two GOPs away
        # (the GOP as long as the longest seen, or at least as long as the current one so far)
        position = self._last_pts or 0
        gop = max(self._max_gop, position - (self._last_key if self._last_key is not None else 0))
        return target - position > 2 * gop

    def _take(self) -> None:
        self._prev = self._frames.popleft()
        self._prev_pts = self._pts(self._prev)
        if len(self._seen) > 512:  # a long run: what shows before the last frame taken is moot
            del self._seen[: bisect.bisect_left(self._seen, self._prev_pts)]
            self._skipped = [pts for pts in self._skipped if pts > self._prev_pts]

    # -- decoding -------------------------------------------------------------------------

    def _start(self) -> None:
        self._packets = self.container.demux(self.stream)
        self._pushed_back = None
        self._frames.clear()
        self._skipped.clear()
        self._seen.clear()
        self._prev = None
        self._prev_pts = -END
        self._eof = self._at_end = self._fed = False
        self._last_dts = self._last_pts = None

    def _seek(self, target: int) -> None:
        """Position at the keyframe at or before `target` (its first packet pushed back)."""
        point = min(target, END - 1)
        back = max(self._max_gop, round(1 / self.time_base))
        for _ in range(64):
            self.seeks += 1
            try:
                self.container.seek(point, stream=self.stream, backward=True)
            except av.FFmpegError:
                break  # cannot seek here: from the beginning instead
            self.decoder.flush_buffers()
            self._start()
            key = self._next_key()
            if key is not None and (
                _packet_pts(key) <= target or _packet_pts(key) <= (self._first_key or 0)
            ):
                self._pushed_back = key
                return
            if self._first_dts is not None and point <= self._first_dts:
                break  # already before the first packet
            # The demuxer landed after the instant: a keyframe shown later than the instant
            # (B-frame delay), or a seek without index that found no keyframe before the
            # instant (MPEG-TS seeks by timestamp to any packet). Go further back.
            lower = (
                point
                if key is None
                else min(point, key.dts if key.dts is not None else _packet_pts(key))
            )
            point = lower - back
            back *= 2
        self._rewind()

    def _rewind(self) -> None:
        """From the first packet again, reopening the file (works where seeking does not)."""
        index = self.stream.index
        close_input(self.container)
        self._open(index)
        self._start()

    def _next_key(self) -> av.Packet | None:
        while True:
            packet = self._next_packet()
            if packet is None or packet.is_keyframe:
                return packet

    def _next_packet(self) -> av.Packet | None:
        if self._pushed_back is not None:
            packet, self._pushed_back = self._pushed_back, None
            return packet
        assert self._packets is not None, "_start() sets the packets before any is read"
        for packet in self._packets:
            if self.cancel:
                self.cancel()
            if packet.size == 0:  # the demuxer's end-of-stream marker
                continue
            dts = packet.dts
            if packet.pts is None:
                packet.pts = dts
            if packet.pts is None:
                continue  # no time at all: cannot be placed, cannot be asked for
            if dts is not None:
                self._last_dts = dts
            self._last_pts = packet.pts
            bisect.insort(self._seen, packet.pts)
            if self._first_dts is None:
                self._first_dts = dts if dts is not None else packet.pts
            if packet.is_keyframe:
                if self._first_key is None:
                    self._first_key = packet.pts
                if self._last_key is not None and packet.pts > self._last_key:
                    self._max_gop = max(self._max_gop, packet.pts - self._last_key)
                self._last_key = packet.pts
                if dts is not None:
                    self._key_delay = max(self._key_delay, packet.pts - dts)
            return packet
        return None

    def _peek(self) -> av.VideoFrame | None:
        """The next decoded frame (not taken), decoding more packets as needed."""
        while not self._frames:
            if self._eof:
                return None
            packet = self._next_packet()
            if self._horizon is None and packet is not None and self._past_target(packet):
                upcoming = self._upcoming
                assert upcoming is not None, "the horizon is unknown only with a next instant"
                self._horizon = self._target if self._would_seek(upcoming) else upcoming
            if packet is None:
                self._drain(at_end=True)
            elif self._fed and packet.is_keyframe and _packet_pts(packet) <= self._target:
                # a later keyframe still at or before the instant: restart from it, without
                # decoding the rest of the GOP before it
                self.decoder.flush_buffers()
                self._frames.clear()
                self._decode(packet)
            elif (
                self._horizon == self._target
                and self._stored_dts
                and packet.dts is not None
                and packet.dts > self._target
            ):
                # every frame up to the instant is in the decoder, and the next instant is
                # reached by a seek: drain instead of decoding further
                self._pushed_back = packet
                self._drain(at_end=False)
            elif self._nal_length is not None and self._unneeded(packet, self._nal_length):
                self.skipped += 1
                self._skipped.append(_packet_pts(packet))
            else:
                self._decode(packet)
        return self._frames[0]

    def _past_target(self, packet: av.Packet) -> bool:
        return (packet.dts if packet.dts is not None else _packet_pts(packet)) > self._target

    def _unneeded(self, packet: av.Packet, nal_length: int) -> bool:
        """Whether a picture can be left undecoded: a non-reference picture (no other picture
        refers to it) that no instant can ask for, because it shows after every instant this
        run goes to, or because a picture already demuxed shows after it and still at or
        before the instant (then that one, or a later one, is the instant's)."""
        if packet.is_keyframe:
            return False
        pts = _packet_pts(packet)
        if self._horizon is None or pts <= self._horizon:
            later = bisect.bisect_right(self._seen, pts)
            if later == len(self._seen) or self._seen[later] > self._target:
                return False
        return _h264_reference(bytes(packet), nal_length) is False

    def _decode(self, packet: av.Packet) -> None:
        try:
            frames = self.decoder.decode(packet)
        except av.FFmpegError as error:
            at = float(_packet_pts(packet) * self.time_base)
            what = f"cannot decode the video at {at:.3f} s"
            raise ImageExtractionError(
                error_message(self.path, what, error, since=self._mark)
            ) from None
        self._fed = True
        self.decoded += len(frames)
        self._frames.extend(frames)

    def _drain(self, at_end: bool) -> None:
        try:
            frames = self.decoder.decode(None)
        except av.FFmpegError:
            frames = []
        self.decoded += len(frames)
        self._frames.extend(frames)
        self._eof, self._at_end = True, at_end

    def _pts(self, frame: av.VideoFrame) -> int:
        if frame.pts is None:  # one frame on from the one before
            frame.pts = (self._prev_pts if self._prev is not None else 0) + self._frame_ticks
        return frame.pts


def _packet_pts(packet: av.Packet) -> int:
    """The pts of a packet that `FrameGrabber._next_packet` handed out: it sets one on each."""
    assert packet.pts is not None, "packets without any timestamp are never handed out"
    return packet.pts


def _h264_nal_length(decoder) -> int | None:
    """How H.264 access units of this stream are framed, for `_h264_reference`: the NAL length
    field size (avcC), 0 for Annex B start codes, None when not H.264 or not known."""
    if decoder.name != "h264":
        return None
    extradata = bytes(decoder.extradata or b"")
    if extradata[:1] == b"\x01" and len(extradata) > 4:
        return (extradata[4] & 3) + 1
    if not extradata or extradata.startswith((b"\x00\x00\x01", b"\x00\x00\x00\x01")):
        return 0
    return None


def _h264_reference(data: bytes, nal_length: int) -> bool | None:
    """Whether an H.264 access unit holds a picture other pictures may refer to (a slice NAL
    unit with nal_ref_idc != 0); None when that cannot be told (no slice, a malformed unit)."""
    units = _nal_units(data, nal_length)
    if units is None:
        return None
    slices = [unit[0] for unit in units if unit and unit[0] & 0x1F in (1, 5, 20)]
    if not slices:
        return None
    return any(header & 0x60 for header in slices)


def _nal_units(data: bytes, nal_length: int) -> list[bytes] | None:
    if nal_length == 0:  # Annex B: start codes (emulation prevention keeps them out of units)
        return [part.rstrip(b"\x00") for part in data.split(b"\x00\x00\x01") if part]
    units = []
    offset = 0
    while offset < len(data):
        if offset + nal_length > len(data):
            return None
        size = int.from_bytes(data[offset : offset + nal_length], "big")
        offset += nal_length
        if size == 0 or offset + size > len(data):
            return None
        units.append(data[offset : offset + size])
        offset += size
    return units


# ------------------------------------------------------------------------------- pictures


class PictureMaker:
    """Decoded frames to RGB pictures of a given display size: pixel shape and rotation."""

    def __init__(self, track: VideoTrackInfo | None, width: int, height: int, *, fast: bool):
        self.rotation = track.rotation if track is not None else 0
        self.width, self.height = width, height
        turned = self.rotation in (90, 270)
        self.scale = (height, width) if turned else (width, height)
        # thumbnails shrink a lot: area averaging; stills only fix the pixel shape: bicubic
        self.interpolation = "AREA" if fast else "BICUBIC"

    def picture(self, frame: av.VideoFrame) -> np.ndarray:
        colorspace = None
        if frame.colorspace == 2:  # unspecified: HD is BT.709 in practice, SD BT.601
            colorspace = "ITU709" if frame.height >= 720 else "ITU601"
        rgb = frame.reformat(
            width=self.scale[0],
            height=self.scale[1],
            format="rgb24",
            src_colorspace=colorspace,
            interpolation=self.interpolation,
        ).to_ndarray()
        if self.rotation == 90:  # the picture is turned clockwise for display
            rgb = np.rot90(rgb, k=-1)
        elif self.rotation == 270:
            rgb = np.rot90(rgb, k=1)
        elif self.rotation == 180:
            rgb = rgb[::-1, ::-1]
        return np.ascontiguousarray(rgb)


def _save_jpeg(pixels: np.ndarray, path: Path, quality: int) -> None:
    from PIL import Image  # lazily: jobs without images never load PIL

    try:
        Image.fromarray(pixels, "RGB").save(path, "JPEG", quality=quality)
    except OSError as error:
        raise ImageExtractionError(f"cannot write {path.name}: {error}") from None


# ------------------------------------------------------------------------------ the phases


class _Stopped(ImageExtractionError):
    """A worker stopped because another one failed."""


@dataclass
class GrabStats:
    """The work `grab_frames` did, summed over its workers."""

    decoded: int = 0
    skipped: int = 0
    seeks: int = 0
    workers: int = 1


def default_workers(instants: int) -> int:
    """Grabbers to run side by side: one per CPU (at most 4), each with 8 instants or more."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(MAX_WORKERS, cpus or 1, instants // 8))


def grab_frames(
    source: Path,
    stream_index: int | None,
    times: Sequence[float],
    consume: Callable[[int, av.VideoFrame], None],
    *,
    cancel: CancelCheck | None = None,
    workers: int | None = None,
) -> GrabStats:
    """Call `consume(position in times, frame)` with the frame shown at each instant.

    The instants, in time order, are cut into one contiguous run per worker; each worker is a
    thread with its own `FrameGrabber` (single-threaded decoder: the workers are the
    parallelism, without the decoder's frame threads waiting on each other at every seek). So
    each part is still one pass forward, and `consume` is called from the workers' threads.
    """
    order = sorted(range(len(times)), key=lambda i: times[i])
    count = max(1, min(workers or default_workers(len(order)), len(order)))
    stats = GrabStats(workers=count)
    failed = threading.Event()

    def check() -> None:
        if failed.is_set():  # another worker failed: stop too
            raise _Stopped("stopped: another part failed")
        if cancel:
            cancel()

    def work(part: list[int], thread_type: str | None) -> None:
        try:
            with FrameGrabber(source, stream_index, check, thread_type=thread_type) as grabber:
                try:
                    for step, frame in grabber.grab([times[i] for i in part]):
                        consume(part[step], frame)
                finally:
                    with lock:
                        stats.decoded += grabber.decoded
                        stats.skipped += grabber.skipped
                        stats.seeks += grabber.seeks
        except BaseException:
            failed.set()
            raise

    lock = threading.Lock()
    parts = [order[i * len(order) // count : (i + 1) * len(order) // count] for i in range(count)]
    if count == 1:
        work(parts[0], None)
        return stats
    with ThreadPoolExecutor(count, thread_name_prefix="vipe-images") as pool:
        futures = [pool.submit(work, part, "NONE") for part in parts]
        errors = []
        for future in futures:
            try:
                future.result()
            except BaseException as error:  # a cancellation too: re-raised below
                errors.append(error)
    if errors:  # the first real error, not the `_Stopped` of the other workers
        raise next((e for e in errors if not isinstance(e, _Stopped)), errors[0])
    return stats


def extract_images(
    source: Path,
    track: VideoTrackInfo | None,
    percents: Sequence[float],
    duration: float,
    *,
    quality: int,
    pattern: str,
    folder: Path,
    cancel: CancelCheck | None = None,
    workers: int | None = None,
) -> list[Path]:
    """One JPEG per entry of `percents` (ImageExtraction `Intervals`), at full display
    resolution with square pixels, named from `pattern`; returned in the order asked."""
    names = image_names(pattern, len(percents))
    folder.mkdir(parents=True, exist_ok=True)
    width, height = _display_size(source, track)
    maker = PictureMaker(track, width, height, fast=False)
    paths = [folder / name for name in names]

    def save(position: int, frame: av.VideoFrame) -> None:
        _save_jpeg(maker.picture(frame), paths[position], quality)

    stats = grab_frames(
        source, track.index if track else None, image_times(percents, duration), save,
        cancel=cancel, workers=workers,
    )  # fmt: skip
    log.info(
        "%d images from %s: %d frames decoded, %d seeks, %d workers",
        len(paths), source.name, stats.decoded, stats.seeks, stats.workers,
    )  # fmt: skip
    return paths


class _TileSheets:
    """Tiles being filled, by tile number; each is written as soon as its last cell is in
    (cells come from several workers)."""

    def __init__(self, plan: ThumbnailPlan, folder: Path):
        self.plan = plan
        self.folder = folder
        self.sheets: dict[int, np.ndarray] = {}
        self.filled: dict[int, int] = {}
        self.lock = threading.Lock()

    def put(self, index: int, picture: np.ndarray) -> None:
        plan, cell = self.plan, self.plan.geometry
        tile, place = divmod(index, plan.per_tile)
        with self.lock:
            sheet = self.sheets.get(tile)
            if sheet is None:
                width, height = plan.tile_size
                sheet = self.sheets[tile] = np.zeros((height, width, 3), np.uint8)  # black
        row, column = divmod(place, plan.columns)
        top, left = row * cell.height + cell.y, column * cell.width + cell.x
        sheet[top : top + cell.picture_height, left : left + cell.picture_width] = picture
        with self.lock:
            self.filled[tile] = self.filled.get(tile, 0) + 1
            complete = self.filled[tile] == min(plan.per_tile, plan.count - tile * plan.per_tile)
            if complete:
                del self.sheets[tile]
        if complete:
            _save_jpeg(sheet, self.path(tile), THUMBNAIL_QUALITY)

    def path(self, tile: int) -> Path:
        return self.folder / f"{self.plan.name}_{tile + 1}.jpg"


def make_thumbnails(
    source: Path,
    track: VideoTrackInfo | None,
    plan: ThumbnailPlan,
    folder: Path,
    cancel: CancelCheck | None = None,
    workers: int | None = None,
) -> ImageInput:
    """The thumbnail tiles of `plan` as JPEG files in `folder` (`<name>_<n>.jpg`), described
    for the packager."""
    folder.mkdir(parents=True, exist_ok=True)
    cell = plan.geometry
    maker = PictureMaker(track, cell.picture_width, cell.picture_height, fast=True)
    sheets = _TileSheets(plan, folder)
    stats = grab_frames(
        source, track.index if track else None, plan.times,
        lambda index, frame: sheets.put(index, maker.picture(frame)),
        cancel=cancel, workers=workers,
    )  # fmt: skip
    tiles = tuple(sheets.path(tile) for tile in range(plan.tile_count))
    log.info(
        "%d thumbnails in %d tiles from %s: %d frames decoded, %d skipped, %d seeks, %d workers",
        plan.count, len(tiles), source.name, stats.decoded, stats.skipped, stats.seeks,
        stats.workers,
    )  # fmt: skip
    return ImageInput(
        name=plan.name,
        tiles=tiles,
        thumbnail_width=cell.width,
        thumbnail_height=cell.height,
        columns=plan.columns,
        rows=plan.rows,
        interval=plan.interval,
        duration=plan.duration,
    )


def _display_size(source: Path, track: VideoTrackInfo | None) -> tuple[int, int]:
    if track is None:
        raise ImageExtractionError(f"{source.name}: no video track to take images from")
    return track.display_width, track.display_height


__all__ = [
    "DEFAULT_THUMBNAIL_BOX",
    "FrameGrabber",
    "PictureMaker",
    "ThumbnailGeometry",
    "ThumbnailPlan",
    "default_interval",
    "extract_images",
    "image_names",
    "image_times",
    "make_thumbnails",
    "plan_thumbnails",
    "thumbnail_geometry",
]
