"""End to end on sources of different shapes: 4:3, portrait, variable frame rate, a two-language
MKV with subtitle tracks and a separate .srt, audio only, H.265 output, HDR10, NormalizeAudio.

Every package goes through `check_package` (manifests, renditions, key frames, segments, frame
count and numbers, audio/video length, HLS BANDWIDTH); each test adds what its source is about.
"""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import pytest
from e2e_helpers import (
    check_events,
    check_package,
    read_dash,
    read_hls,
    run_simple,
)
from mediagen import read_frame_number

pytestmark = pytest.mark.e2e


def _aspect(rendition: dict) -> float:
    return rendition["Width"] / rendition["Height"]


@pytest.mark.parametrize(
    ("source", "ratio"), [("four_three", 4 / 3), ("portrait", 9 / 16)], ids=["4x3", "9x16"]
)
def test_aspect_ratio_kept(e2e_media, tmp_path, source, ratio):
    ladder = [{"Height": 240, "BitrateInKbps": 300}, {"Height": 160, "BitrateInKbps": 150}]
    if source == "portrait":  # a portrait source's rungs are given by their height as well
        ladder = [{"Height": 320, "BitrateInKbps": 300}, {"Height": 160, "BitrateInKbps": 150}]
    job_run = run_simple(
        tmp_path, getattr(e2e_media, source)(), formats=["Cmaf"], VideoRepresentations=ladder
    )
    check = check_package(job_run)
    check_events(job_run)
    for rendition in job_run.planned_video:
        # even sizes: the width is within 2 pixels of the exact one
        assert abs(rendition["Width"] - rendition["Height"] * ratio) <= 2, rendition
        assert rendition["Width"] % 2 == 0 and rendition["Height"] % 2 == 0
    assert {(v.width, v.height) for v in check.video.values()} == {
        (r["Width"], r["Height"]) for r in job_run.planned_video
    }


def test_ntsc_frame_rate(e2e_media, tmp_path):
    """29.97 fps: segment boundaries fall between frames; every rendition cuts at the same
    frame nearest to each, and the rate is kept exactly."""
    job_run = run_simple(tmp_path, e2e_media.ntsc(), formats=["Dash", "Hls"])
    check_package(job_run, frame_rate=Fraction(30000, 1001))
    check_events(job_run)
    _, tracks = read_dash(job_run.output_dir / "dash" / "manifest.mpd")
    rates = {t.attributes["frame_rate"] for t in tracks if t.kind == "video"}
    assert rates == {"30000/1001"}, rates


def test_rotated_phone_video(e2e_media, tmp_path):
    """Stored landscape with a 90° display rotation: portrait renditions, pictures upright."""
    ladder = [{"Height": 320, "BitrateInKbps": 300}, {"Height": 160, "BitrateInKbps": 150}]
    job_run = run_simple(
        tmp_path, e2e_media.rotated(), formats=["Dash"], VideoRepresentations=ladder
    )
    check = check_package(job_run, numbers=False)
    assert sorted((v.width, v.height) for v in check.video.values()) == [(90, 160), (180, 320)]
    _, tracks = read_dash(job_run.output_dir / "manifest.mpd")
    for track in tracks:
        if track.kind != "video":
            continue
        with av.open(io.BytesIO(track.data())) as container:
            # turned back anticlockwise, each picture is the stored frame: its number readable
            numbers = [
                read_frame_number(np.rot90(f.to_ndarray(format="rgb24")))
                for f in container.decode(video=0)
            ]
        assert numbers == list(range(100)), track.name


def test_jittery_frame_rate_becomes_constant(e2e_media, tmp_path):
    """Frames 36 ms and 44 ms apart (a 25 fps average): every frame kept, once, in order."""
    job_run = run_simple(tmp_path, e2e_media.jittery(), formats=["Dash"])
    streams = job_run.one("EncodingFinished")["Streams"]
    assert {s["FrameRate"] for s in streams if s["Type"] == "Video"} == {"25"}
    check_package(job_run, frame_rate=Fraction(25), source_frames=100)
    check_events(job_run)


def test_variable_frame_rate(e2e_media, tmp_path):
    """Frame gaps of 40 and 80 ms: a constant output at the average rate, source order kept."""
    job_run = run_simple(tmp_path, e2e_media.vfr(), formats=["Dash", "Hls"])
    _, dash_tracks = read_dash(job_run.output_dir / "dash" / "manifest.mpd")
    rate = Fraction(next(t for t in dash_tracks if t.kind == "video").attributes["frame_rate"])
    # 100 frames over the 5.96 s that the container states (its last frame lasting 40 ms)
    assert rate == Fraction(100) / Fraction("5.96")
    check = check_package(job_run, frame_rate=rate, source_frames=100, numbers=False)
    for seen in check.video.values():
        assert seen.frames == 100
    # decoded frame numbers never go back and cover the source from start to end
    _, tracks = read_hls(job_run.output_dir / "hls" / "manifest.m3u8")
    video = next(t for t in tracks if t.kind == "video")
    numbers = _frame_numbers(video.data())
    assert numbers == sorted(numbers)
    assert numbers[0] == 0 and numbers[-1] == 99
    assert len(set(numbers)) >= 80
    # each output frame shows the source frame of its time (within one output frame)
    for index, number in enumerate(numbers):
        source_time = Fraction(number // 2 * 120 + number % 2 * 40, 1000)
        assert abs(source_time - index / rate) <= 1 / rate, (index, number)


def _frame_numbers(data: bytes) -> list[int]:
    from mediagen import read_frame_number

    with av.open(io.BytesIO(data)) as container:
        return [read_frame_number(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]


def _dominant_frequency(data: bytes) -> float:
    with av.open(io.BytesIO(data)) as container:
        samples = np.concatenate([f.to_ndarray()[0] for f in container.decode(audio=0)])
        rate = container.streams.audio[0].codec_context.sample_rate
    spectrum = np.abs(np.fft.rfft(samples[rate // 2 : rate * 3]))
    return float(np.argmax(spectrum) * rate / (rate * 3 - rate // 2))


@pytest.fixture(scope="module")
def mkv_run(e2e_media, tmp_path_factory):
    root = tmp_path_factory.mktemp("mkv")
    return run_simple(
        root,
        e2e_media.two_languages_mkv(),
        (e2e_media.srt(), "movie-fr.srt"),
        formats=["Dash", "Hls"],
        mappings={
            "VideoStreamExpression": r"^movie\.mkv$",
            "SubtitleFileLanguageExpression": r"^movie-(\w+)\.srt$",
        },
    )


def test_mkv_two_languages(mkv_run):
    check = check_package(mkv_run)
    check_events(mkv_run)
    assert mkv_run.one("ContentPreProcessed")["AudioLanguages"] == ["en", "de"]
    assert sorted(mkv_run.one("ContentPreProcessed")["SubtitleLanguages"]) == ["de", "en", "fr"]
    assert sorted(check.audio) == ["audio-de", "audio-en"]
    _, tracks = read_dash(mkv_run.output_dir / "dash" / "manifest.mpd")
    audio = {t.attributes["lang"]: t for t in tracks if t.kind == "audio"}
    assert sorted(audio) == ["de", "en"]
    # the right sound under the right language: English 440 Hz, German 660 Hz
    assert _dominant_frequency(audio["en"].data()) == pytest.approx(440, abs=5)
    assert _dominant_frequency(audio["de"].data()) == pytest.approx(660, abs=5)


@pytest.mark.parametrize("manifest", ["dash/manifest.mpd", "hls/manifest.m3u8"])
def test_mkv_subtitles_in_both_manifests(mkv_run, manifest):
    path = mkv_run.output_dir / manifest
    _, tracks = read_dash(path) if path.suffix == ".mpd" else read_hls(path)
    texts = {t.attributes["lang"]: t for t in tracks if t.kind == "text"}
    assert sorted(texts) == ["de", "en", "fr"]
    expected = {"en": ["Hello", "World"], "de": ["Hallo", "Welt"], "fr": ["Bonjour", "Monde"]}
    for language, words in expected.items():
        vtt = b"".join(piece.read() for piece in texts[language].segments).decode()
        assert "WEBVTT" in vtt
        for word in words:
            assert word in vtt, (language, word)
        assert "00:00:00.500 --> 00:00:01.500" in vtt, language


def test_audio_only(e2e_media, tmp_path):
    job_run = run_simple(
        tmp_path,
        (e2e_media.audio_only(), "audio-en.m4a"),
        formats=["Dash", "Hls"],
        mappings={
            "VideoStreamExpression": None,
            "FailOnNoVideoTracks": False,
            "AudioFileLanguageExpression": r"^audio-(\w+)\.m4a$",
        },
    )
    job_run.assert_success()
    check_events(job_run)
    assert job_run.planned_video == []
    _, dash_tracks = read_dash(job_run.output_dir / "dash" / "manifest.mpd")
    assert [t.kind for t in dash_tracks] == ["audio"]
    _, hls_tracks = read_hls(job_run.output_dir / "hls" / "manifest.m3u8")
    assert [t.kind for t in hls_tracks] == ["audio"]
    for track in dash_tracks + hls_tracks:
        for piece in track.segments:
            assert piece.path.is_file()
        assert sum(track.durations) == pytest.approx(4.0, abs=0.05)
        for duration in track.durations[:-1]:
            assert duration == pytest.approx(2.0, abs=0.05)
    from e2e_helpers import see_audio

    seen = see_audio(dash_tracks[0].data())
    assert (seen.codec, seen.channels) == ("aac", 2)
    assert float(seen.duration) == pytest.approx(4.0, abs=0.05)
    assert job_run.report["BitratesCount"] == 0


def test_h265(e2e_media, tmp_path):
    ladder = [{"Height": 180, "BitrateInKbps": 250}, {"Height": 144, "BitrateInKbps": 150}]
    job_run = run_simple(
        tmp_path, e2e_media.cfr(), formats=["Cmaf"], VideoFormat="H265", VideoRepresentations=ladder
    )
    check = check_package(job_run)
    check_events(job_run)
    assert {v.codec for v in check.video.values()} == {"hevc"}
    assert {v.codec_tag for v in check.video.values()} == {"hvc1"}
    master, tracks = read_hls(job_run.output_dir / "manifest.m3u8")
    for variant in master.playlists:
        assert variant.stream_info.codecs.startswith("hvc1."), variant.stream_info.codecs
    _, tracks = read_dash(job_run.output_dir / "manifest.mpd")
    assert all(t.attributes["codecs"].startswith("hvc1.") for t in tracks if t.kind == "video")
    assert job_run.report["VideoFormat"] == 1
    assert job_run.report["Encoder"] == "libx265"


def test_hdr10(e2e_media, tmp_path):
    ladder = [{"Height": 180, "BitrateInKbps": 300}, {"Height": 144, "BitrateInKbps": 200}]
    job_run = run_simple(
        tmp_path,
        e2e_media.hevc_hdr10(),
        formats=["Dash"],
        VideoFormat="H265",
        ExtractAndApplyHDR=True,
        VideoRepresentations=ladder,
    )
    check = check_package(job_run)
    check_events(job_run)
    assert not job_run.of_type("Warning"), job_run.of_type("Warning")
    for name, seen in check.video.items():
        assert seen.pix_fmt == "yuv420p10le", name
        # BT.2020 primaries (9), PQ transfer (16), BT.2020 non-constant matrix (9)
        assert tuple(int(v) for v in seen.color) == (9, 16, 9), (name, seen.color)
    _, tracks = read_dash(job_run.output_dir / "manifest.mpd")
    for track in tracks:
        if track.kind == "video":
            assert track.attributes["codecs"].startswith("hvc1.2."), track.attributes["codecs"]
            _check_hdr_side_data(track.data())


def _check_hdr_side_data(data: bytes) -> None:
    """The first frame carries the mastering display and content light metadata."""
    with av.open(io.BytesIO(data)) as container:
        frame = next(container.decode(video=0))
        kinds = {str(side.type) for side in frame.side_data}
    assert any("MASTERING_DISPLAY" in k for k in kinds), kinds
    assert any("CONTENT_LIGHT" in k for k in kinds), kinds


def _loudness(data: bytes) -> float:
    """Mean-square loudness in dB of the steady part (1 s to 3.5 s), K-weighting left out: at
    440-550 Hz it changes the level by well under 1 dB."""
    with av.open(io.BytesIO(data)) as container:
        samples = np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)
    steady = samples[:, 48000 : 48000 * 7 // 2].astype(np.float64)
    return -0.691 + 10 * np.log10(np.sum(np.mean(steady**2, axis=1)))


def test_normalize_audio(e2e_media, tmp_path):
    job_run = run_simple(tmp_path, e2e_media.cfr(), formats=["Dash"], NormalizeAudio=True)
    check_package(job_run)
    check_events(job_run)
    _, tracks = read_dash(job_run.output_dir / "manifest.mpd")
    audio = next(t for t in tracks if t.kind == "audio")
    with av.open(str(e2e_media.cfr())) as container:
        source = np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)
    source_level = -0.691 + 10 * np.log10(
        np.sum(np.mean(source[:, 48000 : 48000 * 7 // 2].astype(np.float64) ** 2, axis=1))
    )
    assert source_level > -16  # the tone is loud: normalising must turn it down
    assert _loudness(audio.data()) == pytest.approx(-23, abs=1.5)
