"""Caption sources made in the tests: H.264 video carrying CEA-608 captions in A/53 SEI, SCC
files, and EBU-STL (Tech 3264) files.

`cea608_pop_on` turns (start, end, text) captions into the CEA-608 byte pairs of channel CC1
(pop-on: load into the hidden memory, swap at `start`, erase at `end`), one pair per video frame.
`make_cea608_video` encodes frames with libx264 (PyAV) and puts each frame's pair into an SEI
NAL unit (user_data_registered_itu_t_t35, "GA94" cc_data) before the frame's first slice, as
broadcast encoders do; the Annex B stream is then muxed into MP4 with PyAV.
"""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path

import av
from mediagen import draw_frame

PADDING = b"\x80\x80"
RCL, EOC, EDM = b"\x14\x20", b"\x14\x2f", b"\x14\x2c"  # resume caption loading, end of, erase
PAC_ROW15 = b"\x14\x70"  # preamble address code: row 15, white, column 0


def _odd_parity(byte: int) -> int:
    return byte | 0x80 if bin(byte).count("1") % 2 == 0 else byte


def _pair(first: int, second: int) -> bytes:
    return bytes([_odd_parity(first), _odd_parity(second)])


def _text_pairs(text: str) -> list[bytes]:
    codes = [ord(c) for c in text]  # basic North American characters: ASCII here
    if len(codes) % 2:
        codes.append(0)
    return [_pair(codes[i], codes[i + 1]) for i in range(0, len(codes), 2)]


def cea608_pop_on(captions: list[tuple[float, float, str]], fps: int, frames: int) -> list[bytes]:
    """One CC1 byte pair per frame: each caption loaded before its start (control codes sent
    twice, as CEA-608 asks), shown by EOC on the frame at `start`, erased on the one at `end`."""
    pairs = [PADDING] * frames
    for start, end, text in captions:
        show, erase = round(start * fps), round(end * fps)
        load = [_pair(*RCL)] * 2 + [_pair(*PAC_ROW15)] * 2 + _text_pairs(text)
        first = show - len(load)
        assert first >= 0 and all(p == PADDING for p in pairs[first:show]), "captions overlap"
        pairs[first:show] = load
        pairs[show] = _pair(*EOC)
        pairs[erase] = _pair(*EDM)
    return pairs


def _escape(rbsp: bytes) -> bytes:
    """Emulation prevention: 00 00 0x (x <= 3) becomes 00 00 03 0x."""
    out, zeros = bytearray(), 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def a53_sei(pair: bytes) -> bytes:
    """An H.264 SEI NAL unit (Annex B) with one field-1 cc_data triplet."""
    cc_data = bytes([0x40 | 1, 0xFF]) + b"\xfc" + pair  # process_cc_data, cc_count 1, em_data
    payload = b"\xb5\x00\x31GA94\x03" + cc_data + b"\xff"  # USA, ATSC, GA94, cc_data, marker
    rbsp = bytes([4, len(payload)]) + payload + b"\x80"  # T.35 payload type 4, size, stop bit
    return b"\x00\x00\x00\x01\x06" + _escape(rbsp)


def _before_first_slice(annexb: bytes, nal: bytes) -> bytes:
    index = 0
    while True:
        start = annexb.find(b"\x00\x00\x01", index)
        if start < 0:
            return annexb + nal
        nal_type = annexb[start + 3] & 0x1F
        if nal_type in (1, 5):  # a coded slice: insert before its start code (4-byte form)
            at = start - 1 if start > 0 and annexb[start - 1] == 0 else start
            return annexb[:at] + nal + annexb[at:]
        index = start + 3


def make_cea608_video(
    path: Path,
    captions: list[tuple[float, float, str]],
    *,
    duration: float = 3.0,
    fps: int = 30,
    width: int = 320,
    height: int = 180,
) -> Path:
    """An MP4 (H.264, no audio) whose SEI carries `captions` as CEA-608 CC1 pop-on captions."""
    frames = round(duration * fps)
    pairs = cea608_pop_on(captions, fps, frames)
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.time_base = Fraction(1, fps)
    encoder.framerate = Fraction(fps)
    encoder.options = {"bframes": "0", "preset": "ultrafast", "g": str(fps)}
    annexb: list[bytes] = []
    for index in range(frames + 1):
        frame = None
        if index < frames:
            frame = av.VideoFrame.from_ndarray(draw_frame(index, width, height), format="rgb24")
            frame = frame.reformat(format="yuv420p")
            frame.pts = index
        for packet in encoder.encode(frame):
            annexb.append(_before_first_slice(bytes(packet), a53_sei(pairs[packet.pts])))
    raw = path.with_suffix(".h264")
    raw.write_bytes(b"".join(annexb))
    with av.open(str(raw), format="h264") as source, av.open(str(path), "w") as target:
        stream = target.add_stream_from_template(source.streams.video[0])
        stream.time_base = Fraction(1, fps)
        for index, packet in enumerate(source.demux(source.streams.video[0])):
            if packet.size == 0:
                continue
            packet.stream = stream
            packet.time_base = Fraction(1, fps)
            packet.pts = packet.dts = index
            packet.duration = 1
            target.mux(packet)
    raw.unlink()
    return path


def scc_document(captions: list[tuple[float, float, str]]) -> str:
    """An SCC file with pop-on CC1 captions: loaded just before `start`, shown at `start` (the
    EOC's frame), erased at `end`; time codes are 29.97 fps non-drop labels."""

    def timecode(frame: int) -> str:
        seconds, frames = divmod(frame, 30)
        return f"00:{seconds // 60:02d}:{seconds % 60:02d}:{frames:02d}"

    def words(pairs: list[bytes]) -> str:
        return " ".join(p.hex() for p in pairs)

    lines = ["Scenarist_SCC V1.0", ""]
    for start, end, text in captions:
        show = round(start * 30000 / 1001)  # the label of the frame at `start`
        load = [_pair(*RCL)] * 2 + [_pair(*PAC_ROW15)] * 2 + _text_pairs(text)
        # each word takes one frame: loading starts so that EOC falls on `show`
        lines += [f"{timecode(show - len(load))}\t{words([*load, _pair(*EOC)])}", ""]
        lines += [f"{timecode(round(end * 30000 / 1001))}\t{words([_pair(*EDM)])}", ""]
    return "\n".join(lines)


def ebu_stl(captions: list[tuple[float, float, str]], fps: int = 25) -> bytes:
    """A minimal EBU Tech 3264 file: a GSI block (1024 bytes) and one TTI block per caption."""

    def field(text: str, size: int) -> bytes:
        return text.encode("latin-1").ljust(size, b" ")[:size]

    gsi = b"".join(
        [
            field("850", 3),  # code page number
            field(f"STL{fps}.01", 8),  # disk format code
            field("1", 1),  # display standard code: level-1 teletext
            field("00", 2),  # character code table: Latin
            field("09", 2),  # language code: English
            field("vipe test", 32),  # original programme title
            field("", 32),  # original episode title
            field("", 32),  # translated programme title
            field("", 32),  # translated episode title
            field("", 32),  # translator's name
            field("", 32),  # translator's contact details
            field("", 16),  # subtitle list reference code
            field("260101", 6),  # creation date
            field("260101", 6),  # revision date
            field("01", 2),  # revision number
            field(f"{len(captions):05d}", 5),  # total number of TTI blocks
            field(f"{len(captions):05d}", 5),  # total number of subtitles
            field("001", 3),  # total number of subtitle groups
            field("40", 2),  # maximum number of displayable characters in a row
            field("23", 2),  # maximum number of displayable rows
            field("1", 1),  # time code status: intended for use
            field("00000000", 8),  # time code: start of programme
            field("00000000", 8),  # time code: first in-cue
            field("1", 1),  # total number of disks
            field("1", 1),  # disk sequence number
            field("GBR", 3),  # country of origin
            field("", 32),  # publisher
            field("", 32),  # editor's name
            field("", 32),  # editor's contact details
            field("", 75),  # spare bytes
            field("", 576),  # user-defined area
        ]
    )
    assert len(gsi) == 1024

    def timecode(seconds: float) -> bytes:
        frames = round(seconds * fps)
        whole, frame = divmod(frames, fps)
        return bytes([whole // 3600, whole // 60 % 60, whole % 60, frame])

    blocks = []
    for number, (start, end, text) in enumerate(captions, 1):
        body = text.encode("latin-1").ljust(112, b"\x8f")  # 0x8f: unused space
        blocks.append(
            struct.pack("<BHBB", 0, number, 0xFF, 0)  # group, number, extension, cumulative
            + timecode(start)
            + timecode(end)
            + bytes([20, 2, 0])  # vertical position, justification: centred, comment flag: no
            + body
        )
    return gsi + b"".join(blocks)
