"""The transcoder's cascade of scalers (engine.transcode._LadderScaler)."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from engine import transcode
from engine.transcode import _LadderScaler


def _frame(width: int, height: int) -> av.VideoFrame:
    rng = np.random.default_rng(7)
    frame = av.VideoFrame.from_ndarray(
        rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "rgb24"
    ).reformat(format="yuv420p")
    frame.pts, frame.time_base = 12, Fraction(1, 25)
    return frame


def test_each_size_scales_from_the_smallest_larger_picture_of_its_format(monkeypatch):
    sources: dict[tuple[int, int, str], tuple[int, int, str]] = {}

    class Recording:
        def __init__(self):
            self.scaler = VideoReformatter()

        def reformat(self, frame, *, width, height, format, interpolation):
            sources[(width, height, format)] = (frame.width, frame.height, frame.format.name)
            return self.scaler.reformat(
                frame, width=width, height=height, format=format, interpolation=interpolation
            )

    monkeypatch.setattr(transcode, "VideoReformatter", Recording)
    frame = _frame(640, 360)
    sizes = [(160, 90, "yuv420p"), (640, 360, "yuv420p"), (320, 180, "yuv420p"), (320, 180, "nv12")]
    scaled = _LadderScaler().scale(frame, sizes)

    assert sources == {
        (640, 360, "yuv420p"): (640, 360, "yuv420p"),
        (320, 180, "yuv420p"): (640, 360, "yuv420p"),
        (320, 180, "nv12"): (640, 360, "yuv420p"),  # no NV12 picture larger: the frame itself
        (160, 90, "yuv420p"): (320, 180, "yuv420p"),
    }
    assert scaled[(640, 360, "yuv420p")] is frame  # the source's own size and format: no copy
    for (width, height, pix_fmt), picture in scaled.items():
        assert (picture.width, picture.height, picture.format.name) == (width, height, pix_fmt)
        assert (picture.pts, picture.time_base) == (frame.pts, frame.time_base)
