"""ISO BMFF boxes for Common Encryption (ISO/IEC 23001-7, ISO/IEC 14496-12).

The packager builds clear boxes; these add protection to them:

- init segment: the sample entry becomes `encv`/`enca` with a `sinf` (`frma`, `schm`,
  `schi`/`tenc`) appended (`protect_sample_entry`), and `moov` gets the `pssh` boxes;
- each fragment's `traf`: `saiz`, `saio` and `senc` (`traf_encryption_boxes`), with `saio`
  pointing at the first sample's auxiliary data inside `senc`.

Everything here is pure bytes in, bytes out: no dependency on the packager.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Sequence
from typing import Protocol

SENC_DATA_OFFSET = 16  # size(4) type(4) version+flags(4) sample_count(4): then sample data
SENC_USE_SUBSAMPLES = 0x2
ENCRYPTED_ENTRY = {
    b"avc1": b"encv",
    b"avc3": b"encv",
    b"hvc1": b"encv",
    b"hev1": b"encv",
    b"mp4a": b"enca",
    b"ac-3": b"enca",
    b"ec-3": b"enca",
}


class AuxInfo(Protocol):
    """What the fragment boxes need of an encrypted sample (see `drm.cenc.EncryptedSample`)."""

    iv: bytes
    subsamples: Sequence[tuple[int, int]]


def _fourcc(kind: str | bytes) -> bytes:
    code = kind.encode("ascii") if isinstance(kind, str) else bytes(kind)
    if len(code) != 4:
        raise ValueError(f"a box type has 4 characters, not {code!r}")
    return code


def box(kind: str | bytes, payload: bytes = b"") -> bytes:
    """A box: 32-bit size, type, payload."""
    return struct.pack(">I4s", 8 + len(payload), _fourcc(kind)) + payload


def full_box(kind: str | bytes, version: int, flags: int, payload: bytes = b"") -> bytes:
    """A full box: a box whose payload starts with version (8 bits) and flags (24 bits)."""
    return box(kind, struct.pack(">I", (version << 24) | (flags & 0xFFFFFF)) + payload)


# ------------------------------------------------------------------------ init segment boxes


def frma(original_format: str | bytes) -> bytes:
    """OriginalFormatBox: the sample entry type before protection (`avc1`, `mp4a`, …)."""
    return box("frma", _fourcc(original_format))


def schm(scheme: str) -> bytes:
    """SchemeTypeBox: `cenc` or `cbcs`, scheme version 1.0."""
    return full_box("schm", 0, 0, _fourcc(scheme) + struct.pack(">I", 0x00010000))


def tenc(
    key_id: uuid.UUID,
    per_sample_iv_size: int,
    constant_iv: bytes | None = None,
    crypt_byte_block: int = 0,
    skip_byte_block: int = 0,
    version: int | None = None,
) -> bytes:
    """TrackEncryptionBox. Version 1 (with the pattern) unless `version` says otherwise and
    the pattern is 0:0; `constant_iv` only when `per_sample_iv_size` is 0 (cbcs)."""
    if per_sample_iv_size not in (0, 8, 16):
        raise ValueError(f"per-sample IV size must be 0, 8 or 16, not {per_sample_iv_size}")
    if per_sample_iv_size == 0 and (constant_iv is None or len(constant_iv) not in (8, 16)):
        raise ValueError("a constant IV of 8 or 16 bytes is needed when per-sample IVs are off")
    if not (0 <= crypt_byte_block < 16 and 0 <= skip_byte_block < 16):
        raise ValueError("crypt and skip byte blocks are 4-bit values")
    if version is None:
        version = 1 if (crypt_byte_block or skip_byte_block or per_sample_iv_size == 0) else 0
    pattern = (crypt_byte_block << 4) | skip_byte_block if version >= 1 else 0
    payload = struct.pack(">BBBB", 0, pattern, 1, per_sample_iv_size) + key_id.bytes
    if per_sample_iv_size == 0:
        payload += bytes([len(constant_iv)]) + constant_iv
    return full_box("tenc", version, 0, payload)


def sinf(
    original_format: str | bytes,
    scheme: str,
    key_id: uuid.UUID,
    per_sample_iv_size: int,
    constant_iv: bytes | None = None,
    crypt_byte_block: int = 0,
    skip_byte_block: int = 0,
) -> bytes:
    """ProtectionSchemeInfoBox: `frma`, `schm`, `schi`(`tenc`). `cbcs` always gets a
    version 1 `tenc` (its pattern, 0:0 for whole-block audio), `cenc` version 0."""
    version = 1 if scheme == "cbcs" else 0
    return box(
        "sinf",
        frma(original_format)
        + schm(scheme)
        + box(
            "schi",
            tenc(
                key_id,
                per_sample_iv_size,
                constant_iv,
                crypt_byte_block,
                skip_byte_block,
                version=version,
            ),
        ),
    )


def protect_sample_entry(entry: bytes, sinf_box: bytes) -> bytes:
    """Turn a clear sample entry box (`avc1`, `hvc1`, `mp4a`, `ac-3`, `ec-3`, …) into its
    protected form: type `encv`/`enca`, `sinf` appended as its last child."""
    size, kind = struct.unpack(">I4s", entry[:8])
    if size != len(entry):
        raise ValueError("the sample entry's size field does not match its length")
    if kind not in ENCRYPTED_ENTRY:
        raise ValueError(f"no protected form for sample entry {kind!r}")
    body = entry[8:] + sinf_box
    return struct.pack(">I4s", 8 + len(body), ENCRYPTED_ENTRY[kind]) + body


def pssh(
    system_id: uuid.UUID,
    key_ids: Sequence[uuid.UUID] = (),
    data: bytes = b"",
    version: int | None = None,
) -> bytes:
    """ProtectionSystemSpecificHeaderBox. Version 1 lists `key_ids` in the box itself;
    version 0 has them only inside `data`. Default: 1 when key ids are given, else 0."""
    if version is None:
        version = 1 if key_ids else 0
    payload = system_id.bytes
    if version >= 1:
        payload += struct.pack(">I", len(key_ids)) + b"".join(kid.bytes for kid in key_ids)
    payload += struct.pack(">I", len(data)) + data
    return full_box("pssh", version, 0, payload)


# ---------------------------------------------------------------------------- fragment boxes


def aux_info_size(sample: AuxInfo, with_subsamples: bool) -> int:
    """Bytes of one sample's auxiliary information in `senc` (its `saiz` entry)."""
    return len(sample.iv) + (2 + 6 * len(sample.subsamples) if with_subsamples else 0)


def senc(samples: Sequence[AuxInfo], with_subsamples: bool) -> bytes:
    """SampleEncryptionBox: per sample its IV (none with a constant IV) and, for video, its
    subsamples as (clear bytes: 16 bits, protected bytes: 32 bits)."""
    parts = [struct.pack(">I", len(samples))]
    for sample in samples:
        parts.append(sample.iv)
        if with_subsamples:
            if not sample.subsamples:
                raise ValueError("a subsample-encrypted sample needs at least one subsample")
            parts.append(struct.pack(">H", len(sample.subsamples)))
            for clear, protected in sample.subsamples:
                parts.append(struct.pack(">HI", clear, protected))
    flags = SENC_USE_SUBSAMPLES if with_subsamples else 0
    return full_box("senc", 0, flags, b"".join(parts))


def saiz(samples: Sequence[AuxInfo], with_subsamples: bool) -> bytes:
    """SampleAuxiliaryInformationSizesBox: a default size when all samples agree."""
    sizes = [aux_info_size(sample, with_subsamples) for sample in samples]
    if any(size > 255 for size in sizes):
        raise ValueError("a sample has more subsamples than saiz can size (42 at most)")
    if sizes and all(size == sizes[0] for size in sizes):
        return full_box("saiz", 0, 0, struct.pack(">BI", sizes[0], len(sizes)))
    return full_box("saiz", 0, 0, struct.pack(">BI", 0, len(sizes)) + bytes(sizes))


def saio(offset: int) -> bytes:
    """SampleAuxiliaryInformationOffsetsBox with one offset (all samples' data is contiguous
    in `senc`); relative to the `moof` start when `tfhd` has default-base-is-moof."""
    if offset < 1 << 32:
        return full_box("saio", 0, 0, struct.pack(">II", 1, offset))
    return full_box("saio", 1, 0, struct.pack(">IQ", 1, offset))


def traf_encryption_boxes(
    samples: Sequence[AuxInfo], with_subsamples: bool, position_in_moof: int
) -> bytes:
    """`saiz` + `saio` + `senc` for one fragment, to be placed in the `traf` at byte
    `position_in_moof` from the start of the `moof` box; `saio` points at the first sample's
    data in `senc`. With no auxiliary data at all (cbcs audio: constant IV, no subsamples)
    only an empty-entried `senc` is written, as Shaka Packager does."""
    sizes = [aux_info_size(sample, with_subsamples) for sample in samples]
    senc_box = senc(samples, with_subsamples)
    if not any(sizes):
        return senc_box
    saiz_box = saiz(samples, with_subsamples)
    saio_length = len(saio(0))
    offset = position_in_moof + len(saiz_box) + saio_length + SENC_DATA_OFFSET
    saio_box = saio(offset)
    if len(saio_box) != saio_length:  # crossed 4 GiB: version 1 saio is 4 bytes longer
        saio_box = saio(offset + len(saio_box) - saio_length)
    return saiz_box + saio_box + senc_box


def senc_data_offset(senc_position_in_moof: int) -> int:
    """The `saio` offset for a `senc` box placed at `senc_position_in_moof`."""
    return senc_position_in_moof + SENC_DATA_OFFSET
