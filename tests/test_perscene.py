"""EncodingMode PerScene (issue 16, contract §5.3): the pure parts as tables (scene cuts, the
CRF for a target, the per-scene plan, the encoder settings, near-duplicate rungs, per-segment
scores), then whole jobs on a 4 s 320x180 source whose first half is easy (a flat picture with
a moving box) and second half hard (noise): cap respected, keyframes identical to Default in
every rung, thumbnails identical, DRM signalled as in Default, a near-duplicate rung dropped
with an info Warning, the report's and EncodingFinished's PerScene fields, and the package
plays (tests/e2e_helpers.check_package on DASH and HLS)."""

from __future__ import annotations

import base64
import math
import uuid
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from e2e_helpers import JobRun, check_events, check_package, input_folder, make_job, run

from engine import perscene
from engine.encoders import cpu_choice, nvenc_choice
from engine.job import OptimizeFor

# ------------------------------------------------------------------------------------ tables


@pytest.mark.parametrize(
    ("differences", "expected"),
    [
        ([0.0] + [2.0] * 99, [0]),  # steady motion: one scene
        ([0.0] + [2.0] * 49 + [60.0] + [2.0] * 49, [0, 50]),  # one cut
        ([0.0] + [2.0] * 49 + [60.0] + [2.0] * 9 + [60.0] + [2.0] * 39, [0, 50]),  # < 1 s apart
        ([0.0] + [30.0] * 99, [0]),  # high but steady differences (a pan) are no cut
        ([0.0] + [2.0] * 29 + [15.0] + [2.0] * 69, [0]),  # below CUT_ABS
        # busy (grain, 25 per frame) into quiet: 45 is under 3 x 25 but over 3 x 0.5 after it
        ([0.0] + [25.0] * 49 + [45.0] + [0.5] * 49, [0, 50]),
        ([0.0] + [0.5] * 49 + [45.0] + [25.0] * 49, [0, 50]),  # quiet into busy
        ([0.0] + [25.0] * 49 + [45.0] + [25.0] * 49, [0]),  # busy on both sides: no cut
    ],
)
def test_detect_cuts(differences, expected):
    assert perscene.detect_cuts(differences, 25.0) == expected


@pytest.mark.parametrize(
    ("vmafs", "target", "expected"),
    [
        ((98.0, 94.0, 86.0), 95.0, 24.0),  # between the first two probes
        ((98.0, 94.0, 86.0), 90.0, 30.0),  # between the last two
        ((98.0, 94.0, 86.0), 99.0, 16.0),  # above: the first slope (0.5 per step) extended
        ((98.0, 94.0, 86.0), 84.0, 36.0),  # below: the last slope (1 per step) extended
        ((99.9, 99.8, 99.7), 95.0, 45.0),  # easy: clamped to the top of CRF_RANGE
        ((60.0, 50.0, 40.0), 95.0, 12.0),  # hard: clamped to the bottom
        ((98.0, 95.0, 96.0), 95.5, 24.67),  # a non-monotone probe is flattened
    ],
)
def test_crf_for_target(vmafs, target, expected):
    assert perscene.crf_for_target((18.0, 26.0, 34.0), vmafs, target) == pytest.approx(
        expected, abs=0.01
    )


def _analysis(probes: dict[str, tuple[perscene.ClipProbe, ...]], starts=(0, 50)):
    return perscene.Analysis(100, 25.0, tuple(starts), (18.0, 26.0, 34.0), probes)


def test_plan_rates_moves_bits_between_scenes(monkeypatch):
    monkeypatch.setattr(perscene, "PROBE_BIAS", 1.3)  # a calibration that moves the aim
    easy = perscene.ClipProbe(0, (99.0, 97.5, 95.5), (400.0, 200.0, 100.0))
    hard = perscene.ClipProbe(50, (97.5, 93.5, 85.5), (2000.0, 1000.0, 500.0))
    (rate,) = perscene.plan_rates(_analysis({"r": (easy, hard)}), 96.0)
    # target 96 + margin 0.3 - probe bias 1.3 = 95 on the probes' scale: easy at crf
    # 34 + (95.5 - 95) / 0.25 = 36, hard at 18 + 2.5 * 8 / 4 = 23
    assert perscene.TARGET_MARGIN == 0.3
    assert rate.scene_crfs == (36.0, 23.0)
    assert rate.crf == 29.5  # the frame-weighted mean (two 50-frame scenes)
    # zones: factor 2^((base - crf) / 6): fewer bits for the easy scene, more for the hard one
    assert rate.zones == ((0, 49, round(2 ** (-6.5 / 6), 3)), (50, 99, round(2 ** (6.5 / 6), 3)))
    assert rate.scenes == 2 and rate.target == 96.0
    # the prediction is calibrated: the probes' 95 + the bias
    assert rate.predicted_vmaf == pytest.approx(96.3, abs=0.01)
    assert rate.maxrate_kbps == 0 and rate.probed  # no caps given: VBV_SHARE of the cap


@pytest.mark.parametrize(
    ("crf", "expected"),
    [
        (26.0, 200.0),
        (22.0, 200.0 * math.sqrt(2)),  # between: linear in log
        (14.0, 400.0 * math.sqrt(2)),  # below the probes: the first slope (x2 per 8) extended
        (42.0, 50.0),  # above: the last slope (/2 per 8 CRF) extended
    ],
)
def test_rates_between_and_beyond_the_probes(crf, expected):
    clip = perscene.ClipProbe(0, (99.0, 96.0, 90.0), (400.0, 200.0, 100.0))
    (rate,) = perscene.plan_rates(_analysis({"r": (clip,)}, starts=(0,)), 95.0)
    assert perscene._interpolate((18.0, 26.0, 34.0), clip.kbps, crf, log=True) == (
        pytest.approx(expected, rel=1e-6)
    )
    assert rate.predicted_kbps == pytest.approx(
        perscene._interpolate((18.0, 26.0, 34.0), clip.kbps, rate.scene_crfs[0], log=True)
    )


def test_plan_rates_one_scene_has_no_zones_and_borrows_the_nearest_clip():
    clip = perscene.ClipProbe(10, (99.0, 96.0, 90.0), (300.0, 150.0, 80.0))
    (rate,) = perscene.plan_rates(_analysis({"r": (clip,)}, starts=(0,)), 95.0)
    assert rate.zones == () and rate.scenes == 1
    # two scenes, the second without a clip of its own: it takes the nearest, same CRF
    (rate,) = perscene.plan_rates(_analysis({"r": (clip,)}), 95.0)
    assert rate.scene_crfs[0] == rate.scene_crfs[1] and rate.zones == ()


@pytest.mark.parametrize(
    ("pixels", "expected"),
    [
        ([], []),
        ([921600], [0]),
        ([97344, 921600], [0, 1]),
        ([97344, 230400, 921600], [0, 2]),  # three rungs: the ends only
        # the V2 ladder at 720p (234p..720p): the middle in log(pixels) is 432p
        ([97344, 230400, 331776, 518400, 921600], [0, 2, 4]),
        ([921600, 518400, 331776, 230400, 97344], [0, 2, 4]),  # any order
        # 1080p: 234p..1080p, middle sqrt(97344 * 2073600) = 449k pixels: 480p's 518400
        ([97344, 230400, 331776, 518400, 921600, 2073600], [0, 3, 5]),
    ],
)
def test_probed_rungs(pixels, expected):
    assert perscene.probed_rungs(pixels) == expected


@pytest.mark.parametrize(
    ("known", "pixels", "expected"),
    [
        ({100: 20.0, 10000: 30.0}, 1000, 25.0),  # the middle in log(pixels)
        ({100: 20.0, 10000: 30.0}, 100, 20.0),
        ({100: 20.0, 10000: 30.0}, 50, 20.0),  # beyond the ends: the end value
        ({100: 20.0, 10000: 30.0}, 10**6, 30.0),
        ({100: 20.0, 1000: 22.0, 10000: 30.0}, 3162, 26.0),  # between the nearest two
        ({500: 24.0}, 10**5, 24.0),  # one probed size: its value everywhere
    ],
)
def test_interpolate_size(known, pixels, expected):
    assert perscene.interpolate_size(known, pixels) == pytest.approx(expected, abs=0.01)


@pytest.mark.parametrize(
    ("kbps", "lengths", "cap", "expected"),
    [
        ([200.0, 5000.0], [50, 50], 1000, 1100),  # easy half: the hard half up to PEAK_SHARE
        ([5000.0, 5000.0], [50, 50], 1000, 960),  # all hard: VBV_SHARE, as a fixed cap
        ([400.0], [100], 1000, 960),  # no scene needs more than the cap: no room taken
        ([400.0, 990.0], [50, 50], 1000, 1100),  # one does, and the other leaves room
        ([500.0], [100], 1000, 960),  # 2 x 500 = 1000 > 960: no room above the cap
        ([450.0, 5000.0], [50, 50], 1000, 1020),  # (960 * 100 - 900 * 50) / 50
        ([300.0, 5000.0], [80, 20], 1000, 1100),
        ([100.0, 5000.0], [0, 0], 1000, 960),
    ],
)
def test_vbv_maxrate(kbps, lengths, cap, expected):
    assert perscene.vbv_maxrate(kbps, lengths, cap) == pytest.approx(expected, abs=1)


def test_plan_rates_interpolates_the_unprobed_rungs_and_sets_the_maxrate(monkeypatch):
    monkeypatch.setattr(perscene, "PROBE_BIAS", 1.3)  # the aim: 96 + 0.3 - 1.3 = 95

    def probes(shift: float, kbps: float) -> tuple[perscene.ClipProbe, ...]:
        easy = perscene.ClipProbe(0, (99.0, 97.5, 95.5), (kbps / 10, kbps / 20, kbps / 40))
        hard = perscene.ClipProbe(
            50, (97.5 - shift, 93.5 - shift, 85.5 - shift), (kbps * 2, kbps, kbps / 2)
        )
        return (easy, hard)

    analysis = perscene.Analysis(
        100, 25.0, (0, 50), (18.0, 26.0, 34.0),
        {"small": probes(0.0, 400.0), "big": probes(2.0, 4000.0)},
        pixels={"small": 100, "middle": 1000, "big": 10000},
    )  # fmt: skip
    caps = {"small": 500, "middle": 1500, "big": 3000}
    plans = {r.name: r for r in perscene.plan_rates(analysis, 96.0, caps)}
    assert list(plans) == ["small", "middle", "big"]  # ladder order, every rung
    # small: nothing capped (the hard scene's 519 kbps under its 550 maxrate)
    assert plans["small"].scene_crfs == (36.0, 23.0)
    assert plans["small"].maxrate_kbps == 550  # the easy scene leaves the hard one room
    # big: the hard scene (18 + 0.5 * 8 / 4 = 19: 7336 kbps) is capped at 3300, so the easy
    # one aims CAPPED_EASY_BONUS higher: 97 on the probes' scale, 26 + 0.5 * 8 / 2 = 28
    assert perscene.CAPPED_EASY_BONUS == 2.0
    assert plans["big"].scene_crfs == (28.0, 19.0)
    assert plans["big"].maxrate_kbps == 3300
    middle = plans["middle"]
    assert not middle.probed and plans["small"].probed and plans["big"].probed
    # halfway in log(pixels) at both aims; its hard scene (1951 kbps) is capped too
    assert middle.scene_crfs == (28.0, 21.0)
    small_hard = 400 * 2 ** ((26 - 23) / 8)
    big_hard = 4000 * 2 ** ((26 - 19) / 8)
    easy = math.sqrt(400 / 20 * 4000 / 20) * 2 ** ((26 - 28) / 8)  # both at CRF 28
    assert middle.predicted_kbps == pytest.approx((easy + math.sqrt(small_hard * big_hard)) / 2)
    assert plans["small"].predicted_kbps == pytest.approx(
        (400 / 40 * 2 ** ((34 - 36) / 8) + small_hard) / 2, rel=0.01
    )
    assert middle.maxrate_kbps == 1650
    tight = perscene.plan_rates(analysis, 96.0, {"small": 100, "middle": 100, "big": 100})
    # at a 100 kbps cap the small rung's easy scene (2 x 17 kbps at CRF 28) still leaves
    # room; the middle and big ones' (2 x 53, 2 x 168 kbps) do not
    assert [r.maxrate_kbps for r in tight] == [110, 96, 96]
    # one scene, or every scene capped: no raised aim
    (alone,) = perscene.plan_rates(
        perscene.Analysis(100, 25.0, (0,), (18.0, 26.0, 34.0), {"r": probes(2.0, 4000.0)[1:]}),
        96.0,
        {"r": 100},
    )
    assert alone.scene_crfs == (19.0,)


def test_rate_choice_keeps_keyframes_and_caps_with_vbv():
    rate = perscene.RungRate("r", 27.5, ((0, 49, 0.5), (50, 99, 2.0)), (31.0, 21.0), 95, 900)
    default = cpu_choice("H264", OptimizeFor.Balance, 1000, 25.0, 4.0)
    choice = perscene.rate_choice(default, rate, 1000)
    params = choice.options["x264-params"]
    assert params.startswith(default.options["x264-params"])  # keyint, scenecut=0, closed GOP
    assert ":crf=27.5:vbv-maxrate=960:vbv-bufsize=1000:zones=0,49,b=0.5/50,99,b=2" in params
    assert "b" not in choice.options and "maxrate" not in choice.options
    assert choice.options["forced-idr"] == "1" and choice.bit_rate == 0
    h265 = perscene.rate_choice(cpu_choice("H265", OptimizeFor.Speed, 800, 25.0, 4.0), rate, 800)
    assert "keyint=-1:scenecut=0:open-gop=0" in h265.options["x265-params"]
    assert "crf=27.5:vbv-maxrate=768:vbv-bufsize=800:zones=" in h265.options["x265-params"]
    nvenc = perscene.rate_choice(nvenc_choice("H264", OptimizeFor.Balance, 1000, 25, 4), rate, 1000)
    assert nvenc.options["rc"] == "vbr" and nvenc.options["cq"] == "28"
    assert (nvenc.options["maxrate"], nvenc.options["bufsize"]) == ("960k", "1000k")
    assert "b" not in nvenc.options and nvenc.options["no-scenecut"] == "1"


@pytest.mark.parametrize(
    ("kbps", "dropped"),
    [
        ([], []),
        ([500.0], []),
        ([100.0, 300.0, 900.0], []),
        ([100.0, 105.0, 300.0], [1]),  # the middle rung is a near-duplicate of the lowest
        ([100.0, 300.0, 320.0], [1]),  # the top is never dropped: the lower one goes
        ([100.0, 108.0, 109.0, 500.0], [1, 2]),  # compared with the last rung kept
        ([100.0, 110.0], [0]),  # exactly 10 %: within
        ([200.0, 150.0, 600.0], [1]),  # a bigger rung cheaper than a smaller one goes too
    ],
)
def test_near_duplicates(kbps, dropped):
    assert perscene.near_duplicates(kbps) == dropped


def test_segment_scores_and_percentile():
    frames = [(i, 90.0 if i < 50 else 80.0) for i in range(0, 100, 2)]
    scores = perscene.segment_scores(frames, [0, 50], 100)
    assert scores == [90.0, 80.0]
    assert perscene.percentile(scores, 5) == pytest.approx(80.5)
    assert perscene.percentile([], 5) is None
    assert perscene.segment_starts(__import__("fractions").Fraction(25), 2.0, 100) == [0, 50]


# --------------------------------------------------------------------------------- whole jobs

LADDER = [{"Height": 180, "BitrateInKbps": 300}, {"Height": 120, "BitrateInKbps": 150}]
KEY_ID = uuid.UUID("3f0e4c6a-9b1d-4e27-8a55-0c6f1d2e3b4a")
KEY = bytes.fromhex("8d1f3b5a7c9e0f2143658709badcfe10")
THUMBNAILS = {"Generate": True, "Width": 96, "DurationInSeconds": 1, "TileColumns": 2,
              "TileRows": 2}  # fmt: skip


def make_mixed(path: Path) -> Path:
    """4 s 320x180 at 25 fps, video only: 2 s of a box moving over a flat picture, 2 s noise."""
    rng = np.random.default_rng(3)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 320, 180, "yuv420p"
        stream.options = {"crf": "12", "preset": "veryfast"}
        for i in range(100):
            if i < 50:
                image = np.full((180, 320, 3), 60, np.uint8)
                image[60:120, 20 + 4 * i : 80 + 4 * i] = (230, 200, 40)
            else:
                image = rng.integers(0, 256, (180, 320, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, "rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def _run(root: Path, source: Path, mode: str, **options: Any) -> JobRun:
    job = make_job(
        input_folder(root, source),
        root / "out",
        formats=options.pop("formats", ["Dash", "Hls"]),
        mappings={"FailOnNoAudioTracks": False},
        VideoRepresentations=options.pop("ladder", LADDER),
        EncodingMode=mode,
        PerSceneEncoding={"TargetVmafScore": 93},
        **options,
    )
    job["Thumbnails"] = THUMBNAILS
    return run(root, job)


@pytest.fixture(scope="module")
def jobs(tmp_path_factory) -> dict[str, JobRun]:
    base = tmp_path_factory.mktemp("perscene")
    source = make_mixed(base / "mixed.mp4")
    drm = {"DrmProtection": "Base64Key", "KeyId": str(KEY_ID),
           "ContentKey": base64.b64encode(KEY).decode()}  # fmt: skip
    near = [*LADDER, {"Height": 180, "BitrateInKbps": 302}]  # 180p twice: a near-duplicate
    return {
        "default": _run(base / "default", source, "Default"),
        "perscene": _run(base / "perscene", source, "PerScene"),
        "default-drm": _run(base / "default-drm", source, "Default", **drm, formats=["Dash"]),
        "drm-near": _run(
            base / "drm-near", source, "PerScene", ladder=near, **drm, formats=["Dash"]
        ),
        # QualityMetrics: the transcoder measures every rung (sampled over all frames)
        "metrics": _run(base / "metrics", source, "PerScene", QualityMetrics=True),
    }


def _video_streams(job_run: JobRun) -> list[dict[str, Any]]:
    return [s for s in job_run.one("EncodingFinished")["Streams"] if s["Type"] == "Video"]


def test_the_package_plays_and_keyframes_match_default(jobs):
    """DASH and HLS parse and decode, segments start with key frames; every rung's key frame
    times are the same as in the Default package."""
    default = check_package(jobs["default"], numbers=False, expect_audio=False)
    perscene_ = check_package(jobs["perscene"], numbers=False, expect_audio=False)
    check_events(jobs["perscene"])
    assert (
        sorted(perscene_.video)
        == sorted(default.video)
        == [
            "video-H264-120-150k",
            "video-H264-180-300k",
        ]
    )
    for name, seen in perscene_.video.items():
        assert seen.key_times == default.video[name].key_times, name
        assert len(seen.key_times) == 2  # 4 s in 2 s segments: IDRs only at the boundaries


def test_the_cap_is_respected(jobs):
    for key in ("perscene", "drm-near"):
        for stream in _video_streams(jobs[key]):
            fields = stream["PerScene"]
            cap = fields["CapBitrateInKbps"]
            assert cap == int(stream["Name"].split("-")[-1].removesuffix("k"))
            assert fields["AverageBitrateInKbps"] <= cap * 1.05, stream["Name"]
            assert fields["PeakBitrateInKbps"] <= cap * 1.5, stream["Name"]
            assert stream["PeakBitrateInKbps"] <= cap * 1.5, stream["Name"]  # the manifest's


def test_report_and_streams_carry_the_per_scene_fields(jobs):
    job_run = jobs["perscene"]
    assert not [w for w in job_run.of_type("Warning") if w["Code"] == "PerSceneNotAvailable"]
    entries = {e["Name"]: e for e in job_run.report["QualityMetrics"]}
    streams = {s["Name"]: s for s in _video_streams(job_run)}
    assert set(entries) == set(streams)
    for name, entry in entries.items():
        fields = entry["PerScene"]
        assert fields == streams[name]["PerScene"]
        assert fields["TargetVmaf"] == 93
        assert fields["Scenes"] == 2  # the cut at 2 s
        assert 0 < fields["AverageBitrateInKbps"] <= fields["PeakBitrateInKbps"]
        assert fields["VmafMean"] == entry["Vmaf"] and 0 < fields["VmafMean"] <= 100
        assert fields["VmafP5Segments"] is not None
        assert 0 <= fields["VmafP5Segments"] <= max(fields["VmafMean"], 100)
        assert 12 <= fields["Crf"] <= 45
    # the report's bitrates are the chosen (measured) averages, not the caps
    variants = [int(b) for b in job_run.report["BitrateVariants"].split(",")]
    averages = [entries[n]["PerScene"]["AverageBitrateInKbps"] for n in sorted(entries)]
    # the field is rounded to 0.1 kbps, the variant from the exact average to 1 kbps
    assert all(abs(v - a) <= 0.55 for v, a in zip(sorted(variants), sorted(averages), strict=True))


def _libvmaf_mean(job_run: JobRun, name: str, width: int, height: int) -> float:
    """The rung's VMAF over every frame of its DASH package (init + segments) against the
    source scaled to its size (bicubic): the benchmark's measurement, the ground truth."""
    import json
    import subprocess
    import tempfile

    from engine.quality import vmaf_support

    dash = job_run.output_dir / "dash"
    segments = sorted(dash.glob(f"{name}_*.m4s"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    source = next(job_run.input_dir.glob("*.mp4"))
    with tempfile.TemporaryDirectory() as folder:
        joined, log = Path(folder) / "rung.mp4", Path(folder) / "vmaf.json"
        joined.write_bytes(b"".join(p.read_bytes() for p in [dash / f"{name}_init.mp4", *segments]))
        graph = (
            f"[1:v]scale={width}:{height}:flags=bicubic,format=yuv420p[ref];"
            f"[0:v]format=yuv420p[dist];[dist][ref]libvmaf=model=version=vmaf_v0.6.1"
            f":log_fmt=json:log_path={log}"
        )
        ffmpeg = vmaf_support()[0]
        assert ffmpeg is not None
        subprocess.run(
            [ffmpeg, "-v", "error", "-i", str(joined), "-i", str(source),
             "-filter_complex", graph, "-f", "null", "-"],
            check=True,
        )  # fmt: skip
        return float(json.loads(log.read_text())["pooled_metrics"]["vmaf"]["mean"])


def test_the_window_measurement_is_near_libvmaf_on_every_frame(jobs):
    """Without QualityMetrics the rungs are scored after the encode on windows in the middle
    of every segment (perscene.window_quality), against the analysis pass's frames: near
    libvmaf over every frame of the package; with QualityMetrics the transcoder measures
    (the same plan)."""
    windowed = {s["Name"]: s for s in _video_streams(jobs["perscene"])}
    full = {s["Name"]: s for s in _video_streams(jobs["metrics"])}
    assert set(windowed) == set(full)
    for name, stream in windowed.items():
        assert stream["PerScene"]["Crf"] == full[name]["PerScene"]["Crf"]  # the same plan
        truth = _libvmaf_mean(jobs["perscene"], name, stream["Width"], stream["Height"])
        print(name, truth, stream["Vmaf"], full[name]["Vmaf"])
        assert abs(stream["Vmaf"] - truth) < 3.0, (name, stream["Vmaf"], truth)
        assert stream["Psnr"] > 20 and 0.5 < stream["Ssim"] <= 1


@pytest.mark.parametrize(
    ("starts", "frames", "most", "expected"),
    [
        # 6 pairs centred at 1/12, 3/12 ... 11/12 of each 100-frame segment
        ([0, 100], 200, 60, [(7, 9), (24, 26), (40, 42), (57, 59), (74, 76), (90, 92),
                             (107, 109), (124, 126), (140, 142), (157, 159), (174, 176),
                             (190, 192)]),
        ([0, 100], 140, 60, [(7, 9), (24, 26), (40, 42), (57, 59), (74, 76), (90, 92),
                             (102, 104), (109, 111), (115, 117), (122, 124), (129, 131),
                             (135, 137)]),  # a shorter last segment
        ([0, 100], 110, 60, [(7, 9), (24, 26), (40, 42), (57, 59), (74, 76), (90, 92),
                             (100, 110)]),  # 10 frames: all of them
        # 3 of 5 segments (each too short for 6 pairs: whole): first, middle, last
        ([0, 10, 20, 30, 40], 50, 3, [(0, 10), (20, 30), (40, 50)]),
        # 30 frames: centres at (2k + 1) * 30 // 12 = 2, 7, 12 ... 27, each pair starting one
        # frame before its centre
        ([0, 30], 60, 60, [(1, 3), (6, 8), (11, 13), (16, 18), (21, 23), (26, 28),
                           (31, 33), (36, 38), (41, 43), (46, 48), (51, 53), (56, 58)]),
        ([], 0, 60, []),
    ],
)  # fmt: skip
def test_measure_windows(starts, frames, most, expected, monkeypatch):
    monkeypatch.setattr(perscene, "MAX_MEASURED_SEGMENTS", most)
    monkeypatch.setattr(perscene, "WINDOWS_PER_SEGMENT", 6)  # the table's pairs per segment
    assert perscene.measure_windows(starts, frames) == expected


def test_measure_windows_default_count():
    # 4 pairs per segment, centred at 1/8, 3/8, 5/8, 7/8 of each 100-frame segment
    assert perscene.WINDOWS_PER_SEGMENT == 4
    assert perscene.measure_windows([0, 100], 200) == [
        (11, 13), (36, 38), (61, 63), (86, 88), (111, 113), (136, 138), (161, 163), (186, 188)
    ]  # fmt: skip


def test_thumbnails_are_unchanged(jobs):
    def tiles(job_run: JobRun) -> dict[str, bytes]:
        return {
            p.relative_to(job_run.output_dir).as_posix(): p.read_bytes()
            for p in sorted(job_run.output_dir.rglob("*"))
            if p.suffix in (".jpg", ".vtt")
        }

    default, perscene_ = tiles(jobs["default"]), tiles(jobs["perscene"])
    assert default and any(name.endswith(".jpg") for name in default)
    assert perscene_ == default


def test_a_near_duplicate_rung_is_dropped_with_an_info_warning(jobs):
    job_run = jobs["drm-near"]
    job_run.assert_success()
    kept = {s["Name"] for s in _video_streams(job_run)}
    # 180p@300 and 180p@302 come out alike: the lower goes (the top rung is never dropped)
    assert kept == {"video-H264-120-150k", "video-H264-180-302k"}, [
        (s["Name"], s["PerScene"]) for s in _video_streams(job_run)
    ]
    (dropped,) = [w for w in job_run.of_type("Warning") if w["Code"] == "RenditionDropped"]
    assert dropped["Level"] == "Info" and "video-H264-180-300k" in dropped["Message"]
    mpd = (job_run.output_dir / "manifest.mpd").read_text()
    assert "video-H264-180-300k" not in mpd and "video-H264-180-302k" in mpd
    assert not list(job_run.output_dir.glob("video-H264-180-300k*"))


def test_drm_is_signalled_as_in_default(jobs):
    """The same key id on every video stream, the same protection in the manifest and pssh
    boxes in the init segments as the Default package."""
    for key in ("default-drm", "drm-near"):
        job_run = jobs[key]
        for stream in _video_streams(job_run):
            assert uuid.UUID(stream["KeyId"]) == KEY_ID
            init = job_run.output_dir / stream["InitFile"]
            data = init.read_bytes()
            assert b"pssh" in data and b"tenc" in data and b"encv" in data
    protection = [
        [line.strip() for line in (jobs[k].output_dir / "manifest.mpd").read_text().splitlines()
         if "ContentProtection" in line or "cenc:default_KID" in line]
        for k in ("default-drm", "drm-near")
    ]  # fmt: skip
    assert protection[0] and set(protection[0]) == set(protection[1])
    assert jobs["drm-near"].report["Drm"] is True


def _remux(source: Path, target: Path) -> Path:
    """`source`'s video stream copied into another container (packets unchanged)."""
    with av.open(str(source)) as inp, av.open(str(target), "w") as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is None:
                continue
            packet.stream = stream
            out.mux(packet)
    return target


def test_the_analysis_skipping_unreferenced_frames_equals_a_full_decode(tmp_path, monkeypatch):
    """From an MP4 the analysis pass leaves frames nothing references undecoded outside the
    probe clips and the measurement windows; from the same packets in Matroska (no skipping)
    it decodes every frame: the same frame count, scene starts, probes and stored reference
    frames."""
    from fractions import Fraction

    from engine.media import VideoRendition
    from engine.transcode import TranscodePlan, VideoOutput

    mp4 = make_mixed(tmp_path / "mixed.mp4")
    mkv = _remux(mp4, tmp_path / "mixed.mkv")
    outputs = tuple(
        VideoOutput(
            VideoRendition(w, h, kbps, "H264", "SD", f"video-H264-{h}-{kbps}k"),
            cpu_choice("H264", OptimizeFor.Speed, kbps, 25.0, 2.0),
            tmp_path / f"{h}.mp4",
        )
        for w, h, kbps in ((192, 108, 150), (320, 180, 300))
    )
    starts = perscene.segment_starts(Fraction(25), 2.0, 100)
    windows = perscene.measure_windows(starts, 100)
    from engine.quality import vmaf_support

    ffmpeg = vmaf_support()[0]
    assert ffmpeg is not None
    thumbnail = perscene._thumbnail
    decoded: list[int] = []  # frames decoded (each gets a thumbnail), per pass

    def thumbnail_spy(frame):
        decoded.append(1)
        return thumbnail(frame)

    monkeypatch.setattr(perscene, "_thumbnail", thumbnail_spy)
    probe = perscene._Prober.probe
    clips: list[tuple[int, bytes]] = []  # the probed clips' starts and pictures, per pass

    def probe_spy(prober, start, frames, segment_frames):
        clips.append((start, b"".join(f.to_ndarray().tobytes() for f in frames)))
        probe(prober, start, frames, segment_frames)

    monkeypatch.setattr(perscene._Prober, "probe", probe_spy)
    results = {}
    for source in (mp4, mkv):
        decoded.clear()
        clips.clear()
        plan = TranscodePlan(source, None, Fraction(25), outputs, (), 2.0, 4.0)
        store = perscene.ReferenceStore(
            tmp_path / source.suffix[1:],
            {o.rendition.name: (o.rendition.width, o.rendition.height) for o in outputs},
        )
        analysis = perscene.analyse(plan, ffmpeg, windows=windows, store=store)
        stored = {name: path.read_bytes() for name, path in store.paths.items()}
        results[source.suffix] = (analysis, store.indices, stored, len(decoded), list(clips))
    (
        (skipped, indices, stored, count, probed),
        (full, full_indices, full_stored, full_count, full_probed),
    ) = (
        results[".mp4"],
        results[".mkv"],
    )
    assert full_count == 100 and count < 100  # B-frames outside clips and windows: skipped
    assert skipped.frames == full.frames == 100
    assert skipped.scene_starts == full.scene_starts == (0, 50)
    # the same clips probed (the probes' scores themselves vary a little from run to run)
    spacing = round(perscene.CLIP_SPACING_S * 25)  # a clip every this many frames
    assert [start for start, _ in probed] == [0, 0, spacing, spacing]
    assert probed == full_probed
    assert {n: [p.start for p in c] for n, c in skipped.probes.items()} == {
        n: [p.start for p in c] for n, c in full.probes.items()
    }
    assert indices == full_indices == [i for a, b in windows for i in range(a, b)]
    assert stored == full_stored


def _write_rung(path: Path, codec: str, frames: int) -> Path:
    """A 160x96 rung written as the transcoder writes one (engine.transcode._VideoEncoder:
    fragmented MP4, pts = output frame index, an IDR every 2 s at 25 fps): a box moving over
    a gradient."""
    from fractions import Fraction

    from engine.media import VideoRendition
    from engine.transcode import VideoOutput, _VideoEncoder

    output = VideoOutput(
        VideoRendition(160, 96, 300, codec, "SD", "rung"),
        cpu_choice(codec, OptimizeFor.Speed, 300, 25.0, 2.0),
        path,
    )
    encoder = _VideoEncoder(output, Fraction(25))
    row = np.linspace(0, 255, 160, dtype=np.uint8)
    for i in range(frames):
        image = np.repeat(np.repeat(row[None, :, None], 96, axis=0), 3, axis=2)
        image[30:70, 2 * i % 120 : 2 * i % 120 + 40] = (230, 200, 40)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), "rgb24")
        frame = frame.reformat(format="yuv420p")
        frame.pts, frame.time_base = i, Fraction(1, 25)
        encoder.encode(frame, i % 50 == 0)
    encoder.close(frames)
    return path


@pytest.mark.parametrize("codec", ["H264", "H265"])
@pytest.mark.parametrize("first_segment_only", [False, True])
def test_rung_frames_skipping_equals_a_full_decode(tmp_path, codec, first_segment_only):
    """`rung_frames` (the after-encode measurement's decode) decodes only what the windows
    need: every window frame comes out, with the index of the full decode's frame whose
    planes are byte-identical (so is every other frame it decodes); frames nothing references
    are skipped outside the windows, and after the last window nothing is decoded."""
    from fractions import Fraction

    total = 90  # segments [0, 50) and [50, 90)
    rung = _write_rung(tmp_path / "rung.mp4", codec, total)
    windows = perscene.measure_windows([0, 50], total)
    if first_segment_only:
        windows = [w for w in windows if w[1] <= 50]
    wanted = {i for first, end in windows for i in range(first, end)}
    with av.open(str(rung)) as container:
        full = [f.to_ndarray().tobytes() for f in container.decode(video=0)]
    assert len(full) == total
    decoded = [
        (i, f.to_ndarray().tobytes()) for i, f in perscene.rung_frames(rung, Fraction(25), wanted)
    ]
    indices = [i for i, _ in decoded]
    assert indices == sorted(set(indices))  # in output order, each frame once
    assert wanted <= set(indices)
    assert all(planes == full[i] for i, planes in decoded)
    assert len(indices) < max(indices) + 1  # unreferenced frames skipped
    if first_segment_only:  # stopped a few frames (the decoder's reordering) after the window
        assert max(indices) < max(wanted) + 8


@pytest.mark.parametrize(("cap_kbps", "encodes"), [(10, 2), (100_000, 3)])
def test_a_probe_far_above_the_cap_skips_its_lowest_crf(tmp_path, monkeypatch, cap_kbps, encodes):
    """Noise at a 10 kbps cap: the middle CRF already costs over CAPPED_PROBE x the cap, so the
    lowest CRF is not encoded; its VMAF and rate continue the next two's slopes. Under a high
    cap all three CRFs are encoded."""
    from fractions import Fraction

    from engine.media import VideoRendition
    from engine.quality import vmaf_support
    from engine.transcode import VideoOutput

    ffmpeg = vmaf_support()[0]
    assert ffmpeg is not None
    output = VideoOutput(
        VideoRendition(160, 90, cap_kbps, "H264", "SD", "noise"),
        cpu_choice("H264", OptimizeFor.Speed, cap_kbps, 25.0, 2.0),
        tmp_path / "noise.mp4",
    )
    crfs = perscene.PROBE_CRFS["H264"]
    prober = perscene._Prober(output, Fraction(25), crfs, ffmpeg)
    opened: list[float] = []
    context = perscene._Prober._context

    def context_spy(prober, crf):
        opened.append(crf)
        return context(prober, crf)

    monkeypatch.setattr(perscene._Prober, "_context", context_spy)
    rng = np.random.default_rng(5)
    frames = [
        av.VideoFrame.from_ndarray(rng.integers(0, 256, (90, 160, 3), dtype=np.uint8), "rgb24")
        for _ in range(perscene.CLIP_FRAMES)
    ]
    prober.probe(0, frames, 50)
    (probe,) = prober.finish()
    assert sorted(opened) == sorted(crfs[-encodes:])
    assert all(math.isfinite(v) and 0 <= v <= 100 for v in probe.vmaf)
    assert probe.kbps[0] > probe.kbps[1] > probe.kbps[2] > 0
    if encodes == 2:
        assert probe.vmaf[0] == pytest.approx(min(100.0, 2 * probe.vmaf[1] - probe.vmaf[2]))
        assert probe.kbps[0] == pytest.approx(probe.kbps[1] ** 2 / probe.kbps[2])


def test_probe_rates_do_not_depend_on_the_source_time_base(tmp_path):
    """Frames from a demuxer carry the source's time base (here 1/12800): every CRF's probe
    encodes them at frame-numbered timestamps in the encoder's own time base, so a clip gives
    the same rates whatever its frames' time base (the first CRF used to get every frame at
    pts 0: on a pan clip 520 instead of 87 kbps)."""
    from fractions import Fraction

    from engine.media import VideoRendition
    from engine.quality import vmaf_support
    from engine.transcode import VideoOutput

    ffmpeg = vmaf_support()[0]
    assert ffmpeg is not None
    output = VideoOutput(
        VideoRendition(160, 90, 100_000, "H264", "SD", "box"),
        cpu_choice("H264", OptimizeFor.Speed, 100_000, 25.0, 2.0),
        tmp_path / "box.mp4",
    )
    probes: list[perscene.ClipProbe] = []
    for time_base, step in ((Fraction(1, 25), 1), (Fraction(1, 12800), 512)):
        frames = []
        for i in range(perscene.CLIP_FRAMES):  # a box moving over a gradient, 320x180
            row = np.linspace(0, 255, 320, dtype=np.uint8)
            image = np.repeat(np.repeat(row[None, :, None], 180, axis=0), 3, axis=2)
            image[60:120, 20 + 12 * i : 80 + 12 * i] = (230, 200, 40)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), "rgb24")
            frame.time_base = time_base
            frame.pts = step * i
            frames.append(frame)
        prober = perscene._Prober(output, Fraction(25), perscene.PROBE_CRFS["H264"], ffmpeg)
        prober.probe(0, frames, 50)
        probes += prober.finish()
    # (x264 is not bit-exact from run to run here: within 2 %)
    assert probes[1].kbps == pytest.approx(probes[0].kbps, rel=0.02)
