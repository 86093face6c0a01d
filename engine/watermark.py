"""Visible watermarks (contract §5.3): an image blended onto the video before scaling.

Placement: `SizePercentage` is the watermark's width as a percentage of the video width (its
height follows the image's aspect ratio); `PositionXPercentage`/`PositionYPercentage` place its
top-left corner at that percentage of the free space, so 0 is flush left/top, 100 flush
right/bottom and the image never leaves the picture. `OpacityPercentage` scales the image's own
alpha; within [StartTime, EndTime) the opacity ramps up linearly over `FadeInDurationInMs` and
down over `FadeOutDurationInMs`. The blend happens in the frame's own Y'CbCr planes (8 or 10
bit), once per source frame, so every rung shows the same watermark.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

# BT.709 RGB -> Y'CbCr, limited range; used for HD and smaller alike (the difference to
# BT.601 on a logo is below what the eye sees).
_MATRIX = np.array(
    [[0.2126, 0.7152, 0.0722], [-0.1146, -0.3854, 0.5], [0.5, -0.4542, -0.0458]],
    dtype=np.float32,
)


@dataclass(frozen=True)
class WatermarkSpec:
    image: Path
    x_percent: float
    y_percent: float
    size_percent: float
    opacity: float  # 0..1
    start: float  # seconds
    end: float | None  # seconds, None = until the end
    fade_in: float  # seconds
    fade_out: float


@dataclass
class _Prepared:
    spec: WatermarkSpec
    left: int
    top: int
    luma: np.ndarray  # (h, w) float32, 0..1 nominal
    chroma: np.ndarray  # (2, h/2, w/2) float32, -0.5..0.5
    alpha: np.ndarray  # (h, w) float32
    alpha_chroma: np.ndarray  # (h/2, w/2)


class Watermarker:
    """Applies every watermark of a job to frames of one size (the prepared source frames)."""

    def __init__(self, specs: list[WatermarkSpec], width: int, height: int):
        self.width, self.height = width, height
        self.items = [self._prepare(spec) for spec in specs]

    def _prepare(self, spec: WatermarkSpec) -> _Prepared:
        from PIL import Image  # lazily: only jobs with watermarks need PIL

        try:
            image: Image.Image = Image.open(spec.image)
            image.seek(0)  # the first frame of an animated GIF
            image = image.convert("RGBA")
        except OSError as error:
            raise ValueError(f"{spec.image.name}: not a readable image: {error}") from None
        mark_width = max(2, round(self.width * spec.size_percent / 100) // 2 * 2)
        mark_width = min(mark_width, self.width // 2 * 2)
        mark_height = max(2, round(mark_width * image.height / image.width) // 2 * 2)
        mark_height = min(mark_height, self.height // 2 * 2)
        image = image.resize((mark_width, mark_height), Image.Resampling.LANCZOS)
        rgba = np.asarray(image, dtype=np.float32) / 255.0
        ycc = rgba[..., :3] @ _MATRIX.T
        left = round((self.width - mark_width) * spec.x_percent / 100) // 2 * 2
        top = round((self.height - mark_height) * spec.y_percent / 100) // 2 * 2
        chroma = ycc[..., 1:].reshape(mark_height // 2, 2, mark_width // 2, 2, 2).mean((1, 3))
        alpha = rgba[..., 3] * spec.opacity
        alpha_chroma = alpha.reshape(mark_height // 2, 2, mark_width // 2, 2).mean((1, 3))
        return _Prepared(
            spec, left, top, ycc[..., 0], np.moveaxis(chroma, -1, 0), alpha, alpha_chroma
        )

    def strength(self, spec: WatermarkSpec, t: float) -> float:
        """Opacity factor 0..1 at time `t` (window and fades)."""
        if t < spec.start or (spec.end is not None and t >= spec.end):
            return 0.0
        factor = 1.0
        if spec.fade_in > 0:
            factor = min(factor, (t - spec.start) / spec.fade_in)
        if spec.fade_out > 0 and spec.end is not None:
            factor = min(factor, (spec.end - t) / spec.fade_out)
        return max(0.0, min(1.0, factor))

    def apply(self, frame: av.VideoFrame, t: float) -> av.VideoFrame:
        active = [(item, self.strength(item.spec, t)) for item in self.items]
        active = [(item, s) for item, s in active if s > 0]
        if not active:
            return frame
        source_format = frame.format.name
        ten_bit = source_format in ("yuv420p10le", "p010le")
        work_format = "yuv420p10le" if ten_bit else "yuv420p"
        if source_format != work_format:
            frame = frame.reformat(format=work_format)
        planes = frame.to_ndarray()  # (h * 3/2, w): Y, then U and V rows
        scale = 1023.0 if ten_bit else 255.0
        height, width = frame.height, frame.width
        y_plane = planes[:height].astype(np.float32)
        uv = planes[height:].reshape(2, height // 2, width // 2).astype(np.float32)
        for item, strength in active:
            h, w = item.luma.shape
            top, left = item.top, item.left
            a = item.alpha * strength
            region = y_plane[top : top + h, left : left + w]
            logo_y = (16 + 219 * item.luma) * scale / 255.0
            region[:] = region * (1 - a) + logo_y * a
            ac = item.alpha_chroma * strength
            for c in range(2):
                region = uv[c, top // 2 : top // 2 + h // 2, left // 2 : left // 2 + w // 2]
                logo_c = (128 + 224 * item.chroma[c]) * scale / 255.0
                region[:] = region * (1 - ac) + logo_c * ac
        dtype = np.uint16 if ten_bit else np.uint8
        merged = np.concatenate([y_plane.ravel(), uv.ravel()]).reshape(planes.shape)
        result = av.VideoFrame.from_ndarray(
            np.clip(np.rint(merged), 0, scale).astype(dtype), format=work_format
        )
        result.pts, result.time_base = frame.pts, frame.time_base
        return result
