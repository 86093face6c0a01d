"""MPEG-TS segments for HLS (`HlsTs`): stream copy with PyAV's mpegts muxer, cut at the same
segment boundaries as the CMAF segments.

Each segment is an independent TS file (PAT/PMT first, continuity counters from 0), written by
its own muxer: a muxer that outlives a segment holds back audio PES data and would spill it into
the next file. Every rendition (video or audio) gets its own TS files; audio goes into HLS
rendition groups. The muxer converts avcC/hvcC samples to Annex B (with parameter sets before
each IDR) and AAC to ADTS itself.

All timestamps are offset by `TIME_OFFSET` (10 s, as Apple's segmenter does): TS timestamps
cannot be negative, and B-frame decode times and AAC priming fall before 0. WebVTT files for
TS packages get the matching `X-TIMESTAMP-MAP`.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from packagers.cmaf import TimedTrack
from packagers.errors import PackagingError
from packagers.layout import SegmentRef, TrackLayout

TIME_OFFSET = 10  # seconds added to every TS timestamp
TS_PACKET = 188


def write_ts_segments(
    track: TimedTrack,
    folder: Path,
    single_file: bool,
    cancel: Callable[[], None] | None = None,
) -> TrackLayout:
    """`<name>_<n>.ts` per segment, or one `<name>.ts` addressed by byte ranges."""
    timescale = track.timescale
    offset = TIME_OFFSET * timescale
    presentation = track.presentation_time
    decode = track.decode_time - track.edit_media_time
    # decode times move back by the largest B-frame delay so that dts <= pts
    delay = max(0, int((decode - presentation).max()))
    pts = presentation + offset
    dts = decode - delay + offset
    sync = track.file.samples.sync
    refs: list[SegmentRef] = []
    files: list[str] = []
    single_uri = f"{track.name}.ts"
    position = 0
    with contextlib.ExitStack() as stack:
        template = stack.enter_context(av.open(str(track.file.path))).streams[0]
        single = stack.enter_context(open(folder / single_uri, "wb")) if single_file else None
        for segment in track.segments:
            if cancel:
                cancel()
            data = _mux_segment(template, track, segment.first, segment.end, pts, dts, sync)
            key_frame = (0, _first_pes_end(data)) if track.kind == "video" else None
            if single is not None:
                single.write(data)
                uri, at = single_uri, position
                key_frame = (position, key_frame[1]) if key_frame else None
            else:
                uri, at = f"{track.name}_{segment.number}.ts", 0
                (folder / uri).write_bytes(data)
                files.append(uri)
            refs.append(SegmentRef(uri, at, len(data), segment.start, segment.duration, key_frame))
            position += len(data)
    if single_file:
        return TrackLayout(track, refs, [single_uri], None)
    return TrackLayout(track, refs, files, None, media_template=f"{track.name}_$Number$.ts")


def _mux_segment(
    template,
    track: TimedTrack,
    first: int,
    end: int,
    pts: np.ndarray,
    dts: np.ndarray,
    sync: np.ndarray,
) -> bytes:
    """One TS file's bytes, from samples [first, end)."""
    buffer = io.BytesIO()
    time_base = Fraction(1, track.timescale)
    # the muxer must not shift timestamps of its own: segments are muxed one by one
    with av.open(buffer, "w", format="mpegts", options={"avoid_negative_ts": "disabled"}) as out:
        stream = out.add_stream_from_template(template)
        for index, sample in enumerate(track.file.read_samples(first, end), start=first):
            packet = av.Packet(sample)
            packet.stream = stream
            packet.time_base = time_base
            packet.pts = int(pts[index])
            packet.dts = int(dts[index])
            packet.is_keyframe = bool(sync[index])
            out.mux(packet)
    data = buffer.getvalue()
    if not data or len(data) % TS_PACKET:
        raise PackagingError(f"{track.name}: the TS muxer wrote an incomplete segment")
    return data


def _first_pes_end(data: bytes) -> int:
    """Bytes from the start of a TS segment to the end of its first video PES (PAT, PMT and
    the key frame): the byte range of an HLS I-frame playlist entry."""
    video_pid = None
    for position in range(0, len(data), TS_PACKET):
        packet = data[position : position + TS_PACKET]
        if packet[0] != 0x47 or not packet[1] & 0x40:  # only payload unit starts matter
            continue
        pid = ((packet[1] & 0x1F) << 8) | packet[2]
        payload = 4
        if packet[3] & 0x20:  # adaptation field
            payload += 1 + packet[4]
        is_video_pes = packet[payload : payload + 3] == b"\0\0\1" and (
            0xE0 <= packet[payload + 3] <= 0xEF
        )
        if video_pid is None:
            if is_video_pes:
                video_pid = pid
        elif pid == video_pid:
            return position
    return len(data)
