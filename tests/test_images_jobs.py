"""ImageExtraction and Thumbnails in whole jobs (`engine.pipeline.run_job`, Local storage, a tiny
5 s source, one small rung, `OptimizeFor: Speed`): the DASH image AdaptationSet and the HLS image
playlists parse and point at files that exist, `thumbnails.vtt` covers the video without gaps or
overlaps and its regions show the right frames, stills land in their own Location with the
`ImagesExtracted` event, encrypted jobs leave the thumbnails in clear, and an unwritable Location
fails the job with 4201 before anything is published. Plus the validation of bad values.
"""

from __future__ import annotations

import base64
import itertools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import m3u8
import numpy as np
import pytest
from mediagen import make_media, read_frame_number
from mpegdash.parser import MPEGDASHParser
from PIL import Image

from engine.pipeline import run_job
from engine.validation import check_job

pytestmark = pytest.mark.e2e

FPS = 25
SECONDS = 5.0
FRAMES = round(SECONDS * FPS)
THUMBNAIL_SCHEME = "http://dashif.org/thumbnail_tile"
KEY_ID = "6c3e7bd1-8c10-4b4e-9d2a-6c2b0f0ae1a4"
CONTENT_KEY = base64.b64encode(bytes(range(16))).decode()


def frame_at(seconds: float) -> int:
    return min(FRAMES - 1, math.floor(seconds * FPS + 1e-6))


def number_in(path: Path, box: tuple[int, int, int, int] | None = None) -> int:
    pixels = np.asarray(Image.open(path).convert("RGB"))
    if box is not None:
        x, y, w, h = box
        pixels = pixels[y : y + h, x : x + w]
    return read_frame_number(pixels)


@dataclass
class Finished:
    report: dict[str, Any]
    events: list[dict[str, Any]]
    output: Path
    images: Path

    def one(self, message_type: str) -> dict[str, Any]:
        found = [e for e in self.events if e["MessageType"] == message_type]
        assert len(found) == 1, (message_type, [e["MessageType"] for e in self.events])
        return found[0]

    def types(self) -> list[str]:
        return [e["MessageType"] for e in self.events]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """5 s, 320×180, 25 fps, keyframes every 0.4 s, stereo AAC."""
    folder = tmp_path_factory.mktemp("images-in")
    return make_media(folder / "movie.mp4", duration=SECONDS, gop=10)


def job(source: Path, output: Path, *, formats: list[str], **sections: Any) -> dict[str, Any]:
    processing = {
        "OutputFormat": formats,
        "OptimizeFor": "Speed",
        "SegmentLengthInSeconds": 2,
        "VideoRepresentations": [{"Height": 180, "BitrateInKbps": 300}],
        **sections.pop("processing", {}),
    }
    return {
        "ContentAcquisition": {"Provider": "Local", "UriPath": source.parent.as_uri() + "/"},
        "MediaMappings": {"VideoStreamExpression": r"^movie\.mp4$"},
        "ContentProcessing": processing,
        "ContentPublishing": {"Provider": "Local", "UriPath": output.as_uri() + "/"},
        **sections,
    }


def run(root: Path, spec: dict[str, Any], images: Path | None = None) -> Finished:
    events: list[dict[str, Any]] = []
    report = run_job(spec, on_event=events.append, workdir=root / "work", data_dir=root / "data")
    return Finished(report, events, root / "out", images or root / "images")


@pytest.fixture(scope="module")
def dash_hls(source, tmp_path_factory) -> Finished:
    """Dash + Hls, thumbnails 160 wide every second in 2×2 tiles (5 thumbnails: a full tile
    and one with a single cell used), three stills to their own folder."""
    root = tmp_path_factory.mktemp("images-dash-hls")
    spec = job(
        source,
        root / "out",
        formats=["Dash", "Hls"],
        Thumbnails={
            "Generate": True,
            "Width": 160,
            "DurationInSeconds": 1,
            "TileColumns": 2,
            "TileRows": 2,
            "BandwidthInKbps": 37,
        },
        ImageExtraction={
            "Quality": 85,
            "Intervals": [0, 50, 100],
            "Pattern": "still_%.jpg",
            "Location": {"Provider": "Local", "UriPath": (root / "images").as_uri() + "/"},
        },
    )
    finished = run(root, spec)
    assert finished.report["Success"], [e for e in finished.events if e["MessageType"] in
                                         ("FinalError", "Warning")]  # fmt: skip
    return finished


# ------------------------------------------------------------------------------------- DASH


def image_sets(mpd_path: Path) -> tuple[list, list]:
    mpd = MPEGDASHParser.parse(str(mpd_path))
    sets = [a for p in mpd.periods for a in p.adaptation_sets]
    images = [a for a in sets if a.content_type == "image" or a.mime_type == "image/jpeg"]
    return images, [a for a in sets if a not in images]


def test_dash_image_adaptation_set(dash_hls):
    folder = dash_hls.output / "dash"
    (images, _) = image_sets(folder / "manifest.mpd")
    assert len(images) == 1
    adaptation = images[0]
    (template,) = adaptation.segment_templates or adaptation.representations[0].segment_templates
    (representation,) = adaptation.representations
    properties = (representation.essential_properties or []) + (
        adaptation.essential_properties or []
    )
    assert [(p.scheme_id_uri, p.value) for p in properties] == [(THUMBNAIL_SCHEME, "2x2")]
    assert (representation.width, representation.height) == (320, 180)  # the whole tile
    assert representation.bandwidth == 37_000  # Thumbnails.BandwidthInKbps
    assert template.duration / (template.timescale or 1) == 4.0  # columns × rows × interval
    first = template.start_number or 1
    tiles = math.ceil(SECONDS / 4.0)
    for number in range(first, first + tiles):
        path = folder / template.media.replace("$Number$", str(number))
        assert path.is_file(), path.name
        assert Image.open(path).size == (320, 180)
    assert not (folder / template.media.replace("$Number$", str(first + tiles))).exists()


# -------------------------------------------------------------------------------------- HLS


def attributes(line: str) -> dict[str, str]:
    return {k: v.strip('"') for k, v in re.findall(r'([A-Z-]+)=("[^"]*"|[^,]*)', line)}


def test_hls_image_playlists(dash_hls):
    folder = dash_hls.output / "hls"
    master = m3u8.load(str(folder / "manifest.m3u8"))
    assert master.playlists, "the video variants are still there"
    (image,) = master.image_playlists
    info = attributes(
        next(
            line
            for line in (folder / "manifest.m3u8").read_text().splitlines()
            if line.startswith("#EXT-X-IMAGE-STREAM-INF:")
        )
    )
    assert info["RESOLUTION"] == "160x90" and info["CODECS"] == "jpeg"
    assert int(info["BANDWIDTH"]) == 37_000  # Thumbnails.BandwidthInKbps
    assert info["URI"] == image.uri == "thumbnails-160x90.m3u8"

    text = (folder / image.uri).read_text()
    playlist = m3u8.loads(text)
    assert playlist.is_images_only and playlist.is_endlist
    assert [s.uri for s in playlist.segments] == [
        "thumbnails-160x90_1.jpg",
        "thumbnails-160x90_2.jpg",
    ]
    assert sum(s.duration for s in playlist.segments) == pytest.approx(SECONDS, abs=0.01)
    tiles = [attributes(line) for line in text.splitlines() if line.startswith("#EXT-X-TILES:")]
    assert len(tiles) == len(playlist.segments)
    for tile in tiles:
        assert tile["RESOLUTION"] == "160x90" and tile["LAYOUT"] == "2x2"
        assert float(tile["DURATION"]) == pytest.approx(1.0)
    for segment in playlist.segments:
        assert Image.open(folder / segment.uri).size == (320, 180)


# -------------------------------------------------------------------------- thumbnails.vtt


CUE = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) --> (\d\d):(\d\d):(\d\d)\.(\d{3})$")


def cues(path: Path) -> list[tuple[int, int, str]]:
    lines = path.read_text().splitlines()
    assert lines[0] == "WEBVTT"
    found = []
    for index, line in enumerate(lines):
        match = CUE.match(line)
        if match:
            h1, m1, s1, ms1, h2, m2, s2, ms2 = map(int, match.groups())
            start = ((h1 * 60 + m1) * 60 + s1) * 1000 + ms1
            end = ((h2 * 60 + m2) * 60 + s2) * 1000 + ms2
            found.append((start, end, lines[index + 1]))
    return found


@pytest.mark.parametrize("folder", ["dash", "hls"])
def test_webvtt_track_covers_the_video_and_shows_the_right_frames(dash_hls, folder):
    base = dash_hls.output / folder
    found = cues(base / "thumbnails.vtt")
    assert len(found) == 5
    assert found[0][0] == 0 and found[-1][1] == round(SECONDS * 1000)
    for (_, end, _), (start, _, _) in itertools.pairwise(found):
        assert end == start  # no gap, no overlap
    for start, end, target in found:
        assert start < end
        name, fragment = target.split("#xywh=")
        x, y, w, h = map(int, fragment.split(","))
        tile = base / name
        width, height = Image.open(tile).size
        assert (w, h) == (160, 90) and x + w <= width and y + h <= height
        assert number_in(tile, (x, y, w, h)) == frame_at(start / 1000), target


def test_thumbnails_are_listed_as_published(dash_hls):
    published = set()
    for path in dash_hls.output.rglob("*"):
        if path.is_file():
            published.add(path.relative_to(dash_hls.output).as_posix())
    for folder in ("dash", "hls"):
        assert {f"{folder}/thumbnails.vtt", f"{folder}/thumbnails-160x90_1.jpg",
                f"{folder}/thumbnails-160x90_2.jpg"} <= published  # fmt: skip
    assert dash_hls.one("ContentPublished")["FilesCount"] == len(published)


# ------------------------------------------------------------------------------------ stills


def test_stills_go_to_their_own_location(dash_hls):
    event = dash_hls.one("ImagesExtracted")
    assert event["Path"] == dash_hls.images.as_uri() + "/"
    assert event["Images"] == ["still_1.jpg", "still_2.jpg", "still_3.jpg"]
    types = dash_hls.types()
    assert types.index("EncodingFinished") < types.index("ImagesExtracted")
    assert types.index("ImagesExtracted") < types.index("ContentPublished")
    for name, seconds in zip(event["Images"], (0.0, 2.5, SECONDS), strict=True):
        path = dash_hls.images / name
        assert Image.open(path).size == (320, 180)
        assert number_in(path) == frame_at(seconds), name
    assert not list(dash_hls.output.rglob("still_*")), "stills are not part of the package"


# --------------------------------------------------------------------------------- encrypted


def test_encrypted_job_leaves_thumbnails_clear(source, tmp_path):
    spec = job(
        source,
        tmp_path / "out",
        formats=["Cmaf"],
        processing={"DrmProtection": "Base64Key", "KeyId": KEY_ID, "ContentKey": CONTENT_KEY},
        Thumbnails={"Generate": True},
    )
    finished = run(tmp_path, spec)
    assert finished.report["Success"], finished.events[-1]
    images, media = image_sets(finished.output / "manifest.mpd")
    assert all(a.content_protections for a in media), "the audio and video are encrypted"
    (image,) = images
    assert not image.content_protections
    assert not image.representations[0].content_protections
    playlist = (finished.output / "thumbnails-384x216.m3u8").read_text()
    assert "#EXT-X-KEY" not in playlist
    # 5 s at the default 2 s: 3 thumbnails, one 10×10 tile of 384×216 cells
    tile = finished.output / "thumbnails-384x216_1.jpg"
    assert Image.open(tile).format == "JPEG" and Image.open(tile).size == (3840, 2160)
    assert number_in(tile, (384, 0, 384, 216)) == frame_at(2.0)
    assert len(cues(finished.output / "thumbnails.vtt")) == 3


# ---------------------------------------------------------------------------- bad Location


def test_unwritable_location_fails_with_4201_and_publishes_nothing(source, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a regular file cannot hold a folder, not even for root")
    spec = job(
        source,
        tmp_path / "out",
        formats=["Dash"],
        Thumbnails={"Generate": True},
        ImageExtraction={
            "Intervals": [10],
            "Pattern": "still_%.jpg",
            "Location": {"Provider": "Local", "UriPath": (blocker / "stills").as_uri() + "/"},
        },
    )
    finished = run(tmp_path, spec)
    assert not finished.report["Success"]
    error = finished.one("FinalError")
    assert error["ErrorCode"] == 4201 and error["Phase"] == "Image Extraction"
    assert "ImageExtraction.Location" in error["ErrorMessage"]
    assert "ImagesExtracted" not in finished.types()
    assert "ContentPublished" not in finished.types()
    output = tmp_path / "out"
    assert not output.exists() or not any(output.rglob("*"))


# -------------------------------------------------------------------------------- validation


BASE = {
    "ContentAcquisition": {"Provider": "Local", "UriPath": "file:///in/"},
    "MediaMappings": {"VideoStreamExpression": ".*"},
    "ContentProcessing": {"OutputFormat": ["Dash"]},
    "ContentPublishing": {"Provider": "Local", "UriPath": "file:///out/"},
}
LOCATION = {"Provider": "Local", "UriPath": "file:///images/"}


@pytest.mark.parametrize(
    ("section", "value", "field"),
    [
        ("ImageExtraction", {"Intervals": [-1], "Pattern": "a_%.jpg"}, "ImageExtraction.Intervals"),
        (
            "ImageExtraction",
            {"Intervals": [100.5], "Pattern": "a_%.jpg"},
            "ImageExtraction.Intervals",
        ),
        ("ImageExtraction", {"Intervals": [10], "Pattern": "still.jpg"}, "ImageExtraction.Pattern"),
        ("Thumbnails", {"Generate": True, "TileColumns": 21}, "Thumbnails.TileColumns"),
        ("Thumbnails", {"Generate": True, "TileRows": 21}, "Thumbnails.TileRows"),
        ("Thumbnails", {"Generate": True, "TileColumns": 0}, "Thumbnails.TileColumns"),
        ("Thumbnails", {"Generate": True, "Width": 23}, "Thumbnails.Width"),
        ("Thumbnails", {"Generate": True, "Width": 7681}, "Thumbnails.Width"),
        ("Thumbnails", {"Generate": True, "Height": 23}, "Thumbnails.Height"),
        ("Thumbnails", {"Generate": True, "Height": 4321}, "Thumbnails.Height"),
        ("Thumbnails", {"Generate": True, "DurationInSeconds": 0}, "Thumbnails.DurationInSeconds"),
    ],
)
def test_bad_values_are_validation_errors(section, value, field):
    if section == "ImageExtraction":
        value = {**value, "Location": LOCATION}
    checked = check_job({**BASE, section: value})
    assert checked.job is None
    fields = [e.field for e in checked.errors]
    assert any(
        f == field or f.startswith(f"{field}.") or f.startswith(f"{field}[") for f in fields
    ), fields
