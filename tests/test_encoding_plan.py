"""Encoding planning (engine.pipeline.encoding.plan_encoding): tables of (mapped media, job,
node) -> renditions, output frame rate, duration and decoder choice; no media."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from engine.encoders import NodeCapabilities
from engine.errors import MappingError
from engine.job import ContentProcessing
from engine.media import AudioSource, MediaMap, SourceInfo, VideoTrackInfo
from engine.pipeline.encoding import output_frame_rate, plan_encoding
from engine.pipeline.results import Mapped

VIDEO = Path("/work/input/source.mp4")
AUDIO = Path("/work/input/audio-de.m4a")
CPU = NodeCapabilities()
NVDEC = NodeCapabilities(nvdec_codecs=frozenset({"h264", "hevc"}))


def track(
    height: int = 1080,
    rate: Fraction = Fraction(25),
    constant: bool = True,
    codec: str = "h264",
) -> VideoTrackInfo:
    return VideoTrackInfo(
        index=0,
        codec=codec,
        width=height * 16 // 9,
        height=height,
        sample_aspect_ratio=Fraction(1),
        frame_rate=rate,
        constant_frame_rate=constant,
        interlaced=False,
        rotation=0,
        pixel_format="yuv420p",
        bit_depth=8,
        bitrate=None,
        frame_count=None,
        hdr=None,
    )


def mapped(
    video: VideoTrackInfo | None,
    duration: float = 10.0,
    measured: Fraction | None = None,
    audio: bool = True,
) -> Mapped:
    sources: dict[Path, SourceInfo] = {}
    audio_sources: tuple[AudioSource, ...] = ()
    if video is not None:
        sources[VIDEO] = SourceInfo(VIDEO, "mp4", duration, 1000, None, video=(video,))
    if audio:
        sources[AUDIO] = SourceInfo(AUDIO, "mp4", duration, 100, None)
        audio_sources = (AudioSource(AUDIO, (0,), "de"),)
    media = MediaMap(video=VIDEO if video else None, audio=audio_sources, sources=sources)
    return Mapped(media, video, duration, measured)


def job(**processing) -> ContentProcessing:
    return ContentProcessing(output_format=["Cmaf"], **processing)


@pytest.mark.parametrize(
    ("source", "heights"),
    [
        (track(1080), [234, 360, 432, 540, 720, 1080]),
        (track(720), [234, 360, 432, 540, 720]),
        (track(360), [234, 360]),
    ],
)
def test_the_ladder_follows_the_source(source, heights):
    plan = plan_encoding(mapped(source), job(), CPU)
    assert [r.height for r in plan.video] == heights
    assert [a.source.language for a in plan.audio] == ["de"]


@pytest.mark.parametrize(
    ("source", "measured", "duration", "rate", "seconds"),
    [
        # CFR: the source's own rate, the duration in whole frames
        (track(rate=Fraction(25)), None, 10.0, Fraction(25), 10.0),
        (track(rate=Fraction(30000, 1001)), None, 10.0, Fraction(30000, 1001),
         300 / (30000 / 1001)),
        (track(rate=Fraction(25)), None, 10.01, Fraction(25), 10.0),
        # VFR: the measured average, snapped to a common rate within 1%
        (track(rate=Fraction(30), constant=False), Fraction(2998, 100), 6.0,
         Fraction(30000, 1001), 180 / (30000 / 1001)),
        # VFR far from any common rate: kept (denominator ≤ 1001)
        (track(rate=Fraction(30), constant=False), Fraction(2445, 100), 4.0,
         Fraction(489, 20), 98 / 24.45),
        # VFR, nothing measured: the probe's average; 24 stays 24 (the nearest common rate,
        # though 24000/1001 is within 1% too)
        (track(rate=Fraction(24), constant=False), None, 2.0, Fraction(24), 2.0),
        (track(rate=Fraction(23976, 1000), constant=False), None, 2.0, Fraction(24000, 1001),
         48 / (24000 / 1001)),
    ],
)  # fmt: skip
def test_output_frame_rate_and_duration(source, measured, duration, rate, seconds):
    plan = plan_encoding(mapped(source, duration, measured), job(), CPU)
    assert plan.frame_rate == rate
    assert output_frame_rate(source, measured) == rate
    assert plan.duration == pytest.approx(seconds, abs=1e-9)


def test_audio_only_keeps_the_audio_duration():
    plan = plan_encoding(mapped(None, duration=7.3), job(), CPU)
    assert plan.video == ()
    assert plan.duration == 7.3
    assert not plan.hw_decode


def test_nothing_to_encode_is_a_mapping_error():
    with pytest.raises(MappingError, match="nothing to encode"):
        plan_encoding(mapped(None, audio=False), job(), CPU)


@pytest.mark.parametrize(
    ("node", "codec", "acceleration", "hw_decode"),
    [
        (NVDEC, "h264", "Auto", True),
        (NVDEC, "hevc", "Nvidia", True),
        (NVDEC, "h264", "None", False),  # the job says no hardware
        (NVDEC, "vp9", "Auto", False),  # a codec NVDEC did not decode in the probe
        (CPU, "h264", "Auto", False),
    ],
)
def test_nvdec_decodes_only_what_the_probe_decoded(node, codec, acceleration, hw_decode):
    processing = job(HardwareAcceleration=acceleration)
    assert plan_encoding(mapped(track(codec=codec)), processing, node).hw_decode is hw_decode


def test_h265_uses_its_own_ladder():
    plan = plan_encoding(mapped(track(1080)), job(VideoFormat="H265"), CPU)
    assert [r.height for r in plan.video] == [360, 432, 540, 720, 1080]
    assert {r.codec for r in plan.video} == {"H265"}
