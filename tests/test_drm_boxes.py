"""CENC boxes (sinf/tenc, pssh; the packager's senc/saiz/saio and protected sample entry) and
the per-track object for the packager."""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass, field

import av
import pytest
from mediagen import make_media

from drm import boxes, pssh, systems
from drm.cenc import EncryptedSample, decrypt_sample
from drm.keys import ContentKey
from drm.track import TrackEncryption
from packagers import mp4

KID = uuid.UUID("00112233-4455-6677-8899-aabbccddeeff")
KEY = ContentKey(KID, bytes(range(16)))


def parse(data: bytes) -> list[tuple[str, bytes]]:
    out, position = [], 0
    while position < len(data):
        size, kind = struct.unpack(">I4s", data[position : position + 8])
        out.append((kind.decode(), data[position + 8 : position + size]))
        position += size
    assert position == len(data)
    return out


def test_sinf_cenc_and_cbcs():
    [(kind, body)] = parse(boxes.sinf("avc1", "cenc", KID, 8))
    assert kind == "sinf"
    (frma, f), (schm, s), (schi, i) = parse(body)
    assert (frma, f, schi) == ("frma", b"avc1", "schi")
    assert (schm, s) == ("schm", b"\x00\x00\x00\x00cenc\x00\x01\x00\x00")
    [(tenc, t)] = parse(i)
    assert tenc == "tenc" and t == bytes([0, 0, 0, 0, 0, 0, 1, 8]) + KID.bytes
    constant = bytes(range(16))
    [(_, body)] = parse(boxes.sinf("hvc1", "cbcs", KID, 0, constant, 1, 9))
    [(_, t)] = parse(parse(body)[2][1])
    assert t[0] == 1  # version 1: the pattern
    assert t[5] == 0x19 and t[6:8] == b"\x01\x00"  # 1:9, protected, no per-sample IV
    assert t[8:24] == KID.bytes and t[24] == 16 and t[25:] == constant
    [(_, body)] = parse(boxes.sinf("mp4a", "cbcs", KID, 0, constant[:8]))
    [(_, t)] = parse(parse(body)[2][1])
    assert t[0] == 1 and t[5] == 0 and t[24] == 8 and t[25:] == constant[:8]  # 0:0, 8-byte IV
    with pytest.raises(ValueError, match="constant IV"):
        boxes.tenc(KID, 0)


def test_protect_sample_entry():
    entry = mp4.SampleEntry("mp4a", boxes.box("mp4a", bytes(28) + boxes.box("esds", b"x")))
    protected = entry.rewritten("enca", boxes.sinf("mp4a", "cenc", KID, 8))
    [(kind, body)] = parse(protected)
    assert kind == "enca" and body.startswith(entry.data[8:])
    assert parse(body[28:])[-1][0] == "sinf"


def test_fragment_boxes_point_saio_at_the_senc_data():
    samples = [
        EncryptedSample(b"", bytes([1] * 8), ((10, 32), (5, 16))),
        EncryptedSample(b"", bytes([2] * 8), ((7, 48),)),
    ]
    position = 8 + 16 + 8 + 24  # after moof header, mfhd, traf header and a tfhd
    aux = mp4.traf_encryption_boxes(samples, position)
    (saiz, z), (saio, o), (senc, s) = parse(aux)
    assert (saiz, saio, senc) == ("saiz", "saio", "senc")
    assert z == struct.pack(">IBI", 0, 0, 2) + bytes([8 + 2 + 12, 8 + 2 + 6])
    (offset,) = struct.unpack(">I", o[8:12])
    moof = bytes(position) + aux  # the senc data found where saio says
    assert moof[offset : offset + 8] == bytes([1] * 8)
    assert struct.unpack(">HHI", moof[offset + 8 : offset + 16]) == (2, 10, 32)
    assert s[:4] == b"\x00\x00\x00\x02"  # flags: subsamples present
    senc_position = position + (8 + len(z)) + (8 + len(o))
    assert senc_position + mp4.SENC_HEADER_SIZE == offset
    # audio with a constant IV: nothing to point at, only an empty-entried senc
    constant = [EncryptedSample(b"", b""), EncryptedSample(b"", b"")]
    [(kind, body)] = parse(mp4.traf_encryption_boxes(constant, 100))
    assert kind == "senc" and body == b"\x00\x00\x00\x00\x00\x00\x00\x02"
    # equal entries: one default size in saiz
    equal = [EncryptedSample(b"", bytes(8)), EncryptedSample(b"", bytes(8))]
    [(kind, body), _, _] = parse(mp4.traf_encryption_boxes(equal, 100))
    assert (kind, body) == ("saiz", struct.pack(">IBI", 0, 8, 2))


def test_pssh_box_versions():
    v0 = boxes.pssh(systems.WIDEVINE, data=b"abc")
    assert pssh.parse_pssh(v0) == pssh.PsshBox(systems.WIDEVINE, 0, (), b"abc")
    v1 = boxes.pssh(systems.CLEARKEY, [KID])
    assert pssh.parse_pssh(v1) == pssh.PsshBox(systems.CLEARKEY, 1, (KID,), b"")
    with pytest.raises(ValueError):
        pssh.parse_pssh(v1[:-1])


# ------------------------------------------------------------------ the packager's hooks


@dataclass
class Entry:  # the two things TrackEncryption reads of the packager's SampleEntry
    fourcc: str
    boxes: dict[str, bytes] = field(default_factory=dict)


@pytest.fixture(scope="module")
def tiny_video(tmp_path_factory):
    path = make_media(tmp_path_factory.mktemp("hooks") / "v.mp4", duration=0.4, width=64,
                      height=64, audio=[])  # fmt: skip
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        config = bytes(stream.codec_context.extradata)
        samples = [bytes(p) for p in container.demux(stream) if p.size]
    return Entry("avc1", {"avcC": config}), samples


def test_track_encryption_hooks_cbcs(tiny_video):
    entry, samples = tiny_video
    track = TrackEncryption(KEY, "cbcs")
    assert track.key_id == str(KID) and len(bytes.fromhex(track.iv)) == 16
    sinf = track.sinf(entry)
    assert parse(parse(sinf)[0][1])[0] == ("frma", b"avc1")
    protected = [track.protect_sample(s, entry) for s in samples]
    assert all(p.iv == b"" and p.subsamples for p in protected)
    for sample, done in zip(samples, protected, strict=True):
        clear = decrypt_sample(
            "cbcs",
            KEY.key,
            done,
            constant_iv=bytes.fromhex(track.iv),
            crypt_byte_block=1,
            skip_byte_block=9,
        )
        assert clear == sample
    kinds = [pssh.parse_pssh(b).system_id for b in track.init_boxes()]
    assert kinds == [systems.WIDEVINE, systems.PLAYREADY, systems.CLEARKEY]
    assert len(track.dash_elements()) == 4
    assert len(track.hls_keys()) == 3 and len(track.hls_session_keys()) == 3
    assert "<hidden>" not in repr(track) and KEY.key.hex() not in repr(track)


def test_track_encryption_hooks_cenc_audio():
    other = ContentKey(uuid.uuid4(), bytes(16), quality_group="HD")
    track = TrackEncryption(KEY, "cenc", presentation_keys=[KEY, other])
    entry = Entry("mp4a")
    assert track.iv is None  # cenc: per-sample IVs only
    sample = bytes(range(200))
    done = track.protect_sample(sample, entry)
    assert len(done.iv) == 8 and done.subsamples == ()
    assert decrypt_sample("cenc", KEY.key, done) == sample
    assert track.hls_keys()[0].startswith("#EXT-X-KEY:METHOD=SAMPLE-AES-CTR,")
    assert len(track.hls_session_keys()) == 4  # Widevine + PlayReady for both keys
    with pytest.raises(ValueError, match="cannot encrypt"):
        TrackEncryption(KEY, "cenc").sinf(Entry("Opus"))
