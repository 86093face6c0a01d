"""Quality metrics (engine.quality): PSNR/SSIM against FFmpeg's `psnr`/`ssim` filters on the
same frame pairs, the in-pass meter (pairing by pts through B-frame reordering, sampling), the
PSNR cap for identical frames, low vs high bitrate, VMAF through an ffmpeg with libvmaf."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from typing import NamedTuple

import av
import numpy as np
import pytest
from mediagen import draw_frame

from engine import quality
from engine.quality import (
    PSNR_CAP_DB,
    QualityMeter,
    QualitySettings,
    RenditionQuality,
    compare_frames,
    compare_planes,
    frame_planes,
    psnr_db,
    sampling_step,
    ssim_plane,
)

WIDTH, HEIGHT, FRAMES = 160, 96, 30
RATE = Fraction(25)


def source_frames(count: int = FRAMES, width: int = WIDTH, height: int = HEIGHT):
    """Moving test pictures (every frame differs: a pairing off by one frame would show)."""
    for index in range(count):
        frame = av.VideoFrame.from_ndarray(draw_frame(index, width, height), format="rgb24")
        frame = frame.reformat(format="yuv420p")
        frame.pts, frame.time_base = index, 1 / RATE
        yield frame


def new_encoder(bitrate: int, width: int = WIDTH, height: int = HEIGHT):
    """libx264 with B-frames and lookahead (decoded output leaves in a different order and
    several frames late), not muxed: its packets go straight to the meter."""
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.time_base, encoder.framerate = 1 / RATE, RATE
    encoder.bit_rate = bitrate
    encoder.options = {"preset": "veryfast", "bf": "3", "rc-lookahead": "10"}
    encoder.open()
    return encoder


class Measured(NamedTuple):
    result: RenditionQuality
    pairs: list[tuple[av.VideoFrame, av.VideoFrame]]  # (encoder input, decoded output)
    size: int  # bytes of the bitstream


def measure(bitrate: int, settings: QualitySettings | None = None, keep: bool = False) -> Measured:
    """Encode the test frames through a QualityMeter; with `keep`, also the (reference,
    decoded) pairs, decoded independently of the meter."""
    encoder = new_encoder(bitrate)
    meter = QualityMeter(encoder, settings or QualitySettings(), "test")
    references, packets = [], []
    for frame in source_frames():
        meter.reference(frame)
        references.append(frame)
        for packet in encoder.encode(frame):
            meter.packet(packet)
            packets.append(bytes(packet))
    for packet in encoder.encode(None):
        meter.packet(packet)
        packets.append(bytes(packet))
    result = meter.finish()
    size = sum(len(p) for p in packets)
    if not keep:
        return Measured(result, [], size)
    decoder = av.CodecContext.create("h264", "r")
    decoded = [f for data in packets for f in decoder.decode(av.Packet(data))]
    decoded += decoder.decode(None)
    assert len(decoded) == len(references)
    return Measured(result, list(zip(references, decoded, strict=True)), size)


def ffmpeg_scores(reference: av.VideoFrame, distorted: av.VideoFrame) -> dict[str, float]:
    """FFmpeg's `psnr` and `ssim` filters on one pair (PyAV filter graph, frame metadata)."""
    graph = av.filter.Graph()
    fmt = reference.format.name
    buffers = [
        graph.add_buffer(width=f.width, height=f.height, format=fmt, time_base=Fraction(1, 25))
        for f in (distorted, reference)
    ]
    splits = [graph.add("split") for _ in buffers]
    psnr, ssim = graph.add("psnr"), graph.add("ssim")
    sinks = [graph.add("buffersink"), graph.add("buffersink")]
    for i, (buffer, split) in enumerate(zip(buffers, splits, strict=True)):
        buffer.link_to(split)
        split.link_to(psnr, 0, i)  # input 0: main (distorted), 1: reference
        split.link_to(ssim, 1, i)
    psnr.link_to(sinks[0])
    ssim.link_to(sinks[1])
    graph.configure()
    for buffer, frame in zip(buffers, (distorted, reference), strict=True):
        copy = frame.reformat(format=fmt)
        copy.pts, copy.time_base = 0, Fraction(1, 25)
        buffer.push(copy)
    metadata = {**sinks[0].pull().metadata, **sinks[1].pull().metadata}
    return {key: float(value) for key, value in metadata.items()}


def distorted_copy(frame: av.VideoFrame, seed: int) -> av.VideoFrame:
    """`frame` blurred a little and with noise: a structured, realistic distortion."""
    fmt, width = frame.format.name, frame.width
    peak = quality.peak_of(fmt)
    rng = np.random.default_rng(seed)
    planes = []
    for source in frame_planes(frame):
        values = source.astype(np.float64)
        values = (values + np.roll(values, 1, axis=1) + np.roll(values, 1, axis=0)) / 3
        values += rng.normal(0, peak / 80, values.shape)
        planes.append(np.clip(np.rint(values), 0, peak).astype(source.dtype).reshape(-1, width))
    return av.VideoFrame.from_ndarray(np.concatenate(planes), format=fmt)


# --------------------------------------------------------------------------- the arithmetic


def test_psnr_of_identical_frames_is_capped():
    frame = next(source_frames())
    scores = compare_frames(frame, frame)
    assert scores.mse == (0.0, 0.0, 0.0)
    assert scores.psnr == scores.psnr_y == PSNR_CAP_DB == 100.0
    assert scores.ssim_y == pytest.approx(1.0)
    assert psnr_db(0.0) == PSNR_CAP_DB and math.isfinite(psnr_db(0.0))
    assert psnr_db(1e-12) == PSNR_CAP_DB  # above the cap: the cap
    assert psnr_db(1.0) == pytest.approx(20 * math.log10(255))


def test_rendition_against_itself_is_capped():
    """A decoded rendition compared with itself (meter path: encoder input = its own decode)."""
    pairs = measure(200_000, keep=True).pairs
    decoded = [d for _, d in pairs]
    for frame in decoded[:5]:
        assert compare_frames(frame, frame).psnr == PSNR_CAP_DB
    # JSON has no infinity: the capped value serialises as a plain number.
    assert json.loads(json.dumps({"Psnr": compare_frames(decoded[0], decoded[0]).psnr}))


def test_ssim_bounds_and_ordering():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (64, 96)).astype(np.uint8)
    assert ssim_plane(a, a) == pytest.approx(1.0)
    slightly = np.clip(a.astype(int) + rng.integers(-3, 4, a.shape), 0, 255).astype(np.uint8)
    noise = rng.integers(0, 256, a.shape).astype(np.uint8)
    inverted = (255 - a).astype(np.uint8)
    values = [ssim_plane(a, b) for b in (slightly, noise, inverted)]
    assert all(-1.0 <= v <= 1.0 for v in values)
    assert 1.0 > values[0] > values[1] > values[2]
    tiny = a[:6, :6]  # smaller than one 8×8 window: one window over the plane
    assert ssim_plane(tiny, tiny) == pytest.approx(1.0)


@pytest.mark.parametrize("fmt", ["yuv420p", "yuv420p10le"])
def test_frame_scores_agree_with_ffmpeg_filters(fmt):
    """Synthetic pairs (blur + noise), 8- and 10-bit, an odd-sized plane among them."""
    for seed, (width, height) in enumerate([(160, 96), (214, 120), (98, 60)]):
        reference = next(source_frames(1, width, height)).reformat(format=fmt)
        distorted = distorted_copy(reference, seed)
        ours = compare_frames(reference, distorted)
        theirs = ffmpeg_scores(reference, distorted)
        assert ours.psnr_y == pytest.approx(theirs["lavfi.psnr.psnr.y"], abs=1e-3)
        assert ours.psnr == pytest.approx(theirs["lavfi.psnr.psnr_avg"], abs=1e-3)
        assert ours.mse[1] == pytest.approx(theirs["lavfi.psnr.mse.u"], rel=1e-5)
        assert ours.ssim_y == pytest.approx(theirs["lavfi.ssim.Y"], abs=2e-6)
        assert 0.0 <= ours.ssim_y <= 1.0


# ------------------------------------------------------------------------------- the meter


def test_meter_agrees_with_ffmpeg_on_the_encoded_pairs():
    """The meter pairs each decoded frame with its encoder input by pts (through B-frame
    reordering and lookahead delay); its totals equal FFmpeg's over the same pairs: PSNR from
    the mean MSE (FFmpeg's summary), SSIM the mean of the frames'."""
    result, pairs, size = measure(150_000, keep=True)
    theirs = [ffmpeg_scores(r, d) for r, d in pairs]
    mse_y = np.mean([t["lavfi.psnr.mse.y"] for t in theirs])
    mse_avg = np.mean([t["lavfi.psnr.mse_avg"] for t in theirs])
    assert result.frames == FRAMES and result.step == 1
    assert result.psnr_y == pytest.approx(psnr_db(mse_y), abs=2e-3)
    assert result.psnr == pytest.approx(psnr_db(mse_avg), abs=2e-3)
    assert result.ssim == pytest.approx(np.mean([t["lavfi.ssim.Y"] for t in theirs]), abs=5e-6)
    # Each pair on its own too (our arithmetic on FFmpeg's pairs).
    for (reference, decoded), their in zip(pairs[:8], theirs, strict=False):
        ours = compare_planes(frame_planes(reference), frame_planes(decoded))
        assert ours.psnr_y == pytest.approx(their["lavfi.psnr.psnr.y"], abs=1e-3)
    # The bitstream's own rate (an easy picture: x264 stays under the asked 150k).
    assert result.bitrate_kbps == pytest.approx(size * 8 / 1000 / (FRAMES / 25))


def test_low_bitrate_scores_measurably_lower():
    low = measure(20_000).result
    high = measure(1_000_000).result
    assert high.psnr - low.psnr > 3  # dB
    assert high.psnr_y - low.psnr_y > 3
    assert high.ssim - low.ssim > 0.01
    for result in (low, high):
        assert 0.0 <= result.ssim <= 1.0
        assert 0 < result.psnr < PSNR_CAP_DB
    assert low.bitrate_kbps < high.bitrate_kbps


def test_sampling_every_nth_frame():
    assert sampling_step(0) == sampling_step(100) == sampling_step(600) == 1
    assert sampling_step(601) == 2
    assert sampling_step(2 * 3600 * 25) == 300
    assert sampling_step(1000, max_frames=100) == 10
    result = measure(150_000, QualitySettings(step=4)).result
    assert result.step == 4
    assert result.frames == math.ceil(FRAMES / 4)  # frames 0, 4, 8, ... 28


def test_meter_abort_leaves_nothing_running():
    encoder = new_encoder(100_000)
    ffmpeg, _ = quality.vmaf_support()
    meter = QualityMeter(encoder, QualitySettings(vmaf_ffmpeg=ffmpeg), "test")
    for frame in source_frames(5):
        meter.reference(frame)
        for packet in encoder.encode(frame):
            meter.packet(packet)
    pipe = meter.vmaf
    meter.abort()
    assert not meter.pending
    if pipe is not None:
        assert pipe.process.poll() is not None
        assert not pipe.folder.exists()


# -------------------------------------------------------------------------------------- VMAF


def test_vmaf_lower_at_low_bitrate():
    ffmpeg, reason = quality.vmaf_support()
    if ffmpeg is None:
        pytest.skip(f"no ffmpeg with libvmaf: {reason}")
    settings = QualitySettings(vmaf_ffmpeg=ffmpeg)
    low = measure(20_000, settings).result
    high = measure(1_000_000, settings).result
    assert low.vmaf is not None and high.vmaf is not None, (low.vmaf_error, high.vmaf_error)
    assert 0 <= low.vmaf < high.vmaf <= 100
    assert high.vmaf - low.vmaf > 5


def test_vmaf_process_failure_is_a_missing_score_not_an_error(tmp_path):
    fake = tmp_path / "ffmpeg"
    fake.write_text("#!/bin/sh\necho 'no libvmaf here' >&2\nexit 1\n")
    fake.chmod(0o755)
    result = measure(100_000, QualitySettings(vmaf_ffmpeg=str(fake))).result
    assert result.vmaf is None
    assert "exited with 1" in result.vmaf_error and "no libvmaf" in result.vmaf_error
    assert result.psnr > 20  # the other metrics are unaffected
    assert quality._try_vmaf(str(fake)) is not None  # and such an ffmpeg is not picked
