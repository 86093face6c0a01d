"""ISO-BMFF (ISO/IEC 14496-12) at box level: read single-track MP4 files, write CMAF boxes.

Reading (`read_track`) walks the top-level boxes of a file by their headers only: `moov` and each
`moof` are read (they are small), `mdat` payloads are skipped and only their sample positions are
kept, so a long rendition never sits in memory. Sample data is read later, per segment, with
`TrackFile.read_samples`. Both fragmented files (`moov` + `mvex`, then `moof`/`mdat` pairs, as
FFmpeg's `frag_keyframe+empty_moov+default_base_moof` writes them) and plain files with full
sample tables are understood.

Writing: `box`/`full_box` and one small function per box the packager emits.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from packagers.errors import PackagingError

# trun / sample flags (ISO/IEC 14496-12 8.8.3.1)
SAMPLE_IS_NON_SYNC = 0x00010000
SYNC_SAMPLE_FLAGS = 0x02000000  # depends on no other sample, sync
NON_SYNC_SAMPLE_FLAGS = 0x01010000  # depends on others, not sync

# tfhd flags
TFHD_BASE_DATA_OFFSET = 0x000001
TFHD_SAMPLE_DESCRIPTION_INDEX = 0x000002
TFHD_DEFAULT_DURATION = 0x000008
TFHD_DEFAULT_SIZE = 0x000010
TFHD_DEFAULT_FLAGS = 0x000020
TFHD_DEFAULT_BASE_IS_MOOF = 0x020000

# trun flags
TRUN_DATA_OFFSET = 0x000001
TRUN_FIRST_SAMPLE_FLAGS = 0x000004
TRUN_DURATION = 0x000100
TRUN_SIZE = 0x000200
TRUN_FLAGS = 0x000400
TRUN_COMPOSITION_OFFSET = 0x000800

UNITY_MATRIX = struct.pack(">9i", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)

# Sample entries whose fixed fields are followed by child boxes; the value is the length of
# those fixed fields after the 8-byte box header.
VISUAL_ENTRY_LENGTH = 78
AUDIO_ENTRY_LENGTH = 28
VISUAL_ENTRIES = {"avc1", "avc3", "hvc1", "hev1", "dvh1", "dvhe", "vp09", "av01", "encv"}
AUDIO_ENTRIES = {"mp4a", "ac-3", "ec-3", "ac-4", "Opus", "fLaC", "enca"}


# ------------------------------------------------------------------------------------ writing


def box(kind: str, *payloads: bytes) -> bytes:
    """One box: size, type, payload (a 64-bit size only when 32 bits do not suffice)."""
    body = b"".join(payloads)
    size = 8 + len(body)
    if size > 0xFFFFFFFF:
        return struct.pack(">I4sQ", 1, kind.encode("latin-1"), size + 8) + body
    return struct.pack(">I4s", size, kind.encode("latin-1")) + body


def full_box(kind: str, version: int, flags: int, *payloads: bytes) -> bytes:
    """A FullBox: version and 24-bit flags before the payload."""
    return box(kind, struct.pack(">I", (version << 24) | (flags & 0xFFFFFF)), *payloads)


def file_type(kind: str, major: str, compatible: Sequence[str], minor: int = 0) -> bytes:
    """`ftyp` or `styp`."""
    brands = b"".join(brand.encode("latin-1") for brand in compatible)
    return box(kind, major.encode("latin-1"), struct.pack(">I", minor), brands)


def mvhd(timescale: int, duration: int, next_track_id: int) -> bytes:
    return full_box(
        "mvhd",
        1,
        0,
        struct.pack(">QQIQ", 0, 0, timescale, duration),
        struct.pack(">iH10x", 0x10000, 0x0100),  # rate 1.0, volume 1.0
        UNITY_MATRIX,
        bytes(24),  # pre_defined
        struct.pack(">I", next_track_id),
    )


def tkhd(track_id: int, duration: int, width: float, height: float, audio: bool) -> bytes:
    """Track header, flags enabled|in_movie; width/height are the display size."""
    return full_box(
        "tkhd",
        1,
        0x3,
        struct.pack(">QQIIQ", 0, 0, track_id, 0, duration),
        struct.pack(">8xhhH2x", 0, 1 if audio else 0, 0x0100 if audio else 0),
        UNITY_MATRIX,
        struct.pack(">II", round(width * 65536), round(height * 65536)),
    )


def mdhd(timescale: int, duration: int, language: str) -> bytes:
    """Media header; `language` is an ISO 639-2/T code packed as three 5-bit letters."""
    code = language if len(language) == 3 and language.isalpha() else "und"
    packed = 0
    for char in code.lower():
        packed = (packed << 5) | ((ord(char) - 0x60) & 0x1F)
    return full_box("mdhd", 1, 0, struct.pack(">QQIQHH", 0, 0, timescale, duration, packed, 0))


def hdlr(handler: str, name: str) -> bytes:
    return full_box(
        "hdlr", 0, 0, struct.pack(">I4s12x", 0, handler.encode()), name.encode() + b"\0"
    )


def elst(entries: Sequence[tuple[int, int]]) -> bytes:
    """Edit list of (segment_duration in movie timescale, media_time in media timescale)."""
    body = b"".join(struct.pack(">Qqhh", dur, media, 1, 0) for dur, media in entries)
    return full_box("elst", 1, 0, struct.pack(">I", len(entries)), body)


def empty_sample_tables(sample_entry: bytes) -> bytes:
    """`stbl` of a fragmented track: the sample description and empty tables (CMAF 7.5.4)."""
    return box(
        "stbl",
        full_box("stsd", 0, 0, struct.pack(">I", 1), sample_entry),
        full_box("stts", 0, 0, struct.pack(">I", 0)),
        full_box("stsc", 0, 0, struct.pack(">I", 0)),
        full_box("stsz", 0, 0, struct.pack(">II", 0, 0)),
        full_box("stco", 0, 0, struct.pack(">I", 0)),
    )


def data_information() -> bytes:
    """`dinf` with one self-contained `url ` reference."""
    return box("dinf", full_box("dref", 0, 0, struct.pack(">I", 1), full_box("url ", 0, 1)))


def vmhd() -> bytes:
    return full_box("vmhd", 0, 1, bytes(8))


def smhd() -> bytes:
    return full_box("smhd", 0, 0, bytes(4))


def elng(language: str) -> bytes:
    """Extended language tag (BCP 47), which mdhd's three letters cannot hold."""
    return full_box("elng", 0, 0, language.encode() + b"\0")


def trex(track_id: int) -> bytes:
    return full_box("trex", 0, 0, struct.pack(">IIIII", track_id, 1, 0, 0, 0))


def mehd(duration: int) -> bytes:
    return full_box("mehd", 1, 0, struct.pack(">Q", duration))


def mfhd(sequence_number: int) -> bytes:
    return full_box("mfhd", 0, 0, struct.pack(">I", sequence_number))


def tfhd(
    track_id: int,
    *,
    default_duration: int | None = None,
    default_size: int | None = None,
    default_flags: int | None = None,
) -> bytes:
    """Track fragment header with default-base-is-moof and the given defaults."""
    flags = TFHD_DEFAULT_BASE_IS_MOOF
    fields = [struct.pack(">I", track_id)]
    for flag, value in (
        (TFHD_DEFAULT_DURATION, default_duration),
        (TFHD_DEFAULT_SIZE, default_size),
        (TFHD_DEFAULT_FLAGS, default_flags),
    ):
        if value is not None:
            flags |= flag
            fields.append(struct.pack(">I", value))
    return full_box("tfhd", 0, flags, *fields)


def tfdt(base_media_decode_time: int) -> bytes:
    return full_box("tfdt", 1, 0, struct.pack(">Q", base_media_decode_time))


def trun(
    data_offset: int,
    *,
    count: int,
    durations: np.ndarray | None,
    sizes: np.ndarray | None,
    flags: np.ndarray | None,
    composition_offsets: np.ndarray | None,
) -> bytes:
    """Track run, version 1 (signed composition offsets); a None column is left out."""
    box_flags = TRUN_DATA_OFFSET
    columns = []
    for flag, column in (
        (TRUN_DURATION, durations),
        (TRUN_SIZE, sizes),
        (TRUN_FLAGS, flags),
        (TRUN_COMPOSITION_OFFSET, composition_offsets),
    ):
        if column is not None:
            box_flags |= flag
            columns.append(np.asarray(column, dtype=np.int64))
    table = b""
    if columns:
        # int64 -> big-endian 32-bit words; signed offsets wrap into two's complement
        table = (np.stack(columns, axis=1) & 0xFFFFFFFF).astype(">u4").tobytes()
    return full_box("trun", 1, box_flags, struct.pack(">Ii", count, data_offset), table)


TRUN_HEADER_SIZE = 12 + 8  # FullBox header + sample_count + data_offset


def sidx(
    timescale: int,
    earliest_presentation_time: int,
    first_offset: int,
    references: Sequence[tuple[int, int]],
) -> bytes:
    """Segment index with one (referenced_size, subsegment_duration) per subsegment, each
    starting with a SAP of type 1."""
    body = [
        struct.pack(
            ">IIQQHH", 1, timescale, earliest_presentation_time, first_offset, 0, len(references)
        )
    ]
    for size, duration in references:
        body.append(struct.pack(">III", size & 0x7FFFFFFF, duration, 0x90000000))
    return full_box("sidx", 1, 0, *body)


def senc(entries: Sequence[bytes], subsamples: bool) -> bytes:
    """Sample encryption box (ISO/IEC 23001-7) from per-sample entries (IV, then the
    subsample count and map when `subsamples`)."""
    return full_box("senc", 0, 0x2 if subsamples else 0, struct.pack(">I", len(entries)), *entries)


SENC_HEADER_SIZE = 16  # box header, version/flags, sample_count


def saiz(sizes: Sequence[int]) -> bytes:
    """Sample auxiliary information sizes: one default size when all are equal."""
    if all(size == sizes[0] for size in sizes):
        return full_box("saiz", 0, 0, struct.pack(">BI", sizes[0], len(sizes)))
    return full_box("saiz", 0, 0, struct.pack(">BI", 0, len(sizes)), bytes(sizes))


def saio(offset: int) -> bytes:
    """Sample auxiliary information offset: one offset (from the moof, default-base-is-moof)."""
    return full_box("saio", 0, 0, struct.pack(">II", 1, offset))


class AuxiliaryInfo(Protocol):
    """A sample's CENC auxiliary information (`packagers.hooks.ProtectedSample` has it)."""

    @property
    def iv(self) -> bytes: ...  # per-sample IV; empty with a constant IV

    @property
    def subsamples(self) -> Sequence[tuple[int, int]]: ...  # (clear, protected) byte counts


def senc_entries(samples: Sequence[AuxiliaryInfo]) -> list[bytes]:
    """Per-sample senc entries: IV, then (when any sample has them) the subsample map."""
    use_subsamples = any(s.subsamples for s in samples)
    entries = []
    for sample in samples:
        entry = sample.iv
        if use_subsamples:  # every entry then carries a count, an empty map included
            entry += struct.pack(">H", len(sample.subsamples))
            entry += b"".join(struct.pack(">HI", c, p) for c, p in sample.subsamples)
        entries.append(entry)
    return entries


def traf_encryption_boxes(samples: Sequence[AuxiliaryInfo], position: int) -> bytes:
    """`saiz` + `saio` + `senc` of one encrypted fragment, to be placed at byte `position` of
    its `moof`: `saio` points at the first entry inside `senc`. With no auxiliary information
    at all (cbcs audio: a constant IV, whole samples) only a `senc` holding the sample count
    is written, with no saiz/saio, as Shaka Packager writes it (CMAF would allow no senc at
    all, but readers such as Bento4, Kodi's inputstream.adaptive, refuse an encrypted fragment
    without one)."""
    entries = senc_entries(samples)
    if not any(entries):
        return senc([b""] * len(entries), False)
    sizes = saiz([len(entry) for entry in entries])
    # saio's size does not depend on its offset: senc's entries follow saiz, saio, senc header
    offset = position + len(sizes) + len(saio(0)) + SENC_HEADER_SIZE
    return sizes + saio(offset) + senc(entries, any(s.subsamples for s in samples))


SIDX_ENTRY_SIZE = 12
SIDX_HEADER_SIZE = 12 + 4 + 4 + 8 + 8 + 4


# ------------------------------------------------------------------------------------ reading


@dataclass(frozen=True)
class BoxHeader:
    """Where one box lies: in a file (top level) or in a bytes buffer."""

    kind: str
    offset: int
    size: int
    header_size: int

    @property
    def start(self) -> int:
        """Offset of the payload."""
        return self.offset + self.header_size

    @property
    def end(self) -> int:
        return self.offset + self.size


def iter_boxes(data: bytes, start: int = 0, end: int | None = None) -> Iterator[BoxHeader]:
    """The boxes in `data[start:end]`, in order."""
    end = len(data) if end is None else end
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise PackagingError(f"malformed box {kind.decode('latin-1')!r} at byte {pos}")
        yield BoxHeader(kind.decode("latin-1"), pos, size, header)
        pos += size


def child(data: bytes, parent: BoxHeader, kind: str, skip: int = 0) -> BoxHeader | None:
    """The first child box of `kind` (`skip`: fixed fields before the children)."""
    for header in iter_boxes(data, parent.start + skip, parent.end):
        if header.kind == kind:
            return header
    return None


def find(data: bytes, parent: BoxHeader, path: str) -> BoxHeader | None:
    """A descendant by a slash-separated path of box types, e.g. `mdia/minf/stbl`."""
    node: BoxHeader | None = parent
    for kind in path.split("/"):
        if node is None:
            return None
        node = child(data, node, kind)
    return node


def _iter_file_boxes(handle, file_size: int, name: str) -> Iterator[BoxHeader]:
    """Top-level boxes of an open file, reading only their headers."""
    pos = 0
    while pos + 8 <= file_size:
        handle.seek(pos)
        head = handle.read(16)
        size, kind = struct.unpack_from(">I4s", head)
        header = 8
        if size == 1:
            (size,) = struct.unpack_from(">Q", head, 8)
            header = 16
        elif size == 0:
            size = file_size - pos
        if size < header or pos + size > file_size:
            raise PackagingError(f"{name}: malformed top-level box {kind!r} at byte {pos}")
        yield BoxHeader(kind.decode("latin-1"), pos, size, header)
        pos += size


@dataclass(frozen=True)
class SampleEntry:
    """The track's sample description (`stsd` entry), kept byte for byte for the output."""

    fourcc: str
    data: bytes  # the whole entry box, child boxes included
    width: int = 0
    height: int = 0
    channels: int = 0
    sample_rate: int = 0
    boxes: dict[str, bytes] = field(default_factory=dict)  # first child payload of each type

    def rewritten(self, fourcc: str, extra_boxes: bytes = b"") -> bytes:
        """The entry under another type with boxes appended (e.g. `encv` + `sinf`)."""
        body = self.data[8:] + extra_boxes
        return box(fourcc, body)


@dataclass
class Samples:
    """Per-sample tables as numpy int64 columns (decode order)."""

    decode_time: np.ndarray
    duration: np.ndarray
    composition_offset: np.ndarray
    size: np.ndarray
    offset: np.ndarray  # file offset of the sample data
    sync: np.ndarray  # bool

    def __len__(self) -> int:
        return len(self.size)


@dataclass
class TrackFile:
    """One parsed single-track MP4 file."""

    path: Path
    track_id: int
    handler: str  # "vide" or "soun"
    timescale: int
    language: str  # mdhd ISO 639-2/T code
    entry: SampleEntry
    edit_media_time: int | None  # media time the edit list presents first (None: no edit)
    samples: Samples
    fragmented: bool
    # every edit list entry: (segment_duration in movie timescale, media_time), and the movie
    # timescale; `plain_copy` reads them
    edits: tuple[tuple[int, int], ...] = ()
    movie_timescale: int = 0

    def read_samples(self, first: int, end: int) -> list[bytes]:
        """The data of samples `first` to `end - 1`, read with one read per contiguous run."""
        offsets = self.samples.offset[first:end]
        sizes = self.samples.size[first:end]
        out: list[bytes] = []
        with open(self.path, "rb") as handle:
            i, count = 0, len(sizes)
            while i < count:
                j = i + 1
                while j < count and offsets[j] == offsets[j - 1] + sizes[j - 1]:
                    j += 1
                handle.seek(int(offsets[i]))
                run = handle.read(int(offsets[j - 1] + sizes[j - 1] - offsets[i]))
                if len(run) != int(offsets[j - 1] + sizes[j - 1] - offsets[i]):
                    raise PackagingError(f"{self.path.name}: sample data past the end of file")
                base = int(offsets[i])
                for k in range(i, j):
                    start = int(offsets[k]) - base
                    out.append(run[start : start + int(sizes[k])])
                i = j
        return out


def read_track(
    path: Path, track_id: int | None = None, handler: str | None = None, index: int | None = None
) -> TrackFile:
    """Parse one track of an MP4 file (fragmented or not); sample data stays on disk. With
    none of `track_id`, `handler`, `index` the file must hold exactly one track; otherwise the
    track with that id, the first with that handler ("vide", "soun"), or the `index`-th `trak`
    (from 0, in file order: FFmpeg's stream index) is read."""
    path = Path(path)
    file_size = os.path.getsize(path)
    moov: bytes | None = None
    fragments: list[tuple[int, bytes]] = []  # (file offset of moof, moof bytes)
    with open(path, "rb") as handle:
        for header in _iter_file_boxes(handle, file_size, path.name):
            if header.kind in ("moov", "moof"):
                handle.seek(header.offset)
                data = handle.read(header.size)
                if header.kind == "moov":
                    moov = data
                else:
                    fragments.append((header.offset, data))
    if moov is None:
        raise PackagingError(f"{path.name}: no moov box (not an MP4 file?)")
    try:
        return _parse_movie(path, moov, fragments, track_id, handler, index)
    except (struct.error, ValueError, IndexError) as exc:  # truncated or inconsistent boxes
        raise PackagingError(f"{path.name}: malformed MP4 ({exc})") from exc


def _trak_id(moov: bytes, trak: BoxHeader) -> int | None:
    tkhd_box = child(moov, trak, "tkhd")
    if tkhd_box is None:
        return None
    version = moov[tkhd_box.start]
    return struct.unpack_from(">I", moov, tkhd_box.start + (20 if version else 12))[0]


def _trak_handler(moov: bytes, trak: BoxHeader) -> str | None:
    hdlr_box = find(moov, trak, "mdia/hdlr")
    if hdlr_box is None:
        return None
    return moov[hdlr_box.start + 8 : hdlr_box.start + 12].decode("latin-1")


def _parse_movie(
    path: Path,
    moov: bytes,
    fragments: list[tuple[int, bytes]],
    wanted_id: int | None = None,
    wanted_handler: str | None = None,
    wanted_index: int | None = None,
) -> TrackFile:
    root = BoxHeader("moov", 0, len(moov), 8)
    traks = [h for h in iter_boxes(moov, root.start) if h.kind == "trak"]
    if wanted_index is not None:
        if not 0 <= wanted_index < len(traks):
            raise PackagingError(f"{path.name}: no track number {wanted_index}")
        traks = traks[wanted_index : wanted_index + 1]
    elif wanted_id is not None:
        traks = [t for t in traks if _trak_id(moov, t) == wanted_id]
        if not traks:
            raise PackagingError(f"{path.name}: no track with id {wanted_id}")
    elif wanted_handler is not None:
        traks = [t for t in traks if _trak_handler(moov, t) == wanted_handler][:1]
        if not traks:
            raise PackagingError(f"{path.name}: no {wanted_handler!r} track")
    if len(traks) != 1:
        raise PackagingError(f"{path.name}: expected exactly one track, found {len(traks)}")
    trak = traks[0]
    tkhd_box = child(moov, trak, "tkhd")
    mdhd_box = find(moov, trak, "mdia/mdhd")
    hdlr_box = find(moov, trak, "mdia/hdlr")
    stbl = find(moov, trak, "mdia/minf/stbl")
    if tkhd_box is None or mdhd_box is None or hdlr_box is None or stbl is None:
        raise PackagingError(f"{path.name}: incomplete track header (tkhd/mdhd/hdlr/stbl)")
    tk_version = moov[tkhd_box.start]
    track_id = struct.unpack_from(">I", moov, tkhd_box.start + (20 if tk_version else 12))[0]
    md_version = moov[mdhd_box.start]
    pos = mdhd_box.start + (20 if md_version else 12)
    timescale = struct.unpack_from(">I", moov, pos)[0]
    packed_language = struct.unpack_from(">H", moov, pos + (12 if md_version else 8))[0]
    language = "".join(chr(((packed_language >> s) & 0x1F) + 0x60) for s in (10, 5, 0))
    handler = moov[hdlr_box.start + 8 : hdlr_box.start + 12].decode("latin-1")
    if handler not in ("vide", "soun"):
        raise PackagingError(f"{path.name}: unsupported track handler {handler!r}")
    if timescale == 0:
        raise PackagingError(f"{path.name}: media timescale is 0")

    entry = _parse_sample_entry(path, moov, stbl)
    edit_media_time = _parse_edit_list(moov, trak)
    edits = _edit_entries(moov, trak)
    movie_timescale = 0
    mvhd_box = child(moov, root, "mvhd")
    if mvhd_box is not None:
        movie_timescale = struct.unpack_from(
            ">I", moov, mvhd_box.start + (20 if moov[mvhd_box.start] else 12)
        )[0]

    trex_defaults = (1, 0, 0, 0)
    mvex = child(moov, root, "mvex")
    if mvex is not None:  # the track's trex (else the first: one-track files)
        trexes = [h for h in iter_boxes(moov, mvex.start, mvex.end) if h.kind == "trex"]
        for index, trex_box in enumerate(trexes):
            if index == 0 or struct.unpack_from(">I", moov, trex_box.start + 4)[0] == track_id:
                trex_defaults = struct.unpack_from(">IIII", moov, trex_box.start + 8)

    if fragments:
        samples = _parse_fragments(path, fragments, track_id, trex_defaults)
        fragmented = True
    else:
        samples = _parse_sample_tables(path, moov, stbl)
        fragmented = False
    if len(samples) == 0:
        raise PackagingError(f"{path.name}: the track has no samples")
    return TrackFile(
        path=path,
        track_id=track_id,
        handler=handler,
        timescale=timescale,
        language=language,
        entry=entry,
        edit_media_time=edit_media_time,
        samples=samples,
        fragmented=fragmented,
        edits=edits,
        movie_timescale=movie_timescale,
    )


def _parse_sample_entry(path: Path, moov: bytes, stbl: BoxHeader) -> SampleEntry:
    stsd = child(moov, stbl, "stsd")
    if stsd is None:
        raise PackagingError(f"{path.name}: no stsd")
    count = struct.unpack_from(">I", moov, stsd.start + 4)[0]
    entries = list(iter_boxes(moov, stsd.start + 8, stsd.end))
    if count != 1 or len(entries) != 1:
        raise PackagingError(f"{path.name}: expected one sample description, found {count}")
    header = entries[0]
    fourcc = header.kind
    if fourcc in ("encv", "enca"):
        raise PackagingError(f"{path.name}: the input is encrypted")
    data = moov[header.offset : header.end]
    width = height = channels = sample_rate = 0
    if fourcc in VISUAL_ENTRIES:
        fixed = VISUAL_ENTRY_LENGTH
        width, height = struct.unpack_from(">HH", moov, header.start + 24)
    elif fourcc in AUDIO_ENTRIES:
        fixed = AUDIO_ENTRY_LENGTH
        sound_version = struct.unpack_from(">H", moov, header.start + 8)[0]
        channels = struct.unpack_from(">H", moov, header.start + 16)[0]
        sample_rate = struct.unpack_from(">I", moov, header.start + 24)[0] >> 16
        fixed += {1: 16, 2: 36}.get(sound_version, 0)  # QuickTime sound description v1/v2
    else:
        raise PackagingError(f"{path.name}: unsupported sample entry {fourcc!r}")
    boxes: dict[str, bytes] = {}
    for sub in iter_boxes(moov, header.start + fixed, header.end):
        boxes.setdefault(sub.kind, moov[sub.start : sub.end])
    return SampleEntry(fourcc, data, width, height, channels, sample_rate, boxes)


def _parse_edit_list(moov: bytes, trak: BoxHeader) -> int | None:
    """The media_time of the first non-empty edit (leading empty edits, delays, are skipped)."""
    elst_box = find(moov, trak, "edts/elst")
    if elst_box is None:
        return None
    version = moov[elst_box.start]
    count = struct.unpack_from(">I", moov, elst_box.start + 4)[0]
    pos = elst_box.start + 8
    for _ in range(count):
        if version == 1:
            _, media_time = struct.unpack_from(">Qq", moov, pos)
            pos += 20
        else:
            _, media_time = struct.unpack_from(">Ii", moov, pos)
            pos += 12
        if media_time != -1:
            return media_time
    return None


def _edit_entries(moov: bytes, trak: BoxHeader) -> tuple[tuple[int, int], ...]:
    """Every entry of the track's edit list: (segment_duration, media_time)."""
    elst_box = find(moov, trak, "edts/elst")
    if elst_box is None:
        return ()
    version = moov[elst_box.start]
    count = struct.unpack_from(">I", moov, elst_box.start + 4)[0]
    fmt, step = (">Qq", 20) if version == 1 else (">Ii", 12)
    pos = elst_box.start + 8
    entries = []
    for _ in range(count):
        entries.append(struct.unpack_from(fmt, moov, pos))
        pos += step
    return tuple(entries)


def _parse_fragments(
    path: Path,
    fragments: list[tuple[int, bytes]],
    track_id: int,
    trex_defaults: tuple[int, int, int, int],
) -> Samples:
    _, trex_duration, trex_size, trex_flags = trex_defaults
    columns: dict[str, list[np.ndarray]] = {k: [] for k in ("dts", "dur", "cto", "size", "off")}
    flags_parts: list[np.ndarray] = []
    next_decode_time = 0
    for moof_offset, moof in fragments:
        root = BoxHeader("moof", 0, len(moof), 8)
        data_end = moof_offset  # end of the previous traf's data, for implicit base offsets
        for traf in iter_boxes(moof, root.start):
            if traf.kind != "traf":
                continue
            tfhd_box = child(moof, traf, "tfhd")
            if tfhd_box is None:
                raise PackagingError(f"{path.name}: traf without tfhd")
            tf_flags = struct.unpack_from(">I", moof, tfhd_box.start)[0] & 0xFFFFFF
            pos = tfhd_box.start + 4
            (frag_track,) = struct.unpack_from(">I", moof, pos)
            pos += 4
            base = None
            if tf_flags & TFHD_BASE_DATA_OFFSET:
                (base,) = struct.unpack_from(">Q", moof, pos)
                pos += 8
            if tf_flags & TFHD_SAMPLE_DESCRIPTION_INDEX:
                pos += 4
            default_duration, default_size, default_flags = trex_duration, trex_size, trex_flags
            if tf_flags & TFHD_DEFAULT_DURATION:
                (default_duration,) = struct.unpack_from(">I", moof, pos)
                pos += 4
            if tf_flags & TFHD_DEFAULT_SIZE:
                (default_size,) = struct.unpack_from(">I", moof, pos)
                pos += 4
            if tf_flags & TFHD_DEFAULT_FLAGS:
                (default_flags,) = struct.unpack_from(">I", moof, pos)
            if frag_track != track_id:
                continue
            if base is None:
                base = moof_offset if tf_flags & TFHD_DEFAULT_BASE_IS_MOOF else data_end
            tfdt_box = child(moof, traf, "tfdt")
            if tfdt_box is not None:
                version = moof[tfdt_box.start]
                fmt = ">Q" if version == 1 else ">I"
                (next_decode_time,) = struct.unpack_from(fmt, moof, tfdt_box.start + 4)
            cursor = base
            for run in iter_boxes(moof, traf.start):
                if run.kind != "trun":
                    continue
                parsed = _parse_trun(moof, run, default_duration, default_size, default_flags)
                data_offset, durations, sizes, flags, offsets = parsed
                if data_offset is not None:
                    cursor = base + data_offset
                count = len(sizes)
                starts = cursor + np.concatenate(([0], np.cumsum(sizes)[:-1])) if count else sizes
                decode = next_decode_time + np.concatenate(([0], np.cumsum(durations)[:-1]))
                columns["dts"].append(decode[:count])
                columns["dur"].append(durations)
                columns["cto"].append(offsets)
                columns["size"].append(sizes)
                columns["off"].append(np.asarray(starts, dtype=np.int64))
                flags_parts.append(flags)
                cursor += int(sizes.sum())
                next_decode_time += int(durations.sum())
            data_end = cursor
    if not columns["size"]:
        return _empty_samples()
    flags_all = np.concatenate(flags_parts)
    return Samples(
        decode_time=np.concatenate(columns["dts"]).astype(np.int64),
        duration=np.concatenate(columns["dur"]).astype(np.int64),
        composition_offset=np.concatenate(columns["cto"]).astype(np.int64),
        size=np.concatenate(columns["size"]).astype(np.int64),
        offset=np.concatenate(columns["off"]).astype(np.int64),
        sync=(flags_all & SAMPLE_IS_NON_SYNC) == 0,
    )


def _parse_trun(
    moof: bytes, run: BoxHeader, default_duration: int, default_size: int, default_flags: int
) -> tuple[int | None, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(data offset, durations, sizes, flags, composition offsets) of one trun."""
    word = struct.unpack_from(">I", moof, run.start)[0]
    version, flags = word >> 24, word & 0xFFFFFF
    (count,) = struct.unpack_from(">I", moof, run.start + 4)
    pos = run.start + 8
    data_offset = None
    if flags & TRUN_DATA_OFFSET:
        (data_offset,) = struct.unpack_from(">i", moof, pos)
        pos += 4
    first_flags = None
    if flags & TRUN_FIRST_SAMPLE_FLAGS:
        (first_flags,) = struct.unpack_from(">I", moof, pos)
        pos += 4
    present = [
        f for f in (TRUN_DURATION, TRUN_SIZE, TRUN_FLAGS, TRUN_COMPOSITION_OFFSET) if flags & f
    ]
    width = len(present)
    if pos + 4 * width * count > run.end:
        raise PackagingError("trun sample table runs past its box")
    table = np.frombuffer(moof, dtype=">u4", count=width * count, offset=pos).reshape(count, width)

    def column(flag: int, default: int) -> np.ndarray:
        if flags & flag:
            return table[:, present.index(flag)].astype(np.int64)
        return np.full(count, default, dtype=np.int64)

    durations = column(TRUN_DURATION, default_duration)
    sizes = column(TRUN_SIZE, default_size)
    sample_flags = column(TRUN_FLAGS, default_flags)
    if first_flags is not None and count and not flags & TRUN_FLAGS:
        sample_flags[0] = first_flags
    offsets = column(TRUN_COMPOSITION_OFFSET, 0)
    if version == 1:  # signed 32-bit offsets
        offsets = offsets.astype(np.uint32).view(np.int32).astype(np.int64)
    return data_offset, durations, sizes, sample_flags, offsets


def _parse_sample_tables(path: Path, moov: bytes, stbl: BoxHeader) -> Samples:
    """Samples of a non-fragmented track from stts/ctts/stsz/stsc/stco(co64)/stss."""

    def table(kind: str) -> BoxHeader | None:
        return child(moov, stbl, kind)

    def entries(header: BoxHeader, width: int, dtype: str = ">u4") -> np.ndarray:
        (count,) = struct.unpack_from(">I", moov, header.start + 4)
        return np.frombuffer(
            moov, dtype=dtype, count=count * width, offset=header.start + 8
        ).reshape(count, width)

    stts, stsz, stsc = table("stts"), table("stsz"), table("stsc")
    chunk_box = table("stco") or table("co64")
    if stts is None or stsz is None or stsc is None or chunk_box is None:
        raise PackagingError(f"{path.name}: incomplete sample tables")
    time_to_sample = entries(stts, 2).astype(np.int64)
    durations = np.repeat(time_to_sample[:, 1], time_to_sample[:, 0])
    fixed_size, count = struct.unpack_from(">II", moov, stsz.start + 4)
    if fixed_size:
        sizes = np.full(count, fixed_size, dtype=np.int64)
    else:
        sizes = np.frombuffer(moov, dtype=">u4", count=count, offset=stsz.start + 12).astype(
            np.int64
        )
    if len(durations) != count:
        raise PackagingError(f"{path.name}: stts and stsz disagree on the sample count")
    ctts = table("ctts")
    offsets = np.zeros(count, dtype=np.int64)
    if ctts is not None:
        raw = entries(ctts, 2)
        values = raw[:, 1].astype(np.int64)
        if moov[ctts.start] == 1:
            values = raw[:, 1].astype(np.uint32).view(np.int32).astype(np.int64)
        offsets = np.repeat(values, raw[:, 0].astype(np.int64))[:count]
    dtype = ">u8" if chunk_box.kind == "co64" else ">u4"
    chunk_offsets = entries(chunk_box, 1, dtype)[:, 0].astype(np.int64)
    runs = entries(stsc, 3).astype(np.int64)
    per_chunk = np.zeros(len(chunk_offsets), dtype=np.int64)
    for i, (first_chunk, samples_per_chunk, _) in enumerate(runs):
        last = runs[i + 1][0] - 1 if i + 1 < len(runs) else len(chunk_offsets)
        per_chunk[first_chunk - 1 : last] = samples_per_chunk
    chunk_of_sample = np.repeat(np.arange(len(chunk_offsets)), per_chunk)[:count]
    first_in_chunk = np.concatenate(([0], np.cumsum(per_chunk)[:-1]))
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    within = starts - starts[first_in_chunk[chunk_of_sample]]
    stss = table("stss")
    if stss is None:
        sync = np.ones(count, dtype=bool)
    else:
        sync = np.zeros(count, dtype=bool)
        sync[entries(stss, 1)[:, 0].astype(np.int64) - 1] = True
    return Samples(
        decode_time=np.concatenate(([0], np.cumsum(durations)[:-1])).astype(np.int64),
        duration=durations.astype(np.int64),
        composition_offset=offsets,
        size=sizes,
        offset=chunk_offsets[chunk_of_sample] + within,
        sync=sync,
    )


def _empty_samples() -> Samples:
    empty = np.zeros(0, dtype=np.int64)
    return Samples(empty, empty, empty, empty, empty, np.zeros(0, dtype=bool))
