"""CMAF segmenting: place each track on the package timeline, cut it at the segment
boundaries, write CMAF headers and segments (one file per segment, or one indexed file).

Timeline (decided here, used by every writer):

- Video: decode times start at 0 (`tfdt`), composition offsets are signed (`trun` version 1)
  so that the first presented frame has composition time 0. No edit list is written. (Readers
  that cannot have pts < dts, FFmpeg's mov demuxer among them, report every pts shifted by
  the largest negative offset; browsers' MSE and Shaka read the times as written.)
- Audio: decode times start at 0 and the encoder delay (AAC priming, from the input's edit list
  or `TrackInput.priming_samples`) stays in the stream: an edit list in the init segment
  (one entry, `media_time` = priming, CMAF 7.5.13) tells players to skip it. Trimming priming
  frames instead would damage the first real frame (AAC frames overlap). Manifests time
  segments by composition time (tfdt based), as Shaka Packager does, so an audio segment's
  manifest start leads its audible start by the priming (21 ms for AAC at 48 kHz).
- Each input file is timed on its own: FFmpeg's `empty_moov` fragmented muxer shifts every
  file's timestamps by its own B-frame delay or priming and cannot write the edit list that
  would say so, so absolute times in separate rendition files are not comparable. An input's
  edit list therefore only tells the audio priming; leading empty edits are not kept.

Cutting: segment k+1 starts at boundary k. Video is cut at the sync sample presented within
half a frame of each boundary (none there: `PackagingError`), audio at the first sample
presented at or after it, so the segments of all renditions align.
"""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import numpy as np

from packagers import mp4
from packagers.errors import PackagingError
from packagers.hooks import ProtectedSample
from packagers.layout import Segment, SegmentRef, TimedTrack, TrackLayout
from packagers.model import TrackInput
from packagers.mp4 import TrackFile, box

INIT_BRANDS = ("iso6", "cmfc", "dash", "mp41")
SEGMENT_BRANDS = ("msdh", "cmfs", "cmff")

# ISO 639-1 -> ISO 639-2/T for the mdhd language field (the BCP 47 tag goes into `elng`)
_ISO639_2 = {
    "ar": "ara", "bg": "bul", "ca": "cat", "cs": "ces", "da": "dan", "de": "deu", "el": "ell",
    "en": "eng", "es": "spa", "et": "est", "fa": "fas", "fi": "fin", "fr": "fra", "ga": "gle",
    "he": "heb", "hi": "hin", "hr": "hrv", "hu": "hun", "id": "ind", "is": "isl", "it": "ita",
    "ja": "jpn", "ko": "kor", "lt": "lit", "lv": "lav", "ms": "msa", "nb": "nob", "nl": "nld",
    "nn": "nno", "no": "nor", "pl": "pol", "pt": "por", "ro": "ron", "ru": "rus", "sk": "slk",
    "sl": "slv", "sr": "srp", "sv": "swe", "th": "tha", "tr": "tur", "uk": "ukr", "vi": "vie",
    "zh": "zho",
}  # fmt: skip


def place(file: TrackFile, track: TrackInput) -> TimedTrack:
    """Put a parsed track on the package timeline: decode times from 0; video's first
    presented frame at 0; audio's first sample after the priming at 0."""
    samples = file.samples
    composition_in = samples.decode_time + samples.composition_offset
    decode = samples.decode_time - samples.decode_time[0]
    if track.kind == "video":
        # an input edit list only shifts the whole track here, so it changes nothing
        presentation = composition_in - composition_in.min()
        return TimedTrack(track, file, decode, presentation - decode, 0)
    priming = track.priming_samples
    if priming is None:  # what the input's edit list skips before its first presented sample
        media_time = file.edit_media_time or 0
        priming = max(0, media_time - int(composition_in.min()))
    return TimedTrack(track, file, decode, samples.composition_offset.copy(), priming)


def default_boundaries(duration: Fraction, segment_seconds: float) -> list[Fraction]:
    """Segment starts after 0: every `segment_seconds` before the end, but none that would
    leave a last segment shorter than half a segment (`fold_remainder`)."""
    step = Fraction(segment_seconds).limit_denominator(1_000_000)
    if step <= 0:
        raise PackagingError(f"segment length must be positive, got {segment_seconds}")
    boundaries = []
    point = step
    while point < duration:
        boundaries.append(point)
        point += step
    return fold_remainder(boundaries, duration, segment_seconds)


def fold_remainder(
    boundaries: list[Fraction], duration: Fraction, segment_seconds: float | Fraction | None
) -> list[Fraction]:
    """`boundaries` (sorted) inside (0, `duration`) without those less than half a segment
    before the end: a remainder that short joins the segment before it. (A sliver segment,
    one AAC frame after the video's end, stopped hls.js before the end and started after the
    MPD's duration.) `segment_seconds` None: the longest segment the boundaries make (given
    boundaries, e.g. a packaging-only job's key frames)."""
    inside = [b for b in boundaries if 0 < b < duration]
    if segment_seconds is None:
        step = max((b - a for a, b in itertools.pairwise([Fraction(0), *inside])), default=0)
    else:
        step = Fraction(segment_seconds).limit_denominator(1_000_000)
    return [b for b in inside if duration - b >= step / 2]


def trim(track: TimedTrack, end: Fraction) -> None:
    """Drop the samples of an audio track presented from `end` (seconds, the video's end) on:
    audio ends with the video. The encoder's last frame may still run past `end` (less than a
    frame); the priming before 0 stays, skipped by the init segment's edit list."""
    if track.kind != "audio":
        return
    presentation = track.presentation_time
    keep = int(np.count_nonzero(presentation < end * track.timescale))
    keep = max(keep, 1)
    if keep >= len(track.file.samples):
        return
    if not (np.diff(presentation) >= 0).all():
        return  # not in presentation order (never for audio): leave it whole
    samples = track.file.samples
    track.file = replace(
        track.file,
        samples=mp4.Samples(*(getattr(samples, name)[:keep] for name in _SAMPLE_COLUMNS)),
    )
    track.decode_time = track.decode_time[:keep]
    track.composition_offset = track.composition_offset[:keep]


_SAMPLE_COLUMNS = ("decode_time", "duration", "composition_offset", "size", "offset", "sync")


def cut(track: TimedTrack, boundaries: list[Fraction]) -> list[Segment]:
    """Cut a track at the boundaries (seconds, package timeline) into segments."""
    samples = track.file.samples
    presentation = track.presentation_time
    timescale = track.timescale
    cuts = [0]
    if track.kind == "video":
        if not samples.sync[0]:
            raise PackagingError(f"{track.name}: the first frame is not a keyframe")
        half = Fraction(track.frame_duration, 2)
        sync_index = np.flatnonzero(samples.sync)
        sync_time = presentation[sync_index]
        last = int(presentation.max())
        for boundary in boundaries:
            point = boundary * timescale
            if point - half > last:
                break  # past this track's last frame
            # integer times: `t >= x` is `t >= ceil(x)`, compared in numpy, not per Fraction
            after = np.flatnonzero(sync_time >= math.ceil(point - half))
            if len(after) == 0 or sync_time[after[0]] > point + half:
                nearest = sync_time[np.argmin(np.abs(sync_time - float(point)))] / timescale
                raise PackagingError(
                    f"{track.name}: no keyframe within half a frame of the segment boundary at "
                    f"{float(boundary):.3f} s (nearest keyframe at {nearest:.3f} s); renditions "
                    f"need keyframes at every segment boundary"
                )
            index = int(sync_index[after[0]])
            if index > cuts[-1]:
                cuts.append(index)
    else:
        for boundary in boundaries:
            after = np.flatnonzero(presentation >= math.ceil(boundary * timescale))
            if len(after) == 0:
                break
            if int(after[0]) > cuts[-1]:
                cuts.append(int(after[0]))
    cuts.append(len(samples))
    composition = track.composition_time
    ranges = list(itertools.pairwise(cuts))
    starts = [int(composition[a:e].min()) for a, e in ranges]
    ends = [*starts[1:], track.composition_end]
    return [
        Segment(number, a, e, start, end - start)
        for number, ((a, e), start, end) in enumerate(zip(ranges, starts, ends, strict=True), 1)
    ]


# ------------------------------------------------------------------------------------ writing


def _language_code(track: TimedTrack) -> str:
    """ISO 639-2/T code for mdhd."""
    language = (track.input.language or "").lower()
    primary = language.split("-")[0]
    if len(primary) == 3:
        return primary
    if primary in _ISO639_2:
        return _ISO639_2[primary]
    return track.file.language if track.file.language.isalpha() else "und"


def init_segment(track: TimedTrack) -> bytes:
    """The CMAF header: `ftyp` + `moov` with empty sample tables and `mvex`."""
    entry = track.file.entry
    audio = track.kind == "audio"
    sample_entry = entry.data
    extra_boxes: list[bytes] = []
    protection = track.input.protection
    if protection is not None:
        sinf = protection.sinf(entry)
        if sinf:
            sample_entry = entry.rewritten("enca" if audio else "encv", sinf)
        extra_boxes = list(protection.init_boxes())
    timescale = track.timescale
    if audio:
        width = height = 0.0
        media_header = mp4.smhd()
    else:
        h_spacing, v_spacing = track.pixel_aspect
        width, height = entry.width * h_spacing / v_spacing, float(entry.height)
        media_header = mp4.vmhd()
    edit = b""
    if track.edit_media_time:
        # one offset edit over the whole (fragmented) media: skip the priming
        edit = box("edts", mp4.elst([(0, track.edit_media_time)]))
    handler = "soun" if audio else "vide"
    language = track.input.language
    elng = mp4.elng(language) if language else b""
    trak = box(
        "trak",
        mp4.tkhd(1, 0, width, height, audio),
        edit,
        box(
            "mdia",
            mp4.mdhd(timescale, 0, _language_code(track)),
            mp4.hdlr(handler, "SoundHandler" if audio else "VideoHandler"),
            elng,
            box(
                "minf",
                media_header,
                mp4.data_information(),
                mp4.empty_sample_tables(sample_entry),
            ),
        ),
    )
    mvex = box("mvex", mp4.mehd(track.composition_end), mp4.trex(1))
    moov = box("moov", mp4.mvhd(timescale, 0, 2), trak, mvex, *extra_boxes)
    return mp4.file_type("ftyp", INIT_BRANDS[0], INIT_BRANDS) + moov


def segment_type() -> bytes:
    """The `styp` that starts each segment file."""
    return mp4.file_type("styp", SEGMENT_BRANDS[0], SEGMENT_BRANDS)


@dataclass(frozen=True)
class Fragment:
    """One `moof` + `mdat`, as its pieces in order (the sample data is not joined into one
    buffer: a segment is written piece by piece, with no copy of its megabytes)."""

    parts: tuple[bytes, ...]
    size: int
    key_frame_end: int  # bytes from the moof start to the end of the first sample


def fragment(track: TimedTrack, segment: Segment) -> Fragment:
    """The `moof` + `mdat` of one segment; sample data is read from the input now."""
    first, end = segment.first, segment.end
    samples = track.file.samples
    data = track.file.read_samples(first, end)
    encrypted: list[ProtectedSample] | None = None  # the samples of an encrypted fragment
    protection = track.input.protection
    if protection is not None:
        protected = [protection.protect_sample(sample, track.file.entry) for sample in data]
        data = [p.data for p in protected]
        if any(p.iv or p.subsamples for p in protected):
            encrypted = protected
        elif protection.sinf(track.file.entry):
            # encrypted, but nothing per sample (cbcs audio): a senc with the sample count only
            encrypted = protected
    count = end - first
    sizes = np.fromiter((len(d) for d in data), dtype=np.int64, count=count)
    durations = samples.duration[first:end]
    flags = np.where(samples.sync[first:end], mp4.SYNC_SAMPLE_FLAGS, mp4.NON_SYNC_SAMPLE_FLAGS)
    offsets = track.composition_offset[first:end]
    # values shared by all samples go into tfhd as defaults
    same_duration = bool((durations == durations[0]).all())
    same_flags = bool((flags == flags[0]).all())
    header = mp4.tfhd(
        1,
        default_duration=int(durations[0]) if same_duration else None,
        default_flags=int(flags[0]) if same_flags else None,
    )
    decode_time = mp4.tfdt(int(track.decode_time[first]))

    def run(data_offset: int) -> bytes:
        return mp4.trun(
            data_offset,
            count=count,
            durations=None if same_duration else durations,
            sizes=sizes,
            flags=None if same_flags else flags,
            composition_offsets=offsets if offsets.any() else None,
        )

    head = mp4.mfhd(segment.number)
    # box sizes do not depend on the offsets: lay out once, then write with the real offsets
    before_aux = 8 + len(head) + 8 + len(header) + len(decode_time) + len(run(0))
    auxiliary = b""
    if encrypted is not None:
        auxiliary = mp4.traf_encryption_boxes(encrypted, before_aux)
    moof_size = before_aux + len(auxiliary)
    payload_size = int(sizes.sum())
    if payload_size + 8 > 0xFFFFFFFF:
        raise PackagingError(f"{track.name}: segment {segment.number} is larger than 4 GiB")
    moof = box("moof", head, box("traf", header, decode_time, run(moof_size + 8), auxiliary))
    mdat = struct.pack(">I4s", payload_size + 8, b"mdat")
    first_size = int(sizes[0]) if count else 0
    size = len(moof) + len(mdat) + payload_size
    return Fragment((moof, mdat, *data), size, len(moof) + 8 + first_size)


def write_segment_files(
    track: TimedTrack, folder: Path, cancel: Callable[[], None] | None = None
) -> TrackLayout:
    """`<name>_init.mp4` and `<name>_<n>.m4s` (each `styp` + `moof` + `mdat`)."""
    name = track.name
    init_name = f"{name}_init.mp4"
    (folder / init_name).write_bytes(init_segment(track))
    files = [init_name]
    refs = []
    styp = segment_type()
    for segment in track.segments:
        if cancel:
            cancel()
        written = fragment(track, segment)
        uri = f"{name}_{segment.number}.m4s"
        with open(folder / uri, "wb") as handle:
            handle.write(styp)
            handle.writelines(written.parts)
        files.append(uri)
        refs.append(
            SegmentRef(
                uri,
                0,
                len(styp) + written.size,
                segment.start,
                segment.duration,
                (len(styp), written.key_frame_end),
            )
        )
    return TrackLayout(track, refs, files, init_name, media_template=f"{name}_$Number$.m4s")


def write_single_file(
    track: TimedTrack, folder: Path, cancel: Callable[[], None] | None = None
) -> TrackLayout:
    """`<name>.mp4`: the CMAF header, a `sidx` indexing every segment, then the fragments.

    Fragments are streamed to the file; the `sidx` is written with zeros first and filled in
    at the end, so memory holds one segment at a time.
    """
    uri = f"{track.name}.mp4"
    init = init_segment(track)
    count = len(track.segments)
    index_size = mp4.SIDX_HEADER_SIZE + mp4.SIDX_ENTRY_SIZE * count
    refs = []
    references = []
    with open(folder / uri, "wb") as handle:
        handle.write(init)
        handle.write(bytes(index_size))
        position = len(init) + index_size
        for segment in track.segments:
            if cancel:
                cancel()
            written = fragment(track, segment)
            handle.writelines(written.parts)
            size = written.size
            refs.append(
                SegmentRef(
                    uri,
                    position,
                    size,
                    segment.start,
                    segment.duration,
                    (position, written.key_frame_end),
                )
            )
            references.append((size, segment.duration))
            position += size
        index = mp4.sidx(track.timescale, track.segments[0].start, 0, references)
        assert len(index) == index_size
        handle.seek(len(init))
        handle.write(index)
    return TrackLayout(
        track,
        refs,
        [uri],
        uri,
        init_range=(0, len(init)),
        index_range=(len(init), index_size),
    )
