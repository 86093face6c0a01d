"""Ladder planning (engine.ladder): tables of (source, job) -> renditions, no media.

The expected sizes are worked out by hand from the rules in engine/ladder.py. The default H.264
V2 ladder on a 16:9 1080p source is 416x234, 640x360, 768x432, 960x540, 1280x720 and 1920x1080:
every width is height x 16/9 exactly and already a multiple of 16.
"""

from __future__ import annotations

import itertools
from fractions import Fraction
from pathlib import Path

import pytest

from engine.errors import MappingError
from engine.job import AudioRepresentation, ContentProcessing, Naming, VideoRepresentation
from engine.ladder import (
    audio_name,
    audio_representations,
    manifest_names,
    plan_audio,
    plan_passthrough,
    plan_video,
    quality_group,
    snap_aspect_ratio,
    subtitle_name,
    video_name,
)
from engine.media import AudioSource, VideoTrackInfo


def video(
    width: int,
    height: int,
    sar: Fraction = Fraction(1),
    rotation: int = 0,
    bitrate: int | None = None,
    codec: str = "h264",
) -> VideoTrackInfo:
    return VideoTrackInfo(
        index=0,
        codec=codec,
        width=width,
        height=height,
        sample_aspect_ratio=sar,
        frame_rate=Fraction(25),
        constant_frame_rate=True,
        interlaced=False,
        rotation=rotation,
        pixel_format="yuv420p",
        bit_depth=8,
        bitrate=bitrate,
        frame_count=None,
        hdr=None,
    )


def job(**processing) -> ContentProcessing:
    return ContentProcessing(output_format=["Dash"], **processing)


def sizes(renditions) -> list[tuple[int, int, int]]:
    return [(r.width, r.height, r.bitrate_kbps) for r in renditions]


H264_1080P = [
    (416, 234, 320),
    (640, 360, 860),
    (768, 432, 1130),
    (960, 540, 1590),
    (1280, 720, 2450),
    (1920, 1080, 4500),
]
PORTRAIT_1080P = [(h, w, kbps) for w, h, kbps in H264_1080P]

# ------------------------------------------------------------------------- default ladders


@pytest.mark.parametrize(
    ("source", "processing", "expected"),
    [
        pytest.param(video(1920, 1080), {}, H264_1080P, id="16:9-1080p-h264-v2"),
        pytest.param(
            video(1920, 1080),
            {"video_format": "H265"},
            [
                (640, 360, 320),
                (768, 432, 860),
                (960, 540, 1200),
                (1280, 720, 1850),
                (1920, 1080, 3400),
            ],
            id="16:9-1080p-h265-v2",
        ),
        pytest.param(
            video(3840, 2160),
            {"video_format": "H265"},
            [
                (640, 360, 320),
                (768, 432, 860),
                (960, 540, 1200),
                (1280, 720, 1850),
                (1920, 1080, 3400),
                (2560, 1440, 5230),
                (3840, 2160, 9610),
            ],
            id="16:9-2160p-h265-v2",
        ),
        pytest.param(
            video(3840, 2160), {}, H264_1080P, id="2160p-h264-v2-tops-at-1080"
        ),  # the H.264 ladder ends at 1080
        pytest.param(
            video(1920, 1080),
            {"bitrate_ladder": "V1"},
            # 480 x 16/9 = 853.3: 848 is a multiple of 16 within 1 %
            [(640, 360, 800), (848, 480, 1200), (1280, 720, 2000), (1920, 1080, 4500)],
            id="v1-h264",
        ),
        pytest.param(
            video(1920, 1080),
            {"bitrate_ladder": "V1", "video_format": "H265"},
            [(640, 360, 800), (848, 480, 1200), (1280, 720, 2000), (1920, 1080, 4500)],
            id="v1-h265",
        ),
        pytest.param(
            video(640, 480),
            {},
            # 234 x 4/3 = 312 (a multiple of 8; 320 would be 2.6 % off); 540 > 480: dropped
            [(312, 234, 320), (480, 360, 860), (576, 432, 1130)],
            id="4:3-640x480",
        ),
        pytest.param(
            video(1920, 816),
            {},
            # x 40/17: 550.6 -> 552 (8), 847.1 -> 848, 1016.5 -> 1024, 1270.6 -> 1264,
            # 1694.1 -> 1696 (16, each within 1 %); 1080 > 816: dropped
            [
                (552, 234, 320),
                (848, 360, 860),
                (1024, 432, 1130),
                (1264, 540, 1590),
                (1696, 720, 2450),
            ],
            id="2.35:1-1920x816",
        ),
        pytest.param(video(1080, 1920), {}, PORTRAIT_1080P, id="portrait-9:16"),
        pytest.param(video(1920, 1080, rotation=90), {}, PORTRAIT_1080P, id="rotation-90"),
        pytest.param(video(1920, 1080, rotation=270), {}, PORTRAIT_1080P, id="rotation-270"),
        pytest.param(video(1920, 1080, rotation=180), {}, H264_1080P, id="rotation-180"),
        pytest.param(
            video(720, 576, sar=Fraction(64, 45)),
            {},
            # displays as 1024x576 (16:9); 720 > 576: dropped
            [(416, 234, 320), (640, 360, 860), (768, 432, 1130), (960, 540, 1590)],
            id="anamorphic-pal-16:9",
        ),
        pytest.param(
            video(720, 480, sar=Fraction(8, 9)),
            {},
            # NTSC 4:3: displays as 640x480
            [(312, 234, 320), (480, 360, 860), (576, 432, 1130)],
            id="anamorphic-ntsc-4:3",
        ),
        pytest.param(
            video(320, 180),
            {},
            # one rung at its own size: 320 x (57600 / 97344) ** 0.75 = 215.9 -> 220
            [(320, 180, 220)],
            id="below-lowest-h264",
        ),
        pytest.param(
            video(320, 180),
            {"video_format": "H265"},
            # 320 x (57600 / 230400) ** 0.75 = 113.1 -> 110
            [(320, 180, 110)],
            id="below-lowest-h265",
        ),
        pytest.param(
            video(160, 90), {}, [(160, 90, 100)], id="below-lowest-floor-100kbps"
        ),  # 320 x 0.148 ** 0.75 = 76 -> at least 100
        pytest.param(
            video(180, 320),
            {},
            [(180, 320, 220)],
            id="below-lowest-portrait",
        ),
        pytest.param(
            video(1920, 1040),
            {},
            # 1040 is within 5 % of 1080: that rung is kept at the source's size,
            # 4500 x (1040/1080) ** 1.5 = 4252 -> 4250; 360 x 24/13 = 664.6 -> 664 (8)
            [
                (432, 234, 320),
                (664, 360, 860),
                (800, 432, 1130),
                (992, 540, 1590),
                (1328, 720, 2450),
                (1920, 1040, 4250),
            ],
            id="near-rung-kept-at-source-size",
        ),
        pytest.param(
            video(1918, 1080),
            {},
            # 1080 x 1918/1080 rounds to 1920, but never wider than the source
            [*H264_1080P[:5], (1918, 1080, 4500)],
            id="never-wider-than-source",
        ),
        pytest.param(
            video(1921, 1081),
            {},
            # odd source: rungs as usual, never above it
            H264_1080P,
            id="odd-source",
        ),
    ],
)
def test_default_ladder(source, processing, expected):
    assert sizes(plan_video(source, job(**processing))) == expected


def test_names_and_groups_of_the_1080p_ladder():
    renditions = plan_video(video(1920, 1080), job())
    assert [r.name for r in renditions] == [
        "video-H264-234-320k",
        "video-H264-360-860k",
        "video-H264-432-1130k",
        "video-H264-540-1590k",
        "video-H264-720-2450k",
        "video-H264-1080-4500k",
    ]
    assert [r.quality_group for r in renditions] == ["SD"] * 4 + ["HD"] * 2
    assert {r.codec for r in renditions} == {"H264"}
    assert {r.sample_aspect_ratio for r in renditions} == {Fraction(1)}
    assert all(r.source is None for r in renditions)


def test_portrait_is_named_by_output_height_and_grouped_by_short_side():
    renditions = plan_video(video(1080, 1920), job())
    assert [r.name for r in renditions] == [
        "video-H264-416-320k",
        "video-H264-640-860k",
        "video-H264-768-1130k",
        "video-H264-960-1590k",
        "video-H264-1280-2450k",
        "video-H264-1920-4500k",
    ]
    assert [r.quality_group for r in renditions] == ["SD"] * 4 + ["HD"] * 2


def test_naming_pattern_replaces_video():
    renditions = plan_video(video(1280, 720), job(naming=Naming(video_chunks_pattern="v")))
    assert renditions[-1].name == "v-H264-720-2450k"


def test_h265_codec_and_uhd_groups():
    renditions = plan_video(video(3840, 2160), job(video_format="H265"))
    assert {r.codec for r in renditions} == {"H265"}
    assert [r.quality_group for r in renditions] == ["SD"] * 3 + ["HD"] * 2 + ["UHD1"] * 2
    assert renditions[-1].name == "video-H265-2160-9610k"


def test_rotation_is_taken_modulo_360():
    assert sizes(plan_video(video(1920, 1080, rotation=-90), job())) == PORTRAIT_1080P


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (video(1920, 1080, rotation=45), "multiple of 90"),
        (video(0, 1080), "no size"),
        (video(1920, 1080, sar=Fraction(0)), "sample aspect ratio"),
    ],
)
def test_source_that_slipped_past_probing(source, message):
    with pytest.raises(ValueError, match=message):
        plan_video(source, job())


def test_do_not_encode_is_not_a_ladder():
    with pytest.raises(ValueError, match="plan_passthrough"):
        plan_video(video(1920, 1080), job(video_format="DoNotEncode"))


# ------------------------------------------------------------- SearchForOptimalNearbyResolutions


@pytest.mark.parametrize(
    ("source", "processing", "search", "expected_widths"),
    [
        (video(1920, 816), {}, True, [552, 848, 1024, 1264, 1696]),
        (video(1920, 816), {}, False, [550, 848, 1016, 1270, 1694]),
        (video(1920, 1080), {"bitrate_ladder": "V1"}, True, [640, 848, 1280, 1920]),
        (video(1920, 1080), {"bitrate_ladder": "V1"}, False, [640, 854, 1280, 1920]),
        (video(1920, 1080), {}, False, [416, 640, 768, 960, 1280, 1920]),
    ],
)
def test_search_for_optimal_nearby_resolutions(source, processing, search, expected_widths):
    processing["search_for_optimal_nearby_resolutions"] = search
    assert [r.width for r in plan_video(source, job(**processing))] == expected_widths


# ------------------------------------------------------------------ ForcePixelAspectRatioTo1


@pytest.mark.parametrize(
    ("search", "expected"),
    [
        # storage ratio 5/4: 292.5 -> 292 (neither 288 nor 296 within 1 %), 450 -> 448,
        # 540 -> 544, 675 -> 672; SAR = 16/9 x height / width
        (
            True,
            [
                (292, 234, Fraction(104, 73)),
                (448, 360, Fraction(10, 7)),
                (544, 432, Fraction(24, 17)),
                (672, 540, Fraction(10, 7)),
            ],
        ),
        (
            False,
            [
                (292, 234, Fraction(104, 73)),
                (450, 360, Fraction(64, 45)),
                (540, 432, Fraction(64, 45)),
                (676, 540, Fraction(240, 169)),
            ],
        ),
    ],
)
def test_keep_source_pixel_aspect_ratio(search, expected):
    renditions = plan_video(
        video(720, 576, sar=Fraction(64, 45)),
        job(force_pixel_aspect_ratio_to1=False, search_for_optimal_nearby_resolutions=search),
    )
    assert [(r.width, r.height, r.sample_aspect_ratio) for r in renditions] == expected
    for r in renditions:  # the display shape stays exactly 16:9
        assert r.width * r.sample_aspect_ratio / r.height == Fraction(16, 9)


def test_keep_pixel_aspect_ratio_of_a_square_pixel_source_changes_nothing():
    renditions = plan_video(video(1920, 1080), job(force_pixel_aspect_ratio_to1=False))
    assert sizes(renditions) == H264_1080P
    assert {r.sample_aspect_ratio for r in renditions} == {Fraction(1)}


# ------------------------------------------------------------------ ForceAspectRatioToStandard


@pytest.mark.parametrize(
    ("ratio", "expected"),
    [
        (Fraction(185, 100), Fraction(16, 9)),  # 4.1 % off 16:9
        (Fraction(239, 100), Fraction(7, 3)),  # 2.4 % off 21:9
        (Fraction(235, 100), Fraction(7, 3)),
        (Fraction(13, 10), Fraction(4, 3)),
        (Fraction(9, 16), Fraction(9, 16)),
        (Fraction(4, 5), Fraction(4, 5)),  # 4:5 portrait is 6.7 % off 3:4: kept
        (Fraction(3, 2), Fraction(3, 2)),  # 12.5 % off 4:3: kept
        (Fraction(2), Fraction(2)),
        (Fraction(276, 100), Fraction(276, 100)),
    ],
)
def test_snap_aspect_ratio(ratio, expected):
    assert snap_aspect_ratio(ratio) == expected


@pytest.mark.parametrize(
    ("force", "expected"),
    [
        # 1998x1080 (1.85:1 flat) snaps to 16:9: the 1080p ladder exactly
        (True, H264_1080P),
        # kept: 234 x 1.85 = 432.9 -> 432, 666 -> 672, 799.2 -> 800, 999 -> 992 (16, 0.7 %),
        # 1332 -> 1328, 1998 (the source width)
        (
            False,
            [
                (432, 234, 320),
                (672, 360, 860),
                (800, 432, 1130),
                (992, 540, 1590),
                (1328, 720, 2450),
                (1998, 1080, 4500),
            ],
        ),
    ],
)
def test_force_aspect_ratio_to_standard(force, expected):
    renditions = plan_video(video(1998, 1080), job(force_aspect_ratio_to_standard=force))
    assert sizes(renditions) == expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        # 1080x1940 is 1 % off 9:16: the width stays, the height shrinks to 1920
        (video(1080, 1940), PORTRAIT_1080P),
        # 1440x1100 is 1.8 % off 4:3: the width stays, the height shrinks to 1080
        (
            video(1440, 1100),
            [
                (312, 234, 320),
                (480, 360, 860),
                (576, 432, 1130),
                (720, 540, 1590),
                (960, 720, 2450),
                (1440, 1080, 4500),
            ],
        ),
    ],
)
def test_force_aspect_ratio_to_standard_never_grows_a_side(source, expected):
    renditions = plan_video(source, job(force_aspect_ratio_to_standard=True))
    assert sizes(renditions) == expected


# ------------------------------------------------------------------- UseHighestPossibleBitrate


@pytest.mark.parametrize(
    ("flag", "source_bitrate", "expected_kbps"),
    [
        (False, 2_000_000, [320, 860, 1130, 1590, 2450, 4500]),  # not consulted
        (True, None, [320, 860, 1130, 1590, 2450, 4500]),  # unknown: as asked
        (True, 10_000_000, [320, 860, 1130, 1590, 2450, 4500]),  # higher: as asked
        (True, 4_500_000, [320, 860, 1130, 1590, 2450, 4500]),  # equal: as asked
        # lower: the top keeps 2000; 720p at 2450 would outspend it, so it goes
        (True, 2_000_000, [320, 860, 1130, 1590, 2000]),
        (True, 2_450_400, [320, 860, 1130, 1590, 2450]),  # 720p at 2450 = the top: goes
        (True, 50_000, [100]),  # never below 100 kbps; everything else goes
    ],
)
def test_use_highest_possible_bitrate(flag, source_bitrate, expected_kbps):
    renditions = plan_video(
        video(1920, 1080, bitrate=source_bitrate), job(use_highest_possible_bitrate=flag)
    )
    assert [r.bitrate_kbps for r in renditions] == expected_kbps
    assert renditions[-1].height == 1080
    assert renditions[-1].name == f"video-H264-1080-{expected_kbps[-1]}k"


# --------------------------------------------------------------------- VideoRepresentations


def reps(*items: tuple[int | None, int | None, int]) -> list[VideoRepresentation]:
    return [VideoRepresentation(width=w, height=h, bitrate_in_kbps=kbps) for w, h, kbps in items]


@pytest.mark.parametrize(
    ("source", "representations", "processing", "expected"),
    [
        pytest.param(
            video(1920, 1080),
            reps((None, 720, 2000), (None, 480, 1000)),
            {},
            [(848, 480, 1000), (1280, 720, 2000)],
            id="height-only",
        ),
        pytest.param(
            video(1920, 1080),
            reps((1280, None, 2000), (852, None, 1000)),
            {},
            # 852 x 9/16 = 479.25 -> 480 (16, 0.2 % off)
            [(852, 480, 1000), (1280, 720, 2000)],
            id="width-only",
        ),
        pytest.param(
            video(1920, 1080),
            reps((852, 480, 800), (1280, 720, 1500)),
            {},
            [(852, 480, 800), (1280, 720, 1500)],
            id="both-as-given",
        ),
        pytest.param(
            video(1920, 1080),
            reps((640, 640, 800)),
            {},
            [(640, 640, 800)],
            id="both-as-given-other-shape",
        ),
        pytest.param(
            video(1280, 720),
            reps((None, 360, 800), (None, 1080, 4500)),
            {},
            # 1080 is clamped to the source's 720 and keeps its bitrate
            [(640, 360, 800), (1280, 720, 4500)],
            id="above-source-clamped",
        ),
        pytest.param(
            video(1280, 720),
            reps((1920, 1080, 4500), (2560, 1440, 6000), (640, 360, 800)),
            {},
            # both clamp to 1280x720: the one asked closest to the source (1080p) stays
            [(640, 360, 800), (1280, 720, 4500)],
            id="clamped-duplicates-removed",
        ),
        pytest.param(
            video(1280, 720),
            reps((None, 720, 2500), (None, 1080, 4500)),
            {},
            # the clamped 1080 rung loses to the 720 rung asked for that size
            [(1280, 720, 2500)],
            id="clamped-loses-to-asked",
        ),
        pytest.param(
            video(1440, 1080),
            reps((1920, 1080, 4500)),
            {},
            # 16:9 asked from a 4:3 source: shrunk by 1440/1920 to fit, shape kept
            [(1440, 810, 4500)],
            id="both-given-wider-than-source",
        ),
        pytest.param(
            video(1920, 1080),
            reps((None, 720, 2000), (None, 720, 2000), (1280, 720, 2000)),
            {},
            [(1280, 720, 2000)],
            id="exact-duplicates",
        ),
        pytest.param(
            video(1080, 1920),
            reps((None, 720, 2000)),
            {},
            # Width and Height mean what they say: 720 x 9/16 = 405 -> 408 (8)
            [(408, 720, 2000)],
            id="portrait-height-is-height",
        ),
        pytest.param(
            video(720, 576, sar=Fraction(64, 45)),
            reps((None, 576, 2000)),
            {},
            [(1024, 576, 2000)],
            id="anamorphic-height-only",
        ),
        pytest.param(
            video(1920, 1080),
            reps((None, 720, 2000), (None, 1080, 4500)),
            {"video_format": "H265"},
            [(1280, 720, 2000), (1920, 1080, 4500)],
            id="h265",
        ),
    ],
)
def test_custom_representations(source, representations, processing, expected):
    renditions = plan_video(source, job(video_representations=representations, **processing))
    assert sizes(renditions) == expected


def test_custom_representations_keep_source_sar():
    renditions = plan_video(
        video(720, 576, sar=Fraction(64, 45)),
        job(
            force_pixel_aspect_ratio_to1=False,
            video_representations=reps((None, 576, 2000), (720, 576, 2500)),
        ),
    )
    assert [(r.width, r.height, r.sample_aspect_ratio) for r in renditions] == [
        (720, 576, Fraction(64, 45)),
        (720, 576, Fraction(64, 45)),
    ]
    assert [r.name for r in renditions] == ["video-H264-576-2000k", "video-H264-576-2500k"]


def test_same_height_and_bitrate_are_named_by_size():
    renditions = plan_video(
        video(1920, 1080), job(video_representations=reps((960, 720, 2000), (1280, 720, 2000)))
    )
    assert [r.name for r in renditions] == [
        "video-H264-960x720-2000k",
        "video-H264-1280x720-2000k",
    ]


def test_representation_that_slipped_past_validation():
    odd = VideoRepresentation.model_construct(width=1281, height=None, bitrate_in_kbps=1000)
    with pytest.raises(ValueError, match=r"VideoRepresentations\[0\].Width .* even"):
        plan_video(video(1920, 1080), job(video_representations=[odd]))
    empty = VideoRepresentation.model_construct(width=None, height=None, bitrate_in_kbps=1000)
    with pytest.raises(ValueError, match="give Width, Height or both"):
        plan_video(video(1920, 1080), job(video_representations=[empty]))


# ------------------------------------------------------------------------------- invariants

GRID_SOURCES = [
    video(w, h, sar=sar, rotation=rot)
    for (w, h), sar, rot in itertools.product(
        [(1920, 1080), (1280, 720), (640, 480), (1920, 816), (1080, 1920), (321, 241),
         (3840, 2160), (720, 576), (4096, 1716), (100, 100), (1918, 1078)],
        [Fraction(1), Fraction(64, 45), Fraction(8, 9)],
        [0, 90],
    )
]  # fmt: skip


@pytest.mark.parametrize(
    "processing",
    [
        {},
        {"video_format": "H265"},
        {"bitrate_ladder": "V1"},
        {"search_for_optimal_nearby_resolutions": False},
        {"force_pixel_aspect_ratio_to1": False},
        {"force_aspect_ratio_to_standard": True},
        {"video_representations": reps((None, 2160, 9000), (640, None, 700), (640, 360, 800))},
    ],
    ids=["h264", "h265", "v1", "no-search", "keep-sar", "standard", "custom"],
)
def test_invariants(processing):
    for source in GRID_SOURCES:
        renditions = plan_video(source, job(**processing))
        assert renditions, source
        # sorted by height then bitrate, names unique, sides even, never above the source
        assert renditions == sorted(renditions, key=lambda r: (r.height, r.bitrate_kbps))
        assert len({r.name for r in renditions}) == len(renditions)
        if processing.get("force_pixel_aspect_ratio_to1") is False:
            limit_w, limit_h = (
                (source.height, source.width) if source.rotation else (source.width, source.height)
            )
        else:
            limit_w, limit_h = source.display_width + 1, source.display_height + 1
        for r in renditions:
            assert r.width % 2 == 0 and r.height % 2 == 0, (source, r)
            assert r.width <= limit_w and r.height <= limit_h, (source, r)
            assert r.quality_group == quality_group(min(r.width, r.height))
            assert r.bitrate_kbps >= 100


# --------------------------------------------------------------------------- quality groups


@pytest.mark.parametrize(
    ("height", "group"),
    [
        (144, "SD"),
        (576, "SD"),
        (719, "SD"),
        (720, "HD"),
        (1080, "HD"),
        (1081, "UHD1"),
        (1200, "UHD1"),
        (1440, "UHD1"),
        (2160, "UHD1"),
        (2161, "UHD2"),
        (4320, "UHD2"),
    ],
)
def test_quality_group(height, group):
    assert quality_group(height) == group


def test_quality_group_rejects_nonsense():
    with pytest.raises(ValueError):
        quality_group(0)


# ------------------------------------------------------------------------------------ names

CUSTOM = Naming(
    video_chunks_pattern="vid",
    audio_chunks_pattern="snd",
    subtitle_pattern="text",
    manifest_name="index",
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (video_name("H264", 720, 2450, None), "video-H264-720-2450k"),
        (video_name("H265", 2160, 9610, CUSTOM), "vid-H265-2160-9610k"),
        (video_name("H264", 720, 2000, None, width=960), "video-H264-960x720-2000k"),
        (audio_name("en", 128, None, False), "audio-en"),
        (audio_name("en", 64, None, True), "audio-en-64k"),
        (audio_name("en", 128, CUSTOM, False), "snd-en"),
        (audio_name("en", 128, None, False, descriptive=True), "audio-en-ad"),
        (audio_name("en", 64, CUSTOM, True, descriptive=True), "snd-en-ad-64k"),
        (audio_name("pt BR", 128, None, False), "audio-pt_BR"),
        (subtitle_name("en", None), "subtitle-en"),
        (subtitle_name("en", None, kind="caption"), "subtitle-en-cc"),
        (subtitle_name("de", CUSTOM), "text-de"),
        (subtitle_name("de", CUSTOM, kind="caption"), "text-de-cc"),
    ],
)
def test_names(name, expected):
    assert name == expected


@pytest.mark.parametrize(
    ("naming", "output_format", "expected"),
    [
        (None, "Dash", ("manifest.mpd", "manifest.m3u8")),
        (Naming(), ["Dash", "Hls"], ("manifest.mpd", "manifest.m3u8")),
        (Naming(manifest_name="index"), "Cmaf", ("index.mpd", "index.m3u8")),
        (Naming(manifest_name="index.m3u8"), "Cmaf", ("index.mpd", "index.m3u8")),
        (Naming(manifest_name="index.MPD"), None, ("index.mpd", "index.m3u8")),
        (
            Naming(manifest_name="index", dash_manifest_name="stream"),
            ["Dash", "Hls"],
            ("stream.mpd", "index.m3u8"),
        ),
        (
            Naming(dash_manifest_name="stream.mpd", hls_manifest_name="master.m3u8"),
            ["Dash", "Hls"],
            ("stream.mpd", "master.m3u8"),
        ),
        (Naming(hls_manifest_name="master"), "HlsTs", ("manifest.mpd", "master.m3u8")),
        (Naming(dash_manifest_name="a.b"), "DashOnDemand", ("a.b.mpd", "manifest.m3u8")),
    ],
)
def test_manifest_names(naming, output_format, expected):
    assert manifest_names(naming, output_format) == expected


@pytest.mark.parametrize(
    ("naming", "output_format", "message"),
    [
        (Naming(dash_manifest_name="stream.m3u8"), "Dash", "ends in .m3u8"),
        (Naming(hls_manifest_name="master.mpd"), "Hls", "ends in .mpd"),
        (Naming(manifest_name=".mpd"), "Dash", "cannot be part of a file name"),
        (None, "Smooth", "unknown output format"),
    ],
)
def test_manifest_names_refused(naming, output_format, message):
    with pytest.raises(ValueError, match=message):
        manifest_names(naming, output_format)


def test_name_arguments_refused():
    with pytest.raises(ValueError):
        video_name("VP9", 720, 2000, None)
    with pytest.raises(ValueError):
        subtitle_name("en", None, kind="forced")
    with pytest.raises(ValueError):
        audio_name("  ", 128, None, False)


# ------------------------------------------------------------------------- packaging-only


def test_passthrough():
    files = [Path("movie_1080.mp4"), Path("movie_360.mp4"), Path("movie_720.mp4")]
    renditions = plan_passthrough(
        [video(1920, 1080), video(640, 360), video(1280, 720, bitrate=2_400_000)],
        [4_512_345, 801_000, None],  # None: the track's own bitrate
        ["h264", "H264", "h264"],
        None,
        paths=files,
    )
    assert [(r.width, r.height, r.bitrate_kbps) for r in renditions] == [
        (640, 360, 801),
        (1280, 720, 2400),
        (1920, 1080, 4512),
    ]
    assert [r.name for r in renditions] == [
        "video-H264-360-801k",
        "video-H264-720-2400k",
        "video-H264-1080-4512k",
    ]
    assert [r.source for r in renditions] == [files[1], files[2], files[0]]
    assert [r.quality_group for r in renditions] == ["SD", "HD", "HD"]


def test_passthrough_hevc_keeps_coded_size_and_sar():
    renditions = plan_passthrough(
        [video(720, 576, sar=Fraction(64, 45), codec="hevc")],
        [1_500_000],
        ["hevc"],
        Naming(video_chunks_pattern="v"),
    )
    (r,) = renditions
    assert (r.width, r.height, r.codec, r.sample_aspect_ratio) == (
        720,
        576,
        "H265",
        Fraction(64, 45),
    )
    assert r.name == "v-H265-576-1500k" and r.source is None


@pytest.mark.parametrize("codec", ["vp9", "av1", "mpeg2video", "prores"])
def test_passthrough_refuses_other_codecs(codec):
    with pytest.raises(MappingError, match=f"H.264 or H.265.*'{codec}'"):
        plan_passthrough([video(1280, 720)], [2_000_000], [codec], None)


def test_passthrough_refuses_bad_calls():
    with pytest.raises(ValueError, match="one bitrate and one codec name per source"):
        plan_passthrough([video(1280, 720)], [], ["h264"], None)
    with pytest.raises(ValueError, match="unknown"):
        plan_passthrough([video(1280, 720)], [None], ["h264"], None)
    with pytest.raises(MappingError, match="mix"):
        plan_passthrough([video(1280, 720), video(640, 360)], [1, 1], ["h264", "hevc"], None)


# ------------------------------------------------------------------------------------ audio

EN = AudioSource(path=Path("movie.mp4"), track_indices=(1,), language="en", channels=2)
EN_MONO = AudioSource(path=Path("en.wav"), track_indices=(0,), language="en", channels=1)
EN_51 = AudioSource(path=Path("movie.mp4"), track_indices=(1,), language="en", channels=6)
EN_QUAD = AudioSource(path=Path("quad.wav"), track_indices=(0,), language="en", channels=4)
EN_AD = AudioSource(
    path=Path("en-ad.wav"), track_indices=(0,), language="en", descriptive=True, channels=2
)
DE = AudioSource(path=Path("de.aac"), track_indices=(0,), language="de", channels=2)


def arep(kbps: int, sound: str, fmt: str = "AAC", create: str = "Always") -> AudioRepresentation:
    return AudioRepresentation(bitrate_in_kbps=kbps, sound=sound, audio_format=fmt, create=create)


def plan(sources, **processing) -> list[tuple[str, str, int, int, str]]:
    return [
        (r.source.language, r.codec, r.channels, r.bitrate_kbps, r.name)
        for r in plan_audio(sources, job(**processing))
    ]


@pytest.mark.parametrize(
    ("sources", "processing", "expected"),
    [
        pytest.param([EN], {}, [("en", "AAC", 2, 128, "audio-en")], id="stereo-defaults"),
        pytest.param(
            [EN_MONO],
            {},
            # Stereo 128 Always would be mono 64: the same as the matching Mono 64
            [("en", "AAC", 1, 64, "audio-en")],
            id="mono-defaults",
        ),
        pytest.param([EN_51], {}, [("en", "AAC", 2, 128, "audio-en")], id="5.1-defaults-downmix"),
        pytest.param(
            [EN_51], {"sound": "5.1"}, [("en", "AAC", 6, 384, "audio-en")], id="sound-5.1"
        ),
        pytest.param(
            [EN], {"sound": "5.1"}, [("en", "AAC", 2, 128, "audio-en")], id="sound-5.1-no-upmix"
        ),
        pytest.param(
            [EN_51], {"sound": "Mono"}, [("en", "AAC", 1, 64, "audio-en")], id="sound-mono"
        ),
        pytest.param(
            [EN_QUAD],
            {"audio_representations": [arep(384, "5.1")]},
            # 4 channels are no layout of ours: stereo, bitrate x 2/6
            [("en", "AAC", 2, 128, "audio-en")],
            id="quad-asked-5.1",
        ),
        pytest.param(
            [EN_MONO],
            {"audio_representations": [arep(192, "Stereo")]},
            # Always on a mono source: mono output (never upmixed), 192 x 1/2
            [("en", "AAC", 1, 96, "audio-en")],
            id="always-stereo-on-mono",
        ),
        pytest.param(
            [EN_51],
            {
                "audio_representations": [
                    arep(128, "Stereo"),
                    arep(384, "5.1", "AC3", "OnMatchingSound"),
                ]
            },
            [("en", "AAC", 2, 128, "audio-en-128k"), ("en", "AC3", 6, 384, "audio-en-384k")],
            id="on-matching-sound-matches",
        ),
        pytest.param(
            [EN],
            {
                "audio_representations": [
                    arep(128, "Stereo"),
                    arep(384, "5.1", "AC3", "OnMatchingSound"),
                ]
            },
            [("en", "AAC", 2, 128, "audio-en")],
            id="on-matching-sound-skipped",
        ),
        pytest.param(
            [EN],
            {"audio_representations": [arep(64, "Mono", create="OnMatchingSound")]},
            [],
            id="nothing-matches",
        ),
        pytest.param(
            [EN_51],
            {"audio_representations": [arep(640, "5.1", "EAC3"), arep(300, "5.1", "AC3")]},
            # AC3 300 snaps to the AC-3 rate 320
            [("en", "EAC3", 6, 640, "audio-en-640k"), ("en", "AC3", 6, 320, "audio-en-320k")],
            id="eac3-and-ac3",
        ),
        pytest.param(
            [EN],
            {"audio_representations": [arep(640, "5.1", "AC3")]},
            # 640 x 2/6 = 213 -> the AC-3 rate 224
            [("en", "AC3", 2, 224, "audio-en")],
            id="ac3-5.1-on-stereo",
        ),
        pytest.param(
            [EN],
            {"audio_representations": [arep(128, "Stereo"), arep(64, "Stereo")]},
            [("en", "AAC", 2, 128, "audio-en-128k"), ("en", "AAC", 2, 64, "audio-en-64k")],
            id="two-per-language",
        ),
        pytest.param(
            [EN],
            {"audio_representations": [arep(128, "Stereo"), arep(128, "Stereo", "AC3")]},
            [
                ("en", "AAC", 2, 128, "audio-en-128k-aac"),
                ("en", "AC3", 2, 128, "audio-en-128k-ac3"),
            ],
            id="same-bitrate-two-codecs",
        ),
        pytest.param(
            [EN_51],
            {"audio_representations": [arep(384, "Stereo"), arep(384, "5.1")]},
            [
                ("en", "AAC", 2, 384, "audio-en-384k-2ch"),
                ("en", "AAC", 6, 384, "audio-en-384k-6ch"),
            ],
            id="same-bitrate-two-layouts",
        ),
        pytest.param(
            [EN],
            {"audio_representations": [arep(128, "Stereo"), arep(128, "Stereo")]},
            [("en", "AAC", 2, 128, "audio-en")],
            id="exact-duplicates",
        ),
        pytest.param(
            [EN, EN_AD, DE],
            {},
            [
                ("en", "AAC", 2, 128, "audio-en"),
                ("en", "AAC", 2, 128, "audio-en-ad"),
                ("de", "AAC", 2, 128, "audio-de"),
            ],
            id="descriptive-audio",
        ),
        pytest.param(
            [EN, EN_AD],
            {"audio_representations": [arep(128, "Stereo"), arep(64, "Stereo")]},
            [
                ("en", "AAC", 2, 128, "audio-en-128k"),
                ("en", "AAC", 2, 64, "audio-en-64k"),
                ("en", "AAC", 2, 128, "audio-en-ad-128k"),
                ("en", "AAC", 2, 64, "audio-en-ad-64k"),
            ],
            id="descriptive-two-per-language",
        ),
        pytest.param(
            [EN, EN_MONO],
            {},
            # two English tracks, one rendition each: told apart by their bitrates
            [("en", "AAC", 2, 128, "audio-en-128k"), ("en", "AAC", 1, 64, "audio-en-64k")],
            id="two-sources-one-language",
        ),
        pytest.param(
            [EN, EN],
            {},
            [("en", "AAC", 2, 128, "audio-en")],
            id="same-source-twice",
        ),
        pytest.param(
            [EN, DE],
            {"naming": Naming(audio_chunks_pattern="snd")},
            [("en", "AAC", 2, 128, "snd-en"), ("de", "AAC", 2, 128, "snd-de")],
            id="naming",
        ),
    ],
)
def test_plan_audio(sources, processing, expected):
    assert plan(sources, **processing) == expected


def test_two_equal_sources_of_one_language_get_numbers():
    other = AudioSource(path=Path("commentary.aac"), track_indices=(0,), language="en")
    assert [r.name for r in plan_audio([EN, other], job())] == [
        "audio-en-128k-1",
        "audio-en-128k-2",
    ]


def test_audio_renditions_point_at_their_source():
    renditions = plan_audio([EN, DE], job())
    assert [r.source for r in renditions] == [EN, DE]
    assert {r.quality_group for r in renditions} == {"AUDIO"}


def test_audio_representations_defaults():
    assert [
        (r.sound.value, r.bitrate_in_kbps, r.create.value) for r in audio_representations(job())
    ] == [("Stereo", 128, "Always"), ("Mono", 64, "OnMatchingSound")]
    assert [
        (r.sound.value, r.bitrate_in_kbps) for r in audio_representations(job(sound="5.1"))
    ] == [("5.1", 384), ("Mono", 64)]
    given = [arep(96, "Stereo")]
    assert audio_representations(job(audio_representations=given, sound="5.1")) == given


def test_audio_source_without_channels():
    silent = AudioSource(path=Path("x.wav"), track_indices=(0,), language="en", channels=0)
    with pytest.raises(ValueError, match="no channels"):
        plan_audio([silent], job())
