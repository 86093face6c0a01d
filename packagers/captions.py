"""CEA-608 closed captions carried in a video stream (ATSC A/53 `cc_data` in H.264/H.265 SEI
or MPEG-2 user data), as SCC text that `ttconv`'s SCC (CEA-608) decoder reads.

FFmpeg's decoders export each frame's `cc_data` as `AV_FRAME_DATA_A53_CC` side data; PyAV
reads it while decoding. What is kept: the valid field-1 triplets (`cc_type` 0: channels CC1
and CC2), each stamped with its frame's presentation time. Those byte pairs are exactly what an
SCC file holds, so they are written as one: a line per pair, its 29.97 fps non-drop time code
the frame's time (SCC time codes are labels at 30000/1001 frames per second; one pair per line
keeps every pair on its own frame's time, whatever the video's rate). The 608 decoding itself
(pop-on, roll-up, paint-on, control-code doubling, preamble addresses) is ttconv's, a well-kept
library used in production pipelines, not code of vipe's own: only this side-data reading and
the time-code lines are vipe's, because no library reads A/53 side data from a video.

CEA-708 (`cc_type` 2/3, DTVCC) services are not decoded: 708 streams carry 608 compatibility
bytes in field 1, which are what is read here.
"""

from __future__ import annotations

import contextlib
from fractions import Fraction
from pathlib import Path

__all__ = ["CaptionError", "cea608_pairs", "has_cea608", "scc_from_pairs"]

# Video codecs whose FFmpeg decoders export A/53 closed captions as frame side data.
CAPTION_CODECS = frozenset({"h264", "hevc", "mpeg2video"})
_PADDING = {0x00, 0x80}  # a pair of these (after parity) carries nothing


class CaptionError(ValueError):
    """A video whose captions cannot be read."""


def _pairs(
    path: Path, index: int, until: float | None
) -> tuple[list[tuple[Fraction, bytes]], bool]:
    """(time, pair) for field-1 pairs that carry data, and whether any field-1 cc_data (padding
    included) was seen. Decodes up to `until` seconds (None: the whole stream)."""
    import av
    from av.sidedata.sidedata import SideData

    pairs: list[tuple[Fraction, bytes]] = []
    seen = False
    try:
        with av.open(str(path)) as container:
            stream = next((s for s in container.streams.video if s.index == index), None)
            if stream is None:
                raise CaptionError(f"{path.name}: track {index} is not a video track")
            if stream.codec_context.name not in CAPTION_CODECS:
                return [], False
            # A detection stops early: slice threads only, so that no frame thread is still
            # busy when the file closes (with FFmpeg's log on, closing a decoder whose frame
            # threads wait to log deadlocks). A whole read uses frame threads and flushes them
            # before the close, whatever ends it.
            stream.thread_type = "SLICE" if until is not None else "AUTO"
            start = container.start_time or 0
            offset = Fraction(start, 1_000_000) if start > 0 else Fraction(0)
            try:
                for frame in container.decode(stream):
                    if not isinstance(frame, av.VideoFrame):
                        continue
                    if frame.pts is None or frame.time_base is None:
                        continue
                    time = frame.pts * frame.time_base - offset
                    if until is not None and (seen or time > until):
                        break
                    data = frame.side_data.get("A53_CC")
                    if not isinstance(data, SideData):
                        continue
                    raw = bytes(data)
                    for at in range(0, len(raw) - 2, 3):
                        head, first, second = raw[at], raw[at + 1], raw[at + 2]
                        if not head & 0x04 or head & 0x03 != 0:  # not valid, or not field 1
                            continue
                        seen = True
                        if first & 0x7F not in _PADDING or second & 0x7F not in _PADDING:
                            pairs.append((time, bytes([first, second])))
            finally:
                with contextlib.suppress(Exception):  # nothing left to wait for
                    stream.codec_context.flush_buffers()
    except av.FFmpegError as error:
        raise CaptionError(f"{path.name}: cannot read the video: {error}") from error
    return pairs, seen


def has_cea608(path: Path, index: int, *, seconds: float = 10.0) -> bool:
    """Whether video track `index` carries CEA-608 field-1 caption data within its first
    `seconds` (a stream with captions sends cc_data, padding at least, on every frame)."""
    try:
        if not _may_carry_a53(path, index, seconds):
            return False  # no decoding (seconds and hundreds of MB for 1080p) when none
        _, seen = _pairs(path, index, seconds)
    except CaptionError:
        return False
    return seen


# H.264/H.265 SEI user_data_registered_itu_t_t35 carrying A/53 cc_data holds the ATSC
# identifier "GA94" (FFmpeg exports A53_CC from these only); emulation prevention never
# changes these bytes (it inserts 0x03 only after 00 00).
_A53_IDENTIFIER = b"GA94"


def _may_carry_a53(path: Path, index: int, seconds: float) -> bool:
    """False when no packet of an H.264/H.265 track's first `seconds` holds the A/53
    identifier, so there are no captions to decode; True otherwise (and for MPEG-2, whose
    decoder also exports SCTE-20 and DVD captions)."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = next((s for s in container.streams.video if s.index == index), None)
            if stream is None or stream.codec_context.name not in ("h264", "hevc"):
                return True
            time_base = stream.time_base or Fraction(1, 90000)
            first: int | None = None
            for packet in container.demux(stream):
                if packet.size and _A53_IDENTIFIER in bytes(packet):
                    return True
                stamp = packet.dts if packet.dts is not None else packet.pts
                if stamp is None:
                    continue
                first = stamp if first is None else first
                if (stamp - first) * time_base > seconds + 1:
                    break
    except av.FFmpegError:
        return True  # let the decoding scan report what is wrong
    return False


def cea608_pairs(path: Path, index: int) -> list[tuple[Fraction, bytes]]:
    """Every field-1 CEA-608 byte pair of video track `index` that carries data, with its
    frame's time (seconds from the file's start). Raises `CaptionError` when the track carries no
    caption data at all."""
    pairs, seen = _pairs(path, index, None)
    if not seen:
        raise CaptionError(f"{path.name}: track {index} carries no CEA-608 captions")
    return pairs


def scc_from_pairs(pairs: list[tuple[Fraction, bytes]]) -> str:
    """An SCC document holding `pairs`, each on the line of its own time code."""
    lines = ["Scenarist_SCC V1.0", ""]
    last = -1
    for time, pair in pairs:
        label = max(round(time * Fraction(30000, 1001)), last + 1)  # one pair per frame label
        last = label
        seconds, frame = divmod(label, 30)
        hours, rest = divmod(seconds, 3600)
        code = f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}:{frame:02d}"
        lines += [f"{code}\t{pair.hex()}", ""]
    return "\n".join(lines)
