"""Just enough H.264 / H.265 parsing to find where a slice's data begins.

CENC subsample encryption keeps every VCL NAL unit's header and slice (segment) header in
the clear (ISO/IEC 23001-7 and CMAF), so the encryptor must know each slice header's
length. That length depends on the active SPS and PPS, which come from the decoder
configuration (avcC/hvcC or Annex B extradata) and from parameter sets sent in-band.

Syntax references are to ITU-T H.264 §7.3 and H.265 §7.3. The reader works on the RBSP
(emulation prevention bytes removed) and maps the header's end back to the escaped bytes.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any, ClassVar

# How many escaped bytes to unescape for a slice header before falling back to the whole NAL
# unit: headers are tens of bytes (more with many entry points), NAL units up to megabytes.
# The RBSP of a window is a prefix of the whole NAL unit's (an emulation prevention byte cut
# off at its end was not read anyway), so a header read within it is the same header.
HEADER_WINDOWS = (64, 1024)


class BitstreamError(ValueError):
    """A parameter set or slice header is malformed or uses an unsupported feature."""


# ------------------------------------------------------------------------------ bit reading


def unescape(raw: bytes | memoryview, limit: int | None = None) -> tuple[bytes, list[int]]:
    """The RBSP of `raw[:limit]` and, for each emulation prevention byte removed, the RBSP
    index of the byte that followed it (so escaped offsets can be recovered)."""
    data = bytes(raw[:limit] if limit is not None else raw)
    out = bytearray()
    removed: list[int] = []
    start = 0
    while True:
        found = data.find(b"\x00\x00\x03", start)
        if found < 0:
            out += data[start:]
            break
        out += data[start : found + 2]
        removed.append(len(out))
        start = found + 3
    return bytes(out), removed


def escaped_length(rbsp_bytes: int, removed: list[int]) -> int:
    """Escaped byte count that holds the first `rbsp_bytes` RBSP bytes."""
    return rbsp_bytes + bisect.bisect_left(removed, rbsp_bytes)


class BitReader:
    """MSB-first bit reader with Exp-Golomb codes (H.264 §9.1). The data is one Python int:
    a field is a shift and a mask, an Exp-Golomb prefix one bit_length (slice headers are read
    for every VCL NAL unit, so this is on the packager's hot path)."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0  # in bits
        self.size = len(data) * 8
        self._value = int.from_bytes(data, "big")

    def u(self, bits: int) -> int:
        """An unsigned integer of `bits` bits."""
        if bits == 0:
            return 0
        end = self.pos + bits
        if end > self.size:
            raise EOFError
        self.pos = end
        return (self._value >> (self.size - end)) & ((1 << bits) - 1)

    def flag(self) -> bool:
        return bool(self.u(1))

    def skip(self, bits: int) -> None:
        if self.pos + bits > self.size:
            raise EOFError
        self.pos += bits

    def ue(self) -> int:
        """ue(v): unsigned Exp-Golomb: `zeros` 0 bits, a 1, then `zeros` bits."""
        left = self.size - self.pos
        rest = self._value & ((1 << left) - 1)
        zeros = left - rest.bit_length()  # leading 0 bits (all that is left when rest is 0)
        if zeros > 31:
            raise BitstreamError("Exp-Golomb code longer than 32 bits")
        if not rest:
            raise EOFError
        # the 1 and the `zeros` bits after it: (1 << zeros) + those bits, less one
        return self.u(2 * zeros + 1) - 1

    def se(self) -> int:
        """se(v): signed Exp-Golomb."""
        value = self.ue()
        return (value + 1) // 2 if value & 1 else -(value // 2)


def _ceil_log2(value: int) -> int:
    """Ceil(Log2(value)) for value >= 1."""
    return max(0, (value - 1).bit_length())


# ------------------------------------------------------------------------ NAL unit framing


def split_length_prefixed(sample: bytes, length_size: int) -> list[tuple[int, int]]:
    """(offset, size) of each NAL unit payload in a length-prefixed sample (offset after the
    length field)."""
    if length_size not in (1, 2, 4):
        raise BitstreamError(f"NAL unit length size must be 1, 2 or 4, not {length_size}")
    units = []
    position, end = 0, len(sample)
    while position < end:
        if position + length_size > end:
            raise BitstreamError("a NAL unit length field runs past the end of the sample")
        size = int.from_bytes(sample[position : position + length_size], "big")
        position += length_size
        if position + size > end:
            raise BitstreamError(
                f"a NAL unit of {size} bytes runs past the end of the sample ({end} bytes)"
            )
        units.append((position, size))
        position += size
    return units


def split_annex_b(data: bytes) -> list[bytes]:
    """The NAL units of an Annex B byte stream (start codes 00 00 01 / 00 00 00 01)."""
    units = []
    start = data.find(b"\x00\x00\x01")
    while start >= 0:
        begin = start + 3
        nxt = data.find(b"\x00\x00\x01", begin)
        end = len(data) if nxt < 0 else nxt
        unit = data[begin:end]
        if nxt >= 0:
            unit = unit.rstrip(b"\x00")  # trailing zero bytes belong to the next start code
        if unit:
            units.append(unit)
        start = nxt
    return units


def config_nal_units(extradata: bytes, hevc: bool) -> tuple[int | None, list[bytes]]:
    """(NAL length size or None, parameter set NAL units) of a decoder configuration: an
    avcC / hvcC record, or Annex B extradata (as encoders hand it out)."""
    if not extradata:
        return None, []
    if extradata.startswith((b"\x00\x00\x01", b"\x00\x00\x00\x01")):
        return None, split_annex_b(extradata)
    if extradata[0] != 1:
        raise BitstreamError("the decoder configuration is neither avcC/hvcC nor Annex B")
    try:
        return _hvcc_units(extradata) if hevc else _avcc_units(extradata)
    except IndexError:
        raise BitstreamError("the decoder configuration record is truncated") from None


def _avcc_units(record: bytes) -> tuple[int, list[bytes]]:
    length_size = (record[4] & 3) + 1
    units, position = [], 5
    for mask in (0x1F, 0xFF):  # SPS count has 5 bits, PPS count 8
        count = record[position] & mask
        position += 1
        for _ in range(count):
            size = int.from_bytes(record[position : position + 2], "big")
            position += 2
            unit = record[position : position + size]
            if len(unit) != size:
                raise IndexError
            units.append(unit)
            position += size
    return length_size, units


def _hvcc_units(record: bytes) -> tuple[int, list[bytes]]:
    length_size = (record[21] & 3) + 1
    units, position = [], 23
    for _ in range(record[22]):
        position += 1  # array_completeness, reserved, NAL_unit_type
        count = int.from_bytes(record[position : position + 2], "big")
        position += 2
        for _ in range(count):
            size = int.from_bytes(record[position : position + 2], "big")
            position += 2
            unit = record[position : position + size]
            if len(unit) != size:
                raise IndexError
            units.append(unit)
            position += size
    return length_size, units


# ------------------------------------------------------------------------------------ H.264

H264_HIGH_PROFILES = {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}


@dataclass
class H264Sps:
    chroma_array_type: int
    separate_colour_plane: bool
    log2_max_frame_num: int
    frame_mbs_only: bool
    poc_type: int
    log2_max_poc_lsb: int
    delta_pic_order_always_zero: bool
    pic_size_in_map_units: int


@dataclass
class H264Pps:
    sps_id: int
    entropy_coding_mode: bool
    bottom_field_pic_order_in_frame_present: bool
    num_slice_groups_minus1: int
    slice_group_map_type: int
    slice_group_change_rate: int
    num_ref_idx_l0_default_minus1: int
    num_ref_idx_l1_default_minus1: int
    weighted_pred: bool
    weighted_bipred_idc: int
    deblocking_filter_control_present: bool
    redundant_pic_cnt_present: bool


def _skip_h264_scaling_list(r: BitReader, size: int) -> None:
    last, nxt = 8, 8
    for _ in range(size):
        if nxt != 0:
            nxt = (last + r.se() + 256) % 256
        last = last if nxt == 0 else nxt


class _ParameterSetParser:
    """What the H.264 and H.265 parsers share: remembering the SPS and PPS they meet, by id."""

    codec: ClassVar[str]
    nal_header_size: ClassVar[int]
    sps_type: ClassVar[int]
    pps_type: ClassVar[int]

    def __init__(self) -> None:
        self.sps: dict[int, Any] = {}
        self.pps: dict[int, Any] = {}

    @staticmethod
    def nal_type(nal: bytes | memoryview) -> int:
        raise NotImplementedError

    def _own_layer(self, nal: bytes | memoryview) -> bool:
        """False for a parameter set of another layer (scalable/multi-view streams)."""
        return True

    def process(self, nal: bytes | memoryview) -> None:
        """Remember the SPS or PPS in `nal`; other NAL units are ignored."""
        kind = self.nal_type(nal)
        if kind not in (self.sps_type, self.pps_type) or not self._own_layer(nal):
            return
        reader = BitReader(unescape(memoryview(nal)[self.nal_header_size :])[0])
        name = "SPS" if kind == self.sps_type else "PPS"
        try:
            if kind == self.sps_type:
                identifier, sps = self._parse_sps(reader)
                self.sps[identifier] = sps
            else:
                identifier, pps = self._parse_pps(reader)
                self.pps[identifier] = pps
        except EOFError:
            raise BitstreamError(f"{self.codec} {name} is truncated") from None

    def _parse_sps(self, r: BitReader) -> tuple[int, Any]:
        raise NotImplementedError

    def _parse_pps(self, r: BitReader) -> tuple[int, Any]:
        raise NotImplementedError


class H264Parser(_ParameterSetParser):
    """Active H.264 parameter sets and slice header lengths."""

    codec = "H.264"
    nal_header_size = 1
    sps_type, pps_type = 7, 8
    sps: dict[int, H264Sps]
    pps: dict[int, H264Pps]

    @staticmethod
    def nal_type(nal: bytes | memoryview) -> int:
        return nal[0] & 0x1F

    def is_vcl(self, nal: bytes | memoryview) -> bool:
        """A coded slice NAL unit (types 1–5, and the 20/21 extensions, refused later)."""
        return 1 <= self.nal_type(nal) <= 5 or self.nal_type(nal) in (20, 21)

    def _parse_sps(self, r: BitReader) -> tuple[int, H264Sps]:
        profile_idc = r.u(8)
        r.skip(16)  # constraint flags, level_idc
        sps_id = r.ue()
        if sps_id > 31:
            raise BitstreamError(f"H.264 SPS id {sps_id} out of range")
        chroma_format_idc, separate_colour_plane = 1, False
        if profile_idc in H264_HIGH_PROFILES:
            chroma_format_idc = r.ue()
            if chroma_format_idc == 3:
                separate_colour_plane = r.flag()
            r.ue()  # bit_depth_luma_minus8
            r.ue()  # bit_depth_chroma_minus8
            r.skip(1)  # qpprime_y_zero_transform_bypass_flag
            if r.flag():  # seq_scaling_matrix_present_flag
                for index in range(8 if chroma_format_idc != 3 else 12):
                    if r.flag():
                        _skip_h264_scaling_list(r, 16 if index < 6 else 64)
        log2_max_frame_num = r.ue() + 4
        poc_type = r.ue()
        log2_max_poc_lsb, always_zero = 0, False
        if poc_type == 0:
            log2_max_poc_lsb = r.ue() + 4
        elif poc_type == 1:
            always_zero = r.flag()
            r.se()  # offset_for_non_ref_pic
            r.se()  # offset_for_top_to_bottom_field
            cycle = r.ue()
            if cycle > 255:
                raise BitstreamError("H.264 SPS num_ref_frames_in_pic_order_cnt_cycle > 255")
            for _ in range(cycle):
                r.se()
        elif poc_type != 2:
            raise BitstreamError(f"H.264 SPS pic_order_cnt_type {poc_type} is invalid")
        r.ue()  # max_num_ref_frames
        r.skip(1)  # gaps_in_frame_num_value_allowed_flag
        width_mbs = r.ue() + 1
        height_map_units = r.ue() + 1
        frame_mbs_only = r.flag()
        return sps_id, H264Sps(
            chroma_array_type=0 if separate_colour_plane else chroma_format_idc,
            separate_colour_plane=separate_colour_plane,
            log2_max_frame_num=log2_max_frame_num,
            frame_mbs_only=frame_mbs_only,
            poc_type=poc_type,
            log2_max_poc_lsb=log2_max_poc_lsb,
            delta_pic_order_always_zero=always_zero,
            pic_size_in_map_units=width_mbs * height_map_units,
        )

    def _parse_pps(self, r: BitReader) -> tuple[int, H264Pps]:
        pps_id = r.ue()
        sps_id = r.ue()
        if pps_id > 255 or sps_id > 31:
            raise BitstreamError("H.264 PPS id or SPS id out of range")
        entropy = r.flag()
        bottom_field = r.flag()
        groups_minus1 = r.ue()
        map_type, change_rate = 0, 1
        if groups_minus1 > 0:
            if groups_minus1 > 7:
                raise BitstreamError("H.264 PPS num_slice_groups_minus1 > 7")
            map_type = r.ue()
            if map_type == 0:
                for _ in range(groups_minus1 + 1):
                    r.ue()
            elif map_type == 2:
                for _ in range(groups_minus1):
                    r.ue()
                    r.ue()
            elif map_type in (3, 4, 5):
                r.skip(1)
                change_rate = r.ue() + 1
            elif map_type == 6:
                units = r.ue() + 1
                bits = _ceil_log2(groups_minus1 + 1)
                for _ in range(units):
                    r.skip(bits)
        l0 = r.ue()
        l1 = r.ue()
        weighted_pred = r.flag()
        weighted_bipred_idc = r.u(2)
        r.se()  # pic_init_qp_minus26
        r.se()  # pic_init_qs_minus26
        r.se()  # chroma_qp_index_offset
        deblocking = r.flag()
        r.skip(1)  # constrained_intra_pred_flag
        redundant = r.flag()
        return pps_id, H264Pps(
            sps_id=sps_id,
            entropy_coding_mode=entropy,
            bottom_field_pic_order_in_frame_present=bottom_field,
            num_slice_groups_minus1=groups_minus1,
            slice_group_map_type=map_type,
            slice_group_change_rate=change_rate,
            num_ref_idx_l0_default_minus1=l0,
            num_ref_idx_l1_default_minus1=l1,
            weighted_pred=weighted_pred,
            weighted_bipred_idc=weighted_bipred_idc,
            deblocking_filter_control_present=deblocking,
            redundant_pic_cnt_present=redundant,
        )

    def slice_header_bits(self, nal: bytes | memoryview, rbsp: bytes) -> int:
        """Bit length of the slice header (§7.3.3) in `rbsp`, the payload after the NAL
        header."""
        kind = self.nal_type(nal)
        if kind in (2, 3, 4):
            raise BitstreamError("H.264 data partitioning (NAL types 2–4) is not supported")
        if kind in (20, 21):
            raise BitstreamError("H.264 MVC/SVC slice extensions (NAL 20/21) are not supported")
        nal_ref_idc = (nal[0] >> 5) & 3
        idr = kind == 5
        r = BitReader(rbsp)
        r.ue()  # first_mb_in_slice
        slice_type = r.ue()
        if slice_type > 9:
            raise BitstreamError(f"H.264 slice_type {slice_type} is invalid")
        slice_type %= 5  # 0 P, 1 B, 2 I, 3 SP, 4 SI
        pps = self.pps.get(pps_id := r.ue())
        if pps is None:
            raise BitstreamError(f"H.264 slice refers to PPS {pps_id}, which was not given")
        sps = self.sps.get(pps.sps_id)
        if sps is None:
            raise BitstreamError(f"H.264 PPS {pps_id} refers to SPS {pps.sps_id}, not given")
        if sps.separate_colour_plane:
            r.skip(2)  # colour_plane_id
        r.skip(sps.log2_max_frame_num)  # frame_num
        field_pic = False
        if not sps.frame_mbs_only:
            field_pic = r.flag()
            if field_pic:
                r.skip(1)  # bottom_field_flag
        if idr:
            r.ue()  # idr_pic_id
        if sps.poc_type == 0:
            r.skip(sps.log2_max_poc_lsb)
            if pps.bottom_field_pic_order_in_frame_present and not field_pic:
                r.se()
        if sps.poc_type == 1 and not sps.delta_pic_order_always_zero:
            r.se()
            if pps.bottom_field_pic_order_in_frame_present and not field_pic:
                r.se()
        if pps.redundant_pic_cnt_present:
            r.ue()
        if slice_type == 1:
            r.skip(1)  # direct_spatial_mv_pred_flag
        l0, l1 = pps.num_ref_idx_l0_default_minus1, pps.num_ref_idx_l1_default_minus1
        if slice_type in (0, 1, 3):
            if r.flag():  # num_ref_idx_active_override_flag
                l0 = r.ue()
                if slice_type == 1:
                    l1 = r.ue()
        if l0 > 31 or l1 > 31:
            raise BitstreamError("H.264 slice num_ref_idx_active_minus1 > 31")
        # ref_pic_list_modification()
        for present in (slice_type not in (2, 4), slice_type == 1):
            if present and r.flag():
                for _ in range(100):
                    idc = r.ue()
                    if idc == 3:
                        break
                    if idc > 5:
                        raise BitstreamError("H.264 modification_of_pic_nums_idc > 5")
                    r.ue()
                else:
                    raise BitstreamError("H.264 ref_pic_list_modification does not end")
        if (pps.weighted_pred and slice_type in (0, 3)) or (
            pps.weighted_bipred_idc == 1 and slice_type == 1
        ):
            r.ue()  # luma_log2_weight_denom
            if sps.chroma_array_type != 0:
                r.ue()  # chroma_log2_weight_denom
            for count in (l0 + 1, l1 + 1 if slice_type == 1 else 0):
                for _ in range(count):
                    if r.flag():
                        r.se()
                        r.se()
                    if sps.chroma_array_type != 0 and r.flag():
                        for _ in range(4):
                            r.se()
        if nal_ref_idc != 0:  # dec_ref_pic_marking()
            if idr:
                r.skip(2)
            elif r.flag():  # adaptive_ref_pic_marking_mode_flag
                for _ in range(100):
                    operation = r.ue()
                    if operation == 0:
                        break
                    if operation > 6:
                        raise BitstreamError("H.264 memory_management_control_operation > 6")
                    if operation in (1, 3):
                        r.ue()
                    if operation == 2:
                        r.ue()
                    if operation in (3, 6):
                        r.ue()
                    if operation == 4:
                        r.ue()
                else:
                    raise BitstreamError("H.264 dec_ref_pic_marking does not end")
        if pps.entropy_coding_mode and slice_type not in (2, 4):
            r.ue()  # cabac_init_idc
        r.se()  # slice_qp_delta
        if slice_type in (3, 4):
            if slice_type == 3:
                r.skip(1)  # sp_for_switch_flag
            r.se()  # slice_qs_delta
        if pps.deblocking_filter_control_present:
            if r.ue() != 1:  # disable_deblocking_filter_idc
                r.se()
                r.se()
        if pps.num_slice_groups_minus1 > 0 and pps.slice_group_map_type in (3, 4, 5):
            units, rate = sps.pic_size_in_map_units, pps.slice_group_change_rate
            bits = 0
            while (1 << bits) * rate < units + rate:  # Ceil(Log2(units ÷ rate + 1))
                bits += 1
            r.skip(bits)
        return r.pos


# ------------------------------------------------------------------------------------ H.265


@dataclass
class ShortTermRps:
    """A short-term reference picture set: (delta POC, used by current picture) per entry."""

    s0: list[tuple[int, bool]] = field(default_factory=list)
    s1: list[tuple[int, bool]] = field(default_factory=list)

    @property
    def num_delta_pocs(self) -> int:
        return len(self.s0) + len(self.s1)

    @property
    def used(self) -> int:
        return sum(used for _, used in self.s0) + sum(used for _, used in self.s1)


@dataclass
class H265Sps:
    chroma_array_type: int
    separate_colour_plane: bool
    pic_size_in_ctbs: int
    log2_max_poc_lsb: int
    st_rps: list[ShortTermRps]
    long_term_ref_pics_present: bool
    lt_used_by_curr: list[bool]
    temporal_mvp_enabled: bool
    sao_enabled: bool


@dataclass
class H265Pps:
    sps_id: int
    dependent_slice_segments_enabled: bool
    output_flag_present: bool
    num_extra_slice_header_bits: int
    cabac_init_present: bool
    num_ref_idx_l0_default_minus1: int
    num_ref_idx_l1_default_minus1: int
    slice_chroma_qp_offsets_present: bool
    weighted_pred: bool
    weighted_bipred: bool
    tiles_enabled: bool
    entropy_coding_sync_enabled: bool
    loop_filter_across_slices_enabled: bool
    deblocking_filter_override_enabled: bool
    deblocking_filter_disabled: bool
    lists_modification_present: bool
    slice_segment_header_extension_present: bool
    chroma_qp_offset_list_enabled: bool


def _skip_profile_tier_level(r: BitReader, max_sub_layers_minus1: int) -> None:
    r.skip(96)  # general profile, tier, flags and level_idc
    present = [(r.flag(), r.flag()) for _ in range(max_sub_layers_minus1)]
    if max_sub_layers_minus1 > 0:
        r.skip(2 * (8 - max_sub_layers_minus1))
    for profile_present, level_present in present:
        if profile_present:
            r.skip(88)
        if level_present:
            r.skip(8)


def _skip_h265_scaling_list_data(r: BitReader) -> None:
    for size_id in range(4):
        for _ in range(0, 6, 3 if size_id == 3 else 1):
            if not r.flag():  # scaling_list_pred_mode_flag
                r.ue()
            else:
                if size_id > 1:
                    r.se()
                for _ in range(min(64, 1 << (4 + (size_id << 1)))):
                    r.se()


def _parse_st_rps(r: BitReader, index: int, sets: list[ShortTermRps]) -> ShortTermRps:
    """st_ref_pic_set(index) (§7.3.7) with the derivation of §7.4.8; `sets` are the SPS's."""
    inter = r.flag() if index != 0 else False
    if not inter:
        negative, positive = r.ue(), r.ue()
        if negative > 16 or positive > 16:
            raise BitstreamError("H.265 short-term RPS with more than 16 pictures")
        rps, poc = ShortTermRps(), 0
        for _ in range(negative):
            poc -= r.ue() + 1
            rps.s0.append((poc, r.flag()))
        poc = 0
        for _ in range(positive):
            poc += r.ue() + 1
            rps.s1.append((poc, r.flag()))
        return rps
    delta_idx = r.ue() + 1 if index == len(sets) else 1
    if delta_idx > index:
        raise BitstreamError("H.265 short-term RPS predicts from a set that does not exist")
    ref = sets[index - delta_idx]
    sign = r.flag()
    delta_rps = (1 - 2 * sign) * (r.ue() + 1)
    used, use_delta = [], []
    for _ in range(ref.num_delta_pocs + 1):
        used_flag = r.flag()
        used.append(used_flag)
        use_delta.append(r.flag() if not used_flag else True)
    n0, last = len(ref.s0), ref.num_delta_pocs
    rps = ShortTermRps()
    for j in range(len(ref.s1) - 1, -1, -1):
        poc = ref.s1[j][0] + delta_rps
        if poc < 0 and use_delta[n0 + j]:
            rps.s0.append((poc, used[n0 + j]))
    if delta_rps < 0 and use_delta[last]:
        rps.s0.append((delta_rps, used[last]))
    for j in range(n0):
        poc = ref.s0[j][0] + delta_rps
        if poc < 0 and use_delta[j]:
            rps.s0.append((poc, used[j]))
    for j in range(n0 - 1, -1, -1):
        poc = ref.s0[j][0] + delta_rps
        if poc > 0 and use_delta[j]:
            rps.s1.append((poc, used[j]))
    if delta_rps > 0 and use_delta[last]:
        rps.s1.append((delta_rps, used[last]))
    for j in range(len(ref.s1)):
        poc = ref.s1[j][0] + delta_rps
        if poc > 0 and use_delta[n0 + j]:
            rps.s1.append((poc, used[n0 + j]))
    return rps


class H265Parser(_ParameterSetParser):
    """Active H.265 parameter sets and slice segment header lengths."""

    codec = "H.265"
    nal_header_size = 2
    sps_type, pps_type = 33, 34
    sps: dict[int, H265Sps]
    pps: dict[int, H265Pps]

    @staticmethod
    def nal_type(nal: bytes | memoryview) -> int:
        return (nal[0] >> 1) & 0x3F

    def is_vcl(self, nal: bytes | memoryview) -> bool:
        return self.nal_type(nal) < 32

    def _own_layer(self, nal: bytes | memoryview) -> bool:
        # nuh_layer_id 0 (a unit too short to hold one is skipped, as before)
        return len(nal) >= 3 and not ((nal[0] & 1) or (nal[1] >> 3))

    def _parse_sps(self, r: BitReader) -> tuple[int, H265Sps]:
        r.skip(4)  # sps_video_parameter_set_id
        max_sub_layers_minus1 = r.u(3)
        r.skip(1)  # sps_temporal_id_nesting_flag
        _skip_profile_tier_level(r, max_sub_layers_minus1)
        sps_id = r.ue()
        if sps_id > 15:
            raise BitstreamError(f"H.265 SPS id {sps_id} out of range")
        chroma_format_idc = r.ue()
        separate = r.flag() if chroma_format_idc == 3 else False
        width, height = r.ue(), r.ue()
        if r.flag():  # conformance_window_flag
            for _ in range(4):
                r.ue()
        r.ue()  # bit_depth_luma_minus8
        r.ue()  # bit_depth_chroma_minus8
        log2_max_poc_lsb = r.ue() + 4
        ordering_info_present = r.flag()
        first_layer = 0 if ordering_info_present else max_sub_layers_minus1
        for _ in range(first_layer, max_sub_layers_minus1 + 1):
            r.ue()
            r.ue()
            r.ue()
        min_cb_log2 = r.ue() + 3
        ctb_log2 = min_cb_log2 + r.ue()
        r.ue()  # log2_min_luma_transform_block_size_minus2
        r.ue()  # log2_diff_max_min_luma_transform_block_size
        r.ue()  # max_transform_hierarchy_depth_inter
        r.ue()  # max_transform_hierarchy_depth_intra
        if r.flag() and r.flag():  # scaling_list_enabled_flag, sps_scaling_list_data_present
            _skip_h265_scaling_list_data(r)
        r.skip(1)  # amp_enabled_flag
        sao = r.flag()
        if r.flag():  # pcm_enabled_flag
            r.skip(8)
            r.ue()
            r.ue()
            r.skip(1)
        count = r.ue()
        if count > 64:
            raise BitstreamError("H.265 SPS num_short_term_ref_pic_sets > 64")
        sets: list[ShortTermRps] = []
        for index in range(count):
            sets.append(_parse_st_rps(r, index, sets))
        long_term = r.flag()
        lt_used: list[bool] = []
        if long_term:
            lt_count = r.ue()
            if lt_count > 32:
                raise BitstreamError("H.265 SPS num_long_term_ref_pics_sps > 32")
            for _ in range(lt_count):
                r.skip(log2_max_poc_lsb)
                lt_used.append(r.flag())
        temporal_mvp = r.flag()
        ctb = 1 << ctb_log2
        ctbs = ((width + ctb - 1) // ctb) * ((height + ctb - 1) // ctb)
        return sps_id, H265Sps(
            chroma_array_type=0 if separate else chroma_format_idc,
            separate_colour_plane=separate,
            pic_size_in_ctbs=ctbs,
            log2_max_poc_lsb=log2_max_poc_lsb,
            st_rps=sets,
            long_term_ref_pics_present=long_term,
            lt_used_by_curr=lt_used,
            temporal_mvp_enabled=temporal_mvp,
            sao_enabled=sao,
        )

    def _parse_pps(self, r: BitReader) -> tuple[int, H265Pps]:
        pps_id, sps_id = r.ue(), r.ue()
        if pps_id > 63 or sps_id > 15:
            raise BitstreamError("H.265 PPS id or SPS id out of range")
        dependent = r.flag()
        output_flag = r.flag()
        extra_bits = r.u(3)
        r.skip(1)  # sign_data_hiding_enabled_flag
        cabac_init = r.flag()
        l0, l1 = r.ue(), r.ue()
        r.se()  # init_qp_minus26
        r.skip(1)  # constrained_intra_pred_flag
        transform_skip = r.flag()
        if r.flag():  # cu_qp_delta_enabled_flag
            r.ue()
        r.se()  # pps_cb_qp_offset
        r.se()  # pps_cr_qp_offset
        chroma_offsets = r.flag()
        weighted_pred, weighted_bipred = r.flag(), r.flag()
        r.skip(1)  # transquant_bypass_enabled_flag
        tiles, sync = r.flag(), r.flag()
        if tiles:
            columns, rows = r.ue(), r.ue()
            if not r.flag():  # uniform_spacing_flag
                for _ in range(columns + rows):
                    r.ue()
            r.skip(1)  # loop_filter_across_tiles_enabled_flag
        across_slices = r.flag()
        override_enabled, deblocking_disabled = False, False
        if r.flag():  # deblocking_filter_control_present_flag
            override_enabled = r.flag()
            deblocking_disabled = r.flag()
            if not deblocking_disabled:
                r.se()
                r.se()
        if r.flag():  # pps_scaling_list_data_present_flag
            _skip_h265_scaling_list_data(r)
        lists_modification = r.flag()
        r.ue()  # log2_parallel_merge_level_minus2
        header_extension = r.flag()
        chroma_qp_offset_list = False
        if r.flag():  # pps_extension_present_flag
            range_ext, _multilayer, _3d, scc = r.flag(), r.flag(), r.flag(), r.flag()
            r.skip(4)
            if scc:
                raise BitstreamError("H.265 screen content coding extensions are not supported")
            if range_ext:
                if transform_skip:
                    r.ue()
                r.skip(1)  # cross_component_prediction_enabled_flag
                chroma_qp_offset_list = r.flag()
        return pps_id, H265Pps(
            sps_id=sps_id,
            dependent_slice_segments_enabled=dependent,
            output_flag_present=output_flag,
            num_extra_slice_header_bits=extra_bits,
            cabac_init_present=cabac_init,
            num_ref_idx_l0_default_minus1=l0,
            num_ref_idx_l1_default_minus1=l1,
            slice_chroma_qp_offsets_present=chroma_offsets,
            weighted_pred=weighted_pred,
            weighted_bipred=weighted_bipred,
            tiles_enabled=tiles,
            entropy_coding_sync_enabled=sync,
            loop_filter_across_slices_enabled=across_slices,
            deblocking_filter_override_enabled=override_enabled,
            deblocking_filter_disabled=deblocking_disabled,
            lists_modification_present=lists_modification,
            slice_segment_header_extension_present=header_extension,
            chroma_qp_offset_list_enabled=chroma_qp_offset_list,
        )

    def slice_header_bits(self, nal: bytes | memoryview, rbsp: bytes) -> int:
        """Bit length of the slice segment header (§7.3.6.1, with its byte_alignment()) in
        `rbsp`, the payload after the 2-byte NAL header."""
        kind = self.nal_type(nal)
        if 10 <= kind <= 15 or kind >= 22:
            raise BitstreamError(f"H.265 reserved VCL NAL unit type {kind}")
        if (nal[0] & 1) or (nal[1] >> 3):
            raise BitstreamError("H.265 multi-layer streams (nuh_layer_id > 0) not supported")
        r = BitReader(rbsp)
        first_in_pic = r.flag()
        if 16 <= kind <= 23:
            r.skip(1)  # no_output_of_prior_pics_flag
        pps = self.pps.get(pps_id := r.ue())
        if pps is None:
            raise BitstreamError(f"H.265 slice refers to PPS {pps_id}, which was not given")
        sps = self.sps.get(pps.sps_id)
        if sps is None:
            raise BitstreamError(f"H.265 PPS {pps_id} refers to SPS {pps.sps_id}, not given")
        dependent = False
        if not first_in_pic:
            if pps.dependent_slice_segments_enabled:
                dependent = r.flag()
            r.skip(_ceil_log2(sps.pic_size_in_ctbs))  # slice_segment_address
        if not dependent:
            self._independent_fields(r, kind, sps, pps)
        if pps.tiles_enabled or pps.entropy_coding_sync_enabled:
            offsets = r.ue()
            if offsets:
                length = r.ue() + 1
                if length > 32:
                    raise BitstreamError("H.265 offset_len_minus1 > 31")
                r.skip(offsets * length)
        if pps.slice_segment_header_extension_present:
            r.skip(8 * r.ue())
        if not r.flag():  # byte_alignment(): alignment_bit_equal_to_one, then zeros
            raise BitstreamError("H.265 slice segment header does not end in byte_alignment()")
        r.skip(-r.pos % 8)
        return r.pos

    @staticmethod
    def _independent_fields(r: BitReader, kind: int, sps: H265Sps, pps: H265Pps) -> None:
        r.skip(pps.num_extra_slice_header_bits)
        slice_type = r.ue()  # 0 B, 1 P, 2 I
        if slice_type > 2:
            raise BitstreamError(f"H.265 slice_type {slice_type} is invalid")
        if pps.output_flag_present:
            r.skip(1)
        if sps.separate_colour_plane:
            r.skip(2)
        temporal_mvp = False
        rps = ShortTermRps()
        lt_used = 0
        if kind not in (19, 20):  # not IDR
            r.skip(sps.log2_max_poc_lsb)  # slice_pic_order_cnt_lsb
            if not r.flag():  # short_term_ref_pic_set_sps_flag
                rps = _parse_st_rps(r, len(sps.st_rps), sps.st_rps)
            else:
                index = r.u(_ceil_log2(len(sps.st_rps))) if len(sps.st_rps) > 1 else 0
                if index >= len(sps.st_rps):
                    raise BitstreamError("H.265 slice uses a short-term RPS the SPS lacks")
                rps = sps.st_rps[index]
            if sps.long_term_ref_pics_present:
                lt_sps = r.ue() if sps.lt_used_by_curr else 0
                lt_pics = r.ue()
                if lt_sps > len(sps.lt_used_by_curr) or lt_sps + lt_pics > 32:
                    raise BitstreamError("H.265 slice has too many long-term pictures")
                for index in range(lt_sps + lt_pics):
                    if index < lt_sps:
                        entry = 0
                        if len(sps.lt_used_by_curr) > 1:
                            entry = r.u(_ceil_log2(len(sps.lt_used_by_curr)))
                        if entry >= len(sps.lt_used_by_curr):
                            raise BitstreamError("H.265 lt_idx_sps out of range")
                        lt_used += sps.lt_used_by_curr[entry]
                    else:
                        r.skip(sps.log2_max_poc_lsb)
                        lt_used += r.flag()
                    if r.flag():  # delta_poc_msb_present_flag
                        r.ue()
            if sps.temporal_mvp_enabled:
                temporal_mvp = r.flag()
        sao_luma = sao_chroma = False
        if sps.sao_enabled:
            sao_luma = r.flag()
            if sps.chroma_array_type != 0:
                sao_chroma = r.flag()
        if slice_type in (0, 1):
            l0, l1 = pps.num_ref_idx_l0_default_minus1, pps.num_ref_idx_l1_default_minus1
            if r.flag():  # num_ref_idx_active_override_flag
                l0 = r.ue()
                if slice_type == 0:
                    l1 = r.ue()
            if l0 > 14 or l1 > 14:
                raise BitstreamError("H.265 num_ref_idx_active_minus1 > 14")
            total = rps.used + lt_used  # NumPicTotalCurr
            if pps.lists_modification_present and total > 1:
                bits = _ceil_log2(total)
                if r.flag():
                    r.skip(bits * (l0 + 1))
                if slice_type == 0 and r.flag():
                    r.skip(bits * (l1 + 1))
            if slice_type == 0:
                r.skip(1)  # mvd_l1_zero_flag
            if pps.cabac_init_present:
                r.skip(1)
            if temporal_mvp:
                from_l0 = r.flag() if slice_type == 0 else True
                if (from_l0 and l0 > 0) or (not from_l0 and l1 > 0):
                    r.ue()  # collocated_ref_idx
            if (pps.weighted_pred and slice_type == 1) or (pps.weighted_bipred and slice_type == 0):
                r.ue()  # luma_log2_weight_denom
                if sps.chroma_array_type != 0:
                    r.se()
                for count in (l0 + 1, l1 + 1 if slice_type == 0 else 0):
                    luma = [r.flag() for _ in range(count)]
                    chroma = [r.flag() for _ in range(count)] if sps.chroma_array_type else []
                    for index in range(count):
                        if luma[index]:
                            r.se()
                            r.se()
                        if chroma and chroma[index]:
                            for _ in range(4):
                                r.se()
            r.ue()  # five_minus_max_num_merge_cand
        r.se()  # slice_qp_delta
        if pps.slice_chroma_qp_offsets_present:
            r.se()
            r.se()
        if pps.chroma_qp_offset_list_enabled:
            r.skip(1)
        override = r.flag() if pps.deblocking_filter_override_enabled else False
        deblocking_disabled = pps.deblocking_filter_disabled
        if override:
            deblocking_disabled = r.flag()
            if not deblocking_disabled:
                r.se()
                r.se()
        if pps.loop_filter_across_slices_enabled and (
            sao_luma or sao_chroma or not deblocking_disabled
        ):
            r.skip(1)


# ------------------------------------------------------------------------------- the facade


def slice_data_offset(parser: H264Parser | H265Parser, nal: bytes | memoryview) -> int:
    """Escaped bytes of `nal` (a VCL NAL unit, without its length field) before its slice
    data: the NAL header plus the slice header rounded up to whole bytes."""
    header = parser.nal_header_size
    payload = memoryview(nal)[header:]
    for limit in (*HEADER_WINDOWS, None):
        if limit is not None and len(payload) <= limit:
            continue
        rbsp, removed = unescape(payload, limit)
        try:
            bits = parser.slice_header_bits(nal, rbsp)
        except EOFError:
            if limit is not None:
                continue  # a long header: read the whole NAL unit
            raise BitstreamError("a slice header runs past the end of its NAL unit") from None
        return header + escaped_length((bits + 7) // 8, removed)
    raise AssertionError("unreachable")
