"""Still images and thumbnail tiles (`engine.images`, `packagers.thumbnails`) on generated
sources whose frames show their own number: every image and every thumbnail must be the frame
shown at its instant (the last frame whose timestamp is at or before it), read back from the
written JPEG. Short GOPs (shorter than the thumbnail interval) and one long GOP, B-frames, MP4,
MPEG-TS (no keyframe index) and Matroska (no stored decode times), non-square pixels, rotation.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from mediagen import make_media, read_frame_number
from PIL import Image

from engine.errors import Cancelled, ImageExtractionError
from engine.images import (
    FrameGrabber,
    ThumbnailGeometry,
    default_interval,
    extract_images,
    image_names,
    image_times,
    make_thumbnails,
    plan_thumbnails,
    thumbnail_geometry,
)
from engine.probe import probe
from packagers.hooks import ImageInput
from packagers.thumbnails import cue_bounds, thumbnail_count, thumbnail_cues, webvtt

FPS = 25
SECONDS = 8.0
FRAMES = round(SECONDS * FPS)


def expected_frame(seconds: float, frames: int = FRAMES) -> int:
    """The frame shown at `seconds` of a 25 fps source starting at 0 (inf: the last)."""
    if math.isinf(seconds):
        return frames - 1
    return min(frames - 1, math.floor(seconds * FPS + 1e-6))


def number_in(path: Path, box: tuple[int, int, int, int] | None = None, turn: int = 0) -> int:
    """The frame number drawn in a JPEG (or in the `box` (x, y, w, h) of it)."""
    pixels = np.asarray(Image.open(path).convert("RGB"))
    if box is not None:
        x, y, w, h = box
        pixels = pixels[y : y + h, x : x + w]
    return read_frame_number(np.rot90(pixels, k=turn))


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """8 s, 25 fps sources: short GOPs (0.4 s) and one long GOP (the whole file)."""
    folder = tmp_path_factory.mktemp("image-sources")
    return {
        "short.mp4": make_media(folder / "short.mp4", duration=SECONDS, gop=10, audio=[]),
        "long.mp4": make_media(folder / "long.mp4", duration=SECONDS, gop=250, audio=[]),
        "short.ts": make_media(folder / "short.ts", duration=SECONDS, gop=10, audio=[]),
        "long.ts": make_media(folder / "long.ts", duration=SECONDS, gop=250, audio=[]),
        "short.mkv": make_media(folder / "short.mkv", duration=SECONDS, gop=12, audio=[]),
    }


# --------------------------------------------------------------------------- planning (pure)


@pytest.mark.parametrize(
    ("duration", "interval"),
    [(0.5, 2), (59.9, 2), (60, 5), (1800, 5), (1800.1, 10), (7200, 10)],
)
def test_default_interval_by_video_length(duration, interval):
    assert default_interval(duration) == interval


@pytest.mark.parametrize(
    ("width", "height", "ratio", "expected"),
    [
        (None, None, Fraction(16, 9), ThumbnailGeometry(384, 216, 384, 216)),
        (None, None, Fraction(4, 3), ThumbnailGeometry(384, 216, 288, 216)),  # pillarbox
        (None, None, Fraction(9, 16), ThumbnailGeometry(384, 216, 122, 216)),
        (None, None, Fraction(21, 9), ThumbnailGeometry(384, 216, 384, 164)),  # letterbox
        (160, None, Fraction(16, 9), ThumbnailGeometry(160, 90, 160, 90)),
        (160, None, Fraction(4, 3), ThumbnailGeometry(160, 120, 160, 120)),
        (None, 100, Fraction(16, 9), ThumbnailGeometry(178, 100, 178, 100)),  # even
        (None, 90, Fraction(9, 16), ThumbnailGeometry(50, 90, 50, 90)),
        (200, 200, Fraction(16, 9), ThumbnailGeometry(200, 200, 200, 112)),
    ],
)
def test_thumbnail_geometry(width, height, ratio, expected):
    geometry = thumbnail_geometry(width, height, ratio)
    assert geometry == expected
    assert geometry.x + geometry.picture_width <= geometry.width
    assert geometry.y + geometry.picture_height <= geometry.height


def test_plan_counts_tiles_and_names():
    plan = plan_thumbnails(61.0, Fraction(16, 9), columns=4, rows=3)
    assert plan.interval == 5 and plan.count == 13  # 0, 5, ... 60
    assert plan.tile_count == 2 and plan.tile_size == (4 * 384, 3 * 216)
    assert plan.name == "thumbnails-384x216"
    assert plan.times[-1] == 60


def test_plan_refuses_tiles_too_large_to_write():
    with pytest.raises(ImageExtractionError, match="JPEG side"):
        plan_thumbnails(60, Fraction(9, 16), width=7680, columns=1, rows=20)  # 13654 × 20 high
    with pytest.raises(ImageExtractionError, match="allowed"):
        plan_thumbnails(60, Fraction(16, 9), width=3000, columns=20, rows=20)


def test_image_times_and_names():
    assert image_times([0, 50, 100, 120], 8.0) == [0.0, 4.0, math.inf, math.inf]
    assert image_names("still_%.jpg", 3) == ["still_1.jpg", "still_2.jpg", "still_3.jpg"]
    assert image_names("%_of_%.jpeg", 1) == ["1_of_1.jpeg"]
    with pytest.raises(ImageExtractionError):
        image_names("still.jpg", 1)


@pytest.mark.parametrize(
    ("duration", "interval", "count"),
    [(8.0, 2.0, 4), (8.0004, 2.0, 4), (8.001, 2.0, 5), (7.99, 2.0, 4), (0.2, 2.0, 1), (5, 0.3, 17)],
)
def test_cues_cover_the_duration_without_gaps_or_overlaps(duration, interval, count):
    assert thumbnail_count(duration, interval) == count
    bounds = cue_bounds(duration, interval)
    assert len(bounds) == count and bounds[0][0] == 0 and bounds[-1][1] == round(duration * 1000)
    assert all(start < end for start, end in bounds)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))


def test_webvtt_cues_point_at_tile_regions():
    image = ImageInput("thumbnails-160x90", (), 160, 90, 3, 2, interval=2.0, duration=15.0)
    cues = thumbnail_cues(image)
    assert len(cues) == 8
    assert [c.target for c in cues[:2]] == [
        "thumbnails-160x90_1.jpg#xywh=0,0,160,90",
        "thumbnails-160x90_1.jpg#xywh=160,0,160,90",
    ]
    assert cues[5].target == "thumbnails-160x90_1.jpg#xywh=320,90,160,90"
    assert cues[6].target == "thumbnails-160x90_2.jpg#xywh=0,0,160,90"
    assert (cues[7].start_ms, cues[7].end_ms) == (14000, 15000)
    text = webvtt(image)
    assert text.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:02.000\nthumbnails-160x90_1.jpg#")
    assert "00:00:14.000 --> 00:00:15.000\nthumbnails-160x90_2.jpg#xywh=160,0,160,90" in text


# ------------------------------------------------------------------------------ frame access


INSTANTS = [
    *(i * 0.37 for i in range(22)),  # between frames, dense (several per GOP)
    0.0,  # the first frame
    4.0,  # exactly on a frame start: that frame
    3.9999,  # just before: the frame before
    1.2,  # twice the same instant
    1.2,
    7.96,  # the last frame's own start
    7.99,
    100.0,  # past the end: the last frame
    math.inf,  # "the last frame"
]


@pytest.mark.parametrize("name", ["short.mp4", "long.mp4", "short.ts", "long.ts", "short.mkv"])
def test_grabber_gives_the_frame_shown_at_each_instant(sources, name):
    shuffled = INSTANTS[::2] + INSTANTS[1::2]  # any order in, time order out
    with FrameGrabber(sources[name]) as grabber:
        positions = []
        for position, frame in grabber.grab(shuffled):
            positions.append(position)
            got = read_frame_number(frame.to_ndarray(format="rgb24"))
            assert got == expected_frame(shuffled[position]), (name, shuffled[position])
    assert sorted(positions) == list(range(len(shuffled)))
    assert [shuffled[p] for p in positions] == sorted(shuffled)


@pytest.mark.parametrize("name", ["short.mp4", "long.mp4"])
def test_grabbed_frames_are_identical_to_a_full_decode(sources, name):
    """Seeking and leaving pictures undecoded changes no pixel of the frames returned."""
    with av.open(str(sources[name])) as container:
        full = {f.pts: f.to_ndarray() for f in container.decode(video=0)}
    with FrameGrabber(sources[name]) as grabber:
        for _, frame in grabber.grab(INSTANTS):
            assert np.array_equal(frame.to_ndarray(), full[frame.pts]), frame.pts
        assert grabber.skipped > 0


def test_short_gops_decode_about_one_gop_per_instant(sources):
    """GOP 0.4 s, one instant every 2 s: a seek per instant, and only the frames from its
    keyframe on (reference frames; unneeded B-frames are not decoded at all)."""
    times = [i * 2.0 + 0.3 for i in range(4)]  # 0.3 s into a GOP: 7 or 8 frames in
    with FrameGrabber(sources["short.mp4"]) as grabber:
        frames = [read_frame_number(f.to_ndarray(format="rgb24")) for _, f in grabber.grab(times)]
        assert frames == [expected_frame(t) for t in times]
        assert grabber.decoded <= len(times) * 10 + 3, grabber.decoded  # of 200
        assert grabber.skipped > 0
        assert grabber.seeks <= len(times) + 1


def test_long_gop_decodes_forward_once(sources):
    """One keyframe for the whole file: instants in one pass, never back to the start."""
    times = [i * 0.5 for i in range(16)]
    with FrameGrabber(sources["long.mp4"]) as grabber:
        for position, frame in grabber.grab(times):
            assert read_frame_number(frame.to_ndarray(format="rgb24")) == expected_frame(
                times[position]
            )
        assert grabber.decoded <= FRAMES
        assert grabber.seeks <= 1


def test_zero_is_the_first_decodable_frame(tmp_path):
    """An MPEG-TS stream cut so that it starts with frames that need a missing keyframe."""
    source = make_media(tmp_path / "whole.ts", duration=4.0, gop=25, audio=[])
    cut = tmp_path / "cut.ts"
    with av.open(str(source)) as reader, av.open(str(cut), "w") as writer:
        stream = reader.streams.video[0]
        out = writer.add_stream_from_template(stream)
        start = None
        for packet in reader.demux(stream):
            if packet.dts is None:
                continue
            start = packet.pts if start is None else start
            if packet.pts < start + 10 * 3600:  # drop the first 10 frames (1/90000 s ticks)
                continue
            packet.stream = out
            writer.mux(packet)
    with FrameGrabber(cut) as grabber:
        (_, frame), (_, second) = list(grabber.grab([0.0, 0.5]))
        number = read_frame_number(frame.to_ndarray(format="rgb24"))
        assert number == 25  # the first keyframe after the cut, not a grey or broken frame
        assert read_frame_number(second.to_ndarray(format="rgb24")) == 25 + 12


def test_undecodable_source_is_an_image_extraction_error(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 1000)
    with pytest.raises(ImageExtractionError, match=r"junk\.mp4"):
        FrameGrabber(junk)


# ----------------------------------------------------------------------------- still images


def test_stills_are_the_frames_at_their_percentages(sources, tmp_path):
    source = sources["short.mp4"]
    percents = [0, 12.5, 25, 33.3, 50, 99.9, 100, 50]
    paths = extract_images(
        source,
        probe(source).main_video,
        percents,
        SECONDS,
        quality=90,
        pattern="still_%.jpg",
        folder=tmp_path,
    )
    assert [p.name for p in paths] == [f"still_{n}.jpg" for n in range(1, 9)]
    for path, percent in zip(paths, percents, strict=True):
        assert Image.open(path).size == (320, 180)
        assert number_in(path) == expected_frame(percent * SECONDS / 100), (path.name, percent)


def test_quality_is_the_jpeg_quality(sources, tmp_path):
    source = sources["long.mp4"]
    track = probe(source).main_video
    sizes = {}
    for quality in (5, 95):
        (path,) = extract_images(
            source, track, [50], SECONDS, quality=quality, pattern=f"q{quality}_%.jpg",
            folder=tmp_path,
        )  # fmt: skip
        sizes[quality] = path.stat().st_size
        assert Image.open(path).format == "JPEG"
    assert sizes[5] * 3 < sizes[95]


def test_stills_have_square_pixels_at_display_size(tmp_path):
    """Stored 160×180 with pixels twice as wide as high: shown (and written) 320×180."""
    source = make_media(
        tmp_path / "sar.mp4", duration=2.0, width=160, height=180,
        sample_aspect_ratio=Fraction(2, 1), audio=[],
    )  # fmt: skip
    track = probe(source).main_video
    assert track.sample_aspect_ratio == 2
    (path,) = extract_images(
        source, track, [50], 2.0, quality=90, pattern="sar_%.jpg", folder=tmp_path / "out"
    )
    assert Image.open(path).size == (320, 180)
    assert number_in(path) == 25


def test_stills_and_thumbnails_are_turned_upright(tmp_path):
    """A portrait phone video: stored 320×180, to be turned 90° clockwise for display."""
    stored = make_media(tmp_path / "stored.mp4", duration=2.0, gop=10, audio=[])
    source = tmp_path / "rotated.mp4"
    with av.open(str(stored)) as reader, av.open(str(source), "w") as writer:
        stream = reader.streams.video[0]
        out = writer.add_stream_from_template(stream)
        out.set_display_rotation(-90)  # counter-clockwise in FFmpeg's convention
        for packet in reader.demux(stream):
            if packet.dts is not None:
                packet.stream = out
                writer.mux(packet)
    track = probe(source).main_video
    assert track.rotation == 90 and (track.display_width, track.display_height) == (180, 320)
    (path,) = extract_images(
        source, track, [50], 2.0, quality=90, pattern="up_%.jpg", folder=tmp_path / "out"
    )
    assert Image.open(path).size == (180, 320)
    assert number_in(path, turn=1) == 25  # the bar code sits on the right edge, top down
    plan = plan_thumbnails(
        2.0, track.display_aspect_ratio, height=64, interval=1, columns=2, rows=1
    )
    image = make_thumbnails(source, track, plan, tmp_path / "thumbs")
    assert (image.thumbnail_width, image.thumbnail_height) == (36, 64)
    assert Image.open(image.tiles[0]).size == (72, 64)


# ------------------------------------------------------------------------------- thumbnails


def check_tiles(image: ImageInput, plan, frames: int = FRAMES) -> None:
    """Every cell shows the frame at its thumbnail's instant; unused cells are black."""
    cell = plan.geometry
    assert len(image.tiles) == plan.tile_count
    for index in range(plan.tile_count * plan.per_tile):
        tile, place = divmod(index, plan.per_tile)
        row, column = divmod(place, plan.columns)
        path = image.tiles[tile]
        x, y = column * cell.width, row * cell.height
        if index < plan.count:
            box = (x + cell.x, y + cell.y, cell.picture_width, cell.picture_height)
            got = number_in(path, box)
            assert got == expected_frame(plan.times[index], frames), (path.name, index)
        else:  # the last tile keeps its full size, unused cells black (inside: JPEG blocks
            # straddle the edge to the used cells)
            pixels = np.asarray(Image.open(path).convert("RGB"))
            inside = pixels[y + 8 : y + cell.height - 8, x + 8 : x + cell.width - 8]
            assert inside.max() < 24, (path.name, index)
    for path in image.tiles:
        assert Image.open(path).size == plan.tile_size


@pytest.mark.parametrize("name", ["short.mp4", "long.mp4", "short.ts"])
def test_thumbnails_tiles_show_the_frames_at_their_instants(sources, tmp_path, name):
    source = sources[name]
    track = probe(source).main_video
    # 0.6 s apart: 14 thumbnails, 3 tiles of 3×2, the last one with two cells used
    plan = plan_thumbnails(SECONDS, track.display_aspect_ratio, width=128, interval=0.6,
                           columns=3, rows=2)  # fmt: skip
    assert (plan.count, plan.tile_count) == (14, 3)
    image = make_thumbnails(source, track, plan, tmp_path)
    assert [p.name for p in image.tiles] == [f"thumbnails-128x72_{n}.jpg" for n in (1, 2, 3)]
    assert (image.columns, image.rows, image.interval, image.duration) == (3, 2, 0.6, SECONDS)
    check_tiles(image, plan)


def test_workers_side_by_side_give_the_same_tiles(sources, tmp_path):
    """Three grabbers, each with a contiguous part of the instants, filling shared tiles."""
    source = sources["short.mp4"]
    track = probe(source).main_video
    plan = plan_thumbnails(SECONDS, track.display_aspect_ratio, width=96, interval=0.3,
                           columns=4, rows=2)  # fmt: skip
    assert (plan.count, plan.tile_count) == (27, 4)
    image = make_thumbnails(source, track, plan, tmp_path, workers=3)
    check_tiles(image, plan)
    percents = [5 * n for n in range(21)]
    paths = extract_images(
        source, track, percents, SECONDS, quality=90, pattern="p_%.jpg",
        folder=tmp_path / "stills", workers=2,
    )  # fmt: skip
    for path, percent in zip(paths, percents, strict=True):
        assert number_in(path) == expected_frame(percent * SECONDS / 100), path.name


def test_cancel_stops_every_worker(sources, tmp_path):
    calls = 0

    def cancel() -> None:
        nonlocal calls
        calls += 1
        if calls > 40:
            raise Cancelled()

    source = sources["long.mp4"]
    track = probe(source).main_video
    plan = plan_thumbnails(SECONDS, track.display_aspect_ratio, interval=0.1)
    with pytest.raises(Cancelled):
        make_thumbnails(source, track, plan, tmp_path, cancel=cancel, workers=2)
    assert calls < 100


def test_default_size_letterboxes_other_ratios(tmp_path):
    """4:3 source, no size asked: 384×216 cells, 288×216 pictures centred, black bars."""
    source = make_media(tmp_path / "43.mp4", duration=3.0, width=320, height=240, gop=10,
                        audio=[])  # fmt: skip
    track = probe(source).main_video
    plan = plan_thumbnails(3.0, track.display_aspect_ratio, columns=2, rows=1)
    assert plan.interval == 2 and plan.count == 2
    assert (plan.geometry.picture_width, plan.geometry.picture_height) == (288, 216)
    image = make_thumbnails(source, track, plan, tmp_path / "out")
    check_tiles(image, plan, frames=75)
    pixels = np.asarray(Image.open(image.tiles[0]).convert("RGB"))
    assert pixels.shape == (216, 768, 3)
    assert pixels[:, :40].max() < 24 and pixels[:, 384 - 40 : 384 + 40].max() < 24  # bars
