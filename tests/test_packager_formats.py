"""Every output format and segment format, followed from its manifests down to the bytes, and
the bytes decoded with PyAV (FFmpeg): frame count, frame order, key frames on the segment
boundaries and identical across renditions, start at 0, audio/video durations, bandwidths."""

from __future__ import annotations

import tempfile
import xml.etree.ElementTree as ET
from fractions import Fraction
from pathlib import Path

import pytest
from packager_media import (
    AAC_PRIMING,
    DURATION,
    FPS,
    FRAMES,
    SEGMENT_SECONDS,
    Inputs,
    Rendition,
    dash_renditions,
    decode,
    ffmpeg_pts_shift,
    hls_renditions,
)

from packagers import PackageResult, PackageSpec, TextInput, TrackInput, package
from packagers.dash import MPD_NS
from packagers.mp4 import read_track
from packagers.ts import TIME_OFFSET

FRAME = Fraction(1, FPS)

# id -> (formats, byte_range, expected manifests relative to the output folder)
CASES = {
    "dash": (["Dash"], False, ["manifest.mpd"]),
    "hls": (["Hls"], False, ["manifest.m3u8"]),
    "dash+hls": (["Dash", "Hls"], False, ["dash/manifest.mpd", "hls/manifest.m3u8"]),
    "cmaf": (["Cmaf"], False, ["manifest.mpd", "manifest.m3u8"]),
    "dash-on-demand": (["DashOnDemand"], False, ["manifest.mpd"]),
    "dash-byte-range": (["Dash"], True, ["manifest.mpd"]),
    "hls-byte-range": (["Hls"], True, ["manifest.m3u8"]),
    "hls-ts": (["HlsTs"], False, ["manifest.m3u8"]),
    "cmaf-byte-range": (["Cmaf"], True, ["manifest.mpd", "manifest.m3u8"]),
}


def renditions_of(inputs: Inputs, hevc: bool = False) -> list[TrackInput]:
    audio = [
        TrackInput(inputs.audio_en, "audio", "audio-en", language="en", label="English",
                   quality_group="AUDIO", target_kbps=128, priming_samples=AAC_PRIMING),
        TrackInput(inputs.audio_description, "audio", "audio-de-ad", language="de",
                   label="Deutsch (Audiodeskription)", role="description",
                   quality_group="AUDIO", target_kbps=128, priming_samples=AAC_PRIMING),
    ]  # fmt: skip
    if hevc:
        return [TrackInput(inputs.video_hevc, "video", "video-H265-180-300k", quality_group="SD",
                           target_kbps=300), audio[0]]  # fmt: skip
    return [
        TrackInput(inputs.video_high, "video", "video-H264-180-500k", quality_group="SD",
                   target_kbps=500),
        TrackInput(inputs.video_low, "video", "video-H264-144-200k", quality_group="SD",
                   target_kbps=200),
        *audio,
    ]  # fmt: skip


def texts_of(inputs: Inputs) -> list[TextInput]:
    return [TextInput(inputs.subtitle, "subtitle-en", "en", "English", "subtitle")]


@pytest.fixture(scope="module")
def packages(packager_inputs, tmp_path_factory) -> dict[str, tuple[Path, PackageResult]]:
    """Every case packaged once."""
    results = {}
    for case, (formats, byte_range, _) in CASES.items():
        output = tmp_path_factory.mktemp(case.replace("+", "-"))
        spec = PackageSpec(formats, byte_range=byte_range, segment_seconds=SEGMENT_SECONDS)
        result = package(renditions_of(packager_inputs), texts_of(packager_inputs), spec, output)
        results[case] = (output, result)
    output = tmp_path_factory.mktemp("hevc")
    spec = PackageSpec(["Cmaf"], segment_seconds=SEGMENT_SECONDS)
    results["hevc"] = (output, package(renditions_of(packager_inputs, hevc=True), [], spec, output))
    return results


def _renditions(manifest: Path) -> list[Rendition]:
    if manifest.suffix == ".mpd":
        return dash_renditions(manifest)
    return hls_renditions(manifest)[1]


def _pts_shift(rendition: Rendition) -> int:
    """FFmpeg's pts shift for an fMP4 rendition (0 for TS)."""
    if rendition.init == b"":
        return 0
    with tempfile.NamedTemporaryFile(suffix=".mp4") as handle:
        handle.write(rendition.data)
        handle.flush()
        return ffmpeg_pts_shift(read_track(Path(handle.name)))


def check_manifest(manifest: Path, *, ts: bool = False, video_count: int = 2) -> None:
    """Follow one manifest to its bytes and decode every rendition."""
    renditions = _renditions(manifest)
    videos = [r for r in renditions if r.kind == "video"]
    audios = [r for r in renditions if r.kind == "audio"]
    texts = [r for r in renditions if r.kind == "text"]
    assert len(videos) == video_count
    assert audios and texts
    assert texts[0].segments[0].startswith(b"WEBVTT")
    origin = Fraction(TIME_OFFSET) if ts else Fraction(0)
    expected_keys = [Fraction(k) * Fraction(SEGMENT_SECONDS) for k in range(3)]  # 0, 2, 4 s
    key_times = []
    for video in videos:
        seen = decode(video.data, "video", pts_shift=_pts_shift(video), origin=origin)
        assert seen.frames == FRAMES, video.name
        assert seen.frame_numbers == list(range(FRAMES)), video.name
        assert seen.first_time == 0, f"{video.name} starts at {seen.first_time}"
        assert seen.key_times == expected_keys, video.name
        key_times.append(seen.key_times)
        assert len(video.segments) == 3
        # each segment starts with its key frame: decoding init + one segment alone works
        for number, segment in enumerate(video.segments):
            alone = decode(video.init + segment, "video", pts_shift=0)
            assert alone.frame_numbers[0] == number * SEGMENT_SECONDS * FPS, video.name
    assert all(times == key_times[0] for times in key_times)
    for audio in audios:
        heard = decode(audio.data, "audio")
        assert abs(heard.duration - Fraction(FRAMES, FPS)) < Fraction(50, 1000), audio.name
        assert len(audio.segments) == 3
    for rendition in videos + audios:
        durations = rendition.durations
        assert len(durations) == len(rendition.segments)
        for duration in durations[:-1]:
            assert abs(Fraction(duration).limit_denominator(10000) - 2) <= FRAME, rendition.name
        assert abs(sum(durations) - DURATION) < 0.05, rendition.name


@pytest.mark.parametrize("case", list(CASES))
def test_package_plays_back(packages, case):
    output, result = packages[case]
    _, _, expected = CASES[case]
    for manifest in expected:
        assert manifest in result.manifests
        check_manifest(output / manifest, ts=case == "hls-ts")


@pytest.mark.parametrize("case", list(CASES))
def test_files_listed_and_manifests_last(packages, case):
    output, result = packages[case]
    on_disk = {p.relative_to(output).as_posix() for p in output.rglob("*") if p.is_file()}
    assert set(result.files) | set(result.manifests) == on_disk
    assert not set(result.files) & set(result.manifests)
    # master playlists and MPDs come after the media playlists they reference
    tops = [m for m in result.manifests if m.endswith(("manifest.mpd", "manifest.m3u8"))]
    assert result.manifests[-len(tops) :] == tops
    for manifest in result.manifests:  # written after every media file
        newest_media = max((output / f).stat().st_mtime_ns for f in result.files)
        assert (output / manifest).stat().st_mtime_ns >= newest_media


def test_layout_of_each_format(packages):
    names = {case: set(result.files) for case, (_, result) in packages.items()}
    assert "video-H264-180-500k_init.mp4" in names["dash"]
    assert "video-H264-180-500k_1.m4s" in names["hls"]
    assert {"dash/video-H264-180-500k_3.m4s", "hls/video-H264-180-500k_3.m4s"} <= names["dash+hls"]
    assert "hls/subtitle-en.vtt" in names["dash+hls"]
    for case in ("dash-on-demand", "dash-byte-range", "hls-byte-range", "cmaf-byte-range"):
        assert "video-H264-180-500k.mp4" in names[case]
        assert not any(name.endswith(".m4s") for name in names[case])
    assert "video-H264-180-500k_2.ts" in names["hls-ts"]
    assert "audio-de-ad_1.ts" in names["hls-ts"]
    assert "video-H265-180-300k_init.mp4" in names["hevc"]


def test_hevc_package_plays_back(packages):
    output, result = packages["hevc"]
    for manifest in ("manifest.mpd", "manifest.m3u8"):
        renditions = _renditions(output / manifest)
        video = next(r for r in renditions if r.kind == "video")
        seen = decode(video.data, "video", pts_shift=_pts_shift(video))
        assert seen.frame_numbers == list(range(FRAMES))
        assert seen.first_time == 0
        assert seen.key_times == [0, 2, 4]
    stream = next(s for s in result.streams if s.type == "video")
    assert stream.codecs.startswith("hvc1.")


@pytest.mark.parametrize("case", ["hls", "dash+hls", "hls-byte-range", "hls-ts", "cmaf"])
def test_hls_bandwidth_bounds_every_segment(packages, case):
    output, _ = packages[case]
    master_path = output / ("hls/manifest.m3u8" if case == "dash+hls" else "manifest.m3u8")
    master, renditions = hls_renditions(master_path)
    by_playlist = {r.name: r for r in renditions}
    groups: dict[str, list[Rendition]] = {}
    for media in master.media:
        if media.type == "AUDIO":
            groups.setdefault(media.group_id, []).append(by_playlist[Path(media.uri).stem])
    assert master.playlists
    for variant in master.playlists:
        info = variant.stream_info
        video = by_playlist[Path(variant.uri).stem]
        audios = groups[info.audio]
        peak = 0.0
        for audio in audios:
            for index, segment in enumerate(video.segments):
                rate = len(segment) * 8 / video.durations[index]
                rate += len(audio.segments[index]) * 8 / audio.durations[index]
                peak = max(peak, rate)
        assert info.bandwidth >= peak, (variant.uri, info.bandwidth, peak)
        assert info.average_bandwidth <= info.bandwidth
        assert info.frame_rate == 25.0
        assert info.closed_captions == "NONE"
        assert info.subtitles == "subtitles"
        assert len(info.codecs.split(",")) == 2
    assert len(master.iframe_playlists) == 2
    text = master_path.read_text()
    assert "#EXT-X-INDEPENDENT-SEGMENTS" in text
    assert 'CHARACTERISTICS="public.accessibility.describes-video"' in text
    assert text.count("DEFAULT=YES") == 1


@pytest.mark.parametrize("case", ["hls", "hls-byte-range", "hls-ts"])
def test_iframe_playlists_address_key_frames(packages, case):
    output, _ = packages[case]
    master, renditions = hls_renditions(output / "manifest.m3u8")
    for iframe in master.iframe_playlists:
        playlist = iframe.uri
        rendition = next(r for r in renditions if r.name == Path(playlist).stem[: -len("_iframes")])
        from packager_media import hls_media

        frames = hls_media(output / playlist, "video", playlist)
        assert "#EXT-X-I-FRAMES-ONLY" in (output / playlist).read_text()
        assert len(frames.segments) == len(rendition.segments)
        for number, data in enumerate(frames.segments):
            # every byte range decodes to exactly the segment's key frame
            seen = decode(rendition.init + data, "video")
            assert seen.frame_numbers == [number * SEGMENT_SECONDS * FPS]


def test_dash_manifest_details(packages):
    from mpegdash.parser import MPEGDASHParser

    output, _ = packages["dash"]
    mpd = MPEGDASHParser.parse(str(output / "manifest.mpd"))
    assert mpd.profiles == "urn:mpeg:dash:profile:isoff-live:2011"
    assert mpd.type == "static"
    assert mpd.media_presentation_duration == "PT5S"
    sets = mpd.periods[0].adaptation_sets
    video, audio, description, text = sets
    assert video.segment_alignment is True or video.segment_alignment == "true"
    assert video.par == "16:9"
    assert [r.width for r in video.representations] == [320, 256]
    assert all(r.frame_rate == "25" and r.sar == "1:1" for r in video.representations)
    assert audio.lang == "en" and audio.roles[0].value == "main"
    labels = ET.parse(output / "manifest.mpd").getroot().iter(f"{{{MPD_NS}}}Label")
    assert [label.text for label in labels] == ["English", "Deutsch (Audiodeskription)", "English"]
    assert description.lang == "de" and description.roles[0].value == "alternate"
    assert description.accessibilities[0].scheme_id_uri == "urn:tva:metadata:cs:AudioPurposeCS:2007"
    assert description.accessibilities[0].value == "1"
    representation = audio.representations[0]
    assert representation.audio_sampling_rate == "48000"
    channel = representation.audio_channel_configurations[0]
    assert channel.scheme_id_uri == "urn:mpeg:dash:23003:3:audio_channel_configuration:2011"
    assert channel.value == "2"
    assert text.mime_type == "text/vtt" and text.roles[0].value == "subtitle"
    template = video.representations[0].segment_templates[0]
    assert template.media == "video-H264-180-500k_$Number$.m4s"
    assert template.segment_timelines[0].Ss[0].t == 0

    output, _ = packages["dash-on-demand"]
    mpd = MPEGDASHParser.parse(str(output / "manifest.mpd"))
    assert mpd.profiles == "urn:mpeg:dash:profile:isoff-on-demand:2011"
    base = mpd.periods[0].adaptation_sets[0].representations[0].segment_bases[0]
    assert base.index_range and base.initializations[0].range.startswith("0-")


def test_stream_info(packages):
    _, result = packages["dash+hls"]
    streams = {s.name: s for s in result.streams}
    video = streams["video-H264-180-500k"]
    assert video.type == "video" and (video.width, video.height) == (320, 180)
    assert video.frame_rate == 25
    assert video.init_file == "dash/video-H264-180-500k_init.mp4"
    assert video.file_template == "dash/video-H264-180-500k_$Number$.m4s"
    assert video.segment_count == 3 and video.duration == pytest.approx(DURATION)
    assert video.bandwidth >= video.average_bandwidth > 0
    assert video.codecs.startswith("avc1.")
    audio = streams["audio-en"]
    assert audio.codecs == "mp4a.40.2" and audio.language == "en"
    assert audio.duration == pytest.approx(DURATION, abs=0.05)
    assert streams["subtitle-en"].type == "subtitle"
