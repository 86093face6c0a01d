"""RFC 6381 codec strings and audio channel signalling, from a track's sample entry.

- H.264: `avc1.PPCCLL` from the avcC profile, constraint flags and level bytes.
- H.265: `hvc1.<space><profile>.<compat>.<tier><level>.<constraints>` (ISO/IEC 14496-15 E.3).
- AAC: `mp4a.40.<audio object type>` from the esds AudioSpecificConfig; other MPEG-4 audio
  object types as `mp4a.<OTI hex>`.
- AC-3 / E-AC-3: `ac-3` / `ec-3`, channels from dac3 / dec3.
"""

from __future__ import annotations

from dataclasses import dataclass

from packagers.errors import PackagingError
from packagers.mp4 import SampleEntry

DASH_CHANNEL_SCHEME = "urn:mpeg:dash:23003:3:audio_channel_configuration:2011"
DOLBY_CHANNEL_SCHEME = "tag:dolby.com,2014:dash:audio_channel_configuration:2011"

# AC-3 acmod -> (channel count without LFE, Dolby channel mask bits: L C R Ls Rs ... Cs ...)
_ACMOD = {
    0: (2, 0xA000),  # 1+1 (dual mono): L, R
    1: (1, 0x4000),  # C
    2: (2, 0xA000),  # L R
    3: (3, 0xE000),  # L C R
    4: (3, 0xA100),  # L R S
    5: (4, 0xE100),  # L C R S
    6: (4, 0xB800),  # L R Ls Rs
    7: (5, 0xF800),  # L C R Ls Rs
}
# E-AC-3 dependent substream chan_loc bit -> (channels added, Dolby mask bit)
_CHAN_LOC = [
    (2, 0x0400),  # Lc/Rc
    (2, 0x0200),  # Lrs/Rrs
    (1, 0x0100),  # Cs
    (1, 0x0080),  # Ts
    (2, 0x0040),  # Lsd/Rsd
    (2, 0x0020),  # Lw/Rw
    (2, 0x0010),  # Lvh/Rvh
    (1, 0x0008),  # Cvh
    (1, 0x0002),  # LFE2
]
_AAC_CHANNELS = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 8, 11: 7, 12: 8, 14: 8}


@dataclass(frozen=True)
class AudioChannels:
    """Channel count (HLS `CHANNELS`) and the DASH AudioChannelConfiguration scheme/value."""

    count: int
    scheme: str
    value: str


class _Bits:
    """MSB-first bit reader."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, count: int) -> int:
        value = 0
        for _ in range(count):
            byte = self.data[self.pos >> 3] if (self.pos >> 3) < len(self.data) else 0
            value = (value << 1) | ((byte >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return value


def codec_string(entry: SampleEntry) -> str:
    """The RFC 6381 `codecs` value of a sample entry."""
    fourcc = entry.fourcc
    if fourcc in ("avc1", "avc3"):
        return avc_codec_string(fourcc, _required(entry, "avcC"))
    if fourcc in ("hvc1", "hev1"):
        return hevc_codec_string(fourcc, _required(entry, "hvcC"))
    if fourcc == "mp4a":
        oti, audio_object_type, _ = parse_esds(_required(entry, "esds"))
        if oti == 0x40:
            return f"mp4a.40.{audio_object_type}"
        return f"mp4a.{oti:02X}"
    if fourcc in ("ac-3", "ec-3", "ac-4", "Opus", "fLaC", "vp09", "av01"):
        # ac-3/ec-3: RFC 6381 has no parameters for them
        return {"Opus": "opus", "fLaC": "flac"}.get(fourcc, fourcc)
    raise PackagingError(f"no codec string for sample entry {fourcc!r}")


def avc_codec_string(fourcc: str, avcc: bytes) -> str:
    """`avc1.PPCCLL`: profile_idc, constraint flags byte, level_idc from avcC."""
    if len(avcc) < 4:
        raise PackagingError("avcC too short")
    return f"{fourcc}.{avcc[1]:02x}{avcc[2]:02x}{avcc[3]:02x}"


def hevc_codec_string(fourcc: str, hvcc: bytes) -> str:
    """ISO/IEC 14496-15 Annex E: profile space+idc, reversed compatibility flags, tier+level,
    constraint bytes without trailing zero bytes."""
    if len(hvcc) < 13:
        raise PackagingError("hvcC too short")
    profile_space = hvcc[1] >> 6
    tier = (hvcc[1] >> 5) & 1
    profile_idc = hvcc[1] & 0x1F
    compat = int.from_bytes(hvcc[2:6], "big")
    reversed_compat = int(f"{compat:032b}"[::-1], 2)
    constraints = list(hvcc[6:12])
    while constraints and constraints[-1] == 0:
        constraints.pop()
    level = hvcc[12]
    parts = [
        fourcc,
        f"{'' if profile_space == 0 else 'ABC'[profile_space - 1]}{profile_idc}",
        f"{reversed_compat:X}",
        f"{'H' if tier else 'L'}{level}",
        *(f"{byte:X}" for byte in constraints),
    ]
    return ".".join(parts)


def _required(entry: SampleEntry, kind: str) -> bytes:
    payload = entry.boxes.get(kind)
    if payload is None:
        raise PackagingError(f"{entry.fourcc} sample entry without {kind}")
    return payload


def _descriptor(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, payload start, payload end) of an MPEG-4 descriptor at `pos`."""
    tag = data[pos]
    pos += 1
    size = 0
    for _ in range(4):
        byte = data[pos]
        pos += 1
        size = (size << 7) | (byte & 0x7F)
        if not byte & 0x80:
            break
    return tag, pos, pos + size


def parse_esds(esds: bytes) -> tuple[int, int, int]:
    """(objectTypeIndication, audio object type, channel configuration) from an esds payload
    (FullBox header included). Audio object type and channels are 0 when not MPEG-4 audio."""
    try:
        tag, start, end = _descriptor(esds, 4)
        if tag != 0x03:
            raise PackagingError("esds without ES_Descriptor")
        flags = esds[start + 2]
        pos = start + 3
        if flags & 0x80:
            pos += 2
        if flags & 0x40:
            pos += 1 + esds[pos]
        if flags & 0x20:
            pos += 2
        tag, start, end = _descriptor(esds, pos)
        if tag != 0x04:
            raise PackagingError("esds without DecoderConfigDescriptor")
        oti = esds[start]
        pos = start + 13
        if pos >= end:
            return oti, 0, 0
        tag, start, end = _descriptor(esds, pos)
        if tag != 0x05:
            return oti, 0, 0
        bits = _Bits(esds[start:end])
        aot = bits.read(5)
        if aot == 31:
            aot = 32 + bits.read(6)
        if bits.read(4) == 0xF:  # explicit sampling frequency
            bits.read(24)
        return oti, aot, bits.read(4)
    except IndexError as exc:
        raise PackagingError("truncated esds") from exc


def audio_channels(entry: SampleEntry) -> AudioChannels:
    """Channel signalling for DASH and HLS."""
    if entry.fourcc == "ac-3" and "dac3" in entry.boxes:
        bits = _Bits(entry.boxes["dac3"])
        bits.read(2 + 5 + 3)  # fscod, bsid, bsmod
        count, mask = _ACMOD[bits.read(3)]
        lfe = bits.read(1)
        return AudioChannels(count + lfe, DOLBY_CHANNEL_SCHEME, f"{mask | lfe:04X}")
    if entry.fourcc == "ec-3" and "dec3" in entry.boxes:
        bits = _Bits(entry.boxes["dec3"])
        bits.read(13)  # data_rate
        bits.read(3)  # num_ind_sub - 1: the first independent substream describes the layout
        bits.read(2 + 5 + 1 + 1 + 3)  # fscod, bsid, reserved, asvc, bsmod
        count, mask = _ACMOD[bits.read(3)]
        lfe = bits.read(1)
        bits.read(3)
        if bits.read(4):  # dependent substreams: extra channel locations
            chan_loc = bits.read(9)
            for bit, (extra, flag) in enumerate(_CHAN_LOC):
                if chan_loc & (1 << (8 - bit)):
                    count += extra
                    mask |= flag
        return AudioChannels(count + lfe, DOLBY_CHANNEL_SCHEME, f"{mask | lfe:04X}")
    count = entry.channels
    if entry.fourcc == "mp4a" and "esds" in entry.boxes:
        _, _, config = parse_esds(entry.boxes["esds"])
        count = _AAC_CHANNELS.get(config, count)
    return AudioChannels(count, DASH_CHANNEL_SCHEME, str(count))
