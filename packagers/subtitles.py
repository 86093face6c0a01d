"""Subtitles and captions to WebVTT.

`convert_to_webvtt` reads a WebVTT, SRT, TTML/DFXP, SCC or EBU-STL file, a text subtitle track
inside a media file (SubRip, ASS/SSA, mov_text, WebVTT; read with PyAV), or the CEA-608 captions
of a video track (`packagers.captions`), and writes one normalised WebVTT file: the form that DASH
and HLS packaging serve.

Which parser reads what, and why:
- SCC (CEA-608), EBU-STL and CEA-608 from a video: `ttconv` (its SCC/STL readers and WebVTT
  writer; vipe's WebVTT reader then normalises that output). vipe adds only a line check of SCC
  files, since ttconv skips malformed lines silently.
- SRT, WebVTT and TTML/DFXP stay vipe's own, because the libraries were measured against this
  module's test suite (tests/test_subtitles.py) and fail what it demands:
  `pysubs2` reads SRT leniently: it takes a broken timing line (`-->` written `->`) as a cue
  and reports no line numbers for malformed files, drops `<em>`/`<strong>` emphasis, and turns
  markup into ASS override tags; its WebVTT reader keeps neither cue settings nor identifiers.
  `ttconv`'s TTML reader is an IMSC reader: it refuses TTML 1 sub-frame times (`00:00:02:00.1`),
  loses paragraphs in nested/sequential time containers (3 of 5 cues of the containment case),
  rounds frame-based times differently (0.500 for 0.5005 s), has no `tts:textAlign` in its
  WebVTT output, and parses with ElementTree, which expands internal entities and gives no line
  numbers (vipe refuses DOCTYPE/entities with expat and names the line).
  The text tracks of media files are read packet by packet with PyAV; their cue text (SubRip,
  ASS override blocks, mov_text) goes through the same small text normaliser.

What the output keeps and drops:
- cue timings, as `HH:MM:SS.mmm`, cues sorted by start (stable, so ties keep source order);
  overlapping cues stay; cues with zero or negative duration, or with no text, are dropped;
- cue settings: WebVTT `vertical`, `line`, `position`, `size`, `align` (`region` is dropped with
  the REGION blocks it refers to); TTML `tts:textAlign` becomes `align:`; ASS/SRT `{\\anN}`
  becomes `line:`/`align:`;
- WebVTT cue identifiers (SRT numbers are dropped: they are only counters);
- styling: only `<i>`, `<b>` and `<u>` survive (SRT `<em>`/`<strong>` map to them), every other
  tag (`<font>`, `<c.x>`, `<v>`, TTML spans, ASS override blocks) is removed, its text kept;
  tags are re-balanced, text is escaped (`&`, `<`, `>`);
- NOTE, STYLE and REGION blocks are dropped.

A malformed file raises `SubtitleError` naming the file and, where there is one, the line. The
module is a library: it does not import `engine`.
"""

from __future__ import annotations

import bisect
import html
import itertools
import math
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn
from xml.parsers import expat

from packagers.captions import CaptionError, cea608_pairs, scc_from_pairs

if TYPE_CHECKING:
    import av

__all__ = [
    "Cue",
    "SubtitleError",
    "SubtitleInfo",
    "convert_to_webvtt",
    "format_webvtt",
    "read_cues",
]

Time = Fraction | float  # seconds; float only for `math.inf` (an open end)


class SubtitleError(ValueError):
    """A subtitle source that cannot be read: names the file and, when known, the line."""

    def __init__(self, path: Path | str, message: str, line: int | None = None) -> None:
        self.path = Path(path)
        self.line = line
        self.reason = message
        where = f"{self.path.name} line {line}" if line is not None else self.path.name
        super().__init__(f"{where}: {message}")

    def __reduce__(self) -> tuple[type[SubtitleError], tuple[Path, str, int | None]]:
        # Keeps the error picklable (worker processes, task queues) despite the custom init.
        return (type(self), (self.path, self.reason, self.line))


@dataclass(frozen=True)
class Cue:
    """One WebVTT cue. `text` is WebVTT cue text: escaped, only `<i>`, `<b>`, `<u>` tags."""

    start_ms: int
    end_ms: int
    text: str
    settings: str = ""  # e.g. "line:0 align:start"
    identifier: str = ""


@dataclass(frozen=True)
class SubtitleInfo:
    """What a conversion produced."""

    cue_count: int
    first_start: float | None  # seconds: start of the first cue (None: no cues)
    last_end: float | None  # seconds: latest cue end
    language: str | None  # as the source says it (TTML xml:lang, track metadata), else None
    source_format: str  # "webvtt", "srt", "ttml", or the track codec: "subrip", "ass", ...
    dropped: int = 0  # source cues left out: empty, zero/negative duration, past `duration`


@dataclass
class _RawCue:
    start: Time
    end: Time | None  # None: not given (a track packet without duration)
    text: str  # already WebVTT cue text
    settings: str = ""
    identifier: str = ""


# --------------------------------------------------------------------------------- public API


def convert_to_webvtt(
    source: Path,
    target: Path,
    *,
    track_index: int | None = None,
    duration: float | None = None,
) -> SubtitleInfo:
    """Convert `source` (a subtitle file, or track `track_index` of a media file) to WebVTT.

    `duration` (seconds, the media's length) ends open-ended cues and drops or shortens cues
    that run past it. Raises `SubtitleError` for a malformed source; nothing is written then.
    """
    cues, info = read_cues(source, track_index=track_index, duration=duration)
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so a reader never sees half a file.
    partial = target.with_name(target.name + ".partial")
    partial.write_text(format_webvtt(cues), encoding="utf-8", newline="\n")
    partial.replace(target)
    return info


def read_cues(
    source: Path,
    *,
    track_index: int | None = None,
    duration: float | None = None,
) -> tuple[list[Cue], SubtitleInfo]:
    """Parse `source` into sorted, cleaned cues (see `convert_to_webvtt`)."""
    source = Path(source)
    language: str | None = None
    if track_index is not None:
        raw, language, fmt, fallback_end = _read_track(source, track_index)
        if duration is not None:
            fallback_end = Fraction(duration)
        _close_open_ends(raw, fallback_end, until_next=True)
    else:
        try:
            data = source.read_bytes()
        except OSError as error:
            raise SubtitleError(source, f"cannot read the file: {error.strerror}") from error
        fmt = _detect_format(source, data)
        if fmt in ("scc", "stl"):
            raw, language = _parse_with_ttconv(source, fmt, data)
        elif fmt == "ttml":
            raw, language = _parse_ttml(source, data, duration)
        elif fmt == "webvtt":
            raw, language = _parse_webvtt(source, _decode_text(data))
        else:
            raw = _parse_srt(source, _decode_text(data))
    cues, dropped = _finish(raw, duration)
    info = SubtitleInfo(
        cue_count=len(cues),
        first_start=cues[0].start_ms / 1000 if cues else None,
        last_end=max(c.end_ms for c in cues) / 1000 if cues else None,
        language=language,
        source_format=fmt,
        dropped=dropped,
    )
    return cues, info


def format_webvtt(cues: list[Cue]) -> str:
    """The WebVTT file text for `cues` (already sorted and cleaned)."""
    blocks = ["WEBVTT"]
    for cue in cues:
        timing = f"{_timestamp(cue.start_ms)} --> {_timestamp(cue.end_ms)}"
        if cue.settings:
            timing += " " + cue.settings
        head = [cue.identifier] if cue.identifier else []
        blocks.append("\n".join([*head, timing, cue.text]))
    return "\n\n".join(blocks) + "\n"


# ---------------------------------------------------------------------------- shared helpers


def _timestamp(ms: int) -> str:
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}"


def _to_ms(seconds: Time) -> int:
    return math.floor(Fraction(seconds) * 1000 + Fraction(1, 2))


def _decode_text(data: bytes) -> str:
    """Decode a text subtitle file: BOM first, then UTF-8, then cp1252 (legacy SRT)."""
    if data.startswith(b"\xef\xbb\xbf"):
        text = data[3:].decode("utf-8", errors="replace")
    elif data.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = data.decode("utf-16", errors="replace")
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            # cp1252 leaves five bytes undefined; latin-1 takes those rather than failing.
            try:
                text = data.decode("cp1252")
            except UnicodeDecodeError:
                text = data.decode("latin-1")
    # One line-end convention, so line numbers count the way an editor shows them.
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _detect_format(path: Path, data: bytes) -> str:
    suffix = path.suffix.lower()
    if suffix in (".vtt", ".webvtt"):
        return "webvtt"
    if suffix == ".srt":
        return "srt"
    if suffix in (".ttml", ".dfxp", ".xml"):
        return "ttml"
    if suffix == ".stl":
        return "stl"
    head = data[:64].lstrip(b"\xef\xbb\xbf").lstrip()
    if suffix == ".scc" or head.startswith(b"Scenarist_SCC"):
        return "scc"
    if head.startswith(b"WEBVTT"):
        return "webvtt"
    if head.startswith(b"<") or data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "ttml"
    return "srt"


def _close_open_ends(raw: list[_RawCue], fallback: Time | None, *, until_next: bool) -> None:
    """Give cues without an end one: the next later cue's start (tracks), else `fallback`."""
    starts = sorted({c.start for c in raw})
    for cue in raw:
        if cue.end is not None and cue.end != math.inf:
            continue
        after = bisect.bisect_right(starts, cue.start)
        cue.end = starts[after] if until_next and after < len(starts) else fallback


def _finish(raw: list[_RawCue], duration: float | None) -> tuple[list[Cue], int]:
    """Round to milliseconds, clip to `duration`, drop empty/zero-length cues, sort."""
    limit = _to_ms(Fraction(duration)) if duration is not None else None
    cues: list[Cue] = []
    seen_ids: set[str] = set()
    for item in raw:
        if item.end is None or item.end == math.inf or not item.text:
            continue
        start, end = _to_ms(item.start), _to_ms(item.end)
        if limit is not None:
            end = min(end, limit)
        if start < 0 or end <= start:
            continue
        identifier = item.identifier
        if identifier in seen_ids:  # identifiers must be unique in WebVTT; keep the first
            identifier = ""
        seen_ids.add(identifier)
        cues.append(Cue(start, end, item.text, item.settings, identifier))
    cues.sort(key=lambda c: c.start_ms)
    return cues, len(raw) - len(cues)


# ------------------------------------------------------------------------------ cue text


_KEPT_TAGS = ("i", "b", "u")
_SRT_TAG_ALIASES = {"i": "i", "em": "i", "b": "b", "strong": "b", "u": "u"}
_SRT_MARKUP_TAGS = {"i", "em", "b", "strong", "u", "s", "font", "span", "br", "ruby", "rt"}
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class _TextBuilder:
    """Builds WebVTT cue text from text runs and i/b/u tags: escapes, balances, tidies lines."""

    def __init__(self) -> None:
        self._tokens: list[tuple[str, str]] = []  # ("t", text) | ("o", tag) | ("c", tag)
        self._open: list[str] = []

    def text(self, text: str) -> None:
        text = _CONTROL_CHARS.sub("", text)
        for index, line in enumerate(text.split("\n")):
            if index:
                self._tokens.append(("n", ""))
            if line:
                self._tokens.append(("t", line))

    def open(self, tag: str) -> None:
        self._open.append(tag)
        self._tokens.append(("o", tag))

    def close(self, tag: str) -> None:
        if tag not in self._open:
            return  # a stray end tag: drop it
        reopen: list[str] = []
        while self._open:  # close inner tags first, then open them again after
            top = self._open.pop()
            self._tokens.append(("c", top))
            if top == tag:
                break
            reopen.append(top)
        for inner in reversed(reopen):
            self.open(inner)

    def result(self) -> str:
        """The cue text: no blank lines (they would end the cue), tags balanced."""
        for tag in reversed(self._open):
            self._tokens.append(("c", tag))
        self._open.clear()
        lines: list[list[tuple[str, str]]] = [[]]
        for token in self._tokens:
            if token[0] == "n":
                lines.append([])
            else:
                lines[-1].append(token)
        kept: list[list[tuple[str, str]]] = []
        carried: list[tuple[str, str]] = []  # tags of a line with no visible text
        for line in lines:
            if any(kind == "t" and value.strip() for kind, value in line):
                kept.append(carried + line)
                carried = []
            elif kept:
                kept[-1].extend(t for t in line if t[0] != "t")
            else:
                carried.extend(t for t in line if t[0] != "t")
        return "\n".join(_render_line(line) for line in kept)


def _render_line(tokens: list[tuple[str, str]]) -> str:
    parts = []
    for kind, value in tokens:
        if kind == "t":
            parts.append(value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))
        else:
            parts.append(f"<{value}>" if kind == "o" else f"</{value}>")
    line = re.sub(r"[ \t]+", " ", "".join(parts))
    line = re.sub(r"<(i|b|u)></\1>", "", line)
    # Spaces at the line's edges are layout noise, also when a tag stands before them.
    line = re.sub(r"^((?:<[ibu]>)*) ", r"\1", line.strip())
    return re.sub(r" ((?:</[ibu]>)*)$", r"\1", line)


def _srt_text(raw: str) -> tuple[str, str]:
    """SRT (and mkv SubRip) cue text -> (WebVTT cue text, cue settings from `{\\anN}`)."""
    out = _TextBuilder()
    settings = ""
    pattern = re.compile(r"\{\\[^{}]*\}|<\s*(/?)\s*([a-zA-Z]+)\b[^<>]*>")
    pos = 0
    for match in pattern.finditer(raw):
        out.text(raw[pos : match.start()])
        pos = match.end()
        token = match.group(0)
        if token.startswith("{"):
            settings = _ass_alignment(token) or settings
            continue
        closing, name = match.group(1), match.group(2).lower()
        if name not in _SRT_MARKUP_TAGS:
            out.text(token)  # not markup, just text that happens to contain "<"
        elif name == "br":
            out.text("\n")
        elif name in _SRT_TAG_ALIASES:
            tag = _SRT_TAG_ALIASES[name]
            out.close(tag) if closing else out.open(tag)
    out.text(raw[pos:])
    return out.result(), settings


def _webvtt_text(raw: str) -> str:
    """WebVTT cue text -> normalised cue text (i/b/u kept, other tags dropped, re-escaped)."""
    out = _TextBuilder()
    pos = 0
    for match in re.finditer(r"<(/?)([^\s<>/.]*)[^<>]*>", raw):
        out.text(html.unescape(raw[pos : match.start()]))
        pos = match.end()
        name = match.group(2).lower()
        if name in _KEPT_TAGS:
            out.close(name) if match.group(1) else out.open(name)
    out.text(html.unescape(raw[pos:]))
    return out.result()


def _ass_text(raw: str) -> tuple[str, str]:
    """ASS/SSA event text -> (plain cue text, settings from `{\\anN}`/`{\\aN}`)."""
    out = _TextBuilder()
    settings = ""
    drawing = False  # `\p1` .. `\p0` encloses vector drawing commands, not text
    pos = 0
    for match in re.finditer(r"\{([^{}]*)\}", raw):
        if not drawing:
            out.text(_ass_escapes(raw[pos : match.start()]))
        pos = match.end()
        block = match.group(0)
        settings = _ass_alignment(block) or settings
        for level in re.findall(r"\\p(\d+)", block):
            drawing = level != "0"
    if not drawing:
        out.text(_ass_escapes(raw[pos:]))
    return out.result(), settings


def _ass_escapes(text: str) -> str:
    # \N is a hard line break; \n a soft one (a space unless WrapStyle 2); \h a hard space.
    return text.replace("\\N", "\n").replace("\\n", " ").replace("\\h", "\u00a0")


def _ass_alignment(block: str) -> str:
    """`{\\anN}` (numpad layout) or legacy `{\\aN}` -> WebVTT `line:`/`align:` settings."""
    match = re.search(r"\\an([1-9])", block)
    if match:
        number = int(match.group(1))
    else:
        legacy = re.search(r"\\a(\d+)", block)
        if not legacy:
            return ""
        # SSA: 1-3 bottom, +4 top, +8 middle.
        value = int(legacy.group(1))
        column = value & 3 or 2
        row = 3 if value & 4 else 2 if value & 8 else 1
        number = (row - 1) * 3 + column
    row, column = (number - 1) // 3, (number - 1) % 3
    parts = []
    if row == 2:
        parts.append("line:0")
    elif row == 1:
        parts.append("line:50%,center")
    if column == 0:
        parts.append("align:left")
    elif column == 2:
        parts.append("align:right")
    return " ".join(parts)


# ------------------------------------------------------------------------------------- SRT


_SRT_TIME = r"(\d+):(\d{1,2}):(\d{1,2})(?:[,.](\d+))?"
_SRT_TIMING = re.compile(rf"^\s*{_SRT_TIME}\s*-->\s*{_SRT_TIME}(?:\s+.*)?$")
_SRT_TIMING_HINT = "expected a timing line like 00:00:01,000 --> 00:00:02,000"


def _srt_seconds(hours: str, minutes: str, seconds: str, fraction: str | None) -> Fraction:
    value = Fraction(int(hours) * 3600 + int(minutes) * 60 + int(seconds))
    if fraction:
        value += Fraction(int(fraction), 10 ** len(fraction))
    return value


def _parse_srt(path: Path, text: str) -> list[_RawCue]:
    """SRT: blocks of [number], timing line, text lines; numbers may have gaps or be missing."""
    lines = text.split("\n")
    cues: list[_RawCue] = []
    body: list[str] = []

    def flush() -> None:
        if cues and body:
            cues[-1].text, cues[-1].settings = _srt_text("\n".join(body))
        body.clear()

    index = 0
    block_start = True  # after a blank line (or at the top): a number or a timing line is due
    while index < len(lines):
        line = lines[index].strip()
        if not line:
            block_start = True
            index += 1
            continue
        if block_start or "-->" in line:
            timing_index = index + 1 if line.isdigit() else index
            timing = lines[timing_index].strip() if timing_index < len(lines) else ""
            match = _SRT_TIMING.match(timing)
            if match:
                flush()
                groups = match.groups()
                cues.append(_RawCue(_srt_seconds(*groups[:4]), _srt_seconds(*groups[4:]), ""))
                block_start = False
                index = timing_index + 1
                continue
            if line.isdigit() or "-->" in timing or not cues:
                raise SubtitleError(path, _SRT_TIMING_HINT, timing_index + 1)
            # Text after a blank line inside a cue is a common defect: keep it with its cue.
        body.append(lines[index])
        block_start = False
        index += 1
    flush()
    return cues


# ---------------------------------------------------------------------------------- WebVTT


_VTT_TIME = r"(?:(\d{2,}):)?([0-5]\d):([0-5]\d)\.(\d{3})"
_VTT_TIMING = re.compile(rf"^{_VTT_TIME}[ \t]+-->[ \t]+{_VTT_TIME}(?:[ \t]+(.*))?$")
_VTT_SETTING = re.compile(
    r"^(?:vertical:(?:rl|lr)"
    r"|line:(?:-?\d+|\d+(?:\.\d+)?%)(?:,(?:start|center|end))?"
    r"|position:\d+(?:\.\d+)?%(?:,(?:line-left|center|line-right))?"
    r"|size:\d+(?:\.\d+)?%"
    r"|align:(?:start|center|end|left|right))$"
)


def _vtt_seconds(hours: str | None, minutes: str, seconds: str, millis: str) -> Fraction:
    return Fraction(int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds)) + Fraction(
        int(millis), 1000
    )


def _parse_webvtt(path: Path, text: str) -> tuple[list[_RawCue], str | None]:
    """WebVTT: header, then blank-line separated blocks; cue, NOTE, STYLE and REGION blocks."""
    lines = text.split("\n")
    if not re.match(r"^WEBVTT(?:[ \t].*)?$", lines[0]):
        raise SubtitleError(path, "expected the header line WEBVTT", 1)
    language = None
    index = 1
    # Header metadata lines run to the first blank line (or, leniently, the first cue).
    while index < len(lines) and lines[index].strip() and "-->" not in lines[index]:
        key, _, value = lines[index].partition(":")
        if key.strip().lower() == "language" and value.strip():
            language = value.strip()
        index += 1
    cues: list[_RawCue] = []
    while index < len(lines):
        if not lines[index].strip():
            index += 1
            continue
        block_start = index
        while index < len(lines) and lines[index].strip():
            index += 1
        block = lines[block_start:index]
        if re.match(r"^(?:NOTE|STYLE|REGION)(?:[ \t]|$)", block[0]):
            continue  # comments, style sheets, regions: dropped
        if "-->" in block[0]:
            identifier, row = "", 0
        elif len(block) > 1 and "-->" in block[1]:
            identifier, row = block[0].strip(), 1
        else:
            continue  # a block without timing is not a cue; WebVTT parsers skip it
        while row < len(block):
            match = _VTT_TIMING.match(block[row].strip())
            if not match:
                raise SubtitleError(
                    path,
                    "expected a timing line like 00:00:01.000 --> 00:00:02.000",
                    block_start + row + 1,
                )
            text_start = row = row + 1
            # A "-->" line inside cue text starts the next cue, as the WebVTT parser does.
            while row < len(block) and "-->" not in block[row]:
                row += 1
            groups = match.groups()
            settings = " ".join(s for s in (groups[8] or "").split() if _VTT_SETTING.match(s))
            cues.append(
                _RawCue(
                    _vtt_seconds(*groups[0:4]),
                    _vtt_seconds(*groups[4:8]),
                    _webvtt_text("\n".join(block[text_start:row])),
                    settings,
                    identifier,
                )
            )
            identifier = ""
    return cues, language


# ------------------------------------------------------------------------------------ TTML


_XML_NS = "http://www.w3.org/XML/1998/namespace"


@dataclass
class _Node:
    """A parsed XML element: expat names are "namespace local" (or just "local")."""

    namespace: str
    name: str
    attrs: dict[str, str]
    children: list[_Node | str]
    line: int

    def attr(self, local: str, namespace_suffix: str | None = None) -> str | None:
        """An attribute by local name; `namespace_suffix` picks e.g. "#styling" ones."""
        if namespace_suffix is None:
            return self.attrs.get(local)
        for key, value in self.attrs.items():
            namespace, _, name = key.rpartition(" ")
            if name == local and namespace.endswith(namespace_suffix):
                return value
        return None

    def elements(self, name: str) -> list[_Node]:
        return [c for c in self.children if isinstance(c, _Node) and c.name == name]


def _parse_xml(path: Path, data: bytes) -> _Node:
    """Parse XML with expat, refusing DOCTYPE and entity declarations (no entity expansion)."""
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    stack: list[_Node] = []
    root: list[_Node] = []

    def refuse(*_args: object) -> NoReturn:  # NoReturn: fits handlers that return an int
        raise SubtitleError(
            path, "DOCTYPE and entity declarations are not allowed", parser.CurrentLineNumber
        )

    def start(name: str, attrs: dict[str, str]) -> None:
        namespace, _, local = name.rpartition(" ")
        node = _Node(namespace, local, attrs, [], parser.CurrentLineNumber)
        if stack:
            stack[-1].children.append(node)
        else:
            root.append(node)
        stack.append(node)

    def end(_name: str) -> None:
        stack.pop()

    def characters(text: str) -> None:
        if stack:
            children = stack[-1].children
            if children and isinstance(children[-1], str):
                children[-1] += text
            else:
                children.append(text)

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.UnparsedEntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = characters
    try:
        parser.Parse(data, True)
    except expat.ExpatError as error:
        raise SubtitleError(
            path, f"not well-formed XML: {expat.errors.messages[error.code]}", error.lineno
        ) from error
    except (LookupError, UnicodeError) as error:  # an XML declaration naming no known codec
        raise SubtitleError(
            path, f"unsupported XML encoding: {error}", parser.CurrentLineNumber
        ) from error
    return root[0]


@dataclass(frozen=True)
class _TimingParameters:
    frame_rate: Fraction  # effective: ttp:frameRate x ttp:frameRateMultiplier
    sub_frame_rate: int
    tick_rate: Fraction
    nominal_rate: int  # ttp:frameRate: the frames per second a SMPTE time code counts
    smpte: bool  # ttp:timeBase="smpte": hh:mm:ss:ff is a time code label, not clock time
    drop_ntsc: bool  # ttp:dropMode="dropNTSC": drop-frame time code labels


def _timing_parameters(path: Path, tt: _Node) -> _TimingParameters:
    def number(local: str) -> str | None:
        return tt.attr(local, "#parameter")

    try:
        nominal_rate = int(number("frameRate") or 30)
        multiplier = Fraction(1)
        multiplier_text = number("frameRateMultiplier")
        if multiplier_text:
            numerator, denominator = multiplier_text.split()
            multiplier = Fraction(int(numerator), int(denominator))
        sub_frame_rate = int(number("subFrameRate") or 1)
        frame_rate = nominal_rate * multiplier
        tick_text = number("tickRate")
        if tick_text:
            tick_rate = Fraction(int(tick_text))
        else:  # TTML: the effective frame rate when one is given, else 1
            tick_rate = frame_rate * sub_frame_rate if number("frameRate") else Fraction(1)
    except (ValueError, ZeroDivisionError) as error:
        raise SubtitleError(path, "invalid ttp timing parameters on <tt>", tt.line) from error
    if frame_rate <= 0 or tick_rate <= 0 or sub_frame_rate <= 0:
        raise SubtitleError(path, "invalid ttp timing parameters on <tt>", tt.line)
    smpte = (number("timeBase") or "media").strip() == "smpte"
    drop_ntsc = smpte and (number("dropMode") or "").strip() == "dropNTSC"
    return _TimingParameters(frame_rate, sub_frame_rate, tick_rate, nominal_rate, smpte, drop_ntsc)


_CLOCK_TIME = re.compile(r"^(\d+):(\d{2}):(\d{2})(?:(\.\d+)|:(\d+)(?:\.(\d+))?)?$")
_OFFSET_TIME = re.compile(r"^(\d+(?:\.\d+)?)(h|ms|m|s|f|t)$")


def _ttml_time(path: Path, node: _Node, value: str, params: _TimingParameters) -> Fraction:
    """A TTML time expression (clock time, clock time with frames, or offset time) in seconds."""
    value = value.strip()
    match = _CLOCK_TIME.match(value)
    if match:
        hours, minutes, seconds, fraction, frames, sub_frames = match.groups()
        whole = int(hours) * 3600 + int(minutes) * 60 + int(seconds)
        sub = Fraction(int(sub_frames or 0), params.sub_frame_rate)
        if params.smpte and not fraction:
            # A time code counts frames at the nominal rate; NTSC drop-frame labels skip
            # frames 0 and 1 of every minute except each tenth one.
            count = whole * params.nominal_rate + int(frames or 0) + sub
            if params.drop_ntsc:
                total_minutes = whole // 60
                count -= 2 * (total_minutes - total_minutes // 10)
            return count / params.frame_rate
        result = Fraction(whole)
        if fraction:
            result += Fraction(fraction[1:]) / 10 ** (len(fraction) - 1)
        return result + (int(frames or 0) + sub) / params.frame_rate
    match = _OFFSET_TIME.match(value)
    if match:
        count, metric = Fraction(match.group(1)), match.group(2)
        scale = {
            "h": Fraction(3600),
            "m": Fraction(60),
            "s": Fraction(1),
            "ms": Fraction(1, 1000),
            "f": 1 / params.frame_rate,
            "t": 1 / params.tick_rate,
        }[metric]
        return count * scale
    raise SubtitleError(
        path,
        f"invalid time expression {value!r} (expected e.g. 00:00:01.500, 00:00:01:12, 1.5s, "
        "1500ms, 90000t)",
        node.line,
    )


_TEXT_ALIGN = {"left": "left", "center": "center", "right": "right", "start": "start", "end": "end"}


class _TtmlReader:
    """Walks a TTML document: time containment, text flattening, `tts:textAlign`."""

    def __init__(self, path: Path, tt: _Node) -> None:
        self.path = path
        self.params = _timing_parameters(path, tt)
        self.styles: dict[str, _Node] = {}
        for head in tt.elements("head"):
            for styling in head.elements("styling"):
                for style in styling.elements("style"):
                    style_id = style.attr("id", _XML_NS)
                    if style_id:
                        self.styles[style_id] = style
        self.cues: list[_RawCue] = []
        self.times: list[Time] = []  # every resolved instant, to end indefinite cues

    def interval(self, node: _Node, parent_begin: Time, parent_end: Time) -> tuple[Time, Time]:
        """The node's active interval, in document time, clipped to its parent's."""
        begin_value, end_value, dur_value = node.attr("begin"), node.attr("end"), node.attr("dur")
        begin = parent_begin
        if begin_value is not None:
            begin = parent_begin + _ttml_time(self.path, node, begin_value, self.params)
        end: Time = math.inf
        if end_value is not None:  # like begin, relative to the parent's begin
            end = parent_begin + _ttml_time(self.path, node, end_value, self.params)
        if dur_value is not None:  # both given: whichever ends first
            end = min(end, begin + _ttml_time(self.path, node, dur_value, self.params))
        end = min(end, parent_end)
        self.times.extend(t for t in (begin, end) if t != math.inf)
        return begin, end

    def text_align(self, chain: list[_Node]) -> str:
        """`tts:textAlign` of the innermost node that has one (inline, then its styles)."""
        for node in reversed(chain):
            value = node.attr("textAlign", "#styling") or self._style_value(
                node.attr("style"), "textAlign", set()
            )
            if value:
                return _TEXT_ALIGN.get(value.strip(), "")
        return ""

    def _style_value(self, refs: str | None, local: str, seen: set[str]) -> str | None:
        for ref in (refs or "").split():
            style = self.styles.get(ref)
            if style is None or ref in seen:
                continue
            seen.add(ref)
            value = style.attr(local, "#styling") or self._style_value(
                style.attr("style"), local, seen
            )
            if value:
                return value
        return None

    def walk(self, node: _Node, begin: Time, end: Time, chain: list[_Node]) -> None:
        """Walk body/div containers; each `p` becomes one or more cues."""
        sequential = node.attr("timeContainer") == "seq"
        previous_end = begin
        for child in node.children:
            if not isinstance(child, _Node) or child.name not in ("div", "p"):
                continue
            child_begin = previous_end if sequential and previous_end != math.inf else begin
            child_interval = self.interval(child, child_begin, end)
            previous_end = child_interval[1]
            if child.name == "div":
                self.walk(child, *child_interval, [*chain, child])
            else:
                self.paragraph(child, *child_interval, [*chain, child])

    def paragraph(self, p: _Node, begin: Time, end: Time, chain: list[_Node]) -> None:
        runs: list[tuple[str, Time, Time]] = []
        self._collect(p, begin, end, runs, p.attr("space", _XML_NS) == "preserve")
        align = self.text_align(chain)
        settings = f"align:{align}" if align and align != "center" else ""  # center: default
        # Timed spans make the paragraph change over time: one cue per distinct text.
        instants = sorted({begin, end, *(t for _, b, e in runs for t in (b, e))})
        instants = [t for t in instants if begin <= t <= end]
        previous: _RawCue | None = None
        for t0, t1 in itertools.pairwise(instants):
            text = _flatten_whitespace("".join(s for s, b, e in runs if b <= t0 and e >= t1))
            if previous is not None and previous.text == text:
                previous.end = t1
            elif text:
                previous = _RawCue(t0, t1, text, settings)
                self.cues.append(previous)
            else:
                previous = None

    def _collect(
        self, node: _Node, begin: Time, end: Time, runs: list[tuple[str, Time, Time]], keep: bool
    ) -> None:
        for child in node.children:
            if isinstance(child, str):
                text = child if keep else re.sub(r"[ \t\r\n]+", " ", child)
                runs.append((text, begin, end))
            elif child.name == "br":
                runs.append(("\n", begin, end))
            elif child.name == "span" and child.namespace == node.namespace:
                span_begin, span_end = self.interval(child, begin, end)
                space = child.attr("space", _XML_NS)
                self._collect(child, span_begin, span_end, runs, keep or space == "preserve")
            # anything else (metadata, set, foreign elements) carries no cue text


def _flatten_whitespace(text: str) -> str:
    out = _TextBuilder()
    out.text("\n".join(line.strip() for line in text.split("\n")))
    return out.result()


def _parse_ttml(
    path: Path, data: bytes, duration: float | None
) -> tuple[list[_RawCue], str | None]:
    tt = _parse_xml(path, data)
    if tt.name != "tt":
        raise SubtitleError(path, f"expected a TTML document (root <tt>), found <{tt.name}>", 1)
    language = (tt.attr("lang", _XML_NS) or "").strip() or None
    reader = _TtmlReader(path, tt)
    for body in tt.elements("body"):
        begin, end = reader.interval(body, Fraction(0), math.inf)
        if language is None:
            language = (body.attr("lang", _XML_NS) or "").strip() or None
        reader.walk(body, begin, end, [body])
    # Open ends (no end anywhere up the tree) last until the media ends, else the document.
    fallback = Fraction(duration) if duration is not None else max(reader.times, default=None)
    _close_open_ends(reader.cues, fallback, until_next=False)
    return reader.cues, language


# --------------------------------------------------------------------------- media tracks


_TEXT_CODECS = {"subrip": "subrip", "srt": "subrip", "ass": "ass", "ssa": "ass"}
_TEXT_CODECS |= {"mov_text": "mov_text", "webvtt": "webvtt", "text": "text"}


def _read_track(
    path: Path, track_index: int
) -> tuple[list[_RawCue], str | None, str, Fraction | None]:
    """Read a text subtitle track's packets with PyAV (no decoding: packets hold the text), or
    the CEA-608 captions of a video track.

    Returns (cues, language, codec, media end). Times are shifted so the media starts at zero,
    as the encoded outputs do.
    """
    import av  # imported here: reading subtitle files does not need FFmpeg

    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as error:
        raise SubtitleError(path, f"cannot open the media file: {error}") from error
    with container:
        if not 0 <= track_index < len(container.streams):
            raise SubtitleError(path, f"has no track {track_index}")
        stream = container.streams[track_index]
        offset = Fraction(max(container.start_time or 0, 0), 1_000_000)
        media_end = (
            Fraction(container.duration, 1_000_000) - offset
            if container.duration and container.duration > 0
            else None
        )
        if stream.type == "subtitle":
            cues, language, kind = _read_text_track(path, container, stream, offset)
            return cues, language, kind, media_end
        if stream.type != "video":
            raise SubtitleError(path, f"track {track_index} is {stream.type}, not subtitles")
    # A video track: its CEA-608 captions (A/53 cc_data), decoded by ttconv as SCC.
    try:
        pairs = cea608_pairs(path, track_index)
    except CaptionError as error:
        raise SubtitleError(
            path, f"track {track_index} is video, not subtitles, and has no CEA-608 captions"
        ) from error
    cues, _ = _ttconv_cues(path, "scc", scc_from_pairs(pairs))
    return cues, None, "cea608", media_end


def _read_text_track(
    path: Path, container: av.container.InputContainer, stream: av.stream.Stream, offset: Fraction
) -> tuple[list[_RawCue], str | None, str]:
    """The packets of a text subtitle track: (cues, language, codec kind)."""
    import av

    codec = stream.codec_context.codec
    kind = _TEXT_CODECS.get(codec.canonical_name) or _TEXT_CODECS.get(codec.name)
    if kind is None:
        what = "bitmap" if codec.bitmap_sub else "unsupported"
        raise SubtitleError(
            path, f"track {stream.index} holds {what} subtitles ({codec.name}), not text"
        )
    language = (stream.metadata.get("language") or "").strip()
    cues: list[_RawCue] = []
    try:
        for packet in container.demux(stream):
            if packet.pts is None or packet.size == 0:
                continue
            start = packet.pts * packet.time_base - offset
            end = start + packet.duration * packet.time_base if packet.duration else None
            cue = _track_cue(kind, bytes(packet), packet)
            if cue is not None:
                cue.start, cue.end = start, end
                cues.append(cue)
    except av.FFmpegError as error:
        raise SubtitleError(path, f"cannot read track {stream.index}: {error}") from error
    return cues, (language if language not in ("", "und") else None), kind


# ------------------------------------------------------------- SCC, EBU-STL, CEA-608: ttconv


def _ttconv_cues(path: Path, fmt: str, content: str | bytes) -> tuple[list[_RawCue], str | None]:
    """Read SCC (`content` text) or EBU-STL (`content` bytes) with ttconv and turn its WebVTT
    output into cues (with the WebVTT reader above: settings kept, styling classes dropped).
    Returns (cues, the document's language or None)."""
    import io

    from ttconv.scc import reader as scc_reader
    from ttconv.stl import reader as stl_reader
    from ttconv.vtt import writer as vtt_writer

    try:
        if fmt == "scc":
            assert isinstance(content, str)
            document = scc_reader.to_model(content)
        else:
            assert isinstance(content, bytes)
            document = stl_reader.to_model(io.BytesIO(content))
        text = vtt_writer.from_model(document) if document is not None else "WEBVTT\n"
    except Exception as error:  # a third-party parser: any failure means an unreadable file
        name = {"scc": "SCC", "stl": "EBU-STL"}[fmt]
        raise SubtitleError(path, f"not a readable {name} file: {error}") from error
    cues, _ = _parse_webvtt(path, text)
    for cue in cues:
        cue.identifier = ""  # ttconv numbers its cues: counters, not identifiers
    language = (document.get_lang() or "").strip() if document is not None else ""
    return cues, language or None


_SCC_LINE = re.compile(r"^\d{2}:\d{2}:\d{2}[:;.,]\d{2}\t[0-9a-fA-F]{4}(?:[ \t]+[0-9a-fA-F]{4})*$")


def _check_scc(path: Path, text: str) -> None:
    """ttconv skips SCC lines it cannot read without a word; a malformed file is an error here,
    with its line, as for the other formats."""
    lines = text.split("\n")
    if not lines[0].strip().startswith("Scenarist_SCC V1.0"):
        raise SubtitleError(path, "expected the header line Scenarist_SCC V1.0", 1)
    for number, line in enumerate(lines[1:], 2):
        if line.strip() and not _SCC_LINE.match(line.strip()):
            raise SubtitleError(
                path, "expected a caption line like 00:00:01:00<TAB>9420 9420", number
            )


def _parse_with_ttconv(path: Path, fmt: str, data: bytes) -> tuple[list[_RawCue], str | None]:
    if fmt == "scc":
        text = _decode_text(data)
        _check_scc(path, text)
        return _ttconv_cues(path, fmt, text)
    return _ttconv_cues(path, fmt, data)


def _track_cue(kind: str, payload: bytes, packet: av.Packet) -> _RawCue | None:
    """One packet's payload -> a cue without times (None: nothing to show)."""
    settings = identifier = ""
    if kind == "mov_text":
        # 3GPP timed text: a 16-bit length, the text, then style boxes (ignored).
        if len(payload) < 2:
            return None
        size = int.from_bytes(payload[:2], "big")
        body = payload[2 : 2 + size]
        encoding = "utf-16" if body.startswith((b"\xfe\xff", b"\xff\xfe")) else "utf-8"
        out = _TextBuilder()
        out.text(body.decode(encoding, errors="replace").replace("\r\n", "\n"))
        text = out.result()
    elif kind == "ass":
        # Matroska ASS: "ReadOrder,Layer,Style,Name,MarginL,MarginR,MarginV,Effect,Text".
        raw = payload.decode("utf-8", errors="replace").removeprefix("Dialogue:").strip()
        fields = raw.split(",", 8)
        text, settings = _ass_text(fields[8] if len(fields) == 9 else raw)
    elif kind == "webvtt":
        text = _webvtt_text(payload.decode("utf-8", errors="replace").replace("\r\n", "\n"))
        side = {sd.data_type: bytes(sd) for sd in packet.iter_sidedata()}
        raw_settings = side.get("webvtt_settings", b"").decode("utf-8", errors="replace")
        settings = " ".join(s for s in raw_settings.split() if _VTT_SETTING.match(s))
        identifier = side.get("webvtt_identifier", b"").decode("utf-8", errors="replace")
        identifier = "" if "-->" in identifier else identifier.strip()
    elif kind == "subrip":
        text, settings = _srt_text(payload.decode("utf-8", errors="replace").replace("\r\n", "\n"))
    else:  # plain text
        out = _TextBuilder()
        out.text(payload.decode("utf-8", errors="replace").replace("\r\n", "\n"))
        text = out.result()
    return _RawCue(Fraction(0), None, text, settings, identifier) if text else None
