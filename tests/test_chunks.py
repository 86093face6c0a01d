"""Split and stitch (issue 17): chunk planning, and the seamlessness of a chunked package.

The source is 12 s of frame-numbered 320×180 video at 25 fps whose own keyframes (every 30
frames) are not on the chunks' starts (so every chunk decodes pre-roll), with audio bursts
next to the joins. It runs once in one pass and once in three 4 s chunks (2 s segments) in two
processes; the chunked package must be what the one-pass package is: the source's frame count
per rung, every frame number in order across the joins, the same keyframes and segments, audio
in sync within one frame, parsed by the manifest parsers and decoded by FFmpeg; encrypted
(cenc and cbcs) it decrypts bit-exactly with Shaka Packager.
"""

from __future__ import annotations

import base64
import subprocess
import uuid
from fractions import Fraction
from pathlib import Path

import av
import pytest
from drm_helpers import (
    DrmRun,
    clear_samples,
    digest,
    ffmpeg_binaries,
    packaged_tracks,
    shaka_decrypt,
    write_joined,
)
from e2e_helpers import (
    JobRun,
    check_events,
    check_package,
    check_report,
    input_folder,
    make_job,
    mux_clicks,
    onsets,
    read_dash,
    run_cli,
    segment_frames,
)
from mediagen import draw_frame

from engine.chunks import Chunk, ChunkSettings, plan_chunks, segment_start
from engine.pipeline import run_job
from engine.pipeline.chunked import why_unchunked
from engine.stitch import ChunkMismatch, ChunkTask, encode_chunk, stitch
from engine.transcode import boundary_frames

FPS = 25
SECONDS = 12
FRAMES = SECONDS * FPS
CLICKS = (3.7, 4.1, 8.0)  # seconds: around the joins at 4 s and 8 s
CHUNKING = ChunkSettings(workers=2, seconds=4.0)
KEY_ID = uuid.UUID("3f2a6c1e-5b4d-4e8f-9a7b-1c2d3e4f5a6b")
KEY = bytes(range(16))


# ------------------------------------------------------------------------------- planning


@pytest.mark.parametrize(
    ("duration", "rate", "segment", "chunk", "expected"),
    [
        # 12 s, 4 s chunks of 2 s segments: three chunks, the last open-ended
        (12.0, Fraction(25), 2.0, 4.0, [(0, 100), (100, 200), (200, None)]),
        # the remainder (1 s) goes into the last chunk
        (13.0, Fraction(25), 2.0, 4.0, [(0, 100), (100, 200), (200, None)]),
        # shorter than two chunks: one pass
        (7.9, Fraction(25), 2.0, 4.0, [(0, None)]),
        (3.0, Fraction(25), 2.0, 60.0, [(0, None)]),
        # chunk length rounded to whole segments (5 s of 2 s segments: 2 segments, 4 s)
        (8.0, Fraction(25), 2.0, 5.0, [(0, 100), (100, None)]),
        # 6 s chunks of 4 s segments round to 8 s (6/4 = 1.5 → 2 segments)
        (16.0, Fraction(25), 4.0, 6.0, [(0, 200), (200, None)]),
        # NTSC: the chunk starts are the segment boundaries' frames
        (
            12.0,
            Fraction(30000, 1001),
            2.0,
            4.0,
            [(0, 120), (120, 240), (240, None)],
        ),
        # a rate that does not divide the segment: the frame nearest each boundary
        (9.0, Fraction(24000, 1001), 1.5, 3.0, [(0, 72), (72, 144), (144, None)]),
        # a chunk shorter than a segment rounds up to one segment
        (6.0, Fraction(25), 2.0, 0.5, [(0, 50), (50, 100), (100, None)]),
    ],
)
def test_plan_chunks(duration, rate, segment, chunk, expected):
    chunks = plan_chunks(duration, rate, segment, chunk)
    assert [(c.first, c.end) for c in chunks] == expected
    assert [c.index for c in chunks] == list(range(len(expected)))


@pytest.mark.parametrize(
    ("rate", "segment"),
    [(Fraction(25), 2.0), (Fraction(30000, 1001), 2.0), (Fraction(24000, 1001), 1.5)],
)
def test_chunk_starts_are_the_transcoders_segment_boundaries(rate, segment):
    boundaries = boundary_frames(rate, segment)
    assert [segment_start(n, rate, segment) for n in range(50)] == [
        next(boundaries) for _ in range(50)
    ]


# ---------------------------------------------------------------------------------- sources


def _make_source(path: Path) -> Path:
    """Frame-numbered video, keyframes every 30 frames, a 1 kHz burst at each of CLICKS."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = 320, 180, "yuv420p"
        video.codec_context.gop_size = 30
        video.codec_context.options = {"preset": "ultrafast", "x264-params": "scenecut=0"}
        audio = container.add_stream("aac", rate=48000)
        audio.layout = "stereo"
        audio.metadata["language"] = "eng"
        for index in range(FRAMES):
            frame = av.VideoFrame.from_ndarray(draw_frame(index, 320, 180), "rgb24")
            frame = frame.reformat(format="yuv420p")
            frame.pts, frame.time_base = index, Fraction(1, FPS)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        mux_clicks(container, audio, 0, SECONDS * 48000, CLICKS)
    return path


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return _make_source(tmp_path_factory.mktemp("chunks-src") / "movie.mp4")


def _run(root: Path, source: Path, chunking: ChunkSettings | None, **options) -> JobRun:
    job = make_job(input_folder(root, source), root / "out", formats=["Dash", "Hls"], **options)
    events: list[dict] = []
    report = run_job(job, on_event=events.append, workdir=root / "work", chunking=chunking)
    return JobRun(job, report, events, root / "in", root / "out")


@pytest.fixture(scope="module")
def runs(source, tmp_path_factory) -> dict[str, JobRun]:
    root = tmp_path_factory.mktemp("chunks-runs")
    return {
        "one-pass": _run(root / "one-pass", source, None),
        "chunked": _run(root / "chunked", source, CHUNKING),
    }


# ------------------------------------------------------------------------------ seamlessness


def test_chunked_package_is_seamless(runs):
    """Frame count per rung, frame numbers in order across the joins, keyframes on segment
    boundaries, segment sizes, audio as long as the video, manifests read by mpegdash/m3u8."""
    chunked = runs["chunked"]
    check_package(chunked, source_frames=FRAMES)
    check_events(chunked)
    check_report(chunked)


def test_chunked_run_reports_its_chunks(runs):
    chunked, one_pass = runs["chunked"], runs["one-pass"]
    assert chunked.one("EncodingFinished")["Chunks"] == 3
    assert chunked.report["Chunks"] == 3
    details = chunked.report["ChunkDetails"]
    assert [d["Chunk"] for d in details] == [0, 1, 2]
    assert [d["FirstFrame"] for d in details] == [0, 100, 200]
    assert sum(d["Frames"] for d in details) == FRAMES
    assert all(d["Worker"] and d["Seconds"] > 0 for d in details)
    assert one_pass.one("EncodingFinished")["Chunks"] == 1
    assert one_pass.report["Chunks"] == 1 and "ChunkDetails" not in one_pass.report
    progress = [e["Progress"] for e in chunked.of_type("EncodingProgress")]
    assert progress == sorted(progress) and progress[-1] == 100


def test_keyframes_and_segments_as_one_pass(runs):
    """Every rung's keyframes and every segment's frame count equal the one-pass package's."""
    tracks = {}
    for name, run_ in runs.items():
        _, dash = read_dash(run_.output_dir / "dash" / "manifest.mpd")
        tracks[name] = {t.name: t for t in dash}
    assert tracks["chunked"].keys() == tracks["one-pass"].keys()
    for name, track in tracks["chunked"].items():
        other = tracks["one-pass"][name]
        if track.kind == "video":
            assert segment_frames(track) == segment_frames(other), name
        assert track.durations == pytest.approx(other.durations, abs=0.001), name


def test_audio_in_sync_across_the_joins(runs):
    """Each burst sounds within one frame of its time on the video's timeline, as in one pass."""
    for run_ in runs.values():
        _, dash = read_dash(run_.output_dir / "dash" / "manifest.mpd")
        audio = next(t for t in dash if t.kind == "audio")
        assert onsets(audio.data()) == pytest.approx(list(CLICKS), abs=1 / FPS)


def test_ffmpeg_decodes_the_chunked_rungs(runs, tmp_path):
    """The FFmpeg CLI decodes every rung (init + all segments) without an error, every frame."""
    _, dash = read_dash(runs["chunked"].output_dir / "dash" / "manifest.mpd")
    for track in (t for t in dash if t.kind == "video"):
        joined = write_joined([track.data()], tmp_path / f"{track.name}.mp4")
        result = subprocess.run(
            [
                *(ffmpeg_binaries()["ffmpeg9"], "-nostdin", "-v", "error", "-i", str(joined)),
                *("-map", "0:v:0", "-f", "framecrc", "-"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0 and not result.stderr.strip(), result.stderr[-2000:]
        frames = [line for line in result.stdout.splitlines() if line and line[0] != "#"]
        assert len(frames) == FRAMES, track.name


# ----------------------------------------------------------------------- chunk encoder itself


def _tasks(source: Path, folder: Path, sizes: dict[str, tuple[int, int]]) -> list[ChunkTask]:
    """Chunk tasks of the source's three chunks; `sizes` per chunk index overrides the rung."""
    from engine.stitch import video_start

    start = video_start(source, None)
    tasks = []
    for chunk in plan_chunks(SECONDS, Fraction(FPS), 2.0, 4.0):
        width, height = sizes.get(str(chunk.index), (320, 180))
        tasks.append(
            ChunkTask(
                chunk=chunk,
                video_file=source,
                video_track=None,
                frame_rate=Fraction(FPS),
                video_start=start,
                outputs=(_output(folder / f"v.{chunk.index}.mp4", width, height),),
                segment_seconds=2.0,
            )
        )
    return tasks


def _output(path: Path, width: int, height: int):
    from engine.encoders import EncoderChoice
    from engine.media import VideoRendition
    from engine.transcode import VideoOutput

    rendition = VideoRendition(width, height, 300, "H264", "SD", "v")
    choice = EncoderChoice(
        "libx264",
        {
            "preset": "ultrafast",
            "x264-params": "keyint=51:min-keyint=1:scenecut=0:open-gop=0:forced-idr=1",
            "forced-idr": "1",
        },
        "yuv420p",
        300_000,
    )
    return VideoOutput(rendition, choice, path)


def test_chunks_share_their_codec_configuration_and_stitch_exactly(source, tmp_path):
    """Every chunk of a rung has the same SPS/PPS (avcC); the stitched file holds every frame
    once, in order, with continuous timestamps and an IDR at each chunk's first frame."""
    from engine.stitch import decoder_configuration

    tasks = _tasks(source, tmp_path, {})
    results = [encode_chunk(task) for task in tasks]
    assert [r.frames for r in results] == [100, 100, 100]
    assert all(r.preroll > 0 for r in results[1:])  # the source's keyframes are elsewhere
    configs = {decoder_configuration(r.tracks[0].path) for r in results}
    assert len(configs) == 1 and next(iter(configs))
    out = tmp_path / "v.mp4"
    assert stitch([(r.chunk, r.tracks[0].path) for r in results], Fraction(FPS), out) == FRAMES
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        packets = [p for p in container.demux(stream) if p.size]
        pts = sorted(p.pts for p in packets)
        step = pts[1] - pts[0]
        assert pts == [pts[0] + i * step for i in range(FRAMES)]
        keys = sorted(round((p.pts - pts[0]) / step) for p in packets if p.is_keyframe)
        assert keys == list(range(0, FRAMES, 50))
    with av.open(str(out)) as container:
        from mediagen import read_frame_number

        numbers = [read_frame_number(f.to_ndarray(format="rgb24")) for f in container.decode()]
    assert numbers == list(range(FRAMES))


def test_a_chunk_with_another_configuration_is_refused(source, tmp_path):
    """A chunk whose SPS differs (here: another picture size) cannot be stitched."""
    tasks = _tasks(source, tmp_path, {"1": (160, 90)})
    results = [encode_chunk(task) for task in tasks]
    with pytest.raises(ChunkMismatch, match="codec configuration"):
        stitch([(r.chunk, r.tracks[0].path) for r in results], Fraction(FPS), tmp_path / "x.mp4")
    assert not (tmp_path / "x.mp4").exists()


def test_a_frame_gap_is_refused(source, tmp_path):
    """Frame numbering that is not the one-pass numbering (a chunk claiming frames the source
    does not have) raises rather than stitching a short rendition."""
    task = _tasks(source, tmp_path, {})[1]
    beyond = ChunkTask(**{**task.__dict__, "chunk": Chunk(1, FRAMES + 50, FRAMES + 100)})
    with pytest.raises(ChunkMismatch):
        encode_chunk(beyond)


def test_what_is_not_chunked(source, tmp_path):
    from dataclasses import replace

    from engine.transcode import TranscodePlan

    task = _tasks(source, tmp_path, {})[0]
    plan = TranscodePlan(source, None, Fraction(FPS), task.outputs, (), 2.0, 12.0)
    assert why_unchunked(plan, CHUNKING) is None
    assert why_unchunked(plan, None) == "the node does not chunk"
    assert why_unchunked(replace(plan, video=()), CHUNKING) == "no video to encode"
    assert "GPU" in (why_unchunked(replace(plan, hw_decode=True), CHUNKING) or "")


# ------------------------------------------------------------------------------------- DRM


@pytest.mark.parametrize(("scheme", "formats"), [("cenc", ["Dash"]), ("cbcs", ["Hls"])])
def test_encrypted_chunked_package_decrypts_bit_exactly(source, tmp_path, scheme, formats):
    """Shaka Packager decrypts every track of a chunked, encrypted package to the samples of
    the stitched clear rendition, bit for bit."""
    root = tmp_path
    job = make_job(
        input_folder(root, source),
        root / "out",
        formats=formats,
        DrmProtection="Base64Key",
        EncryptionScheme=scheme,
        KeyId=str(KEY_ID),
        ContentKey=base64.b64encode(KEY).decode(),
    )
    events: list[dict] = []
    report = run_job(
        job,
        on_event=events.append,
        workdir=root / "work",
        keep_workdir=True,
        data_dir=root / "data",
        chunking=ChunkSettings(workers=1, seconds=4.0),
    )
    run_ = DrmRun(job, report, events, [], root / "work", root / "out")
    run_.assert_success()
    assert report["Chunks"] == 3
    _, tracks = packaged_tracks(run_)
    assert {t.kind for t in tracks} == {"video", "audio"}
    for track in tracks:
        joined = write_joined([track.data()], tmp_path / f"enc-{track.name}.mp4")
        output = tmp_path / f"clear-{track.name}.mp4"
        result = shaka_decrypt(joined, track.kind, {KEY_ID: KEY}, output)
        assert result.returncode == 0, result.stderr[-2000:]
        from packagers.mp4 import read_track

        decrypted = read_track(output)
        got = digest(decrypted.read_samples(0, len(decrypted.samples)))
        clear = digest(clear_samples(run_.clear_track(track.name)))
        assert got == clear, track.name
        if track.kind == "video":
            assert len(got) == FRAMES


def test_vipe_run_parallel(source, tmp_path):
    """`vipe run --parallel 2 --chunk-seconds 4`: the report says 3 chunks."""
    import json

    job = make_job(input_folder(tmp_path, source), tmp_path / "out")
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(job))
    report = tmp_path / "report.json"
    result = run_cli(
        "run", str(job_file), "--parallel", "2", "--chunk-seconds", "4", "--report", str(report)
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    entry = json.loads(report.read_text())
    assert entry["Success"] and entry["Chunks"] == 3
    assert len(entry["ChunkDetails"]) == 3
