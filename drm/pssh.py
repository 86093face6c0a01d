"""PSSH boxes per DRM system: Widevine, PlayReady and the W3C common system (ClearKey).

- Widevine: a version 0 `pssh` whose data is the `WidevinePsshData` protobuf with the key ids
  (field 2), an optional content id (field 4) and the protection scheme (field 9, the fourcc
  as a uint32), as Shaka Packager writes it; the few protobuf encodings are done by hand.
- PlayReady: a version 0 `pssh` whose data is a PlayReady Object (PRO) holding one PlayReady
  Header (WRMHEADER XML, UTF-16LE): v4.0 for one `cenc` key, v4.2 for several `cenc` keys,
  v4.3 for `cbcs` (AESCBC), per Microsoft's PlayReady Header Specification. `KID` values are
  the base64 of the key id in little-endian GUID byte order; `CHECKSUM` (AESCTR only; the
  specification forbids it with AESCBC) is the first 8 bytes of AES-ECB(content key, KID in
  that byte order).
- Common (W3C, `1077efec-…`): a version 1 `pssh` listing the key ids, no data.

`pssh_boxes` gives the boxes for an init segment: what the Key Service returned for a key and
a system is used as given, and vipe generates only what it left out; a system the job did not
choose for a key (`ContentKey.systems`) gets no box.
"""

from __future__ import annotations

import base64
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from drm import boxes, systems
from drm.keys import ContentKey

PLAYREADY_HEADER_NS = "http://schemas.microsoft.com/DRM/2007/03/PlayReadyHeader"
PLAYREADY_RECORD_HEADER = 1  # PRO record type: the rights management header


def fourcc_value(scheme: str) -> int:
    """A scheme fourcc as the big-endian uint32 Widevine's protection_scheme wants."""
    return int.from_bytes(str(scheme).encode("ascii"), "big")


# -------------------------------------------------------------------------------- Widevine


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _varint_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def widevine_pssh_data(
    key_ids: Sequence[uuid.UUID], scheme: str, content_id: bytes | None = None
) -> bytes:
    """The `WidevinePsshData` protobuf: key_id (2, repeated), content_id (4),
    protection_scheme (9)."""
    data = b"".join(_bytes_field(2, kid.bytes) for kid in key_ids)
    if content_id:
        data += _bytes_field(4, content_id)
    return data + _varint_field(9, fourcc_value(scheme))


def widevine_pssh(
    key_ids: Sequence[uuid.UUID], scheme: str, content_id: bytes | None = None
) -> bytes:
    """The Widevine `pssh` box (version 0, the key ids inside the protobuf)."""
    return boxes.pssh(
        systems.WIDEVINE, data=widevine_pssh_data(key_ids, scheme, content_id), version=0
    )


# ------------------------------------------------------------------------------- PlayReady


def playready_kid(key_id: uuid.UUID) -> str:
    """A key id as PlayReady writes it: base64 of the little-endian GUID bytes."""
    return base64.b64encode(key_id.bytes_le).decode()


def playready_checksum(key: ContentKey) -> str:
    """The AESCTR key checksum: base64 of the first 8 bytes of AES-ECB(key, KID LE bytes)."""
    from Crypto.Cipher import AES  # here: its import costs start-up time most jobs do not need

    encrypted = AES.new(key.key, AES.MODE_ECB).encrypt(key.key_id.bytes_le)
    return base64.b64encode(encrypted[:8]).decode()


def _xml_text(text: str) -> str:
    """XML character data (xml.sax.saxutils.escape, whose import pulls in urllib.request)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def playready_header(keys: Sequence[ContentKey], scheme: str, la_url: str | None = None) -> str:
    """The WRMHEADER XML. Canonical form as the specification asks: no whitespace,
    attributes in alphabetical order, explicit closing tags."""
    if not keys:
        raise ValueError("a PlayReady header needs at least one key")
    la = f"<LA_URL>{_xml_text(la_url)}</LA_URL>" if la_url else ""
    head = f'<WRMHEADER xmlns="{PLAYREADY_HEADER_NS}" version='
    if str(scheme) == "cenc" and len(keys) == 1:
        key = keys[0]
        return (
            f'{head}"4.0.0.0"><DATA><PROTECTINFO><KEYLEN>16</KEYLEN><ALGID>AESCTR</ALGID>'
            f"</PROTECTINFO><KID>{playready_kid(key.key_id)}</KID>"
            f"<CHECKSUM>{playready_checksum(key)}</CHECKSUM>{la}</DATA></WRMHEADER>"
        )
    if str(scheme) == "cenc":
        kids = "".join(
            f'<KID ALGID="AESCTR" CHECKSUM="{playready_checksum(key)}" '
            f'VALUE="{playready_kid(key.key_id)}"></KID>'
            for key in keys
        )
        version = "4.2.0.0"
    else:
        kids = "".join(
            f'<KID ALGID="AESCBC" VALUE="{playready_kid(key.key_id)}"></KID>' for key in keys
        )
        version = "4.3.0.0"
    return (
        f'{head}"{version}"><DATA><PROTECTINFO><KIDS>{kids}</KIDS></PROTECTINFO>{la}'
        "</DATA></WRMHEADER>"
    )


def playready_object(header: str) -> bytes:
    """A PlayReady Object (PRO) with one record: the header in UTF-16LE (all little-endian)."""
    record = header.encode("utf-16-le")
    return struct.pack("<IHHH", 10 + len(record), 1, PLAYREADY_RECORD_HEADER, len(record)) + record


def playready_pssh(keys: Sequence[ContentKey], scheme: str, la_url: str | None = None) -> bytes:
    """The PlayReady `pssh` box (version 0; the data is the PRO)."""
    return boxes.pssh(
        systems.PLAYREADY, data=playready_object(playready_header(keys, scheme, la_url)), version=0
    )


# ---------------------------------------------------------------------------- W3C common


def common_pssh(key_ids: Sequence[uuid.UUID]) -> bytes:
    """The W3C common-system `pssh` (ClearKey): version 1, the key ids, no data."""
    return boxes.pssh(systems.CLEARKEY, key_ids, b"", version=1)


# ---------------------------------------------------------------------------- reading back


@dataclass(frozen=True)
class PsshBox:
    """A parsed `pssh` box."""

    system_id: uuid.UUID
    version: int
    key_ids: tuple[uuid.UUID, ...]
    data: bytes


def parse_pssh(box: bytes) -> PsshBox:
    """Read one `pssh` box (ValueError when it is not one)."""
    if len(box) < 32 or box[4:8] != b"pssh":
        raise ValueError("not a pssh box")
    size = struct.unpack(">I", box[:4])[0]
    if size != len(box):
        raise ValueError("pssh box size does not match its length")
    version = box[8]
    system_id = uuid.UUID(bytes=box[12:28])
    position, key_ids = 28, []
    if version >= 1:
        count = struct.unpack(">I", box[position : position + 4])[0]
        position += 4
        for _ in range(count):
            key_ids.append(uuid.UUID(bytes=box[position : position + 16]))
            position += 16
    data_size = struct.unpack(">I", box[position : position + 4])[0]
    data = box[position + 4 : position + 4 + data_size]
    if len(data) != data_size:
        raise ValueError("pssh data runs past the box")
    return PsshBox(system_id, version, tuple(key_ids), data)


def pro_from_pssh(box: bytes) -> bytes:
    """The PlayReady Object inside a PlayReady `pssh` box (for `mspr:pro` and HLS)."""
    return parse_pssh(box).data


# ------------------------------------------------------------------------------- selection


def generated_pssh(
    keys: Sequence[ContentKey],
    scheme: str,
    system_id: uuid.UUID,
    *,
    playready_la_url: str | None = None,
) -> bytes | None:
    """vipe's own `pssh` for `system_id` covering `keys` (None for FairPlay: it has none)."""
    key_ids = [key.key_id for key in keys]
    if system_id == systems.WIDEVINE:
        return widevine_pssh(key_ids, scheme)
    if system_id == systems.PLAYREADY:
        return playready_pssh(keys, scheme, playready_la_url)
    if system_id == systems.CLEARKEY:
        return common_pssh(key_ids)
    return None


def pssh_for_system(
    keys: ContentKey | Sequence[ContentKey],
    scheme: str,
    system_id: uuid.UUID,
    *,
    playready_la_url: str | None = None,
) -> list[bytes]:
    """The `pssh` boxes of one system for `keys`: the Key Service's box for each key that has
    one, and one generated box for the keys without."""
    keys = [keys] if isinstance(keys, ContentKey) else list(keys)
    given: list[bytes] = []
    missing: list[ContentKey] = []
    for key in keys:
        box = key.for_system(system_id).pssh
        if box is not None:
            if box not in given:
                given.append(box)
        else:
            missing.append(key)
    if missing:
        box = generated_pssh(missing, scheme, system_id, playready_la_url=playready_la_url)
        if box is not None:
            given.append(box)
    return given


def pssh_boxes(
    keys: ContentKey | Sequence[ContentKey],
    scheme: str,
    *,
    system_ids: Sequence[uuid.UUID] = systems.ALL_SYSTEMS,
    playready_la_url: str | None = None,
) -> list[bytes]:
    """Every `pssh` box for an init segment's `moov` protected with `keys`: per system of
    `system_ids`, for the keys that signal it (`ContentKey.systems`, the job's choice)."""
    keys = [keys] if isinstance(keys, ContentKey) else list(keys)
    out: list[bytes] = []
    for system_id in system_ids:
        chosen = [key for key in keys if key.signals(system_id)]
        if chosen:
            out += pssh_for_system(chosen, scheme, system_id, playready_la_url=playready_la_url)
    return out
