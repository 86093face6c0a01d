"""Shaka Packager as an independent validator: it must read the packager's CMAF output, and
decrypt what a CENC plug-in produced through the DRM hooks, back to the clear samples."""

from __future__ import annotations

import base64
import struct
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest
from Crypto.Cipher import AES
from packager_media import (
    AAC_PRIMING,
    FRAMES,
    SEGMENT_SECONDS,
    child_box,
    decode,
    ffmpeg_pts_shift,
    run_shaka,
    top_boxes,
)

from packagers import PackageSpec, ProtectedSample, TrackInput, TrackProtection, package
from packagers.mp4 import SampleEntry, box, full_box, read_track

CLEARKEY_SYSTEM = uuid.UUID("1077efec-c0b2-4d02-ace3-3c1e52e2fb4b")
KEY_ID = uuid.UUID("6f651ae1-dbe4-4434-bcb4-690d1564c41c")
KEY = bytes.fromhex("0123456789abcdef0123456789abcdef")


def _tracks(inputs, protection: Callable[[], TrackProtection] | None = None) -> list[TrackInput]:
    """Video and audio; `protection` makes each track's plug-in (one per track: a plug-in may
    keep per-track state, such as its encryptor)."""
    return [
        TrackInput(inputs.video_high, "video", "video",
                   protection=protection() if protection else None),
        TrackInput(inputs.audio_en, "audio", "audio-en", language="en",
                   priming_samples=AAC_PRIMING, protection=protection() if protection else None),
    ]  # fmt: skip


def _joined(folder: Path, name: str, count: int = 3) -> bytes:
    names = [f"{name}_init.mp4"] + [f"{name}_{n}.m4s" for n in range(1, count + 1)]
    return b"".join((folder / n).read_bytes() for n in names)


@pytest.fixture(scope="module")
def clear_package(packager_inputs, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shaka-clear")
    package(_tracks(packager_inputs), [], PackageSpec(["Cmaf"], segment_seconds=2), folder)
    return folder


def test_shaka_repackages_cmaf_segments(clear_package, tmp_path):
    for name, stream in (("video", "video"), ("audio-en", "audio")):
        source = tmp_path / f"{name}.mp4"
        source.write_bytes(_joined(clear_package, name))
        result = run_shaka(
            f"in={source},stream={stream},init_segment={name}_init.mp4,"
            f"segment_template={name}_$Number$.m4s",
            "--segment_duration", str(SEGMENT_SECONDS), "--mpd_output", f"{name}.mpd",
            cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "Packaging completed successfully" in result.stdout + result.stderr
        # no complaint about our timestamps or structure
        assert "composition offset" not in result.stderr, result.stderr
    repackaged = _joined(tmp_path, "video", count=len(list(tmp_path.glob("video_*.m4s"))))
    seen = decode(repackaged, "video", pts_shift=0)
    assert seen.frame_numbers == list(range(FRAMES))


def test_shaka_reads_on_demand_file(packager_inputs, tmp_path):
    folder = tmp_path / "ondemand"
    package(_tracks(packager_inputs), [], PackageSpec(["DashOnDemand"], segment_seconds=2), folder)
    result = run_shaka(f"in={folder / 'video.mp4'},stream=video,output=copy.mp4",
                       "--segment_duration", "2", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    copy = read_track(tmp_path / "copy.mp4")
    assert len(copy.samples) == FRAMES


class ClearKeyCenc(TrackProtection):
    """A minimal 'cenc' (AES-CTR) plug-in for the test: whole-sample encryption for audio,
    NAL-aware subsample encryption for video, 8-byte per-sample IVs."""

    key_id = str(KEY_ID)

    def __init__(self) -> None:
        self.counter = 0

    def sinf(self, entry: SampleEntry) -> bytes:
        tenc = full_box("tenc", 0, 0, bytes([0, 0, 1, 8]) + KEY_ID.bytes)
        return box(
            "sinf",
            box("frma", entry.fourcc.encode()),
            full_box("schm", 0, 0, b"cenc", struct.pack(">I", 0x00010000)),
            box("schi", tenc),
        )

    def init_boxes(self) -> list[bytes]:
        body = CLEARKEY_SYSTEM.bytes + struct.pack(">I", 1) + KEY_ID.bytes + struct.pack(">I", 0)
        return [full_box("pssh", 1, 0, body)]

    def protect_sample(self, data: bytes, entry: SampleEntry) -> ProtectedSample:
        self.counter += 1
        iv = struct.pack(">Q", self.counter)
        subsamples: list[tuple[int, int]] = []
        if entry.fourcc == "avc1":
            pos = 0
            while pos < len(data):
                size = struct.unpack_from(">I", data, pos)[0]
                protected = (size - 1) // 16 * 16  # keep length + NAL header clear
                subsamples.append((4 + size - protected, protected))
                pos += 4 + size
            ranges, pos = [], 0
            for clear, protected in subsamples:
                ranges.append((pos + clear, protected))
                pos += clear + protected
        else:
            ranges = [(0, len(data))]
        cipher = AES.new(KEY, AES.MODE_CTR, nonce=iv, initial_value=0)
        encrypted = cipher.encrypt(b"".join(data[s : s + n] for s, n in ranges))
        out, used = bytearray(data), 0
        for start, size in ranges:
            out[start : start + size] = encrypted[used : used + size]
            used += size
        return ProtectedSample(bytes(out), iv, tuple(subsamples))

    def dash_elements(self) -> list[ET.Element]:
        mp4protection = ET.Element(
            "ContentProtection",
            {
                "schemeIdUri": "urn:mpeg:dash:mp4protection:2011",
                "value": "cenc",
                "{urn:mpeg:cenc:2013}default_KID": str(KEY_ID),
            },
        )
        clearkey = ET.Element("ContentProtection", {"schemeIdUri": f"urn:uuid:{CLEARKEY_SYSTEM}"})
        pssh = ET.SubElement(clearkey, "{urn:mpeg:cenc:2013}pssh")
        pssh.text = base64.b64encode(self.init_boxes()[0]).decode()
        return [mp4protection, clearkey]

    def hls_keys(self) -> list[str]:
        return ['#EXT-X-KEY:METHOD=SAMPLE-AES-CTR,URI="data:text/plain;base64,AAAA",'
                'KEYFORMAT="identity"']  # fmt: skip

    def hls_session_keys(self) -> list[str]:
        return ['#EXT-X-SESSION-KEY:METHOD=SAMPLE-AES-CTR,URI="data:text/plain;base64,AAAA",'
                'KEYFORMAT="identity"']  # fmt: skip


def test_drm_hooks_round_trip_through_shaka(packager_inputs, clear_package, tmp_path):
    folder = tmp_path / "encrypted"
    result = package(
        _tracks(packager_inputs, ClearKeyCenc), [], PackageSpec(["Cmaf"], segment_seconds=2), folder
    )
    assert {s.key_id for s in result.streams} == {str(KEY_ID)}
    # signalling from the hooks
    mpd = (folder / "manifest.mpd").read_text()
    assert mpd.count("urn:mpeg:dash:mp4protection:2011") == 2  # one per AdaptationSet
    assert 'xmlns:cenc="urn:mpeg:cenc:2013"' in mpd and "cenc:default_KID" in mpd
    assert (folder / "manifest.m3u8").read_text().count("#EXT-X-SESSION-KEY") == 1
    video_playlist = (folder / "video.m3u8").read_text()
    assert video_playlist.index("#EXT-X-MAP") < video_playlist.index("#EXT-X-KEY")
    # init: encv with sinf, pssh in moov
    moov = dict(top_boxes((folder / "video_init.mp4").read_bytes()))["moov"]
    stsd = child_box(moov, "trak/mdia/minf/stbl/stsd")
    assert top_boxes(stsd, 8)[0][0] == "encv"
    assert "pssh" in [kind for kind, _ in top_boxes(moov)]
    # every fragment carries saiz/saio/senc, saio pointing at the first senc entry (Shaka
    # reads senc itself, so the offset arithmetic is checked here)
    for name, number in (("video", 1), ("video", 3), ("audio-en", 2)):
        segment = (folder / f"{name}_{number}.m4s").read_bytes()
        styp_size = struct.unpack_from(">I", segment)[0]
        traf = child_box(dict(top_boxes(segment))["moof"], "traf")
        boxes = dict(top_boxes(traf))
        assert {"saiz", "saio", "senc"} <= set(boxes)
        entry_count, offset = struct.unpack_from(">II", boxes["saio"], 4)
        assert entry_count == 1
        senc = boxes["senc"]
        assert segment[styp_size + offset : styp_size + offset + 8] == senc[8:16]
        sizes = boxes["saiz"]
        default_size, count = struct.unpack_from(">BI", sizes, 4)
        assert count == struct.unpack_from(">I", senc, 4)[0]
        if name == "audio-en":  # IV only, no subsamples
            assert default_size == 8 and senc[3] & 0x2 == 0
        else:
            assert senc[3] & 0x2 and (default_size or len(sizes) == 9 + count)

    keys = f"key_id={KEY_ID.hex}:key={KEY.hex()}"
    for name, stream in (("video", "video"), ("audio-en", "audio")):
        encrypted = tmp_path / f"{name}-enc.mp4"
        encrypted.write_bytes(_joined(folder, name))
        run = run_shaka(f"in={encrypted},stream={stream},output={name}-dec.mp4",
                        "--enable_raw_key_decryption", "--keys", keys, cwd=tmp_path)  # fmt: skip
        assert run.returncode == 0, run.stderr
        decrypted = read_track(tmp_path / f"{name}-dec.mp4")
        clear_file = tmp_path / f"{name}-clear.mp4"
        clear_file.write_bytes(_joined(clear_package, name))
        clear = read_track(clear_file)
        count = len(clear.samples)
        assert len(decrypted.samples) == count
        assert decrypted.read_samples(0, count) == clear.read_samples(0, count), name
    # and the clear package still decodes from the decrypted copy
    seen = decode((tmp_path / "video-dec.mp4").read_bytes(), "video",
                  pts_shift=ffmpeg_pts_shift(read_track(tmp_path / "video-dec.mp4")))  # fmt: skip
    assert seen.frame_numbers == list(range(FRAMES))


@pytest.mark.parametrize("scheme", ["cenc", "cbcs"])
def test_drm_track_encryption_through_hooks(packager_inputs, clear_package, tmp_path, scheme):
    """The project's own DRM plug-in (`drm.track.TrackEncryption`) through the hooks: Shaka
    decrypts the package back to the clear samples, bit for bit."""
    track_module = pytest.importorskip("drm.track")
    keys_module = pytest.importorskip("drm.keys")
    key = keys_module.ContentKey(KEY_ID, KEY)
    folder = tmp_path / "encrypted"
    tracks = _tracks(packager_inputs, lambda: track_module.TrackEncryption(key, scheme))
    package(tracks, [], PackageSpec(["Cmaf"], segment_seconds=2), folder)
    assert "#EXT-X-KEY" in (folder / "video.m3u8").read_text()
    keys = f"key_id={KEY_ID.hex}:key={KEY.hex()}"
    for name, stream in (("video", "video"), ("audio-en", "audio")):
        encrypted = tmp_path / f"{name}-enc.mp4"
        encrypted.write_bytes(_joined(folder, name))
        run = run_shaka(f"in={encrypted},stream={stream},output={name}-dec.mp4",
                        "--enable_raw_key_decryption", "--keys", keys, cwd=tmp_path)  # fmt: skip
        assert run.returncode == 0, run.stderr
        decrypted = read_track(tmp_path / f"{name}-dec.mp4")
        clear_file = tmp_path / f"{name}-clear.mp4"
        clear_file.write_bytes(_joined(clear_package, name))
        clear = read_track(clear_file)
        count = len(clear.samples)
        assert decrypted.read_samples(0, count) == clear.read_samples(0, count), (scheme, name)
