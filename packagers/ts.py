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
# Audio frames gathered into one PES packet: up to half the muxer's `max_delay` (0.5 s) and
# `AUDIO_PES_BYTES` (a whole number of TS packets with the 14-byte PES header).
AUDIO_PES_DELAY_US = 1_000_000
AUDIO_PES_BYTES = 48 * 184 - 14


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
            start, duration = _media_span(track, presentation, segment.first, segment.end)
            refs.append(SegmentRef(uri, at, len(data), start, duration, key_frame))
            position += len(data)
    if single_file:
        return TrackLayout(track, refs, [single_uri], None)
    return TrackLayout(track, refs, files, None, media_template=f"{track.name}_$Number$.ts")


def _media_span(
    track: TimedTrack, presentation: np.ndarray, first: int, end: int
) -> tuple[int, int]:
    """(first pts, media duration) of samples [first, end), track timescale: what a reader
    of the TS file finds, from the first presented sample to the end of the last, each lasting
    the typical frame duration (TS has no sample durations; readers take the codec's frame
    length). The playlist's EXTINF is this, not the CMAF segment's composition span, which
    for audio starts at the boundary instead of at the first whole AAC frame after it."""
    times = presentation[first:end]
    start = int(times.min())
    return start, int(times.max()) + track.frame_duration - start


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
    # The muxer must not shift timestamps of its own (segments are muxed one by one): no
    # negative-timestamp shift, and `mpegts_copyts` keeps `max_delay` out of the timestamps. That
    # delay lets the muxer pack several AAC frames into one PES packet, up to
    # `pes_payload_size`, as the ffmpeg CLI does (with 0.7 s and 2930 bytes; larger here, for
    # less stuffing): one frame per PES spent about a third of the audio's TS bytes on
    # headers and stuffing.
    options = {
        "avoid_negative_ts": "disabled",
        "max_delay": str(AUDIO_PES_DELAY_US),
        "pes_payload_size": str(AUDIO_PES_BYTES),
        "mpegts_copyts": "1",
        # PAT/PMT (and SDT) once, at the start of the segment (each segment is its own file
        # and starts with them): by default they come every 0.1 s, before nearly every audio
        # PES, another tenth of the bytes.
        "pat_period": "3600",
        "sdt_period": "3600",
    }
    with av.open(buffer, "w", format="mpegts", options=options) as out:
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
