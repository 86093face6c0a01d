"""End to end: a visible watermark (contract §5.3) appears in the decoded output inside its
window (place and time, with its fades) and nowhere else.

The source's own decoded frames are the reference: in the top rendition (the source's size)
the watermark's strength in a frame is estimated by least squares from
`output = source + s * (logo - source)` over the watermark's rectangle and compared with the
planned opacity at that frame's time; outside the rectangle, and outside the time window,
the output must equal the source up to coding noise.
"""

from __future__ import annotations

import numpy as np
import pytest
from e2e_helpers import (
    FPS,
    check_events,
    check_package,
    input_folder,
    make_job,
    read_dash,
    run,
    see_video,
)
from PIL import Image

pytestmark = pytest.mark.e2e

RED = np.array([255.0, 0.0, 0.0])
START, END, FADE = 1.0, 3.0, 0.5
# 320×180 source, SizePercentage 25 -> an 80×80 mark; X/Y 100% -> flush bottom right
RECT = (100, 180, 240, 320)  # top, bottom, left, right in the top rendition
MARGIN = 4  # pixels left out at the mark's edges (chroma subsampling and scaling blur)


def expected_strength(t: float) -> float:
    if t < START or t >= END:
        return 0.0
    return max(0.0, min(1.0, (t - START) / FADE, (END - t) / FADE))


@pytest.fixture(scope="module")
def watermarked(e2e_media, tmp_path_factory):
    root = tmp_path_factory.mktemp("watermark")
    folder = input_folder(root, e2e_media.cfr())
    Image.new("RGBA", (64, 64), (255, 0, 0, 255)).save(folder / "logo.png")
    job = make_job(
        folder,
        root / "out",
        VideoRepresentations=[
            {"Height": 180, "BitrateInKbps": 1500},
            {"Height": 90, "BitrateInKbps": 300},
        ],
        VisibleVideoWatermarks=[
            {
                "WatermarkFileName": "logo.png",
                "PositionXPercentage": 100,
                "PositionYPercentage": 100,
                "SizePercentage": 25,
                "OpacityPercentage": 100,
                "StartTime": "00:00:01",
                "EndTime": "00:00:03",
                "FadeInDurationInMs": int(FADE * 1000),
                "FadeOutDurationInMs": int(FADE * 1000),
            }
        ],
    )
    return run(root, job)


def _source_frames(path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def test_package_and_events(watermarked):
    check_package(watermarked)
    check_events(watermarked)
    assert watermarked.one("ContentMapped")["WatermarkFiles"] == ["logo.png"]
    assert not [w for w in watermarked.of_type("Warning") if w["Code"] == "IgnoredFile"]


def test_watermark_inside_its_window_only(watermarked, e2e_media):
    source = _source_frames(e2e_media.cfr())
    _, tracks = read_dash(watermarked.output_dir / "manifest.mpd")
    top = next(t for t in tracks if t.name == "video-H264-180-1500k")
    strengths: list[float] = []
    outside_errors: list[float] = []

    def keep(index: int, rgb: np.ndarray) -> None:
        reference = source[index].astype(np.float64)
        output = rgb.astype(np.float64)
        top_, bottom, left, right = RECT
        inner = (slice(top_ + MARGIN, bottom - MARGIN), slice(left + MARGIN, right - MARGIN))
        delta = (RED - reference[inner]).reshape(-1)
        change = (output[inner] - reference[inner]).reshape(-1)
        strengths.append(float(change @ delta / (delta @ delta)))
        mask = np.ones(rgb.shape[:2], dtype=bool)
        mask[top_ - MARGIN : bottom, left - MARGIN : right] = False
        outside_errors.append(float(np.abs(output[mask] - reference[mask]).mean()))

    seen = see_video(top.data(), keep=keep)
    assert seen.frames == len(source) == 100
    for index, measured in enumerate(strengths):
        t = index / FPS
        assert measured == pytest.approx(expected_strength(t), abs=0.06), (index, t, measured)
    # the fades are gradual: some frames in between, not just on and off
    partial = [s for s in strengths if 0.2 < s < 0.8]
    assert len(partial) >= 10, strengths
    # nothing changes outside the rectangle (coding noise only), whatever the time
    assert max(outside_errors) < 2.0, outside_errors


def test_watermark_scaled_in_the_small_rendition(watermarked, e2e_media):
    _, tracks = read_dash(watermarked.output_dir / "manifest.mpd")
    small = next(t for t in tracks if t.name == "video-H264-90-300k")
    samples: dict[int, np.ndarray] = {}

    def keep(index: int, rgb: np.ndarray) -> None:
        if index in (10, 50):
            samples[index] = rgb

    seen = see_video(small.data(), keep=keep)
    assert (seen.width, seen.height) == (160, 90)
    # 50 = 2 s: fully on; 10 = 0.4 s: off. The mark covers [50:90, 120:160] at this size.
    on = samples[50][50 + 3 : 90 - 3, 120 + 3 : 160 - 3].reshape(-1, 3).mean(axis=0)
    off = samples[10][50 + 3 : 90 - 3, 120 + 3 : 160 - 3].reshape(-1, 3).mean(axis=0)
    assert on[0] > 200 and on[1] < 60 and on[2] < 60, on
    assert not (off[0] > 200 and off[1] < 60 and off[2] < 60), off
