"""Box-level checks of the packager's input reader and of its CMAF output."""

from __future__ import annotations

import io
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from mpegdash.parser import MPEGDASHParser
from packager_media import (
    AAC_PRIMING,
    FRAMES,
    SEGMENT_SECONDS,
    child_box,
    decode,
    ffmpeg_pts_shift,
    run_shaka,
    top_boxes,
    write_audio,
    write_video,
)

from packagers import PackageSpec, TrackInput, package
from packagers.codecs import avc_codec_string, hevc_codec_string
from packagers.mp4 import box, full_box, read_track

SYNC_FLAGS = 0x02000000
NON_SYNC = 0x00010000


@pytest.fixture(scope="module")
def cmaf_package(packager_inputs, tmp_path_factory):
    """Cmaf segments and a DashOnDemand single-file package of one video and one audio."""
    tracks = [
        TrackInput(packager_inputs.video_high, "video", "video"),
        TrackInput(packager_inputs.audio_en, "audio", "audio-en", language="en",
                   priming_samples=AAC_PRIMING),
    ]  # fmt: skip
    segments = tmp_path_factory.mktemp("boxes-cmaf")
    package(tracks, [], PackageSpec(["Cmaf"], segment_seconds=SEGMENT_SECONDS), segments)
    single = tmp_path_factory.mktemp("boxes-ondemand")
    package(tracks, [], PackageSpec(["DashOnDemand"], segment_seconds=SEGMENT_SECONDS), single)
    return segments, single


# ---------------------------------------------------------------------------------- reading


@pytest.mark.parametrize("attribute", ["video_high", "video_hevc", "audio_en"])
def test_reader_matches_ffmpeg(packager_inputs, attribute):
    """Sample sizes, times, key flags and bytes as FFmpeg's demuxer reads the same file."""
    path = getattr(packager_inputs, attribute)
    track = read_track(path)
    samples = track.samples
    with av.open(str(path)) as container:
        packets = [p for p in container.demux() if p.size]
    assert len(packets) == len(samples)
    assert [p.size for p in packets] == samples.size.tolist()
    assert [p.dts for p in packets] == samples.decode_time.tolist()
    assert [p.pts for p in packets] == (samples.decode_time + samples.composition_offset).tolist()
    assert [p.is_keyframe for p in packets] == samples.sync.tolist()
    data = track.read_samples(0, 3)
    assert data == [bytes(p) for p in packets[:3]]


def test_reader_and_packager_take_plain_mp4(tmp_path):
    """Non-fragmented input (sample tables, FFmpeg's edit list for the B-frame delay)."""
    path = write_video(tmp_path / "plain.mp4", fragmented=False)
    track = read_track(path)
    assert not track.fragmented and (track.edit_media_time or 0) > 0
    with av.open(str(path)) as container:
        packets = [p for p in container.demux() if p.size]
    assert [p.size for p in packets] == track.samples.size.tolist()
    assert track.read_samples(10, 11) == [bytes(packets[10])]
    output = tmp_path / "out"
    package([TrackInput(path, "video", "video")], [], PackageSpec(["Dash"], segment_seconds=2),
            output)  # fmt: skip
    data = b"".join(
        (output / name).read_bytes()
        for name in ["video_init.mp4", "video_1.m4s", "video_2.m4s", "video_3.m4s"]
    )
    out_track = read_track(_write(tmp_path / "joined.mp4", data))
    seen = decode(data, "video", pts_shift=ffmpeg_pts_shift(out_track))
    assert seen.frame_numbers == list(range(FRAMES)) and seen.first_time == 0


def test_priming_from_the_input_edit_list(tmp_path):
    """A plain MP4 says its priming in its edit list: the output keeps it, no field needed."""
    path = write_audio(tmp_path / "plain.mp4", fragmented=False, duration=2.5)
    assert read_track(path).edit_media_time == AAC_PRIMING
    package([TrackInput(path, "audio", "audio")], [], PackageSpec(["Dash"], segment_seconds=2),
            tmp_path / "out")  # fmt: skip
    moov = dict(top_boxes((tmp_path / "out/audio_init.mp4").read_bytes()))["moov"]
    assert struct.unpack_from(">Qq", child_box(moov, "trak/edts/elst"), 8) == (0, AAC_PRIMING)


def _minimal_moov() -> bytes:
    """A moov of one audio track (an mp4a entry without esds is enough to read samples)."""
    from packagers import mp4

    entry = box(
        "mp4a",
        bytes(6) + struct.pack(">H", 1) + bytes(8),  # reserved, data_reference_index, reserved
        struct.pack(">HH4xI", 2, 16, 48000 << 16),  # channels, sample size, sample rate
    )
    minf = box("minf", mp4.smhd(), mp4.data_information(), mp4.empty_sample_tables(entry))
    mdia = box("mdia", mp4.mdhd(48000, 0, "eng"), mp4.hdlr("soun", "s"), minf)
    trak = box("trak", mp4.tkhd(1, 0, 0, 0, True), mdia)
    return box("moov", mp4.mvhd(48000, 0, 2), trak, box("mvex", mp4.trex(1)))


def _tfhd(track_id: int, flags: int, fields: bytes = b"") -> bytes:
    return full_box("tfhd", 0, flags, struct.pack(">I", track_id), fields)


def test_reader_fragment_variants(tmp_path):
    """tfhd with an explicit base data offset and a default size, a traf of another track, no
    tfdt (times continue from 0), a second trun without data offset, v0 composition offsets."""
    init = box("ftyp", b"iso6", bytes(4), b"iso6") + _minimal_moov()
    mfhd = full_box("mfhd", 0, 0, struct.pack(">I", 1))
    other = box(
        "traf",
        _tfhd(9, 0x10, struct.pack(">I", 5)),
        full_box("trun", 0, 0x1, struct.pack(">Ii", 1, 0)),
    )
    trun1 = full_box(  # data offset, durations, composition offsets
        "trun", 0, 0x1 | 0x100 | 0x800, struct.pack(">Ii", 2, 0), struct.pack(">4I", 10, 20, 10, 0)
    )
    trun2 = full_box(  # durations and flags; data follows trun1's
        "trun",
        0,
        0x100 | 0x400,
        struct.pack(">I", 2),
        struct.pack(">4I", 10, 0x2 << 24, 10, NON_SYNC),
    )

    def moof(base: int) -> bytes:
        tfhd = _tfhd(1, 0x1 | 0x10, struct.pack(">QI", base, 10))  # base offset, default size
        return box("moof", mfhd, other, box("traf", tfhd, trun1, trun2))

    base = len(init) + len(moof(0)) + 8  # the mdat payload, addressed from the file start
    payload = bytes(range(40))
    path = tmp_path / "variants.mp4"
    path.write_bytes(init + moof(base) + box("mdat", payload))
    track = read_track(path)
    samples = track.samples
    assert samples.decode_time.tolist() == [0, 10, 20, 30]
    assert samples.composition_offset.tolist() == [20, 0, 0, 0]
    assert samples.offset.tolist() == [base, base + 10, base + 20, base + 30]
    assert samples.sync.tolist() == [True, True, True, False]
    assert track.read_samples(0, 4) == [payload[i : i + 10] for i in range(0, 40, 10)]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------------------- writing


def test_init_segments(cmaf_package):
    folder, _ = cmaf_package
    for name, handler in (("video", b"vide"), ("audio-en", b"soun")):
        boxes = top_boxes((folder / f"{name}_init.mp4").read_bytes())
        assert [kind for kind, _ in boxes] == ["ftyp", "moov"]
        ftyp = boxes[0][1]
        brands = {ftyp[i : i + 4] for i in range(8, len(ftyp), 4)} | {ftyp[:4]}
        assert b"cmfc" in brands and b"iso6" in brands
        moov = boxes[1][1]
        kinds = [kind for kind, _ in top_boxes(moov)]
        assert kinds[:3] == ["mvhd", "trak", "mvex"]
        assert child_box(moov, "trak/mdia/hdlr")[8:12] == handler
        stbl = child_box(moov, "trak/mdia/minf/stbl")
        for table in ("stts", "stsc", "stco"):
            assert struct.unpack_from(">I", child_box(stbl, table), 4)[0] == 0, table
        assert struct.unpack_from(">II", child_box(stbl, "stsz"), 4) == (0, 0)
        trex = child_box(moov, "mvex/trex")
        assert struct.unpack_from(">I", trex, 4)[0] == 1
        trak_kinds = [kind for kind, _ in top_boxes(child_box(moov, "trak"))]
        if name == "video":
            assert "edts" not in trak_kinds  # signed composition offsets instead
        else:
            elst = child_box(moov, "trak/edts/elst")
            version, count = elst[0], struct.unpack_from(">I", elst, 4)[0]
            assert version == 1 and count == 1
            duration, media_time = struct.unpack_from(">Qq", elst, 8)
            assert (duration, media_time) == (0, AAC_PRIMING)


def _traf_fields(moof: bytes) -> dict:
    """mfhd sequence, tfhd flags and defaults, tfdt, trun version/offset/sample table."""
    sequence = struct.unpack_from(">I", child_box(moof, "mfhd"), 4)[0]
    tfhd = child_box(moof, "traf/tfhd")
    tf_flags = struct.unpack_from(">I", tfhd)[0] & 0xFFFFFF
    pos, defaults = 8, {}
    for flag, key in ((0x8, "duration"), (0x10, "size"), (0x20, "flags")):
        if tf_flags & flag:
            defaults[key] = struct.unpack_from(">I", tfhd, pos)[0]
            pos += 4
    tfdt = child_box(moof, "traf/tfdt")
    base = struct.unpack_from(">Q" if tfdt[0] == 1 else ">I", tfdt, 4)[0]
    trun = child_box(moof, "traf/trun")
    word, count, data_offset = struct.unpack_from(">IIi", trun)
    version, flags = word >> 24, word & 0xFFFFFF
    assert flags & 0x1 and not flags & 0x4
    fields = [f for f in (0x100, 0x200, 0x400, 0x800) if flags & f]
    table = np.frombuffer(trun, ">u4", count * len(fields), 12).reshape(count, len(fields))
    column = {f: table[:, i].astype(np.int64) for i, f in enumerate(fields)}
    durations = column.get(0x100, np.full(count, defaults.get("duration", 0)))
    sample_flags = column.get(0x400, np.full(count, defaults.get("flags", 0)))
    offsets = column.get(0x800, np.zeros(count, dtype=np.int64))
    if version == 1:
        offsets = offsets.astype(np.uint32).view(np.int32)
    return {
        "sequence": sequence,
        "tfhd_flags": tf_flags,
        "tfdt_version": tfdt[0],
        "base": base,
        "trun_version": version,
        "data_offset": data_offset,
        "durations": durations,
        "sizes": column[0x200],
        "flags": sample_flags,
        "offsets": offsets,
    }


@pytest.mark.parametrize("name", ["video", "audio-en"])
def test_media_segments(cmaf_package, name):
    folder, _ = cmaf_package
    next_decode_time = 0
    for number in range(1, 4):
        data = (folder / f"{name}_{number}.m4s").read_bytes()
        boxes = top_boxes(data)
        assert [kind for kind, _ in boxes] == ["styp", "moof", "mdat"]  # one fragment
        assert b"cmfs" in boxes[0][1]
        moof, mdat = boxes[1][1], boxes[2][1]
        fields = _traf_fields(moof)
        assert fields["sequence"] == number
        assert fields["tfhd_flags"] & 0x020000  # default-base-is-moof
        assert not fields["tfhd_flags"] & 0x1  # no explicit base data offset
        assert fields["tfdt_version"] == 1
        assert fields["base"] == next_decode_time, "tfdt must continue the previous segment"
        next_decode_time += int(fields["durations"].sum())
        assert fields["data_offset"] == len(moof) + 8 + 8  # moof box + mdat header
        assert int(fields["sizes"].sum()) == len(mdat)
        sync = (fields["flags"] & NON_SYNC) == 0
        if name == "video":
            assert fields["trun_version"] == 1
            assert sync[0] and not sync[1:].any()
            assert fields["flags"][0] == SYNC_FLAGS
            assert (fields["offsets"] < 0).any(), "B-frames need negative offsets"
            times = (
                next_decode_time
                - fields["durations"].sum()
                + np.cumsum(np.concatenate(([0], fields["durations"][:-1])))
                + fields["offsets"]
            )
            start = (number - 1) * SEGMENT_SECONDS
            assert Fraction(int(times.min()), 12800) == start  # presentation starts on time
        else:
            assert sync.all()


def test_single_file_index(cmaf_package):
    _, folder = cmaf_package
    data = (folder / "video.mp4").read_bytes()
    boxes = top_boxes(data)
    assert [kind for kind, _ in boxes[:3]] == ["ftyp", "moov", "sidx"]
    assert [kind for kind, _ in boxes[3:]] == ["moof", "mdat"] * 3
    sidx = boxes[2][1]
    version = sidx[0]
    timescale = struct.unpack_from(">I", sidx, 8)[0]
    ept, first = struct.unpack_from(">QQ" if version else ">II", sidx, 12)
    pos = 12 + (16 if version else 8)
    count = struct.unpack_from(">H", sidx, pos + 2)[0]
    assert (timescale, ept, first, count) == (12800, 0, 0, 3)
    fragment_sizes = [len(boxes[i][1]) + 8 + len(boxes[i + 1][1]) + 8 for i in (3, 5, 7)]
    durations = []
    for index in range(count):
        size, duration, sap = struct.unpack_from(">III", sidx, pos + 4 + 12 * index)
        assert size == fragment_sizes[index]
        assert sap >> 28 == 0x9  # starts with SAP, type 1
        durations.append(duration)
    assert durations == [25600, 25600, 12800]
    seen = decode(data, "video", pts_shift=ffmpeg_pts_shift(read_track(folder / "video.mp4")))
    assert seen.frame_numbers == list(range(FRAMES))


def _sps_codec_string(path: Path) -> str:
    """avc1.PPCCLL from the SPS NAL unit itself (PyAV's extradata, not the packager)."""
    with av.open(str(path)) as container:
        extradata = container.streams.video[0].codec_context.extradata
    assert extradata[5] & 0x1F >= 1  # at least one SPS
    length = struct.unpack_from(">H", extradata, 6)[0]
    sps = extradata[8 : 8 + length]
    assert sps[0] & 0x1F == 7  # nal_unit_type SPS
    return f"avc1.{sps[1]:02x}{sps[2]:02x}{sps[3]:02x}"


def _shaka_codecs(path: Path, tmp_path: Path, stream: str) -> str:
    result = run_shaka(f"in={path},stream={stream},output=out.mp4", "--mpd_output", "out.mpd",
                       cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    mpd = MPEGDASHParser.parse(str(tmp_path / "out.mpd"))
    return mpd.periods[0].adaptation_sets[0].representations[0].codecs


def test_codec_strings(packager_inputs, tmp_path):
    high = read_track(packager_inputs.video_high)
    expected = _sps_codec_string(packager_inputs.video_high)
    assert avc_codec_string("avc1", high.entry.boxes["avcC"]) == expected
    assert expected.startswith("avc1.64")  # x264 High profile
    assert _shaka_codecs(packager_inputs.video_high, tmp_path, "video") == expected
    hevc = read_track(packager_inputs.video_hevc)
    hevc_string = hevc_codec_string("hvc1", hevc.entry.boxes["hvcC"])
    assert hevc_string == _shaka_codecs(packager_inputs.video_hevc, tmp_path, "video")
    assert hevc_string.startswith("hvc1.1.6.L")  # Main profile, compatibility flags 1 and 2
    # a known value: Main profile, level 3.1 (93), constraint byte 0xB0
    hvcc = bytes([1, 0x01, 0x60, 0, 0, 0, 0xB0, 0, 0, 0, 0, 0, 93])
    assert hevc_codec_string("hvc1", hvcc) == "hvc1.1.6.L93.B0"
    assert avc_codec_string("avc1", bytes([1, 0x4D, 0x40, 0x1F])) == "avc1.4d401f"


@pytest.mark.parametrize(
    ("codec", "layout", "codecs", "scheme", "value", "channels"),
    [
        ("ac3", "stereo", "ac-3", "tag:dolby.com,2014:dash:audio_channel_configuration:2011",
         "A000", 2),
        ("eac3", "5.1", "ec-3", "tag:dolby.com,2014:dash:audio_channel_configuration:2011",
         "F801", 6),
        ("aac", "5.1", "mp4a.40.2", "urn:mpeg:dash:23003:3:audio_channel_configuration:2011",
         "6", 6),
    ],
)  # fmt: skip
def test_dolby_and_multichannel_audio(tmp_path, codec, layout, codecs, scheme, value, channels):
    path = write_audio(tmp_path / f"{codec}.mp4", codec=codec, layout=layout, duration=2.5)
    output = tmp_path / "out"
    result = package(
        [TrackInput(path, "audio", f"audio-{codec}", language="de")],
        [],
        PackageSpec(["Dash", "Hls"], segment_seconds=2),
        output,
    )
    mpd = MPEGDASHParser.parse(str(output / "dash/manifest.mpd"))
    representation = mpd.periods[0].adaptation_sets[0].representations[0]
    assert representation.codecs == codecs
    configuration = representation.audio_channel_configurations[0]
    assert (configuration.scheme_id_uri, configuration.value) == (scheme, value)
    assert f'CHANNELS="{channels}"' in (output / "hls/manifest.m3u8").read_text()
    assert result.streams[0].codecs == codecs
    # 2.5 s in 2 s segments: the 0.5 s remainder (under half a segment) joins the first
    assert result.streams[0].segment_count == 1
    data = b"".join(
        (output / "dash" / name).read_bytes()
        for name in [f"audio-{codec}_init.mp4", f"audio-{codec}_1.m4s"]
    )
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.channels == channels
        assert sum(frame.samples for frame in container.decode(stream)) > 2 * 48000
