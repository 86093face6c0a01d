"""End to end: closed captions (issue 20, item 4). CEA-608 captions carried in the H.264 SEI of
the video file and an SCC caption file (`CaptionFileLanguageExpression`) each become a WebVTT
caption track (`subtitle-<lang>-cc`) that the DASH and HLS manifests list and signal as
captions, its cue text and times within one frame of the input. `FailOnNoCaptionTracks` fails
a job whose video carries none and that has no caption file.
"""

from __future__ import annotations

import re

import pytest
from caption_media import make_cea608_video, scc_document
from e2e_helpers import check_events, read_dash, read_hls, run_simple

pytestmark = pytest.mark.e2e

IN_VIDEO = [(0.5, 1.5, "HELLO"), (2.0, 2.8, "WORLD")]
IN_SCC = [(0.6, 1.4, "HALLO"), (1.8, 2.6, "WELT")]
_CUE = re.compile(
    r"(\d{2}):(\d{2}):(\d{2})\.(\d{3}) --> (\d{2}):(\d{2}):(\d{2})\.(\d{3})[^\n]*\n([^\n]+)"
)


def _cues(vtt: str) -> list[tuple[float, float, str]]:
    """Every cue of a (possibly segmented) WebVTT text, once each, by start."""
    found = set()
    for match in _CUE.finditer(vtt):
        g = [int(x) for x in match.groups()[:8]]
        start = g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000
        end = g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000
        found.add((start, end, match.group(9).strip()))
    return sorted(found)


def _assert_match(got, expected, frame: float) -> None:
    assert [text for _, _, text in got] == [text for _, _, text in expected], got
    for (start, end, _), (want_start, want_end, _) in zip(got, expected, strict=True):
        assert abs(start - want_start) <= frame and abs(end - want_end) <= frame, (got, expected)


@pytest.fixture(scope="module")
def captioned(tmp_path_factory):
    folder = tmp_path_factory.mktemp("captions")
    video = make_cea608_video(folder / "movie.mp4", IN_VIDEO, duration=3.0, fps=30)
    scc = folder / "movie-de.scc"
    scc.write_text(scc_document(IN_SCC))
    return video, scc


def test_cea608_and_scc_become_caption_tracks(captioned, tmp_path):
    video, scc = captioned
    job_run = run_simple(
        tmp_path,
        video,
        scc,
        formats=["Dash", "Hls"],
        mappings={
            "CaptionFileLanguageExpression": r"^movie-(\w+)\.scc$",
            "FailOnNoAudioTracks": False,
            "FailOnNoCaptionTracks": True,
        },
    )
    job_run.assert_success()
    check_events(job_run)
    assert sorted(job_run.one("ContentPreProcessed")["CaptionLanguages"]) == ["de", "en"]
    expected = {"en": (IN_VIDEO, 1 / 30), "de": (IN_SCC, 1001 / 30000)}
    for manifest in ("dash/manifest.mpd", "hls/manifest.m3u8"):
        path = job_run.output_dir / manifest
        _, tracks = read_dash(path) if path.suffix == ".mpd" else read_hls(path)
        texts = {t.attributes["lang"]: t for t in tracks if t.kind == "text"}
        assert sorted(texts) == ["de", "en"], manifest
        for language, (cues, frame) in expected.items():
            track = texts[language]
            assert all(f"subtitle-{language}-cc" in str(p.path) for p in track.segments)
            vtt = b"".join(piece.read() for piece in track.segments).decode()
            _assert_match(_cues(vtt), cues, frame)
    # signalled as captions, as the contract says
    mpd = (job_run.output_dir / "dash/manifest.mpd").read_text()
    assert mpd.count('value="caption"') == 2, mpd
    master = (job_run.output_dir / "hls/manifest.m3u8").read_text()
    lines = [line for line in master.splitlines() if "subtitle-" in line and "-cc" in line]
    assert len(lines) == 2 and all("transcribes-spoken-dialog" in line for line in lines), lines


def test_fail_on_no_caption_tracks(e2e_media, tmp_path):
    job_run = run_simple(
        tmp_path, e2e_media.cfr(), formats=["Dash"], mappings={"FailOnNoCaptionTracks": True}
    )
    assert not job_run.report["Success"]
    error = job_run.final_error
    assert error is not None and error["ErrorCode"] == 3001
    assert "FailOnNoCaptionTracks" in error["ErrorMessage"]
    assert "cfr.mp4 carries no CEA-608 captions" in error["ErrorMessage"]
