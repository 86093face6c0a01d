"""FFmpeg's detail in engine errors, and the encoder settings of each rendition in the log
(`engine.ffmpeg`).

A failing decode, demux or probe names the file (never its folder), the FFmpeg error
(`AVERROR_*` and PyAV's class) and FFmpeg's last log line; a corrupt source shows all three in
its `FinalError`. Each rendition's encoder settings are logged once as an `ffmpeg` command line.
With FFmpeg's log on, closing a corrupt source mid-decode must not hang (`close_input`).
"""

from __future__ import annotations

import itertools
import logging
import re
import shlex
import subprocess
import sys
import threading
from fractions import Fraction
from pathlib import Path

import av
import av.error
import av.logging
import pytest
from e2e_helpers import input_folder, make_job, run
from mediagen import make_media

from engine.encoders import cpu_choice, nvenc_choice
from engine.errors import SourceError
from engine.ffmpeg import (
    encoder_command,
    error_message,
    error_name,
    log_mark,
    redact,
    watch_log,
)
from engine.job import OptimizeFor
from engine.media import HdrInfo, VideoRendition
from engine.probe import probe
from engine.transcode import TranscodePlan, VideoOutput, transcode

ROOT = Path(__file__).resolve().parent.parent
INVALIDDATA = 1094995529  # PyAV's errno of AVERROR_INVALIDDATA
_serial = itertools.count()


def _ffmpeg_line(text: str) -> str:
    """Log `text` through FFmpeg's own log at ERROR, as a decoder would ("h264" context).

    Each call's text is made unique: PyAV drops a line identical to the one before it."""
    watch_log()
    text = f"{text} #{next(_serial)}"
    av.logging.log(av.logging.ERROR, "h264", text)
    return text


def _garble(data: bytes, start: int, stop: int, step: int = 97) -> bytes:
    """Every `step`-th byte in [start, stop) flipped: a damaged, still indexed file."""
    damaged = bytearray(data)
    for index in range(start, stop, step):
        damaged[index] ^= 0x5A
    return bytes(damaged)


# ------------------------------------------------------------------------- the message helper


def test_error_names():
    assert error_name(INVALIDDATA) == "AVERROR_INVALIDDATA"
    assert error_name(av.error.ErrorType.EOF.value) == "AVERROR_EOF"
    assert error_name(22) == "AVERROR(EINVAL)"
    assert error_name(2) == "AVERROR(ENOENT)"
    assert error_name(123456789) is None
    assert error_name(None) is None


def test_message_names_the_file_the_error_and_the_last_log_line():
    path = Path("/srv/vipe/work/job-1/in/movie.mp4")
    mark = log_mark()
    line = _ffmpeg_line("Invalid NAL unit size (1295788826 > 521).")
    # PyAV quotes the full path in str(error): the message must not.
    error = av.error.InvalidDataError(
        INVALIDDATA, "Invalid data found when processing input", str(path)
    )
    message = error_message(path, "cannot decode video at 1.48 s", error, since=mark)
    assert message == (
        "movie.mp4: cannot decode video at 1.48 s: InvalidDataError (AVERROR_INVALIDDATA): "
        f"Invalid data found when processing input; FFmpeg log: [h264] {line}"
    )
    assert "/srv" not in message


def test_message_without_an_error_still_has_the_log_line():
    mark = log_mark()
    line = _ffmpeg_line("stream 0, offset 0x1f3a: partial file")
    message = error_message(Path("clip.mp4"), "the file is truncated", since=mark)
    assert message == f"clip.mp4: the file is truncated; FFmpeg log: [h264] {line}"


def test_a_line_from_before_the_mark_is_not_blamed():
    _ffmpeg_line("a line about an earlier file")
    mark = log_mark()
    error = av.error.EOFError(av.error.ErrorType.EOF.value, "End of file")
    message = error_message(Path("clip.mp4"), "cannot open", error, since=mark)
    assert message == "clip.mp4: cannot open: EOFError (AVERROR_EOF): End of file"


def test_a_line_of_another_python_thread_is_not_blamed():
    mark = log_mark()
    other = threading.Thread(target=_ffmpeg_line, args=("another job's decoder",))
    other.start()
    other.join()
    message = error_message(Path("clip.mp4"), "no video frame could be decoded", since=mark)
    assert message == "clip.mp4: no video frame could be decoded"
    # and that thread's line is there for that thread: this one's own line wins here
    line = _ffmpeg_line("this thread's decoder")
    assert error_message(Path("clip.mp4"), "x", since=mark).endswith(f"[h264] {line}")


def test_non_ffmpeg_errors_keep_their_text_without_folders():
    message = error_message(
        Path("/work/job/in/movie.mkv"),
        "cannot be read",
        ValueError("bad header in /work/job/in/movie.mkv"),
    )
    assert message.startswith("movie.mkv: cannot be read: ValueError: bad header in movie.mkv")
    assert "/work" not in message


def test_redact_keeps_names_and_drops_folders_and_credentials():
    text = (
        "opening https://user:secret@blob.example/c/movie.mp4?sig=abc123&se=2030 "
        "and /var/lib/vipe/work/42/in/movie.mp4 at 30000/1001 fps (ftp://bob@host/x.mp4)"
    )
    cleaned = redact(text)
    assert cleaned == (
        "opening https://blob.example/c/movie.mp4 and movie.mp4 at 30000/1001 fps "
        "(ftp://host/x.mp4)"
    )
    assert redact("/in/a b.mp4: broken", "/in/a b.mp4") == "a b.mp4: broken"


def test_a_long_log_line_is_shortened():
    mark = log_mark()
    _ffmpeg_line("x" * 1000)
    message = error_message(Path("clip.mp4"), "cannot open", since=mark)
    line = message.split("; FFmpeg log: ", 1)[1]
    assert len(line) <= 300 and line.endswith("…")


# ---------------------------------------------------------------------------- errors, for real


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """A valid 4 s 320x180 H.264 + AAC MP4 (index at the end)."""
    return make_media(tmp_path_factory.mktemp("ffmpeg-errors") / "clip.mp4", duration=4.0)


def _damaged(clip: Path, folder: Path, name: str = "movie.mp4") -> Path:
    """`clip` with the middle third of its media data garbled (the index intact)."""
    data = clip.read_bytes()
    start = data.find(b"mdat") + 8
    end = data.find(b"moov")
    assert 0 < start < end
    third = (end - start) // 3
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    target.write_bytes(_garble(data, start + third, start + 2 * third))
    return target


def test_probe_of_a_cut_mp4_names_the_demuxers_complaint(clip, tmp_path):
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(clip.read_bytes()[: clip.stat().st_size * 6 // 10])  # the moov is gone
    with pytest.raises(SourceError) as caught:
        probe(cut)
    message = caught.value.message
    assert message.startswith("cut.mp4: not a readable media file: InvalidDataError ")
    assert "(AVERROR_INVALIDDATA)" in message
    assert message.endswith("; FFmpeg log: [mov,mp4,m4a,3gp,3g2,mj2] moov atom not found")
    assert str(tmp_path) not in message


@pytest.mark.e2e
def test_corrupt_source_final_error_names_file_ffmpeg_error_and_log_line(clip, tmp_path):
    source = _damaged(clip, tmp_path / "src")
    job_run = run(tmp_path, make_job(input_folder(tmp_path, source), tmp_path / "out"))
    error = job_run.final_error
    assert error is not None and job_run.events[-1] is error
    assert (error["ErrorCode"], error["Phase"]) == (3002, "Encoding"), error
    message = error["ErrorMessage"]
    # "movie.mp4: cannot decode audio at 1.344 s: InvalidDataError (AVERROR_INVALIDDATA):
    #  Invalid data found when processing input; FFmpeg log: [aac] invalid band type"
    assert re.fullmatch(
        r"movie\.mp4: cannot decode (video|audio) at [\d.]+ s: \w+Error \(AVERROR_[A-Z_]+\): "
        r"[^;]+; FFmpeg log: \[[\w,]+\] \S.*",
        message,
    ), message
    assert str(tmp_path) not in message and "/work" not in message


# The decode loop of a job that hits a corrupt frame, then closes the source at once, the way
# transcode does on an error: with FFmpeg's log on, a plain close() hangs here (a decoder thread
# logs while the closing thread, holding the GIL, waits for it).
_CLOSE_SCRIPT = """
import sys
import av
from engine.ffmpeg import close_input, watch_log
watch_log()
for i in range(20):
    container = av.open(sys.argv[1])
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    stream.codec_context.thread_count = 8
    for n, packet in enumerate(container.demux(stream)):
        try:
            packet.decode()
        except av.FFmpegError:
            pass
        if n > 5 + i:
            break
    close_input(container)
    del container, stream, packet
print("closed")
"""


def test_closing_a_corrupt_source_mid_decode_does_not_hang(tmp_path):
    clip = make_media(tmp_path / "noisy.mp4", duration=4.0, audio=[])
    data = clip.read_bytes()
    noisy = tmp_path / "noisier.mp4"
    noisy.write_bytes(_garble(data, data.find(b"mdat") + 200, len(data) - 3000))
    done = subprocess.run(
        [sys.executable, "-c", _CLOSE_SCRIPT, str(noisy)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,  # a hang fails the test instead of the suite
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "closed"


# --------------------------------------------------------------------- encoder settings logged


def _args(command: str) -> dict[str, str]:
    """`-option value` pairs of an ffmpeg command line."""
    words = shlex.split(command)
    assert words[0] == "ffmpeg"
    return {w: words[i + 1] for i, w in enumerate(words[:-1]) if w.startswith("-")}


def test_each_rendition_logs_its_ffmpeg_command_once(clip, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="engine.transcode")
    info = probe(clip)
    rate = Fraction(25)
    ladder = [(320, 180, 300, "video-180"), (214, 120, 150, "video-120")]
    outputs = tuple(
        VideoOutput(
            VideoRendition(width, height, kbps, "H264", "SD", name),
            cpu_choice("H264", OptimizeFor.Speed, kbps, float(rate), 2.0),
            tmp_path / f"{name}.mp4",
        )
        for width, height, kbps, name in ladder
    )
    plan = TranscodePlan(clip, info.video[0], rate, outputs, (), 2.0, info.duration, job_id="job-7")
    tracks = transcode(plan)
    assert [t.name for t in tracks] == ["video-180", "video-120"]

    lines = [r.getMessage() for r in caplog.records if "encodes as: ffmpeg " in r.getMessage()]
    assert len(lines) == len(ladder), lines
    for (width, height, kbps, name), line in zip(ladder, lines, strict=True):
        assert line.startswith(f"job job-7: rendition {name} encodes as: ffmpeg -i clip.mp4 ")
        args = _args(line.split("encodes as: ", 1)[1])
        assert args["-c:v"] == "libx264"
        assert f"scale={width}:{height}:" in args["-vf"]
        assert args["-b:v"] == f"{kbps}k"
        assert args["-maxrate"] == args["-bufsize"] == f"{round(kbps * 1.1)}k"
        assert args["-r"] == "25"
        assert args["-preset"] == "veryfast"
        # GOP: x264's keyint one above the 2 s segment (51 at 25 fps), IDRs forced every 2 s
        assert "keyint=51:" in args["-x264-params"] and "scenecut=0" in args["-x264-params"]
        assert args["-force_key_frames"] == "expr:gte(t,n_forced*2)"
        assert line.endswith(f" {name}.mp4")
        assert str(tmp_path) not in line


def test_encoder_command_of_nvenc_hevc_and_hdr():
    hdr = HdrInfo("bt2020", "smpte2084", "bt2020nc")
    choice = nvenc_choice("H265", OptimizeFor.Balance, 4000, 24.0, 4.0, hdr)
    command = encoder_command(
        input_name="film.mov",
        output_name="video-2160.mp4",
        encoder=choice,
        width=3840,
        height=2160,
        frame_rate=Fraction(24000, 1001),
        segment_seconds=4.0,
        sample_aspect_ratio=Fraction(4, 3),
        filters=[("bwdif", "mode=send_frame:parity=auto:deint=interlaced"), ("hflip", "")],
        hw_decode=True,
    )
    assert command.startswith("ffmpeg -hwaccel cuda -i film.mov ")
    args = _args(command)
    assert args["-vf"] == (
        "bwdif=mode=send_frame:parity=auto:deint=interlaced,hflip,"
        "scale=3840:2160:flags=lanczos,setsar=4/3"
    )
    assert args["-c:v"] == "hevc_nvenc" and args["-r"] == "24000/1001"
    assert (args["-b:v"], args["-maxrate"], args["-bufsize"]) == ("4000k", "4400k", "4400k")
    assert args["-preset"] == "p4" and args["-g"] == str(2**31 - 1)
    assert args["-tag:v"] == "hvc1"
    assert (args["-pix_fmt"], args["-profile"]) == ("p010le", "main10")
    assert (args["-color_primaries"], args["-color_trc"], args["-colorspace"]) == ("9", "16", "9")
    assert args["-force_key_frames"] == "expr:gte(t,n_forced*4)"
    assert command.endswith(" video-2160.mp4")
