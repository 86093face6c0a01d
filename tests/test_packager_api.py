"""The packager's API: the format registry, its errors, segment boundaries, audio-only
packages and the thumbnail (image track) extension point."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from fractions import Fraction
from pathlib import Path

import m3u8
import pytest
from mpegdash.parser import MPEGDASHParser
from packager_media import (
    AAC_PRIMING,
    FRAMES,
    dash_renditions,
    decode,
    hls_renditions,
    write_video,
)
from PIL import Image

from packagers import (
    FORMATS,
    PACKAGERS,
    FormatPackager,
    ImageInput,
    PackageSpec,
    PackagingError,
    TextInput,
    TrackInput,
    TrackProtection,
    dash,
    package,
)
from packagers.dash import MPD_NS, THUMBNAIL_SCHEME


def test_registry_covers_every_output_format():
    assert set(PACKAGERS) == set(FORMATS)
    for name, cls in PACKAGERS.items():
        assert issubclass(cls, FormatPackager) and cls.format == name
        assert cls.__name__.endswith("Packager")
    assert not PACKAGERS["Cmaf"].combinable and not PACKAGERS["DashOnDemand"].combinable


def _video(inputs) -> TrackInput:
    return TrackInput(inputs.video_low, "video", "video")


def test_misaligned_keyframes_are_refused(tmp_path):
    path = write_video(tmp_path / "gop.mp4", keyframe_seconds=1.6, duration=3.0)
    with pytest.raises(PackagingError, match=r"video: no keyframe .* boundary at 2\.000 s"):
        package([TrackInput(path, "video", "video")], [], PackageSpec(["Dash"], segment_seconds=2),
                tmp_path / "out")  # fmt: skip
    # with boundaries on its keyframes it packages fine
    result = package([TrackInput(path, "video", "video")], [],
                     PackageSpec(["Dash"], boundaries=[0, 1.6]), tmp_path / "ok")  # fmt: skip
    assert result.streams[0].segment_count == 2


@pytest.mark.parametrize(
    ("formats", "message"),
    [
        (["Cmaf", "Dash"], "cannot be combined"),
        (["DashOnDemand", "Hls"], "cannot be combined"),
        (["Smooth"], "unknown output format"),
        ([], "no output format"),
    ],
)
def test_invalid_format_lists(packager_inputs, tmp_path, formats, message):
    with pytest.raises(PackagingError, match=message):
        package([_video(packager_inputs)], [], PackageSpec(formats), tmp_path)


def test_format_names_are_case_insensitive(packager_inputs, tmp_path):
    result = package([_video(packager_inputs)], [], PackageSpec(["dash", "HLS"]), tmp_path)
    assert result.manifests[-2:] == ["dash/manifest.mpd", "hls/manifest.m3u8"]


def test_bad_inputs(packager_inputs, tmp_path):
    spec = PackageSpec(["Dash"])
    video = _video(packager_inputs)
    with pytest.raises(PackagingError, match="unique"):
        package([video, video], [], spec, tmp_path)
    with pytest.raises(PackagingError, match="plain file name"):
        package([TrackInput(video.path, "video", "../escape")], [], spec, tmp_path)
    with pytest.raises(PackagingError, match="expected a audio track"):
        package([TrackInput(video.path, "audio", "audio")], [], spec, tmp_path)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\0\0\0\x10junkjunkjunk")
    with pytest.raises(PackagingError, match="no moov"):
        package([TrackInput(junk, "video", "video")], [], spec, tmp_path)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(video.path.read_bytes()[:600])  # ends inside the moov
    with pytest.raises(PackagingError, match=r"truncated\.mp4"):
        package([TrackInput(truncated, "video", "video")], [], spec, tmp_path)
    with pytest.raises(PackagingError, match="no video or audio"):
        package([], [], spec, tmp_path)
    protected = TrackInput(video.path, "video", "video", protection=TrackProtection())
    with pytest.raises(PackagingError, match="HlsTs does not support DRM"):
        package([protected], [], PackageSpec(["HlsTs"]), tmp_path)


def test_explicit_boundaries(packager_inputs, tmp_path):
    spec = PackageSpec(["Dash"], boundaries=[0.0, 2.0, 4.0])
    result = package([_video(packager_inputs)], [], spec, tmp_path)
    renditions = dash_renditions(tmp_path / "manifest.mpd")
    assert renditions[0].durations == [2.0, 2.0, 1.0]
    assert result.streams[0].segment_count == 3


def test_explicit_boundaries_fold_a_short_remainder(packager_inputs, tmp_path):
    # (issue 20) 4 s then 1 s: a remainder under half the boundaries' segment length joins
    # the segment before it (it was a segment of its own)
    spec = PackageSpec(["Dash"], boundaries=[0.0, 4.0])
    result = package([_video(packager_inputs)], [], spec, tmp_path)
    renditions = dash_renditions(tmp_path / "manifest.mpd")
    assert renditions[0].durations == [5.0]
    assert result.streams[0].segment_count == 1


@pytest.mark.parametrize("formats", [["Dash"], ["DashOnDemand"], ["HlsTs"], ["Dash", "Hls"]])
def test_cancel_stops_before_the_next_segment(packager_inputs, tmp_path, formats):
    class Stop(Exception):
        pass

    calls = []

    def cancel() -> None:
        calls.append(1)
        if len(calls) == 2:  # let one segment through, stop at the second
            raise Stop

    spec = PackageSpec(formats, segment_seconds=2)  # the inputs' keyframes: every 2 s
    with pytest.raises(Stop):
        package([_video(packager_inputs)], [], spec, tmp_path, cancel=cancel)
    assert len(calls) == 2
    assert not list(tmp_path.rglob("*.mpd")) and not list(tmp_path.rglob("*.m3u8"))


def test_audio_only_package(packager_inputs, tmp_path):
    tracks = [
        TrackInput(packager_inputs.audio_en, "audio", "audio-en", language="en",
                   priming_samples=AAC_PRIMING),
        TrackInput(packager_inputs.audio_description, "audio", "audio-en-ad", language="en",
                   role="description", priming_samples=AAC_PRIMING),
    ]  # fmt: skip
    package(tracks, [], PackageSpec(["Dash", "Hls"], segment_seconds=2), tmp_path)
    master, renditions = hls_renditions(tmp_path / "hls/manifest.m3u8")
    assert [variant.uri for variant in master.playlists] == ["audio-en.m3u8"]
    assert master.playlists[0].stream_info.audio == "audio-aac"
    assert master.playlists[0].stream_info.codecs == "mp4a.40.2"
    assert {r.name for r in renditions} == {"audio-en", "audio-en-ad"}
    for rendition in renditions:
        assert abs(decode(rendition.data, "audio").duration - 5) < 0.05
    assert len(dash_renditions(tmp_path / "dash/manifest.mpd")) == 2


def test_thumbnail_tracks(packager_inputs, tmp_path):
    tiles = []
    for number in (1, 2):
        tile = tmp_path / f"tile{number}.jpg"
        Image.new("RGB", (96 * 2, 54 * 2), (number * 80, 0, 0)).save(tile)
        tiles.append(tile)
    image = ImageInput("thumbnails-96x54", tuple(tiles), 96, 54, columns=2, rows=2,
                       interval=1.0, duration=5.0)  # fmt: skip
    captions = TextInput(packager_inputs.subtitle, "caption-en", "en", "English CC", "caption")
    result = package([_video(packager_inputs)], [captions], PackageSpec(["Dash", "Hls"]),
                     tmp_path / "out", images=[image])  # fmt: skip
    out = tmp_path / "out"
    assert {"dash/thumbnails-96x54_1.jpg", "hls/thumbnails-96x54_2.jpg"} <= set(result.files)
    mpd = MPEGDASHParser.parse(str(out / "dash/manifest.mpd"))
    image_set = next(a for a in mpd.periods[0].adaptation_sets if a.content_type == "image")
    assert image_set.mime_type == "image/jpeg"
    representation = image_set.representations[0]
    assert (representation.width, representation.height) == (192, 108)
    assert representation.essential_properties[0].scheme_id_uri == THUMBNAIL_SCHEME
    assert representation.essential_properties[0].value == "2x2"
    template = image_set.segment_templates[0]
    assert template.media == "thumbnails-96x54_$Number$.jpg" and template.duration == 4000
    roles = ET.parse(out / "dash/manifest.mpd").getroot().iter(f"{{{MPD_NS}}}Role")
    assert "caption" in [role.get("value") for role in roles]

    master_text = (out / "hls/manifest.m3u8").read_text()
    assert ('#EXT-X-IMAGE-STREAM-INF:BANDWIDTH=' in master_text
            and 'URI="thumbnails-96x54.m3u8"' in master_text)  # fmt: skip
    assert ("public.accessibility.transcribes-spoken-dialog,"
            "public.accessibility.describes-music-and-sound") in master_text  # fmt: skip
    playlist = (out / "hls/thumbnails-96x54.m3u8").read_text()
    assert "#EXT-X-IMAGES-ONLY" in playlist
    assert "#EXT-X-TILES:RESOLUTION=96x54,LAYOUT=2x2,DURATION=1.000" in playlist
    assert playlist.count(".jpg") == 2
    assert m3u8.loads(playlist).is_endlist


def test_webvtt_for_ts_gets_timestamp_map(packager_inputs, tmp_path):
    texts = [TextInput(packager_inputs.subtitle, "subtitle-en", "en")]
    package([_video(packager_inputs)], texts, PackageSpec(["HlsTs", "Hls"]), tmp_path)
    ts_vtt = (tmp_path / "hlsts/subtitle-en.vtt").read_text()
    assert ts_vtt.splitlines()[:2] == ["WEBVTT", "X-TIMESTAMP-MAP=MPEGTS:900000,LOCAL:00:00:00.000"]
    assert "X-TIMESTAMP-MAP" not in (tmp_path / "hls/subtitle-en.vtt").read_text()
    playlist = m3u8.load(str(tmp_path / "hlsts/subtitle-en.m3u8"))
    assert [s.uri for s in playlist.segments] == ["subtitle-en.vtt"]
    assert playlist.segments[0].duration == pytest.approx(5.0)


def test_ts_byte_range(packager_inputs, tmp_path):
    result = package([_video(packager_inputs)], [], PackageSpec(["HlsTs"], byte_range=True),
                     tmp_path)  # fmt: skip
    assert "video.ts" in result.files
    _, renditions = hls_renditions(tmp_path / "manifest.m3u8")
    seen = decode(renditions[0].data, "video")
    assert seen.frame_numbers == list(range(FRAMES))
    assert Path(tmp_path / "video.ts").stat().st_size == sum(map(len, renditions[0].segments))


def test_frame_rates_in_manifests():
    assert dash._frame_rate(Fraction(30000, 1001)) == "30000/1001"
    assert dash._frame_rate(Fraction(25)) == "25"
    assert dash.iso_duration(Fraction(7, 2)) == "PT3.5S"
    assert dash.iso_duration(3725.25) == "PT1H2M5.25S"


class _Signalled(TrackProtection):
    """A plug-in that only signals (no encryption): its DASH elements carry a key id."""

    def __init__(self, key_id: str) -> None:
        self.key_id = key_id

    def dash_elements(self) -> list[ET.Element]:
        return [ET.Element("ContentProtection", {"schemeIdUri": "urn:test", "value": self.key_id})]


def test_tracks_with_different_keys_get_switchable_adaptation_sets(packager_inputs, tmp_path):
    tracks = [
        TrackInput(packager_inputs.video_high, "video", "video-hd", protection=_Signalled("hd")),
        TrackInput(packager_inputs.video_low, "video", "video-sd", protection=_Signalled("sd")),
        TrackInput(packager_inputs.video_hevc, "video", "video-hevc", protection=_Signalled("sd")),
    ]
    package(tracks, [], PackageSpec(["Dash"], segment_seconds=2), tmp_path)
    root = ET.parse(tmp_path / "manifest.mpd").getroot()
    sets = root.findall(f".//{{{MPD_NS}}}AdaptationSet")
    assert len(sets) == 3  # split by key, and H.265 apart from H.264
    values = [
        [p.get("value") for p in s.findall(f"{{{MPD_NS}}}SupplementalProperty")] for s in sets
    ]
    assert values == [["1"], ["0"], []]
    assert [s.find(f"{{{MPD_NS}}}ContentProtection").get("value") for s in sets] == [
        "hd",
        "sd",
        "sd",
    ]
