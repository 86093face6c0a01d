"""FFmpeg's side of an error, and the `ffmpeg` command line equivalent to an encode.

Errors: PyAV raises `av.error.FFmpegError` subclasses that carry FFmpeg's error code and text,
but the detail of *why* (the demuxer's or decoder's own words: "moov atom not found",
"Invalid NAL unit size") only exists in FFmpeg's log, which PyAV turns off by default.
`watch_log()` turns it on at WARNING and keeps the last warning/error line: per Python thread,
plus one slot for FFmpeg's own worker threads (frame-threaded decoders and encoders log from
threads FFmpeg started, which no Python thread owns). `error_message()` builds an engine
error's message from the file name, what failed, the FFmpeg error (its `AVERROR_*` name, PyAV
class and text) and that last log line.

When vipe is the one turning FFmpeg's log on (PyAV's default: off), the `libav` logger stops
propagating, so FFmpeg's chatter does not reach the application's log (as before); the lines
only feed the error messages. An application that turned FFmpeg's log on itself keeps its
output.

Why PyAV keeps the log off by default, and what that asks of us: with it on, a thread of
FFmpeg's that logs must take the GIL. A frame-threaded decoder freed while its threads still
decode (a container closed mid-stream, with the GIL held, as PyAV frees codec contexts) waits
for a thread that waits for the GIL: the process hangs (PyAV issues #751, #909; here a corrupt
source closed mid-decode hung on the first try). Hence `close_input()`: it parks the decoders'
threads with the GIL released before the container goes. Every input container that
frame-threaded decoders read must be closed with it (`packagers`, which cannot import this,
flush their decoder themselves). And the log goes off again at interpreter exit, where a late
line would hang the shutdown.

Secrets stay out: an error's text names the file, never its folder (the work folder is the
server's business) and URLs lose their user info and query (credentials, SAS tokens). PyAV's
own `str(error)` quotes the full path, so it is never used.

A log line from FFmpeg's worker threads cannot be tied to the job that caused it; with several
jobs in one process, a job whose own thread logged nothing may show another job's decoder line
(redacted like every line). The calling thread's own line always wins.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import logging
import re
import shlex
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.error
import av.logging

from engine.encoders import EncoderChoice

MAX_THREADS = 256  # Python threads whose last line is kept (the oldest is forgotten first)
MAX_LINE = 300  # characters of a log line kept in a message

_URL = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)(?:[^\s/@]*@)?([^\s?#'\"]*)(?:[?#][^\s'\"]*)?")
# An absolute path of two or more parts: only its last part (the file name) is kept.
_PATH = re.compile(r"(?<![\w.:/])/(?:[^/\s'\"]+/)+([^/\s'\"]+)")


@dataclass(frozen=True)
class _Line:
    seq: int
    text: str


class _LastLines(logging.Handler):
    """Keeps the last FFmpeg line of each thread (a `logging.Handler` on the `libav` logger)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self._lock = threading.Lock()
        self._seq = 0
        self._by_thread: OrderedDict[int, _Line] = OrderedDict()
        self._ffmpeg_threads: _Line | None = None

    def emit(self, record: logging.LogRecord) -> None:
        context = record.name.removeprefix("libav").removeprefix(".") or "ffmpeg"
        text = f"[{context}] {record.getMessage().strip()}"
        # FFmpeg's own threads enter Python through the log callback: Python sees them as
        # "dummy" threads. Threads that Python started (the job's, the rungs') are its own.
        foreign = isinstance(threading.current_thread(), threading._DummyThread)
        with self._lock:
            self._seq += 1
            line = _Line(self._seq, text)
            if foreign:
                self._ffmpeg_threads = line
                return
            ident = threading.get_ident()
            self._by_thread.pop(ident, None)
            self._by_thread[ident] = line
            while len(self._by_thread) > MAX_THREADS:
                self._by_thread.popitem(last=False)

    def mark(self) -> int:
        with self._lock:
            return self._seq

    def last(self, since: int) -> tuple[str | None, str | None]:
        """(this thread's last line, FFmpeg threads' last line), each newer than `since`."""
        with self._lock:
            own = self._by_thread.get(threading.get_ident())
            shared = self._ffmpeg_threads
        return (
            own.text if own is not None and own.seq > since else None,
            shared.text if shared is not None and shared.seq > since else None,
        )


_lines = _LastLines()
_install_lock = threading.Lock()
_installed = False


def watch_log() -> None:
    """Turn FFmpeg's log on (at WARNING) and keep its last lines; idempotent, cheap to call.

    Lines below WARNING are dropped by PyAV's C callback, so the cost is per warning only.
    """
    global _installed
    if _installed:
        return
    with _install_lock:
        if _installed:
            return
        libav = logging.getLogger("libav")
        level = av.logging.get_level()
        if level is None:  # FFmpeg's log was off: keep it out of the application's log
            libav.propagate = False
        if level is None or level < av.logging.WARNING:
            av.logging.set_level(av.logging.WARNING)
        if libav.level == logging.NOTSET or libav.level > logging.WARNING:
            libav.setLevel(logging.WARNING)
        libav.addHandler(_lines)
        # At exit a line logged during finalisation would wait for the GIL forever.
        atexit.register(av.logging.set_level, None)
        _installed = True


def close_input(container: av.container.InputContainer) -> None:
    """Close an input container whose streams were decoded with frame threads, safely with
    FFmpeg's log on: flushing the decoders first waits for their threads with the GIL released
    (module docs), so that freeing them later never waits on a thread that waits to log."""
    for stream in container.streams:
        context = stream.codec_context
        if context is not None:
            with contextlib.suppress(Exception):  # a decoder that cannot flush: nothing to wait
                context.flush_buffers()
    container.close()


def log_mark() -> int:
    """A point in FFmpeg's log: `last_log_line(since=mark)` only sees lines logged after it."""
    watch_log()
    return _lines.mark()


def last_log_line(since: int = 0, error: BaseException | None = None) -> str | None:
    """The last FFmpeg warning/error line logged after `since` (a `log_mark()`): this
    thread's own, else the one PyAV attached to `error`, else FFmpeg worker threads' last."""
    own, shared = _lines.last(since)
    attached = _attached_line(error)
    return own or attached or shared


def _attached_line(error: BaseException | None) -> str | None:
    # PyAV attaches the last ERROR line it saw since its previous exception: (level, name, text)
    entry = getattr(error, "log", None) if isinstance(error, av.error.FFmpegError) else None
    if isinstance(entry, tuple) and len(entry) == 3 and entry[2]:
        return f"[{str(entry[1]).strip() or 'ffmpeg'}] {str(entry[2]).strip()}"
    return None


def error_name(code: int | None) -> str | None:
    """FFmpeg's name of an error code (PyAV's positive `errno`): "AVERROR_INVALIDDATA",
    "AVERROR(EINVAL)"; None when unknown."""
    if code is None:
        return None
    try:
        return f"AVERROR_{av.error.ErrorType(code).name}"  # type: ignore[attr-defined]
    except ValueError:
        pass
    name = errno.errorcode.get(code)
    return f"AVERROR({name})" if name else None


def error_text(error: BaseException, path: Path | str | None = None) -> str:
    """What went wrong, without PyAV's quoted path: for an FFmpeg error "InvalidDataError
    (AVERROR_INVALIDDATA): Invalid data found when processing input"."""
    if isinstance(error, av.error.FFmpegError):
        name = error_name(error.errno)
        kind = type(error).__name__ + (f" ({name})" if name else f" (code {error.errno})")
        return f"{kind}: {redact(error.strerror or '', path)}" if error.strerror else kind
    detail = getattr(error, "strerror", None) or str(error)
    detail = redact(str(detail), path)
    return f"{type(error).__name__}: {detail}" if detail else type(error).__name__


def error_message(
    path: Path | str,
    what: str,
    error: BaseException | None = None,
    *,
    since: int = 0,
) -> str:
    """An engine error's message for a failure of FFmpeg on `path`:

    "<file name>: <what>: <error_text>; FFmpeg log: [<context>] <last line>"

    `error` is the PyAV exception, if any; `since` a `log_mark()` taken when the work on
    this file began, so that an older file's line is not blamed. The parts that are not known
    are left out. Only the file's name appears, never its folder.
    """
    name = Path(path).name
    message = f"{name}: {what}"
    if error is not None:
        message += f": {error_text(error, path)}"
    line = last_log_line(since, error)
    if line:
        line = redact(line, path)
        if len(line) > MAX_LINE:
            line = line[: MAX_LINE - 1] + "…"
        message += f"; FFmpeg log: {line}"
    return message


def redact(text: str, path: Path | str | None = None) -> str:
    """`text` without folders or credentials: `path` and any other absolute path become their
    file name; URLs keep their scheme, host and path only (no user info, query or fragment)."""
    if path is not None:
        full = str(path)
        if full and full != Path(full).name:
            text = text.replace(full, Path(full).name)
    text = _URL.sub(lambda m: m.group(1) + m.group(2), text)
    return _PATH.sub(lambda m: m.group(1), text)


# ---------------------------------------------------------------------------- encoder command


def encoder_command(
    *,
    input_name: str,
    output_name: str,
    encoder: EncoderChoice,
    width: int,
    height: int,
    frame_rate: Fraction,
    segment_seconds: float,
    sample_aspect_ratio: Fraction = Fraction(1),
    filters: Iterable[tuple[str, str]] = (),
    hw_decode: bool = False,
    movflags: str | None = None,
    watermarks: bool = False,
) -> str:
    """The `ffmpeg` command line that encodes like vipe's settings for one rendition.

    For a person to read in the log and replay by hand: the input and output are file names
    only. vipe forces an IDR on the frame nearest to each multiple of `segment_seconds`;
    `-force_key_frames` is FFmpeg's way to the same instants. Watermarks, which vipe draws
    itself, have no equivalent here and are only noted.
    """
    args = ["ffmpeg"]
    if hw_decode:
        args += ["-hwaccel", "cuda"]
    args += ["-i", input_name, "-map", "0:v:0", "-an", "-sn"]
    chain = [f"{name}={value}" if value else name for name, value in filters]
    # vipe scales the rungs in a Lanczos cascade (engine.transcode._LadderScaler); one Lanczos
    # scale from the source is the nearest FFmpeg filter
    chain.append(f"scale={width}:{height}:flags=lanczos")
    if sample_aspect_ratio != 1:
        chain.append(f"setsar={sample_aspect_ratio.numerator}/{sample_aspect_ratio.denominator}")
    args += ["-vf", ",".join(chain)]
    args += ["-r", _rate(frame_rate), "-c:v", encoder.name, "-pix_fmt", encoder.pix_fmt]
    options = dict(encoder.options)
    args += ["-b:v", options.pop("b", f"{round(encoder.bit_rate / 1000)}k")]
    for key in ("maxrate", "bufsize"):  # the rate control first, the rest in vipe's order
        if key in options:
            args += [f"-{key}", options.pop(key)]
    for key, value in options.items():
        args += [f"-{key}", value]
    if encoder.codec_tag:
        args += ["-tag:v", encoder.codec_tag]
    if encoder.color is not None:
        primaries, transfer, matrix = encoder.color
        args += ["-color_primaries", str(primaries), "-color_trc", str(transfer)]
        args += ["-colorspace", str(matrix)]
    args += ["-force_key_frames", f"expr:gte(t,n_forced*{segment_seconds:g})"]
    args += ["-threads", "0"]
    if movflags:
        args += ["-f", "mp4", "-movflags", movflags]
    args.append(output_name)
    command = shlex.join(args)
    return command + "  # plus watermarks drawn by vipe" if watermarks else command


def _rate(rate: Fraction) -> str:
    return str(rate.numerator) if rate.denominator == 1 else f"{rate.numerator}/{rate.denominator}"
