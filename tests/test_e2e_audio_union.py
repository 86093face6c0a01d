"""End to end: the audio of a job is the union of the video file's audio tracks and the separate
audio files (issue 20, item 3). A mezzanine MKV with English and German tracks plus a delivered
French file packages three languages in DASH and HLS; a separate file of a language the MKV
already has replaces that track (an `AudioTrackReplaced` warning names it); `AudioMappings`
still decides which in-file tracks count.

Each language gets its own tone, so the test hears which source ended up under which language.
"""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest
from e2e_helpers import check_events, check_package, read_dash, read_hls, run_simple
from mediagen import AudioSpec, make_media

pytestmark = pytest.mark.e2e

SECONDS = 3.0
TONES = {"mkv-en": 440.0, "mkv-de": 660.0, "file-fr": 880.0, "file-en": 550.0}
AUDIO_EXPRESSION = r"^audio-(\w+)\.m4a$"


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("union-sources")
    mkv = make_media(
        folder / "movie.mkv",
        duration=SECONDS,
        audio=[
            AudioSpec("eng", frequency=TONES["mkv-en"]),
            AudioSpec("ger", frequency=TONES["mkv-de"]),
        ],
    )

    def audio_file(name: str, tone: float) -> Path:
        # no language in the track metadata: the expression's capture gives it
        spec = AudioSpec(None, frequency=tone)
        return make_media(folder / name, duration=SECONDS, video_codec=None, audio=[spec])

    return {
        "mkv": mkv,
        "fr": audio_file("fr.m4a", TONES["file-fr"]),
        "en": audio_file("en.m4a", TONES["file-en"]),
    }


def _tone(data: bytes) -> float:
    """The dominant frequency of an audio track's first channel, over its steady middle."""
    with av.open(io.BytesIO(data)) as container:
        samples = np.concatenate([f.to_ndarray()[0] for f in container.decode(audio=0)])
        rate = container.streams.audio[0].codec_context.sample_rate
    window = samples[rate // 4 : rate * 2]
    spectrum = np.abs(np.fft.rfft(window))
    return float(np.argmax(spectrum) * rate / len(window))


def _audio_by_language(run_) -> dict[str, dict[str, float]]:
    """{manifest: {language: tone}} for the DASH and the HLS package."""
    found = {}
    for manifest in ("dash/manifest.mpd", "hls/manifest.m3u8"):
        path = run_.output_dir / manifest
        _, tracks = read_dash(path) if path.suffix == ".mpd" else read_hls(path)
        audio = [t for t in tracks if t.kind == "audio"]
        languages = [t.attributes["lang"] for t in audio]
        assert len(languages) == len(set(languages)), (manifest, languages)
        found[manifest] = {t.attributes["lang"]: _tone(t.data()) for t in audio}
    return found


def _replaced_warnings(run_) -> list[str]:
    return [e["Message"] for e in run_.of_type("Warning") if e["Code"] == "AudioTrackReplaced"]


def _ignored_warnings(run_) -> list[str]:
    return [e["Message"] for e in run_.of_type("Warning") if e["Code"] == "IgnoredTrack"]


def test_mkv_and_a_french_file_give_three_languages(sources, tmp_path):
    job_run = run_simple(
        tmp_path,
        (sources["mkv"], "movie.mkv"),
        (sources["fr"], "audio-fr.m4a"),
        formats=["Dash", "Hls"],
        mappings={"AudioFileLanguageExpression": AUDIO_EXPRESSION},
    )
    check_package(job_run)
    check_events(job_run)
    assert job_run.one("ContentPreProcessed")["AudioLanguages"] == ["en", "de", "fr"]
    expected = {"en": TONES["mkv-en"], "de": TONES["mkv-de"], "fr": TONES["file-fr"]}
    for manifest, tones in _audio_by_language(job_run).items():
        assert sorted(tones) == sorted(expected), manifest
        for language, tone in expected.items():
            assert tones[language] == pytest.approx(tone, abs=5), (manifest, language)
    assert _replaced_warnings(job_run) == []
    assert _ignored_warnings(job_run) == []


def test_same_language_file_replaces_the_in_file_track(sources, tmp_path):
    job_run = run_simple(
        tmp_path,
        (sources["mkv"], "movie.mkv"),
        (sources["en"], "audio-en.m4a"),
        formats=["Dash", "Hls"],
        mappings={"AudioFileLanguageExpression": AUDIO_EXPRESSION, "FailOnIgnoredTracks": True},
    )
    check_package(job_run)
    check_events(job_run)
    expected = {"en": TONES["file-en"], "de": TONES["mkv-de"]}  # the separate English file wins
    for manifest, tones in _audio_by_language(job_run).items():
        assert sorted(tones) == sorted(expected), manifest
        for language, tone in expected.items():
            assert tones[language] == pytest.approx(tone, abs=5), (manifest, language)
    assert _replaced_warnings(job_run) == ["audio track movie.mkv#1 (en) by audio-en.m4a#0"]
    assert _ignored_warnings(job_run) == []  # replaced is not ignored: FailOnIgnoredTracks holds


def test_audio_mappings_still_narrow_the_in_file_tracks(sources, tmp_path):
    job_run = run_simple(
        tmp_path,
        (sources["mkv"], "movie.mkv"),
        (sources["fr"], "audio-fr.m4a"),
        formats=["Dash", "Hls"],
        mappings={
            "AudioFileLanguageExpression": AUDIO_EXPRESSION,
            "AudioMappings": {"VideoStreamAudioTracks": [{"TrackIndices": [2]}]},  # German only
        },
    )
    check_package(job_run)
    check_events(job_run)
    expected = {"de": TONES["mkv-de"], "fr": TONES["file-fr"]}
    for manifest, tones in _audio_by_language(job_run).items():
        assert sorted(tones) == sorted(expected), manifest
        for language, tone in expected.items():
            assert tones[language] == pytest.approx(tone, abs=5), (manifest, language)
    assert _ignored_warnings(job_run) == ["track movie.mkv#1 is not used by this job"]
    assert _replaced_warnings(job_run) == []
