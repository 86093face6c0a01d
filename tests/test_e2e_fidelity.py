"""End to end, issue 20 (items 1, 2, 6, 7, 8): variable frame rates keep sync, no sliver
segments, 10-bit H.265 kept, lean HLS-TS audio whose EXTINF is its real duration.

Sources are made here with PyAV, frame timestamps set explicitly; their frames show their own
number (`mediagen.draw_frame`), so each output frame says which source frame, and so which
source time, it shows.
"""

from __future__ import annotations

import bisect
import io
import itertools
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from e2e_helpers import read_dash, read_hls, run_simple
from mediagen import draw_frame, make_media, read_frame_number
from mpegdash.parser import MPEGDASHParser

pytestmark = pytest.mark.e2e

WIDTH, HEIGHT = 320, 180
BEEP = 0.05  # seconds of 1 kHz at each whole second


def make_timed_source(path: Path, times: list[Fraction], end: Fraction, flashes=()) -> None:
    """H.264 + AAC MP4: frame k at `times[k]` (seconds), audio to `end` with a beep on every
    whole second; frames whose time is in `flashes` are white below their frame number."""
    time_base = Fraction(1, 90000)
    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=30)
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        video.time_base = video.codec_context.time_base = time_base
        video.codec_context.options = {"preset": "ultrafast"}
        audio = container.add_stream("aac", rate=48000)
        audio.layout = "stereo"
        audio.metadata["language"] = "eng"
        durations: dict[int, int] = {}

        def mux(packets) -> None:
            for packet in packets:
                packet.duration = durations[packet.pts]
                container.mux(packet)

        for index, time in enumerate(times):
            rgb = draw_frame(index, WIDTH, HEIGHT)
            if time in flashes:
                rgb[HEIGHT // 6 :] = 255
            frame = av.VideoFrame.from_ndarray(rgb, "rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = round(time / time_base), time_base
            # each frame lasts until the next (the last until `end`): the file's duration
            following = times[index + 1] if index + 1 < len(times) else end
            durations[frame.pts] = round((following - time) / time_base)
            mux(video.encode(frame))
        mux(video.encode(None))
        samples = int(end * 48000)
        for position in range(0, samples, 1024):
            t = np.arange(position, min(position + 1024, samples)) / 48000
            tone = np.where(t % 1.0 < BEEP, 0.8 * np.sin(2 * np.pi * 1000 * t), 0.0)
            tone = tone.astype(np.float32)
            frame = av.AudioFrame.from_ndarray(np.stack([tone, tone]), "fltp", "stereo")
            frame.sample_rate, frame.pts, frame.time_base = 48000, position, Fraction(1, 48000)
            container.mux(audio.encode(frame))
        container.mux(audio.encode(None))


def stepped_times() -> list[Fraction]:
    """5 s at 24 fps, 5 s at 30, 3 s at 15: 315 frames over 13 s."""
    times = [Fraction(k, 24) for k in range(120)]
    times += [5 + Fraction(k, 30) for k in range(150)]
    times += [10 + Fraction(k, 15) for k in range(45)]
    return times


def phone_times(seconds: float = 6.0) -> list[Fraction]:
    """A phone's wandering rate: each interval drawn from 29.5-30.5 fps (ms timestamps)."""
    generator = np.random.default_rng(20)
    times, time = [], 0.0
    while time < seconds - 1 / 29.5:
        times.append(Fraction(round(time * 1000), 1000))
        time += 1 / generator.uniform(29.5, 30.5)
    return times


def decoded_video(data: bytes) -> list[tuple[Fraction, int, float]]:
    """(presentation time from the first frame, frame number, mean brightness below the
    number) of every decoded frame."""
    result = []
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            rgb = frame.to_ndarray(format="rgb24")
            time = Fraction(frame.pts) * stream.time_base
            result.append((time, read_frame_number(rgb), float(rgb[HEIGHT // 4 :].mean())))
    start = min(t for t, _, _ in result)
    return [(t - start, n, b) for t, n, b in result]


def beeps(data: bytes) -> list[float]:
    """Presentation times (s, encoder priming skipped) where each beep starts."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        chunks = [(float(f.time or 0.0), f.to_ndarray()[0]) for f in container.decode(stream)]
    start = chunks[0][0]
    level = np.concatenate([np.abs(c) for _, c in chunks])
    loud = np.flatnonzero(level > 0.4)
    onsets = [loud[0]] + [b for a, b in itertools.pairwise(loud) if b - a > 4800]
    return [start + i / 48000 for i in onsets]


def video_and_audio(folder: Path, manifest: str = "manifest.mpd"):
    """The 180p video and the audio track of a DASH package folder."""
    _, tracks = read_dash(folder / manifest)
    video = next(t for t in tracks if t.kind == "video" and t.attributes["height"] == HEIGHT)
    audio = next(t for t in tracks if t.kind == "audio")
    return video, audio


def check_timed(job_run, times: list[Fraction], end: Fraction, *rates: Fraction) -> list:
    """Every output frame shows the source frame due at its time (each frame first shows at
    its source time ± half an output frame; dropped and duplicated frames follow from that),
    the duration is the source's (± one frame). Returns the decoded frames."""
    job_run.assert_success()
    video, _ = video_and_audio(job_run.output_dir)
    rate = Fraction(video.attributes["frame_rate"])
    assert rate in rates, rate
    frames = decoded_video(video.data())
    half = 1 / (2 * rate)
    slack = half + Fraction(1, 1000)
    first_seen: set[int] = set()
    for index, (time, number, _) in enumerate(frames):
        assert time == Fraction(index) / rate, (index, time)
        # the source frame on screen at this time: the last one due by the slot's middle
        assert number == bisect.bisect_right(times, time + slack) - 1, (index, number)
        if number not in first_seen:  # a frame first shows at its source time
            first_seen.add(number)
            assert abs(times[number] - time) <= slack, (index, number)
    numbers = [n for _, n, _ in frames]
    assert numbers == sorted(numbers) and numbers[0] == 0 and numbers[-1] == len(times) - 1
    assert abs(Fraction(len(frames)) / rate - end) <= 1 / rate
    return frames


def test_stepped_frame_rate_keeps_sync(tmp_path):
    """24 → 30 → 15 fps (a change long after the start): CFR at a common rate, each frame at
    its source time, flashes with their beeps, the duration kept, a Warning that says so."""
    times = stepped_times()
    source = tmp_path / "stepped.mp4"
    make_timed_source(source, times, Fraction(13), flashes=(Fraction(5), Fraction(10)))
    job_run = run_simple(tmp_path / "job", source, formats=["Dash"])
    rate = Fraction(24)  # 315 frames / 13 s = 24.23, within 1% of 24
    frames = check_timed(job_run, times, Fraction(13), rate)
    flashes = [time for time, _, brightness in frames if brightness > 200]
    first_flashes = [flashes[0], next(t for t in flashes if t > 6)]
    assert first_flashes == [pytest.approx(5.0, abs=1 / 48), pytest.approx(10.0, abs=1 / 48)]
    # A/V sync within one frame: the beeps on whole seconds, the flashes with theirs
    _, audio = video_and_audio(job_run.output_dir)
    onsets = beeps(audio.data())
    assert onsets == pytest.approx([float(s) for s in range(13)], abs=1 / 24)
    for flash in first_flashes:
        assert min(abs(float(flash) - o) for o in onsets) <= 1 / 24
    audio_seconds = sum(audio.durations)
    assert audio_seconds == pytest.approx(13.0, abs=1 / 24 + 0.03)  # (+ the AAC priming)
    warnings = [e for e in job_run.of_type("Warning") if "variable frame rate" in str(e)]
    assert len(warnings) == 1, job_run.of_type("Warning")
    text = str(warnings[0])
    assert "constant 24 fps" in text and "315 source frames" in text
    assert "dropped" in text and "duplicated" in text


def test_phone_jitter_keeps_sync(tmp_path):
    """29.5-30.5 fps, wandering frame by frame: 30 fps out, each frame at its time."""
    times = phone_times()
    source = tmp_path / "phone.mp4"
    make_timed_source(source, times, Fraction(6))
    job_run = run_simple(tmp_path / "job", source, formats=["Dash"])
    end = times[-1] + Fraction(1, 30)
    # the average (29.98 here) snaps to the nearest common rate
    check_timed(job_run, times, end, Fraction(30000, 1001), Fraction(30))
    _, audio = video_and_audio(job_run.output_dir)
    assert beeps(audio.data()) == pytest.approx([float(s) for s in range(6)], abs=1 / 30)


# ------------------------------------------------------------------------- no sliver segments


def _segment_checks(job_run, segment: float) -> None:
    """Every media segment of every manifest: at least half a segment long, none starting at
    or after the presentation's end; TS segments last what their EXTINF says."""
    job_run.assert_success()
    out = job_run.output_dir
    for manifest in sorted(out.rglob("manifest.*")):
        if manifest.suffix == ".mpd":
            _, tracks = read_dash(manifest)
            mpd = MPEGDASHParser.parse(str(manifest))
            end = _iso_seconds(mpd.media_presentation_duration)
        else:
            _, tracks = read_hls(manifest)
            end = None
        for track in tracks:
            if track.kind not in ("video", "audio"):
                continue
            durations = track.durations or _sidx_durations(track)
            assert all(d >= segment / 2 for d in durations), (manifest, track.name, durations)
            if end is not None:
                starts = np.cumsum([0.0, *durations[:-1]])
                assert all(s < end for s in starts), (manifest, track.name, starts, end)
            if track.segments[0].path.suffix == ".ts":
                for index, said in enumerate(track.durations):
                    _, length = _ts_span(track.segments[index].read())
                    assert length == pytest.approx(said, abs=0.0011), (track.name, index)


def _iso_seconds(text: str) -> float:
    import re

    match = re.fullmatch(r"PT(?:(\d+)H)?(?:(\d+)M)?(?:([\d.]+)S)?", text)
    assert match, text
    hours, minutes, seconds = match.groups()
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds or 0)


def _sidx_durations(track) -> list[float]:
    """Segment durations of a single-file (byte-range) track, from decoding each segment."""
    durations = []
    for index in range(len(track.segments)):
        with av.open(io.BytesIO(track.segment_bytes(index))) as container:
            stream = container.streams[0]
            packets = [p for p in container.demux(stream) if p.size]
            start = min(p.pts for p in packets)
            stop = max(p.pts + p.duration for p in packets)
            durations.append(float((stop - start) * stream.time_base))
    return durations


def _ts_span(data: bytes) -> tuple[float, float]:
    """(first pts, media duration) in seconds of a TS segment, as PyAV reads it."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams[0]
        packets = [p for p in container.demux(stream) if p.size]
        start = min(p.pts for p in packets)
        stop = max(p.pts + p.duration for p in packets)
        return float(start * stream.time_base), float((stop - start) * stream.time_base)


@pytest.mark.parametrize(
    ("seconds", "byte_range"),
    [(4.0, False), (4.08, False), (4.08, True)],
    ids=["exact-multiple", "small-remainder", "small-remainder-byte-range"],
)
def test_no_sliver_segments(tmp_path, seconds, byte_range):
    source = make_media(tmp_path / f"src-{seconds}.mp4", duration=seconds)
    options = {"SegmentFormat": "ByteRange"} if byte_range else {}
    job_run = run_simple(tmp_path / "job", source, formats=["Dash", "Hls", "HlsTs"], **options)
    _segment_checks(job_run, 2.0)
    video, audio = video_and_audio(job_run.output_dir / "dash")
    assert len(video.segments) == len(audio.segments) == 2


# ------------------------------------------------------------------------------------ HLS-TS


def test_ts_audio_is_lean_and_starts_with_the_video(tmp_path):
    source = make_media(tmp_path / "src.mp4", duration=6.0)
    job_run = run_simple(tmp_path / "job", source, formats=["Dash", "HlsTs"])
    _segment_checks(job_run, 2.0)
    _, tracks = read_hls(job_run.output_dir / "hlsts" / "manifest.m3u8")
    ts_audio = next(t for t in tracks if t.kind == "audio")
    ts_video = next(t for t in tracks if t.kind == "video")
    _, dash_audio = video_and_audio(job_run.output_dir / "dash")
    with av.open(io.BytesIO(dash_audio.data())) as container:
        payload = sum(p.size for p in container.demux(container.streams.audio[0]))
    ts_bytes = sum(piece.size for piece in ts_audio.segments)
    assert ts_bytes / payload - 1 < 0.10, (ts_bytes, payload)
    video_start, _ = _ts_span(ts_video.segments[0].read())
    audio_start, _ = _ts_span(ts_audio.segments[0].read())
    assert abs(video_start - audio_start) <= 1 / 25, (video_start, audio_start)
    playlist = ts_audio.attributes["playlist"]
    assert playlist.target_duration == round(max(ts_audio.durations))


# ------------------------------------------------------------------------------------ 10-bit


def test_ten_bit_hevc_stays_ten_bit_in_h265(tmp_path):
    source = make_media(
        tmp_path / "main10.mp4",
        duration=2.0,
        video_codec="libx265",
        pix_fmt="yuv420p10le",
        video_options={"preset": "ultrafast", "x265-params": "log-level=error"},
    )
    job_run = run_simple(tmp_path / "h265", source, formats=["Dash", "Hls"], VideoFormat="H265")
    job_run.assert_success()
    video, _ = video_and_audio(job_run.output_dir / "dash")
    assert video.attributes["codecs"].startswith("hvc1.2.4.L"), video.attributes["codecs"]
    _, hls_tracks = read_hls(job_run.output_dir / "hls" / "manifest.m3u8")
    for track in (t for t in hls_tracks if t.kind == "video"):
        assert ",hvc1.2.4.L" in "," + track.attributes["codecs"], track.attributes["codecs"]
    with av.open(io.BytesIO(video.data())) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "yuv420p10le"
    # H.264 from the same source stays 8-bit
    job_run = run_simple(tmp_path / "h264", source, formats=["Dash"])
    job_run.assert_success()
    video, _ = video_and_audio(job_run.output_dir)
    assert video.attributes["codecs"].startswith("avc1.")
    with av.open(io.BytesIO(video.data())) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "yuv420p"
