"""`engine.probe`: what the probe reads from generated media, and how it refuses bad files."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import pytest
from mediagen import AudioSpec, SubtitleSpec, draw_frame, make_media

from engine.errors import SourceError
from engine.probe import probe

SMALL = {"width": 160, "height": 90, "duration": 1.0}


@pytest.fixture(scope="session")
def mp4(media_dir: Path) -> Path:
    return make_media(media_dir / "probe-h264-aac.mp4", **SMALL)


@pytest.fixture(scope="session")
def mkv(media_dir: Path) -> Path:
    return make_media(
        media_dir / "probe-two-languages.mkv",
        **SMALL,
        audio=[AudioSpec("eng"), AudioSpec("ger", channels=1)],
        subtitles=[SubtitleSpec("eng", "subrip"), SubtitleSpec("fre", "ass")],
    )


def test_h264_aac_mp4(mp4: Path):
    info = probe(mp4)
    assert info.path == mp4
    assert info.container == "mov,mp4,m4a,3gp,3g2,mj2"
    assert info.duration == pytest.approx(1.0, abs=0.05)
    assert info.size == mp4.stat().st_size
    assert info.bitrate and info.bitrate > 0
    (video,) = info.video
    assert (video.codec, video.width, video.height) == ("h264", 160, 90)
    assert video.sample_aspect_ratio == 1
    assert video.frame_rate == 25
    assert video.constant_frame_rate and not video.interlaced
    assert video.rotation == 0
    assert (video.pixel_format, video.bit_depth) == ("yuv420p", 8)
    assert video.frame_count == 25
    assert video.bitrate and video.bitrate > 0
    assert video.profile == "High"
    assert video.hdr is None  # x264 without colour options signals nothing
    (audio,) = info.audio
    assert (audio.codec, audio.channels, audio.layout, audio.sample_rate) == (
        "aac",
        2,
        "stereo",
        48000,
    )
    assert audio.language == "eng"
    assert audio.bitrate and audio.bitrate > 0
    assert info.subtitles == ()
    assert info.main_video is video


def test_mkv_with_two_audio_languages_and_two_subtitle_tracks(mkv: Path):
    info = probe(mkv)
    assert info.container == "matroska,webm"
    assert [(a.index, a.language, a.channels, a.layout) for a in info.audio] == [
        (1, "eng", 2, "stereo"),
        (2, "ger", 1, "mono"),
    ]
    # FFmpeg's codec names, not its decoder names ("srt", "ssa")
    assert [(s.index, s.codec, s.language) for s in info.subtitles] == [
        (3, "subrip", "eng"),
        (4, "ass", "fre"),
    ]
    assert info.video[0].frame_count is None  # Matroska does not store it
    assert info.duration >= 1.0


def test_audio_only_m4a(media_dir: Path):
    path = make_media(media_dir / "probe-audio.m4a", duration=1.0, video_codec=None)
    info = probe(path)
    assert info.video == () and info.main_video is None
    assert [(a.codec, a.channels) for a in info.audio] == [("aac", 2)]
    assert info.duration == pytest.approx(1.0, abs=0.05)


def test_track_without_language_is_none(media_dir: Path):
    path = make_media(media_dir / "probe-und.mp4", **SMALL, audio=[AudioSpec(None)])
    assert probe(path).audio[0].language is None  # "und" in the file


@pytest.mark.parametrize("sar", [Fraction(16, 15), Fraction(64, 45)])
def test_anamorphic_sample_aspect_ratio(media_dir: Path, sar: Fraction):
    path = make_media(
        media_dir / f"probe-sar-{sar.numerator}.mp4",
        width=720,
        height=576,
        duration=0.4,
        audio=[],
        sample_aspect_ratio=sar,
    )
    video = probe(path).video[0]
    assert video.sample_aspect_ratio == sar
    assert video.display_width == round(720 * sar)


@pytest.mark.parametrize("extension", ["mp4", "mkv"])
def test_variable_frame_rate_is_detected(media_dir: Path, extension: str):
    path = make_media(
        media_dir / f"probe-vfr.{extension}",
        **SMALL | {"duration": 2.0},
        audio=[],
        frame_durations=[1, 2, 1, 3],
    )
    assert not probe(path).video[0].constant_frame_rate


def test_ntsc_rate_in_millisecond_timestamps_is_constant(media_dir: Path):
    # Matroska rounds 33.37 ms to 33 or 34: timestamp rounding, not a variable rate
    path = make_media(
        media_dir / "probe-ntsc.mkv", **SMALL | {"duration": 3.0}, fps=Fraction(30000, 1001)
    )
    video = probe(path).video[0]
    assert video.constant_frame_rate
    assert video.frame_rate == Fraction(30000, 1001)


def test_interlaced_is_detected(media_dir: Path):
    path = make_media(
        media_dir / "probe-interlaced.mp4",
        width=160,
        height=96,
        duration=0.4,
        audio=[],
        video_options={"flags": "+ildct+ilme"},
    )
    assert probe(path).video[0].interlaced


def test_rotation_from_display_matrix(media_dir: Path):
    path = media_dir / "probe-rotated.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 160, 90, "yuv420p"
        # FFmpeg's angle is counter-clockwise: 90 CCW = the picture turned 270 clockwise
        stream.set_display_rotation(90)
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(draw_frame(i, 160, 90), "rgb24")
            frame = frame.reformat(format="yuv420p")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    video = probe(path).video[0]
    assert video.rotation == 270
    assert (video.display_width, video.display_height) == (90, 160)


def test_hdr10_metadata_in_x265_form(media_dir: Path):
    params = (
        "log-level=none:colorprim=bt2020:transfer=smpte2084:colormatrix=bt2020nc:hdr10=1:"
        "master-display=G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)L(10000000,1):"
        "max-cll=1000,400"
    )
    path = make_media(
        media_dir / "probe-hdr10.mp4",
        width=160,
        height=90,
        duration=0.4,
        audio=[],
        video_codec="libx265",
        pix_fmt="yuv420p10le",
        video_options={"x265-params": params},
    )
    video = probe(path).video[0]
    assert (video.codec, video.bit_depth, video.profile) == ("hevc", 10, "Main 10")
    assert video.hdr is not None and video.hdr.is_hdr
    assert (video.hdr.color_primaries, video.hdr.transfer, video.hdr.matrix) == (
        "bt2020",
        "smpte2084",
        "bt2020nc",
    )
    assert video.hdr.mastering_display == (
        "G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)L(10000000,1)"
    )
    assert video.hdr.content_light == "1000,400"


def test_mp4_truncated_at_60_percent_raises_source_error(mp4: Path, tmp_path: Path):
    # PyAV writes the moov box at the end: cut at 60 %, the index is gone and nothing can be
    # read, so the probe refuses the file (a file that still has decodable media probes, below).
    data = mp4.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(SourceError) as caught:
        probe(cut)
    assert "cut.mp4" in caught.value.message
    assert caught.value.code == 3002


def test_mkv_truncated_at_60_percent_probes_with_what_is_there(mkv: Path, tmp_path: Path):
    data = mkv.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    info = probe(cut)  # the header and the first clusters are intact: the encoder sees the rest
    assert info.video[0].codec == "h264"
    assert len(info.audio) == 2
    assert info.video[0].constant_frame_rate


def test_undecodable_video_raises_source_error(mp4: Path, tmp_path: Path):
    data = bytearray(mp4.read_bytes())
    start, end = data.find(b"mdat") + 4, data.find(b"moov") - 4
    data[start:end] = bytes(end - start)  # the index survives, every sample is zeros
    broken = tmp_path / "zeros.mp4"
    broken.write_bytes(bytes(data))
    with pytest.raises(SourceError, match=r"zeros\.mp4: the video track cannot be decoded"):
        probe(broken)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("notes.mp4", b"this is a text file, not a video\n" * 20, "not a readable media file"),
        ("empty.mp4", b"", "empty"),
        ("metadata.txt", b";FFMETADATA1\ntitle=no streams\n", "no video, audio or subtitle"),
    ],
)
def test_non_media_raises_source_error_naming_the_file(
    tmp_path: Path, name: str, content: bytes, message: str
):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SourceError) as caught:
        probe(path)
    assert caught.value.message.startswith(f"{name}: ")
    assert message in caught.value.message
    assert str(tmp_path) not in caught.value.message  # the name, not the work folder


def test_missing_file_raises_source_error(tmp_path: Path):
    with pytest.raises(SourceError, match=r"gone\.mp4: file not found"):
        probe(tmp_path / "gone.mp4")
