"""Subtitle conversion to WebVTT: every source form, table-driven, each output re-parsed strictly.

Each case gives the source bytes and the exact WebVTT expected; every output also goes through
`strict_webvtt`, a small independent checker of the WebVTT file syntax that vipe promises.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mediagen import SubtitleSpec, make_media

from packagers.subtitles import (
    SubtitleError,
    SubtitleInfo,
    convert_to_webvtt,
    format_webvtt,
    read_cues,
)

# ------------------------------------------------------------------------ strict WebVTT checker

_TS = r"(\d{2,}):([0-5]\d):([0-5]\d)\.(\d{3})"
_TIMING = re.compile(rf"^{_TS} --> {_TS}(?: (.+))?$")
_SETTING = re.compile(
    r"^(?:vertical:(?:rl|lr)|line:(?:-?\d+|\d+(?:\.\d+)?%)(?:,(?:start|center|end))?"
    r"|position:\d+(?:\.\d+)?%(?:,(?:line-left|center|line-right))?|size:\d+(?:\.\d+)?%"
    r"|align:(?:start|center|end|left|right))$"
)
_MARKUP = re.compile(r"<[^>]*>|&[^;\s]*;")


@dataclass
class CheckedCue:
    identifier: str
    start: float
    end: float
    settings: str
    text: str


def _seconds(groups: tuple[str, ...]) -> float:
    hours, minutes, seconds, millis = (int(g) for g in groups)
    return hours * 3600 + minutes * 60 + seconds + millis / 1000


def strict_webvtt(text: str) -> list[CheckedCue]:
    """Parse vipe's WebVTT output strictly; any deviation fails the test."""
    assert not text.startswith("\ufeff"), "no BOM in the output"
    assert "\r" not in text, "LF line ends only"
    assert text.endswith("\n")
    blocks = text[:-1].split("\n\n")
    assert blocks[0] == "WEBVTT", f"header block: {blocks[0]!r}"
    cues: list[CheckedCue] = []
    identifiers: set[str] = set()
    for block in blocks[1:]:
        lines = block.split("\n")
        assert all(line.strip() for line in lines), f"blank line inside a block: {block!r}"
        identifier = ""
        if "-->" not in lines[0]:
            identifier = lines.pop(0)
            assert identifier not in identifiers, f"duplicate identifier {identifier!r}"
            identifiers.add(identifier)
        match = _TIMING.match(lines[0])
        assert match, f"timing line: {lines[0]!r}"
        start, end = _seconds(match.groups()[0:4]), _seconds(match.groups()[4:8])
        settings = match.group(9) or ""
        assert all(_SETTING.match(s) for s in settings.split(" ") if settings), settings
        assert start < end, f"start {start} not before end {end}"
        assert not cues or cues[-1].start <= start, "cues sorted by start"
        body = lines[1:]
        assert body, "cue without text"
        for line in body:
            assert "-->" not in line
            assert line == line.strip()
            for markup in _MARKUP.findall(line):
                assert markup in (
                    "<i>",
                    "</i>",
                    "<b>",
                    "</b>",
                    "<u>",
                    "</u>",
                    "&amp;",
                    "&lt;",
                    "&gt;",
                ), f"unexpected markup {markup!r} in {line!r}"
            rest = _MARKUP.sub("", line)
            assert "<" not in rest and ">" not in rest and "&" not in rest, line
        joined = "\n".join(body)
        for tag in "ibu":  # balanced, properly nested: every open has its close after it
            assert joined.count(f"<{tag}>") == joined.count(f"</{tag}>"), joined
        cues.append(CheckedCue(identifier, start, end, settings, joined))
    return cues


def convert(tmp_path: Path, name: str, data: bytes, **kwargs) -> tuple[str, SubtitleInfo]:
    source = tmp_path / name
    source.write_bytes(data)
    target = tmp_path / "out" / "subtitle.vtt"
    info = convert_to_webvtt(source, target, **kwargs)
    text = target.read_text(encoding="utf-8")
    cues = strict_webvtt(text)
    assert info.cue_count == len(cues)
    if cues:
        assert info.first_start == cues[0].start
        assert info.last_end == max(c.end for c in cues)
    return text, info


def vtt(*cues: str) -> str:
    """Expected output: the header and the cue blocks given."""
    return "\n\n".join(["WEBVTT", *cues]) + "\n"


# ------------------------------------------------------------------------------------- SRT

SRT_CASES = [
    pytest.param(
        "\ufeff1\r\n00:00:01,000 --> 00:00:02,500\r\n<i>Hello</i> world\r\nsecond line\r\n\r\n"
        '7\r\n00:00:03,000 --> 00:00:04,000\r\n<font color="#ff0000">Red</font> & <b>bold</b>'
        " <em>x</em> a<b\r\n".encode(),
        vtt(
            "00:00:01.000 --> 00:00:02.500\n<i>Hello</i> world\nsecond line",
            "00:00:03.000 --> 00:00:04.000\nRed &amp; <b>bold</b> <i>x</i> a&lt;b",
        ),
        id="bom-crlf-tags-multiline-numbering-gap",
    ),
    pytest.param(
        "1\n00:00:00,500 --> 00:00:01,000\nCaf\u00e9 na\u00efve \u201cquoted\u201d \u20ac5\n"
        "\n2\n00:00:01,000 --> 00:00:02,000\nDone".encode("cp1252"),
        vtt(
            "00:00:00.500 --> 00:00:01.000\nCafé naïve “quoted” €5",
            "00:00:01.000 --> 00:00:02.000\nDone",
        ),
        id="cp1252-no-final-newline",
    ),
    pytest.param(
        "1\r\n00:00:00,000 --> 00:00:01,000\r\nGrüße\r\n".encode("utf-16"),
        vtt("00:00:00.000 --> 00:00:01.000\nGrüße"),
        id="utf16-bom",
    ),
    pytest.param(
        b"3\n00:00:05,000 --> 00:00:06,000\nthird\n\n"
        b"1\n00:00:01,000 --> 00:00:04,000\nfirst\n\n"
        b"2\n00:00:02,000 --> 00:00:03,000\noverlaps first\n\n"
        b"4\n00:00:07,000 --> 00:00:07,000\nzero length\n\n"
        b"5\n00:00:09,000 --> 00:00:08,000\nnegative\n\n"
        b"6\n00:00:10,000 --> 00:00:11,000\n\n\n",
        vtt(
            "00:00:01.000 --> 00:00:04.000\nfirst",
            "00:00:02.000 --> 00:00:03.000\noverlaps first",
            "00:00:05.000 --> 00:00:06.000\nthird",
        ),
        id="sorted-overlap-kept-zero-negative-empty-dropped",
    ),
    pytest.param(
        b"1\n00:00:01,000 --> 00:00:02,000\n{\\an8}On top\n\n"
        b"00:00:02,000 --> 00:00:03,000 X1:10 X2:20 Y1:10 Y2:20\n<i>unclosed\n</b>stray\n\n"
        b"3\n00:00:03.5 --> 00:00:04,25\nafter a blank line\n\ncontinues\n",
        vtt(
            "00:00:01.000 --> 00:00:02.000 line:0\nOn top",
            "00:00:02.000 --> 00:00:03.000\n<i>unclosed\nstray</i>",
            "00:00:03.500 --> 00:00:04.250\nafter a blank line\ncontinues",
        ),
        id="an8-missing-number-unbalanced-tags-lenient-forms",
    ),
]


@pytest.mark.parametrize(("data", "expected"), SRT_CASES)
def test_srt(tmp_path, data, expected):
    text, info = convert(tmp_path, "subtitle-en.srt", data)
    assert text == expected
    assert info.source_format == "srt" and info.language is None


def test_srt_counts_dropped_cues(tmp_path):
    _, info = convert(tmp_path, "a.srt", SRT_CASES[3].values[0])
    assert (info.cue_count, info.dropped) == (3, 3)


# ----------------------------------------------------------------------------------- WebVTT

VTT_CASES = [
    pytest.param(
        b"WEBVTT - a title\nKind: captions\nLanguage: de\n\n"
        b"STYLE\n::cue { color: yellow }\n\n"
        b"NOTE a comment\nspanning two lines\n\n"
        b"REGION\nid:r1 width:40%\n\n"
        b"intro\n00:01.000 --> 00:02.000 line:0 position:10%,line-left align:start region:r1"
        b" bogus:1\n<c.yellow>Hi</c> <v Bob>there</v> &amp; <b>bold</b> &lt;3 &nbsp;x\n\n"
        b"00:00:01.500 --> 00:00:03.000 align:end\n<00:00:02.000>karaoke <u>under</u>\n\n"
        b"NOTE trailing\n",
        vtt(
            "intro\n00:00:01.000 --> 00:00:02.000 line:0 position:10%,line-left align:start\n"
            "Hi there &amp; <b>bold</b> &lt;3 \u00a0x",
            "00:00:01.500 --> 00:00:03.000 align:end\nkaraoke <u>under</u>",
        ),
        "de",
        id="settings-kept-note-style-region-dropped-ids-kept",
    ),
    pytest.param(
        b"\xef\xbb\xbfWEBVTT\r\n\r\n2\r\n00:00:05.000 --> 00:00:06.000\r\nlater\r\n\r\n"
        b"2\r\n00:00:01.000 --> 00:00:02.000\r\nearlier, same id\r\n"
        b"00:00:02.000 --> 00:00:03.000\r\nno blank line before",
        vtt(
            "00:00:01.000 --> 00:00:02.000\nearlier, same id",  # the first "2" in the file keeps it
            "00:00:02.000 --> 00:00:03.000\nno blank line before",
            "2\n00:00:05.000 --> 00:00:06.000\nlater",
        ),
        None,
        id="bom-crlf-sorted-duplicate-id-dropped",
    ),
]


@pytest.mark.parametrize(("data", "expected", "language"), VTT_CASES)
def test_webvtt(tmp_path, data, expected, language):
    text, info = convert(tmp_path, "subtitle-de.vtt", data)
    assert text == expected
    assert info.language == language and info.source_format == "webvtt"


# ------------------------------------------------------------------------------------ TTML

TT = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<tt xmlns="http://www.w3.org/ns/ttml" xmlns:tts="http://www.w3.org/ns/ttml#styling"'
    ' xmlns:ttp="http://www.w3.org/ns/ttml#parameter" {attrs}>\n'
    '<head><styling><style xml:id="base" tts:textAlign="right"/>'
    '<style xml:id="s1" style="base" tts:color="white"/></styling></head>\n'
    "<body>{body}</body></tt>\n"
)


def ttml(body: str, attrs: str = 'xml:lang="en"') -> bytes:
    return TT.format(attrs=attrs, body=body).encode()


TTML_CASES = [
    pytest.param(
        ttml(
            '<div><p begin="00:00:01.000" end="00:00:02.500">Hello <span tts:fontStyle='
            '"italic">big</span>\n     world<br/>  second &amp; line </p>'
            '<p begin="00:00:00.250" end="00:00:01.000" tts:textAlign="left">left</p>'
            '<p begin="00:00:03.000" end="00:00:04.000" style="s1">styled right</p></div>',
            attrs='xml:lang="de-DE"',
        ),
        vtt(
            "00:00:00.250 --> 00:00:01.000 align:left\nleft",
            "00:00:01.000 --> 00:00:02.500\nHello big world\nsecond &amp; line",
            "00:00:03.000 --> 00:00:04.000 align:right\nstyled right",
        ),
        "de-DE",
        id="clock-time-spans-br-textalign",
    ),
    pytest.param(
        ttml(
            '<div><p begin="00:00:01:12" end="00:00:02:00">frames</p>'
            '<p begin="00:00:02:00.1" end="00:00:03:24">subframes</p></div>',
            attrs='ttp:frameRate="25" ttp:subFrameRate="2"',
        ),
        vtt(
            "00:00:01.480 --> 00:00:02.000\nframes",
            "00:00:02.020 --> 00:00:03.960\nsubframes",
        ),
        None,
        id="smpte-frames",
    ),
    pytest.param(
        ttml(
            '<div><p begin="00:00:00:15" end="00:00:01:00">ntsc</p></div>',
            attrs='ttp:frameRate="30" ttp:frameRateMultiplier="1000 1001"',
        ),
        vtt("00:00:00.501 --> 00:00:01.000\nntsc"),
        None,
        id="frame-rate-multiplier",
    ),
    pytest.param(
        ttml(
            '<div><p begin="00:01:00:02" end="00:10:00:00">drop frame</p></div>',
            attrs='ttp:timeBase="smpte" ttp:frameRate="30" ttp:frameRateMultiplier="1000 1001"'
            ' ttp:dropMode="dropNTSC"',
        ),
        # 00:01:00:02 is frame 1800 (frames 0, 1 of minute 1 do not exist); 00:10:00:00 is
        # frame 17982, which drop-frame labels keep within a millisecond of wall-clock time.
        vtt("00:01:00.060 --> 00:09:59.999\ndrop frame"),
        None,
        id="smpte-drop-frame",
    ),
    pytest.param(
        ttml(
            '<div><p begin="01:00:00:00" end="01:00:01:00">non-drop</p></div>',
            attrs='ttp:timeBase="smpte" ttp:frameRate="30" ttp:frameRateMultiplier="1000 1001"',
        ),
        vtt("01:00:03.600 --> 01:00:04.601\nnon-drop"),
        None,
        id="smpte-non-drop",
    ),
    pytest.param(
        ttml(
            '<div><p begin="12.5s" dur="500ms">seconds and ms</p>'
            '<p begin="30t" end="45t">ticks</p>'
            '<p begin="0.01h" end="0.75m">hours, minutes</p>'
            '<p begin="50f" dur="25f">frames</p></div>',
            attrs='ttp:tickRate="10" ttp:frameRate="25"',
        ),
        vtt(
            "00:00:02.000 --> 00:00:03.000\nframes",
            "00:00:03.000 --> 00:00:04.500\nticks",
            "00:00:12.500 --> 00:00:13.000\nseconds and ms",
            "00:00:36.000 --> 00:00:45.000\nhours, minutes",
        ),
        None,
        id="offset-times",
    ),
    pytest.param(
        ttml(
            '<div begin="10s"><div begin="5s"><p begin="1s" end="2s">nested 17</p></div>'
            '<div begin="20s" end="21s"><p begin="0.5s" end="5s">clipped by div</p>'
            "<p>whole div</p></div></div>"
            '<div timeContainer="seq" begin="40s"><p dur="1s">seq one</p>'
            '<p dur="2s">seq two</p></div>',
            attrs='ttp:tickRate="10000000"',
        ).replace(b"<body>", b'<body begin="1s">'),
        vtt(
            "00:00:17.000 --> 00:00:18.000\nnested 17",
            "00:00:31.000 --> 00:00:32.000\nwhole div",
            "00:00:31.500 --> 00:00:32.000\nclipped by div",
            "00:00:41.000 --> 00:00:42.000\nseq one",
            "00:00:42.000 --> 00:00:44.000\nseq two",
        ),
        None,
        id="nested-divs-containment-seq",
    ),
    pytest.param(
        ttml(
            '<div><p begin="0s" end="4s"><span begin="0s" end="2s">A</span><br/>'
            '<span begin="1s">B</span></p></div>'
        ),
        vtt(
            "00:00:00.000 --> 00:00:01.000\nA",
            "00:00:01.000 --> 00:00:02.000\nA\nB",
            "00:00:02.000 --> 00:00:04.000\nB",
        ),
        "en",
        id="timed-spans",
    ),
    pytest.param(
        b'<?xml version="1.0" encoding="utf-8"?>\n'
        b'<tt xml:lang="fr" xmlns="http://www.w3.org/2006/10/ttaf1"'
        b' xmlns:tts="http://www.w3.org/2006/10/ttaf1#styling"><body><div>'
        b'<p begin="00:00:01.00" end="00:00:02.00" tts:textAlign="center">'
        b"\xc3\xa0 bient\xc3\xb4t</p></div></body></tt>",
        vtt("00:00:01.000 --> 00:00:02.000\nà bientôt"),
        "fr",
        id="dfxp-2006-namespace",
    ),
]


@pytest.mark.parametrize(("data", "expected", "language"), TTML_CASES)
def test_ttml(tmp_path, data, expected, language):
    text, info = convert(tmp_path, "subtitle.ttml", data)
    assert text == expected
    assert info.language == language and info.source_format == "ttml"


@pytest.mark.parametrize("name", ["subtitle-fr.dfxp", "subtitle-fr.xml"])
def test_ttml_extensions(tmp_path, name):
    text, _ = convert(tmp_path, name, TTML_CASES[-1].values[0])
    assert text.endswith("à bientôt\n")


def test_ttml_utf16(tmp_path):
    data = TTML_CASES[0].values[0].decode().replace('encoding="UTF-8"', 'encoding="UTF-16"')
    text, _ = convert(tmp_path, "subtitle.ttml", data.encode("utf-16"))
    assert text == TTML_CASES[0].values[1]


def test_ttml_open_end_uses_duration(tmp_path):
    data = ttml('<div><p begin="1s">open</p><p begin="2s" end="3s">closed</p></div>')
    text, _ = convert(tmp_path, "a.ttml", data, duration=5.0)
    assert text == vtt(
        "00:00:01.000 --> 00:00:05.000\nopen", "00:00:02.000 --> 00:00:03.000\nclosed"
    )
    text, _ = convert(tmp_path, "a.ttml", data)  # no duration: until the document's last time
    assert text.startswith(vtt("00:00:01.000 --> 00:00:03.000\nopen")[:-1])


def test_duration_clips(tmp_path):
    data = b"WEBVTT\n\n00:00:01.000 --> 00:00:03.000\na\n\n00:00:04.000 --> 00:00:05.000\nb\n"
    text, info = convert(tmp_path, "a.vtt", data, duration=2.0)
    assert text == vtt("00:00:01.000 --> 00:00:02.000\na")
    assert info.dropped == 1


# ---------------------------------------------------------------------------- media tracks

TRACK_CUES = [
    (0.5, 1.5, "<i>Hello</i> & you"),
    (1.0, 2.0, "overlap"),
    (2.0, 2.5, "line one\nline two"),
]
ASS_CUES = [
    (0.5, 1.5, "{\\i1}Hello{\\i0} & you"),
    (1.0, 2.0, "{\\an8}{\\pos(10,10)}top\\Nsecond"),
    (2.0, 2.5, "soft\\nbreak{\\p1}m 0 0 l 10 10{\\p0}"),
]
MOV_CUES = [(0.5, 1.5, "a < b & c"), (2.0, 2.5, "second\nline")]


@pytest.fixture(scope="module")
def tracks(media_dir) -> dict[str, Path]:
    def media(name: str, specs: list[SubtitleSpec]) -> Path:
        return make_media(
            media_dir / name, duration=1.0, width=64, height=64, audio=[], subtitles=specs
        )

    files = {
        "subrip": media("subs-srt.mkv", [SubtitleSpec(codec="subrip", cues=TRACK_CUES)]),
        "ass": media("subs-ass.mkv", [SubtitleSpec("ger", codec="ass", cues=ASS_CUES)]),
        "mov_text": media("subs.mp4", [SubtitleSpec(None, codec="mov_text", cues=MOV_CUES)]),
    }
    # WebVTT in Matroska keeps identifiers and settings as side data: remux a .vtt to get them.
    source = media_dir / "track.vtt"
    source.write_text(
        "WEBVTT\n\nid1\n00:00:00.500 --> 00:00:01.500 line:0 align:start\nHi &amp; <b>bye</b>\n"
    )
    files["webvtt"] = media_dir / "subs-vtt.mkv"
    with av.open(str(source)) as inp, av.open(str(files["webvtt"]), "w") as out:
        stream = out.add_stream_from_template(inp.streams[0])
        stream.metadata["language"] = "fra"
        for packet in inp.demux(inp.streams[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    return files


TRACK_CASES = [
    pytest.param(
        "subrip",
        1,
        vtt(
            "00:00:00.500 --> 00:00:01.500\n<i>Hello</i> &amp; you",
            "00:00:01.000 --> 00:00:02.000\noverlap",
            "00:00:02.000 --> 00:00:02.500\nline one\nline two",
        ),
        "eng",
        id="mkv-subrip",
    ),
    pytest.param(
        "ass",
        1,
        vtt(
            "00:00:00.500 --> 00:00:01.500\nHello &amp; you",
            "00:00:01.000 --> 00:00:02.000 line:0\ntop\nsecond",
            "00:00:02.000 --> 00:00:02.500\nsoft break",
        ),
        "ger",
        id="mkv-ass",
    ),
    pytest.param(
        "mov_text",
        1,
        vtt(
            "00:00:00.500 --> 00:00:01.500\na &lt; b &amp; c",
            "00:00:02.000 --> 00:00:02.500\nsecond\nline",
        ),
        None,
        id="mp4-mov_text",
    ),
    pytest.param(
        "webvtt",
        0,
        vtt("id1\n00:00:00.500 --> 00:00:01.500 line:0 align:start\nHi &amp; <b>bye</b>"),
        "fra",
        id="mkv-webvtt",
    ),
]


@pytest.mark.parametrize(("kind", "index", "expected", "language"), TRACK_CASES)
def test_media_track(tmp_path, tracks, kind, index, expected, language):
    target = tmp_path / "subtitle.vtt"
    info = convert_to_webvtt(tracks[kind], target, track_index=index)
    text = target.read_text(encoding="utf-8")
    strict_webvtt(text)
    assert text == expected
    assert (info.language, info.source_format) == (language, kind)


def test_media_track_duration_clips(tracks):
    cues, info = read_cues(tracks["subrip"], track_index=1, duration=1.2)
    assert [(c.start_ms, c.end_ms) for c in cues] == [(500, 1200), (1000, 1200)]
    assert info.dropped == 1


def test_media_track_not_subtitles(tmp_path, tracks):
    with pytest.raises(SubtitleError, match=r"subs-srt\.mkv: track 0 is video, not subtitles"):
        convert_to_webvtt(tracks["subrip"], tmp_path / "x.vtt", track_index=0)
    with pytest.raises(SubtitleError, match="has no track 9"):
        convert_to_webvtt(tracks["subrip"], tmp_path / "x.vtt", track_index=9)
    assert not (tmp_path / "x.vtt").exists()


def test_media_track_bitmap_subtitles_refused(tmp_path):
    path = tmp_path / "bitmap.mkv"
    with av.open(str(path), "w") as out:  # one (blank) DVD subtitle packet is enough to probe
        stream = out.add_stream("dvdsub")
        stream.time_base = Fraction(1, 1000)
        packet = av.Packet(b"\x00\x10" + bytes(14))
        packet.stream, packet.time_base = stream, stream.time_base
        packet.pts = packet.dts = 0
        out.mux(packet)
    with pytest.raises(SubtitleError, match=r"^bitmap\.mkv: track 0 holds bitmap subtitles"):
        convert_to_webvtt(path, tmp_path / "x.vtt", track_index=0)


# ------------------------------------------------------------------------------- malformed

MALFORMED = [
    pytest.param(
        "subtitle-de.srt",
        b"1\n00:00:01,000 --> 00:00:02,000\nok\n\n2\n00:00:03,000 -> 00:00:04,000\nbad\n",
        r"^subtitle-de\.srt line 6: expected a timing line like 00:00:01,000 --> 00:00:02,000$",
        id="srt-broken-arrow",
    ),
    pytest.param(
        "subtitle-de.srt",
        b"\xef\xbb\xbf1\r\n00:00:01,000 --> 00:00:02,000\r\nok\r\n\r\n2\r\nno timing\r\n",
        r"^subtitle-de\.srt line 6: expected a timing line",
        id="srt-number-without-timing",
    ),
    pytest.param(
        "a.srt", b"just some text\n", r"^a\.srt line 1: expected a timing line", id="srt-no-cue"
    ),
    pytest.param(
        "a.srt",
        b"1\n00:00:01,000 --> 00:00:02,000\nok\n\n2\n00:00:0x,000 --> 00:00:04,000\n",
        r"^a\.srt line 6: ",
        id="srt-bad-digits",
    ),
    pytest.param(
        "a.vtt",
        b"1\n00:00:01.000 --> 00:00:02.000\nno header\n",
        r"^a\.vtt line 1: expected the header line WEBVTT$",
        id="vtt-no-header",
    ),
    pytest.param("a.vtt", b"", r"^a\.vtt line 1: expected the header", id="vtt-empty"),
    pytest.param(
        "a.vtt",
        b"WEBVTT\n\n00:00:01.000 --> 00:00:02.000\nok\n\nid\n00:00:01,000 --> 00:00:02,000\nx\n",
        r"^a\.vtt line 7: expected a timing line like 00:00:01\.000 --> 00:00:02\.000$",
        id="vtt-comma-timing",
    ),
    pytest.param(
        "a.ttml",
        b"1\n00:00:01,000 --> 00:00:02,000\nthis is SRT\n",
        r"^a\.ttml line 1: not well-formed XML",
        id="ttml-not-xml",
    ),
    pytest.param(
        "a.ttml",
        b'<tt xmlns="http://www.w3.org/ns/ttml">\n<body>\n<p begin="1s">x</div>\n</tt>',
        r"^a\.ttml line 3: not well-formed XML: mismatched tag",
        id="ttml-mismatched-tag",
    ),
    pytest.param(
        "a.ttml",
        b'<?xml version="1.0"?>\n<!DOCTYPE tt [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;">]>'
        b'\n<tt xmlns="http://www.w3.org/ns/ttml"><body><p begin="1s" end="2s">&b;</p></body></tt>',
        r"^a\.ttml line 2: DOCTYPE and entity declarations are not allowed$",
        id="ttml-doctype-entities",
    ),
    pytest.param(
        "a.ttml",
        b'<html xmlns="http://www.w3.org/1999/xhtml"><body/></html>',
        r"^a\.ttml line 1: expected a TTML document \(root <tt>\), found <html>$",
        id="ttml-wrong-root",
    ),
    pytest.param(
        "a.ttml",
        ttml('<div>\n<p begin="00:00:01.000" end="soon">x</p></div>'),
        r"^a\.ttml line 5: invalid time expression 'soon'",
        id="ttml-bad-time",
    ),
    pytest.param(
        "a.ttml",
        ttml('<div><p begin="00:00:00:12">x</p></div>', attrs='ttp:frameRate="zero"'),
        r"^a\.ttml line 2: invalid ttp timing parameters",
        id="ttml-bad-frame-rate",
    ),
]


@pytest.mark.parametrize(("name", "data", "message"), MALFORMED)
def test_malformed(tmp_path, name, data, message):
    source = tmp_path / name
    source.write_bytes(data)
    target = tmp_path / "out.vtt"
    with pytest.raises(SubtitleError, match=message) as caught:
        convert_to_webvtt(source, target)
    assert isinstance(caught.value, ValueError)
    assert caught.value.path == source
    assert not target.exists(), "nothing is written for a malformed source"


SEEDS = [
    *((".srt", case.values[0]) for case in SRT_CASES),
    *((".vtt", case.values[0]) for case in VTT_CASES),
    *((".ttml", case.values[0]) for case in TTML_CASES),
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(SEEDS),
    edits=st.lists(
        st.tuples(st.floats(0, 1), st.integers(0, 4), st.binary(max_size=6)), max_size=6
    ),
)
def test_damaged_inputs_fail_cleanly_or_give_valid_webvtt(tmp_path_factory, seed, edits):
    """Any damage to a valid file: a `SubtitleError`, or output the strict checker accepts."""
    suffix, data = seed
    for where, cut, insert in edits:
        at = int(where * len(data))
        data = data[:at] + insert + data[at + cut :]
    source = tmp_path_factory.mktemp("fuzz") / f"damaged{suffix}"
    source.write_bytes(data)
    try:
        cues, _ = read_cues(source)
    except SubtitleError:
        return
    strict_webvtt(format_webvtt(cues))


def test_error_is_picklable_and_keeps_its_fields(tmp_path):
    error = SubtitleError(tmp_path / "subtitle-de.srt", "expected a timing line", 14)
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) == "subtitle-de.srt line 14: expected a timing line"
    assert (copy.path, copy.line, copy.reason) == (error.path, 14, "expected a timing line")


def test_missing_file_and_unreadable_media(tmp_path):
    with pytest.raises(SubtitleError, match=r"^nope\.srt: cannot read the file"):
        convert_to_webvtt(tmp_path / "nope.srt", tmp_path / "x.vtt")
    (tmp_path / "junk.mkv").write_bytes(b"not media at all" * 10)
    with pytest.raises(SubtitleError, match=r"^junk\.mkv: cannot open the media file"):
        convert_to_webvtt(tmp_path / "junk.mkv", tmp_path / "x.vtt", track_index=0)


def test_empty_srt_gives_an_empty_valid_file(tmp_path):
    text, info = convert(tmp_path, "empty.srt", b"")
    assert text == "WEBVTT\n"
    assert (info.cue_count, info.first_start, info.last_end) == (0, None, None)


def test_long_timestamps(tmp_path):
    data = b"1\n123:04:05,678 --> 123:04:06,000\nlate\n"
    text, _ = convert(tmp_path, "a.srt", data)
    assert "123:04:05.678 --> 123:04:06.000" in text


# ------------------------------------------------------ SCC, EBU-STL, CEA-608 (issue 20, ttconv)

CAPTIONS = [(0.5, 1.5, "HELLO"), (2.0, 2.8, "WORLD")]
FRAME_2997 = 1001 / 30000


def _assert_cues_match(cues: list[CheckedCue], expected, tolerance: float) -> None:
    """Cue text equal, start and end within `tolerance` (one frame) of the input's."""
    assert [c.text for c in cues] == [text for _, _, text in expected]
    for cue, (start, end, _) in zip(cues, expected, strict=True):
        assert abs(cue.start - start) <= tolerance, (cue, start)
        assert abs(cue.end - end) <= tolerance, (cue, end)


def test_scc(tmp_path):
    from caption_media import scc_document

    text, info = convert(tmp_path, "captions-en.scc", scc_document(CAPTIONS).encode())
    _assert_cues_match(strict_webvtt(text), CAPTIONS, FRAME_2997)
    assert info.source_format == "scc" and info.cue_count == 2


def test_scc_detected_by_its_header(tmp_path):
    from caption_media import scc_document

    text, info = convert(tmp_path, "captions.txt", scc_document(CAPTIONS).encode())
    assert info.source_format == "scc"
    _assert_cues_match(strict_webvtt(text), CAPTIONS, FRAME_2997)


def test_ebu_stl(tmp_path):
    from caption_media import ebu_stl

    text, info = convert(tmp_path, "subtitle-en.stl", ebu_stl(CAPTIONS, fps=25))
    _assert_cues_match(strict_webvtt(text), CAPTIONS, 1 / 25)
    assert info.source_format == "stl"


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        (
            "a.scc",
            b"Scenarist_SCC V1.0\n\nnot a time code\t9420\n",
            r"^a\.scc line 3: expected a caption line like 00:00:01:00<TAB>9420 9420$",
        ),
        ("a.scc", b"WEBVTT\n", r"^a\.scc line 1: expected the header line Scenarist_SCC V1\.0$"),
        ("a.stl", b"\x00" * 100, r"^a\.stl: not a readable EBU-STL file"),
    ],
    ids=["scc-garbage", "scc-no-header", "stl-truncated"],
)
def test_scc_and_stl_malformed(tmp_path, name, data, message):
    source = tmp_path / name
    source.write_bytes(data)
    with pytest.raises(SubtitleError, match=message):
        convert_to_webvtt(source, tmp_path / "out.vtt")
    assert not (tmp_path / "out.vtt").exists()


def test_cea608_in_h264_sei(tmp_path):
    """Captions in the video's SEI (A/53 cc_data): read from the video track, timed to within
    one frame of the input, the last cue's end kept."""
    from caption_media import make_cea608_video

    video = make_cea608_video(tmp_path / "cc.mp4", CAPTIONS, duration=3.0, fps=30)
    target = tmp_path / "cc.vtt"
    info = convert_to_webvtt(video, target, track_index=0)
    _assert_cues_match(strict_webvtt(target.read_text(encoding="utf-8")), CAPTIONS, 1 / 30)
    assert (info.source_format, info.language, info.cue_count) == ("cea608", None, 2)
