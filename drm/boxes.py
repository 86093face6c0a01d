"""ISO BMFF boxes for Common Encryption (ISO/IEC 23001-7, ISO/IEC 14496-12): the init
segment's protection boxes.

- `sinf` (`frma`, `schm`, `schi`/`tenc`): the packager appends it to the sample entry, which
  becomes `encv`/`enca`;
- `pssh`: one per DRM system, in `moov`.

The fragment boxes (`saiz`, `saio`, `senc`) are the packager's (`packagers.mp4`), written from
the auxiliary information of each encrypted sample.

Everything here is pure bytes in, bytes out: no dependency on the packager.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Sequence


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
    constant = b""  # the constant IV with its size, when per-sample IVs are off
    if per_sample_iv_size == 0:
        if constant_iv is None or len(constant_iv) not in (8, 16):
            raise ValueError("a constant IV of 8 or 16 bytes is needed when per-sample IVs are off")
        constant = bytes([len(constant_iv)]) + constant_iv
    if not (0 <= crypt_byte_block < 16 and 0 <= skip_byte_block < 16):
        raise ValueError("crypt and skip byte blocks are 4-bit values")
    if version is None:
        version = 1 if (crypt_byte_block or skip_byte_block or per_sample_iv_size == 0) else 0
    pattern = (crypt_byte_block << 4) | skip_byte_block if version >= 1 else 0
    payload = struct.pack(">BBBB", 0, pattern, 1, per_sample_iv_size) + key_id.bytes + constant
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
