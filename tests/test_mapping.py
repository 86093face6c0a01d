"""`engine.mapping.map_media`: contract §4 MediaMappings, table-driven over generated media.

Each case builds a work folder from small generated templates, maps it, and compares a summary
of the `MediaMap` (file names instead of paths) with what the case expects, or expects an error.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from caption_media import make_cea608_video
from mediagen import AudioSpec, SubtitleSpec, make_media

from engine.errors import MappingError, SourceError
from engine.job import ContentProcessing, MediaMappings
from engine.mapping import _language_from_name, map_media
from engine.media import MediaMap

TINY = {"width": 64, "height": 36, "duration": 0.5}
VIDEO = r"^movie\.(mp4|mkv)$"


@pytest.fixture(scope="session")
def templates(media_dir: Path) -> dict[str, Path]:
    """Generated files that cases copy into their work folder under any name."""
    folder = media_dir / "mapping"
    made = {
        # video, one English stereo track (streams: 0 video, 1 audio)
        "v_en": make_media(folder / "v_en.mp4", **TINY),
        "v_noaudio": make_media(folder / "v_noaudio.mp4", **TINY, audio=[]),
        "v_und": make_media(folder / "v_und.mp4", **TINY, audio=[AudioSpec(None)]),
        # 0 video, 1 eng stereo, 2 ger mono, 3 eng subrip, 4 fre ass
        "v_multi": make_media(
            folder / "v_multi.mkv",
            **TINY,
            audio=[AudioSpec("eng"), AudioSpec("ger", channels=1)],
            subtitles=[SubtitleSpec("eng", "subrip"), SubtitleSpec("fre", "ass")],
        ),
        "v_2mono": make_media(
            folder / "v_2mono.mp4", **TINY, audio=[AudioSpec(None, channels=1)] * 2
        ),
        "v_6mono": make_media(
            folder / "v_6mono.mp4", **TINY, audio=[AudioSpec("eng", channels=1)] * 6
        ),
        "a_en": make_media(folder / "a_en.m4a", duration=0.5, video_codec=None),
        "a_und": make_media(
            folder / "a_und.m4a", duration=0.5, video_codec=None, audio=[AudioSpec(None)]
        ),
        "a_de": make_media(
            folder / "a_de.m4a", duration=0.5, video_codec=None, audio=[AudioSpec("ger")]
        ),
        "a_2tracks": make_media(
            folder / "a_2tracks.mka",
            duration=0.5,
            video_codec=None,
            audio=[AudioSpec("eng"), AudioSpec("fre")],
        ),
    }
    # H.264 with CEA-608 captions in its SEI (no audio)
    made["v_cc"] = make_cea608_video(
        folder / "v_cc.mp4", [(0.4, 0.8, "HI")], duration=1.0, width=64, height=36
    )
    text = folder / "text.vtt"
    text.write_text("WEBVTT\n\n00:00.000 --> 00:00.400\nHello\n")
    made["text"] = text
    image = folder / "image.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    made["png"] = image
    notes = folder / "notes.txt"
    notes.write_text("release notes\n")
    made["txt"] = notes
    broken = folder / "broken.mp4"
    broken.write_text("this is not a video\n" * 10)
    made["corrupt"] = broken
    return made


def work_folder(tmp_path: Path, templates: dict[str, Path], files: dict[str, str]) -> list[Path]:
    folder = tmp_path / "work"
    folder.mkdir()
    paths = []
    for name, template in files.items():
        path = folder / name
        os.link(templates[template], path)  # cheap copy; the mapper only reads
        paths.append(path)
    return paths


def summary(media: MediaMap) -> dict[str, Any]:
    def name(path: Path | None) -> str | None:
        return path.name if path else None

    return {
        "video": name(media.video),
        "renditions": [p.name for p in media.renditions],
        "audio": [
            (a.path.name, a.track_indices, a.language, a.descriptive, a.channels)
            for a in media.audio
        ],
        "subtitles": [(t.path.name, t.language, t.track_index) for t in media.subtitles],
        "captions": [(t.path.name, t.language, t.track_index) for t in media.captions],
        "watermarks": [p.name for p in media.watermarks],
        "ignored_files": [p.name for p in media.ignored_files],
        "ignored_tracks": list(media.ignored_tracks),
        "replaced_tracks": list(media.replaced_tracks),
        "sources": sorted(p.name for p in media.sources),
    }


@dataclass
class Raises:
    error: type[Exception]
    match: str  # a substring of the message


def mappings(**fields: Any) -> MediaMappings:
    return MediaMappings.model_validate(fields)


def processing(**fields: Any) -> ContentProcessing:
    return ContentProcessing.model_validate({"OutputFormat": ["Cmaf"], **fields})


def run_case(tmp_path, templates, files, mapping_fields, processing_fields, expected):
    paths = work_folder(tmp_path, templates, files)
    job_mappings = mappings(**mapping_fields)
    job_processing = processing(**(processing_fields or {}))
    if isinstance(expected, Raises):
        with pytest.raises(expected.error) as caught:
            map_media(paths, job_mappings, job_processing)
        assert expected.match in caught.value.message
        assert caught.value.code == (3001 if expected.error is MappingError else 3002)
        return
    got = summary(map_media(paths, job_mappings, job_processing))
    for key, value in expected.items():
        assert got[key] == value, f"{key}: {got[key]!r} != {value!r}"
    defaults = {
        "ignored_files": [],
        "ignored_tracks": [],
        "replaced_tracks": [],
        "renditions": [],
        "watermarks": [],
    }
    for key, value in defaults.items():
        if key not in expected:
            assert got[key] == value, f"{key}: {got[key]!r}"


EN_IN_FILE = [("movie.mp4", (1,), "en", False, 2)]

REGEX_CASES = [
    # ------------------------------------------------------------------ video and in-file audio
    pytest.param(
        {"movie.mp4": "v_en"},
        {"VideoStreamExpression": VIDEO},
        None,
        {"video": "movie.mp4", "audio": EN_IN_FILE, "sources": ["movie.mp4"]},
        id="minimal: in-file audio, language from metadata",
    ),
    pytest.param(
        {"movie.mkv": "v_multi"},
        {"VideoStreamExpression": VIDEO},
        None,
        {
            "audio": [("movie.mkv", (1,), "en", False, 2), ("movie.mkv", (2,), "de", False, 1)],
            "subtitles": [("movie.mkv", "en", 3), ("movie.mkv", "fr", 4)],
        },
        id="in-file audio and subtitle tracks with their metadata languages",
    ),
    pytest.param(
        {"input.mp4": "v_en"},
        {"VideoStreamExpression": "work"},  # the folder is called work: names only
        None,
        Raises(MappingError, "FailOnNoVideoTracks"),
        id="expressions match the file name, not the folder",
    ),
    pytest.param(
        {"movie.mp4": "v_en", "movie.mkv": "v_multi"},
        {"VideoStreamExpression": VIDEO},
        None,
        Raises(MappingError, "matched 2 files, expected one: movie.mkv, movie.mp4"),
        id="several video matches",
    ),
    pytest.param(
        {"movie.mp4": "v_en"},
        {"VideoStreamExpression": "movie(", "FailOnNoAudioTracks": False},
        None,
        Raises(MappingError, "VideoStreamExpression: not a valid regular expression"),
        id="invalid expression",
    ),
    pytest.param(
        {"movie.mp4": "corrupt"},
        {"VideoStreamExpression": VIDEO},
        None,
        Raises(SourceError, "movie.mp4: not a readable media file"),
        id="corrupt video file: SourceError 3002",
    ),
    # ---------------------------------------------------------------- separate audio files
    pytest.param(
        {"movie.mp4": "v_en", "audio_de.m4a": "a_und", "audio_fr.m4a": "a_de"},
        {"VideoStreamExpression": VIDEO, "AudioFileLanguageExpression": r"^audio_(\w+)\.m4a$"},
        None,
        {
            # the capture wins over the track metadata (audio_fr.m4a says "ger"); the union
            # with the in-file (English) track
            "audio": [
                *EN_IN_FILE,
                ("audio_de.m4a", (0,), "de", False, 2),
                ("audio_fr.m4a", (0,), "fr", False, 2),
            ],
            "sources": ["audio_de.m4a", "audio_fr.m4a", "movie.mp4"],
        },
        id="AudioFileLanguageExpression",
    ),
    pytest.param(
        {"movie.mp4": "v_en", "audio.m4a": "a_de", "audio_x.m4a": "a_und"},
        {
            "VideoStreamExpression": VIDEO,
            "AudioFileLanguageExpression": r"^audio(?:_(\w\w))?\.m4a$",
        },
        None,
        {
            "audio": [*EN_IN_FILE, ("audio.m4a", (0,), "de", False, 2)],
            "ignored_files": ["audio_x.m4a"],
        },
        id="optional capture group: no capture, the track metadata",
    ),
    pytest.param(
        {"movie.mp4": "v_en", "audio_dolby!.m4a": "a_en"},
        {"VideoStreamExpression": VIDEO, "AudioFileLanguageExpression": r"^audio_(.+)\.m4a$"},
        None,
        Raises(MappingError, "audio track audio_dolby!.m4a#0: 'dolby!' is not a language code"),
        id="captured text that is not a language",
    ),
    pytest.param(
        {"movie.mp4": "v_en", "movie-ad-en.m4a": "a_und"},
        {
            "VideoStreamExpression": VIDEO,
            "DescriptiveAudioFileLanguageExpression": r"-ad-(\w+)\.m4a$",
        },
        None,
        {"audio": [*EN_IN_FILE, ("movie-ad-en.m4a", (0,), "en", True, 2)]},
        id="DescriptiveAudioFileLanguageExpression keeps in-file audio",
    ),
    pytest.param(
        {"movie.mp4": "v_en", "audio_de.m4a": "a_und", "audio_en_ad.m4a": "a_und"},
        {
            "VideoStreamExpression": VIDEO,
            "AudioFileLanguageExpression": r"^audio_(\w\w)",
            "DescriptiveAudioFileLanguageExpression": r"^audio_(\w\w)_ad",
        },
        None,
        {
            # a descriptive file does not replace the in-file English track
            "audio": [
                *EN_IN_FILE,
                ("audio_de.m4a", (0,), "de", False, 2),
                ("audio_en_ad.m4a", (0,), "en", True, 2),
            ],
        },
        id="a file matching audio and descriptive expressions is descriptive",
    ),
    pytest.param(
        {"movie.mp4": "v_en", "audio_de.m4a": "a_und"},
        {
            "VideoStreamExpression": r"\.(mp4|m4a)$",
            "AudioFileLanguageExpression": r"^audio_(\w+)\.m4a$",
        },
        None,
        {
            "video": "movie.mp4",
            "audio": [*EN_IN_FILE, ("audio_de.m4a", (0,), "de", False, 2)],
        },
        id="video and audio expressions both match: the probe decides",
    ),
    pytest.param(
        {"movie.mp4": "v_en", "dub.m4a": "a_und", "audio_de.m4a": "a_und"},
        {
            "VideoStreamExpression": VIDEO,
            "AudioFileLanguageExpression": r"^audio_(\w+)\.m4a$",
            "AudioStreams": [
                {"Language": "ita", "FileNameExpression": r"^dub\.m4a$"},
                {"Language": "es", "FileNameExpression": r"^audio_de"},
            ],
        },
        None,
        {
            "audio": [
                *EN_IN_FILE,
                ("audio_de.m4a", (0,), "es", False, 2),
                ("dub.m4a", (0,), "it", False, 2),
            ],
        },
        id="AudioStreams: explicit languages, winning over the expression",
    ),
    pytest.param(
        {"movie.mp4": "v_en", "dub.m4a": "a_en"},
        {
            "VideoStreamExpression": VIDEO,
            "AudioStreams": [{"Language": "klingon!", "FileNameExpression": "dub"}],
        },
        None,
        Raises(MappingError, "'klingon!' is not a language code"),
        id="AudioStreams with a Language that is not one",
    ),
    pytest.param(
        {"movie.mp4": "v_en", "audio_de.m4a": "v_en"},
        {"VideoStreamExpression": VIDEO, "AudioFileLanguageExpression": r"^audio_(\w+)"},
        None,
        {
            "audio": [*EN_IN_FILE, ("audio_de.m4a", (1,), "de", False, 2)],
            "ignored_tracks": ["audio_de.m4a#0"],  # its video is not used
        },
        id="separate audio file with a video track",
    ),
    pytest.param(
        {"movie.mp4": "v_en", "audio_de.mp4": "v_noaudio"},
        {"VideoStreamExpression": VIDEO, "AudioFileLanguageExpression": r"^audio_(\w+)"},
        None,
        Raises(MappingError, "audio_de.mp4 was mapped as audio (AudioFileLanguageExpression)"),
        id="separate audio file without audio",
    ),
    # ------------------------------------------- the union of in-file and separate audio (issue 20)
    pytest.param(
        {"movie.mkv": "v_multi", "audio-fr.m4a": "a_und"},
        {"VideoStreamExpression": VIDEO, "AudioFileLanguageExpression": r"^audio-(\w+)\.m4a$"},
        None,
        {
            "audio": [
                ("movie.mkv", (1,), "en", False, 2),
                ("movie.mkv", (2,), "de", False, 1),
                ("audio-fr.m4a", (0,), "fr", False, 2),
            ],
            "subtitles": [("movie.mkv", "en", 3), ("movie.mkv", "fr", 4)],
        },
        id="union: eng + deu in the MKV and a French file: three languages",
    ),
    pytest.param(
        {"movie.mkv": "v_multi", "audio-en.m4a": "a_und"},
        {
            "VideoStreamExpression": VIDEO,
            "AudioFileLanguageExpression": r"^audio-(\w+)\.m4a$",
            "FailOnIgnoredTracks": True,  # a replaced track is not an ignored one
        },
        None,
        {
            "audio": [("movie.mkv", (2,), "de", False, 1), ("audio-en.m4a", (0,), "en", False, 2)],
            "subtitles": [("movie.mkv", "en", 3), ("movie.mkv", "fr", 4)],
            "replaced_tracks": ["movie.mkv#1 (en) by audio-en.m4a#0"],
        },
        id="union: a separate file of the same language replaces the in-file track",
    ),
    pytest.param(
        {"movie.mkv": "v_multi", "audio-fr.m4a": "a_und"},
        {
            "VideoStreamExpression": VIDEO,
            "AudioFileLanguageExpression": r"^audio-(\w+)\.m4a$",
            "AudioMappings": {"VideoStreamAudioTracks": [{"TrackIndices": [2]}]},
        },
        None,
        {
            "audio": [("movie.mkv", (2,), "de", False, 1), ("audio-fr.m4a", (0,), "fr", False, 2)],
            "ignored_tracks": ["movie.mkv#1"],
        },
        id="union: AudioMappings still decides which in-file tracks count",
    ),
    pytest.param(
        {"movie.mp4": "v_2mono", "audio-de.m4a": "a_und"},
        {
            "VideoStreamExpression": VIDEO,
            "AudioFileLanguageExpression": r"^audio-(\w+)\.m4a$",
            "AudioMappings": {
                "VideoStreamAudioTracks": [{"TrackIndices": [1, 2], "Language": "de"}]
            },
        },
        None,
        {
            "audio": [("audio-de.m4a", (0,), "de", False, 2)],
            "replaced_tracks": ["movie.mp4#1+#2 (de) by audio-de.m4a#0"],
        },
        id="union: a listed group is replaced by a separate file of its language",
    ),
    pytest.param(
        {"movie.mkv": "v_multi", "audio-fr.m4a": "a_und"},
        {
            "VideoStreamExpression": VIDEO,
            "AudioFileLanguageExpression": r"^audio-(\w+)\.m4a$",
            "AudioLanguages": ["fr", "de"],
        },
        None,
        {
            "audio": [("movie.mkv", (2,), "de", False, 1), ("audio-fr.m4a", (0,), "fr", False, 2)],
            "ignored_tracks": ["movie.mkv#1"],
        },
        id="union: AudioLanguages filters the union",
    ),
    # ---------------------------------------------------------------- subtitles and captions
    pytest.param(
        {"movie.mp4": "v_en", "movie_de.vtt": "text", "movie_en-cc.vtt": "text"},
        {
            "VideoStreamExpression": VIDEO,
            "SubtitleFileLanguageExpression": r"^movie_(\w+)",
            "CaptionFileLanguageExpression": r"^movie_(\w+)-cc",
        },
        None,
        {
            "subtitles": [("movie_de.vtt", "de", None)],
            "captions": [("movie_en-cc.vtt", "en", None)],
            "sources": ["movie.mp4"],  # text files are not probed
        },
        id="Subtitle/CaptionFileLanguageExpression; captions win over subtitles",
    ),
    pytest.param(
        {"movie.mp4": "v_en", "french.srt": "text", "cc.vtt": "text"},
        {
            "VideoStreamExpression": VIDEO,
            "SubtitleStreams": [{"Language": "fre", "FileNameExpression": r"^french\.srt$"}],
            "CaptionStreams": [{"Language": "en-US", "FileNameExpression": r"^cc\.vtt$"}],
        },
        None,
        {"subtitles": [("french.srt", "fr", None)], "captions": [("cc.vtt", "en", None)]},
        id="SubtitleStreams and CaptionStreams",
    ),
    pytest.param(
        {"movie.mp4": "v_en", "audio_de.m4a": "a_und", "subs_fr.vtt": "text"},
        {
            "VideoStreamExpression": VIDEO,
            "AudioFileLanguageExpression": r"_(\w\w)\.",
            "SubtitleFileLanguageExpression": r"_(\w\w)\.",
        },
        None,
        {
            "audio": [*EN_IN_FILE, ("audio_de.m4a", (0,), "de", False, 2)],
            "subtitles": [("subs_fr.vtt", "fr", None)],
        },
        id="audio and subtitle expressions both match: the extension decides",
    ),
    # ---------------------------------------------------------------------- language filters
    pytest.param(
        {"movie.mkv": "v_multi"},
        {
            "VideoStreamExpression": VIDEO,
            "AudioLanguages": ["ger"],
            "SubtitleLanguages": ["fr"],
        },
        None,
        {
            "audio": [("movie.mkv", (2,), "de", False, 1)],
            "subtitles": [("movie.mkv", "fr", 4)],
            "ignored_tracks": ["movie.mkv#1", "movie.mkv#3"],
        },
        id="AudioLanguages and SubtitleLanguages filter in-file tracks",
    ),
    pytest.param(
        {"movie.mp4": "v_en", "cc_de.vtt": "text", "cc_en.vtt": "text"},
        {
            "VideoStreamExpression": VIDEO,
            "CaptionFileLanguageExpression": r"^cc_(\w+)",
            "CaptionLanguages": ["deu"],
        },
        None,
        {"captions": [("cc_de.vtt", "de", None)], "ignored_files": ["cc_en.vtt"]},
        id="CaptionLanguages filters files",
    ),
    pytest.param(
        {"movie.mkv": "v_multi"},
        {"VideoStreamExpression": VIDEO, "AudioLanguages": ["fr"]},
        None,
        Raises(MappingError, "FailOnNoAudioTracks: no audio found (AudioLanguages left out"),
        id="AudioLanguages leaving nothing",
    ),
    pytest.param(
        {"movie.mkv": "v_multi"},
        {"VideoStreamExpression": VIDEO, "AudioLanguages": []},
        None,
        {"audio": [("movie.mkv", (1,), "en", False, 2), ("movie.mkv", (2,), "de", False, 1)]},
        id="an empty language list filters nothing",
    ),
    # ---------------------------------------------------------------------- fallback language
    pytest.param(
        {"movie.mp4": "v_und"},
        {"VideoStreamExpression": VIDEO},
        None,
        {"audio": EN_IN_FILE},
        id="FallbackLanguageCode default en",
    ),
    pytest.param(
        {"movie.mp4": "v_und"},
        {"VideoStreamExpression": VIDEO, "FallbackLanguageCode": "spa"},
        None,
        {"audio": [("movie.mp4", (1,), "es", False, 2)]},
        id="FallbackLanguageCode normalised",
    ),
    pytest.param(
        {"movie.mp4": "v_und"},
        {"VideoStreamExpression": VIDEO, "FallbackLanguageCode": ""},
        None,
        Raises(MappingError, "no language found for audio track movie.mp4#1"),
        id="empty FallbackLanguageCode fails on a track without language",
    ),
    pytest.param(
        {"movie.mp4": "v_en"},
        {"VideoStreamExpression": VIDEO, "FallbackLanguageCode": ""},
        None,
        {"audio": EN_IN_FILE},
        id="empty FallbackLanguageCode is fine while every language is known",
    ),
    pytest.param(
        {"movie.mp4": "v_en", "subs.vtt": "text"},
        {
            "VideoStreamExpression": VIDEO,
            "SubtitleFileLanguageExpression": r"^subs(?:_(\w+))?\.vtt$",
            "FallbackLanguageCode": "",
        },
        None,
        Raises(MappingError, "no language found for subtitle file subs.vtt"),
        id="empty FallbackLanguageCode fails on a file without language",
    ),
    # -------------------------------------------------------------------------- AudioMappings
    pytest.param(
        {"movie.mp4": "v_2mono"},
        {
            "VideoStreamExpression": VIDEO,
            "AudioMappings": {
                "VideoStreamAudioTracks": [{"TrackIndices": [1, 2], "Language": "en"}]
            },
        },
        None,
        {"audio": [("movie.mp4", (1, 2), "en", False, 2)]},
        id="AudioMappings: 2 mono tracks -> stereo",
    ),
    pytest.param(
        {"movie.mp4": "v_6mono"},
        {
            "VideoStreamExpression": VIDEO,
            "AudioMappings": {"VideoStreamAudioTracks": [{"TrackIndices": [1, 2, 3, 4, 5, 6]}]},
        },
        None,
        {"audio": [("movie.mp4", (1, 2, 3, 4, 5, 6), "en", False, 6)]},
        id="AudioMappings: 6 mono tracks -> 5.1, language from the first track",
    ),
    pytest.param(
        {"movie.mkv": "v_multi"},
        {
            "VideoStreamExpression": VIDEO,
            "AudioMappings": {"VideoStreamAudioTracks": [{"TrackIndices": [2]}]},
        },
        None,
        {
            "audio": [("movie.mkv", (2,), "de", False, 1)],
            "ignored_tracks": ["movie.mkv#1"],
        },
        id="AudioMappings: one track picked, the other ignored",
    ),
    pytest.param(
        {"movie.mp4": "v_2mono", "audio_fr.m4a": "a_und"},
        {
            "VideoStreamExpression": VIDEO,
            "AudioFileLanguageExpression": r"^audio_(\w+)",
            "AudioMappings": {
                "VideoStreamAudioTracks": [{"TrackIndices": [1, 2], "Language": "de"}]
            },
        },
        None,
        {
            "audio": [
                ("movie.mp4", (1, 2), "de", False, 2),
                ("audio_fr.m4a", (0,), "fr", False, 2),
            ]
        },
        id="AudioMappings are used beside separate audio files",
    ),
    pytest.param(
        {"movie.mp4": "v_2mono"},
        {
            "VideoStreamExpression": VIDEO,
            "AudioMappings": {"VideoStreamAudioTracks": [{"TrackIndices": [1, 3]}]},
        },
        None,
        Raises(MappingError, "audio track 3 does not exist: movie.mp4 has 2 audio track(s)"),
        id="AudioMappings: index that does not exist",
    ),
    pytest.param(
        {"movie.mp4": "v_2mono"},
        {
            "VideoStreamExpression": VIDEO,
            "AudioMappings": {"VideoStreamAudioTracks": [{"TrackIndices": [0]}]},
        },
        None,
        Raises(MappingError, "audio track 0 does not exist"),
        id="AudioMappings: indices are 1-based",
    ),
    pytest.param(
        {"movie.mkv": "v_multi"},
        {
            "VideoStreamExpression": VIDEO,
            "AudioMappings": {"VideoStreamAudioTracks": [{"TrackIndices": [1, 2]}]},
        },
        None,
        Raises(MappingError, "only mono tracks can be grouped"),
        id="AudioMappings: grouping a stereo track",
    ),
    # ---------------------------------------------------------- packaging-only and watermarks
    pytest.param(
        {"movie_720.mp4": "v_en", "movie_360.mp4": "v_en"},
        {"VideoStreamExpression": r"^movie_\d+\.mp4$"},
        {"VideoFormat": "DoNotEncode"},
        {
            "video": "movie_360.mp4",
            "renditions": ["movie_360.mp4", "movie_720.mp4"],
            "audio": [("movie_360.mp4", (1,), "en", False, 2)],
            "ignored_tracks": ["movie_720.mp4#1"],
        },
        id="packaging-only: every match is a rendition",
    ),
    pytest.param(
        {"movie_720.mp4": "v_en", "movie_360.mp4": "v_en"},
        {"VideoStreamExpression": r"^movie_\d+\.mp4$"},
        None,
        Raises(MappingError, "matched 2 files, expected one: movie_360.mp4, movie_720.mp4"),
        id="the same files without DoNotEncode",
    ),
    pytest.param(
        {"movie.mp4": "v_en", "logo.png": "png"},
        {"VideoStreamExpression": VIDEO, "FailOnIgnoredFiles": True},
        {"VisibleVideoWatermarks": [{"WatermarkFileName": "logo.png"}]},
        {"watermarks": ["logo.png"], "sources": ["movie.mp4"]},
        id="watermark image is used, not ignored",
    ),
    pytest.param(
        {"movie.mp4": "v_en"},
        {"VideoStreamExpression": VIDEO},
        {"VisibleVideoWatermarks": [{"WatermarkFileName": "logo.png"}]},
        Raises(MappingError, "VisibleVideoWatermarks[0]: the watermark file 'logo.png' is not"),
        id="missing watermark file",
    ),
    # ------------------------------------------------------------------------------ FailOn…
    pytest.param(
        {"movie.mp4": "v_en", "notes.txt": "txt", "logo.png": "png"},
        {"VideoStreamExpression": VIDEO},
        None,
        {"ignored_files": ["logo.png", "notes.txt"]},
        id="FailOnIgnoredFiles false: ignored files listed",
    ),
    pytest.param(
        {"movie.mp4": "v_en", "notes.txt": "txt"},
        {"VideoStreamExpression": VIDEO, "FailOnIgnoredFiles": True},
        None,
        Raises(MappingError, "FailOnIgnoredFiles: 1 acquired file(s) not used: notes.txt"),
        id="FailOnIgnoredFiles true",
    ),
    pytest.param(
        {"movie.mp4": "v_en"},
        {"VideoStreamExpression": VIDEO, "FailOnIgnoredFiles": True, "FailOnIgnoredTracks": True},
        None,
        {"audio": EN_IN_FILE},
        id="FailOnIgnored… true with nothing ignored",
    ),
    pytest.param(
        {"movie.mkv": "v_multi"},
        {"VideoStreamExpression": VIDEO, "AudioLanguages": ["de"], "FailOnIgnoredTracks": True},
        None,
        Raises(
            MappingError,
            "FailOnIgnoredTracks: 1 track(s) not used: movie.mkv#1 (language en is not in "
            "AudioLanguages)",
        ),
        id="FailOnIgnoredTracks true",
    ),
    pytest.param(
        {"movie.mkv": "v_multi"},
        {"VideoStreamExpression": VIDEO, "AudioLanguages": ["de"]},
        None,
        {"ignored_tracks": ["movie.mkv#1"]},
        id="FailOnIgnoredTracks false: ignored tracks listed",
    ),
    pytest.param(
        {"song.m4a": "a_en"},
        {"VideoStreamExpression": VIDEO},
        None,
        Raises(MappingError, "FailOnNoVideoTracks: no video found: VideoStreamExpression"),
        id="FailOnNoVideoTracks true",
    ),
    pytest.param(
        {"song_en.m4a": "a_und"},
        {"FailOnNoVideoTracks": False, "AudioFileLanguageExpression": r"^song_(\w+)"},
        None,
        {"video": None, "audio": [("song_en.m4a", (0,), "en", False, 2)]},
        id="FailOnNoVideoTracks false: audio-only job",
    ),
    pytest.param(
        {"song.m4a": "a_de"},
        {"FailOnNoVideoTracks": False, "VideoStreamExpression": r"\.m4a$"},
        None,
        {"video": None, "audio": [("song.m4a", (0,), "de", False, 2)]},
        id="FailOnNoVideoTracks false: the matched file has only audio",
    ),
    pytest.param(
        {"song.m4a": "a_de"},
        {"VideoStreamExpression": r"\.m4a$"},
        None,
        Raises(MappingError, "FailOnNoVideoTracks: song.m4a matched VideoStreamExpression but"),
        id="FailOnNoVideoTracks true: the matched file has only audio",
    ),
    pytest.param(
        {"movie.mp4": "v_noaudio"},
        {"VideoStreamExpression": VIDEO},
        None,
        Raises(MappingError, "FailOnNoAudioTracks: no audio found (movie.mp4 has no audio"),
        id="FailOnNoAudioTracks true",
    ),
    pytest.param(
        {"movie.mp4": "v_noaudio"},
        {"VideoStreamExpression": VIDEO, "FailOnNoAudioTracks": False},
        None,
        {"video": "movie.mp4", "audio": []},
        id="FailOnNoAudioTracks false",
    ),
    pytest.param(
        {"movie.mp4": "v_en"},
        {"VideoStreamExpression": VIDEO, "FailOnNoSubtitleTracks": True},
        None,
        Raises(MappingError, "FailOnNoSubtitleTracks: no subtitle found"),
        id="FailOnNoSubtitleTracks true, none",
    ),
    pytest.param(
        {"movie.mkv": "v_multi"},
        {"VideoStreamExpression": VIDEO, "FailOnNoSubtitleTracks": True},
        None,
        {"subtitles": [("movie.mkv", "en", 3), ("movie.mkv", "fr", 4)]},
        id="FailOnNoSubtitleTracks true, in-file subtitles",
    ),
    pytest.param(
        {"movie.mp4": "v_en"},
        {"VideoStreamExpression": VIDEO, "FailOnNoSubtitleTracks": False},
        None,
        {"subtitles": []},
        id="FailOnNoSubtitleTracks false",
    ),
    pytest.param(
        {"movie.mkv": "v_multi"},
        {"VideoStreamExpression": VIDEO, "FailOnNoCaptionTracks": True},
        None,
        Raises(MappingError, "FailOnNoCaptionTracks: no caption found (no file matched"),
        id="FailOnNoCaptionTracks true, none",
    ),
    pytest.param(
        {"movie.mp4": "v_en", "movie-cc.vtt": "text"},
        {
            "VideoStreamExpression": VIDEO,
            "CaptionStreams": [{"Language": "en", "FileNameExpression": r"-cc\.vtt$"}],
            "FailOnNoCaptionTracks": True,
        },
        None,
        {"captions": [("movie-cc.vtt", "en", None)]},
        id="FailOnNoCaptionTracks true, one",
    ),
    pytest.param(
        {"movie.mp4": "v_en"},
        {"VideoStreamExpression": VIDEO, "FailOnNoCaptionTracks": False},
        None,
        {"captions": []},
        id="FailOnNoCaptionTracks false",
    ),
    # ------------------------------------------------- CEA-608 captions in the video (issue 20)
    pytest.param(
        {"movie.mkv": "v_multi"},
        {"VideoStreamExpression": VIDEO, "FailOnNoCaptionTracks": True},
        None,
        Raises(MappingError, "or CaptionStreams, and movie.mkv carries no CEA-608 captions)"),
        id="FailOnNoCaptionTracks: the message says the video has no CEA-608 captions",
    ),
    pytest.param(
        {"movie.mp4": "v_cc"},
        {
            "VideoStreamExpression": VIDEO,
            "FailOnNoAudioTracks": False,
            "FailOnNoCaptionTracks": True,
            "FailOnIgnoredTracks": True,
        },
        None,
        {"captions": [("movie.mp4", "en", 0)], "audio": []},
        id="CEA-608 in the video's SEI: a caption track (the fallback language)",
    ),
    pytest.param(
        {"movie.mp4": "v_cc", "movie_de.scc": "text", "movie_fr.stl": "text"},
        {
            "VideoStreamExpression": VIDEO,
            "CaptionFileLanguageExpression": r"^movie_(\w+)\.(scc|stl)$",
            "FailOnNoAudioTracks": False,
            "FallbackLanguageCode": "es",
        },
        None,
        {
            "captions": [
                ("movie.mp4", "es", 0),
                ("movie_de.scc", "de", None),
                ("movie_fr.stl", "fr", None),
            ]
        },
        id="CEA-608 beside SCC and EBU-STL caption files",
    ),
    pytest.param(
        {"movie.mp4": "v_cc"},
        {
            "VideoStreamExpression": VIDEO,
            "FailOnNoAudioTracks": False,
            "CaptionLanguages": ["de"],
            "FailOnNoCaptionTracks": True,
        },
        None,
        Raises(MappingError, "no caption found (CaptionLanguages left out movie.mp4#0: en)"),
        id="CEA-608 captions are filtered by CaptionLanguages",
    ),
    pytest.param(
        {"movie.mp4": "v_cc"},
        {"VideoStreamExpression": VIDEO, "FailOnNoAudioTracks": False, "FallbackLanguageCode": ""},
        None,
        {"captions": []},
        id="CEA-608 captions without a fallback language are left out, not an error",
    ),
]


@pytest.mark.parametrize(("files", "mapping_fields", "processing_fields", "expected"), REGEX_CASES)
def test_regex_mode(tmp_path, templates, files, mapping_fields, processing_fields, expected):
    run_case(tmp_path, templates, files, mapping_fields, processing_fields, expected)


CONVENTION = {"MediaDetection": "Convention"}

CONVENTION_CASES = [
    pytest.param(
        {
            "movie.mkv": "v_multi",
            "movie-de.vtt": "text",
            "movie.en-cc.srt": "text",
            "commentary-ad.m4a": "a_en",
            "notes.txt": "txt",
            "logo.png": "png",
        },
        CONVENTION,
        None,
        {
            "video": "movie.mkv",
            "audio": [
                ("movie.mkv", (1,), "en", False, 2),
                ("movie.mkv", (2,), "de", False, 1),
                ("commentary-ad.m4a", (0,), "en", True, 2),
            ],
            "subtitles": [
                ("movie.mkv", "en", 3),
                ("movie.mkv", "fr", 4),
                ("movie-de.vtt", "de", None),
            ],
            "captions": [("movie.en-cc.srt", "en", None)],
            "ignored_files": ["logo.png", "notes.txt"],
            "sources": ["commentary-ad.m4a", "movie.mkv"],
        },
        id="convention: tracks, -ad descriptive audio, -cc captions, ignored files",
    ),
    pytest.param(
        {"movie.mp4": "v_en", "dub.fr.m4a": "a_und"},
        CONVENTION,
        None,
        {
            "audio": [*EN_IN_FILE, ("dub.fr.m4a", (0,), "fr", False, 2)],
        },
        id="convention: separate audio file, language from the file name",
    ),
    pytest.param(
        {"movie.mp4": "v_en", "dub_it.m4a": "a_de"},
        CONVENTION,
        None,
        {"audio": [*EN_IN_FILE, ("dub_it.m4a", (0,), "de", False, 2)]},
        id="convention: track metadata before the file name",
    ),
    pytest.param(
        {"movie.mp4": "v_en", "dubs.mka": "a_2tracks"},
        CONVENTION,
        None,
        {
            "audio": [("dubs.mka", (0,), "en", False, 2), ("dubs.mka", (1,), "fr", False, 2)],
            "replaced_tracks": ["movie.mp4#1 (en) by dubs.mka#0"],  # same language: replaced
        },
        id="convention: every track of a separate audio file",
    ),
    pytest.param(
        {"movie.mp4": "v_en", "movie.pt-BR.vtt": "text", "movie_final.vtt": "text"},
        CONVENTION | {"FallbackLanguageCode": "ja"},
        None,
        {"subtitles": [("movie.pt-BR.vtt", "pt", None), ("movie_final.vtt", "ja", None)]},
        id="convention: BCP 47 in the name, fallback when the name has no language",
    ),
    pytest.param(
        {"movie.mp4": "v_en", "subs.vtt": "text"},
        CONVENTION | {"FallbackLanguageCode": ""},
        None,
        Raises(MappingError, "no language found for subtitle file subs.vtt"),
        id="convention: empty fallback",
    ),
    pytest.param(
        {"a.mp4": "v_en", "b.mkv": "v_multi"},
        CONVENTION,
        None,
        Raises(MappingError, "2 files have a video track, expected one"),
        id="convention: two video files",
    ),
    pytest.param(
        {"b.mp4": "v_en", "a.mp4": "v_en"},
        CONVENTION,
        {"VideoFormat": "DoNotEncode"},
        {"video": "a.mp4", "renditions": ["a.mp4", "b.mp4"], "ignored_tracks": ["b.mp4#1"]},
        id="convention: packaging-only renditions",
    ),
    pytest.param(
        {"song.m4a": "a_en", "notes.txt": "txt"},
        CONVENTION,
        None,
        Raises(MappingError, "FailOnNoVideoTracks: no video found: no acquired file has a video"),
        id="convention: no video file",
    ),
    pytest.param(
        {"song.m4a": "a_en"},
        CONVENTION | {"FailOnNoVideoTracks": False},
        None,
        {"video": None, "audio": [("song.m4a", (0,), "en", False, 2)]},
        id="convention: audio-only",
    ),
    pytest.param(
        {"movie.mp4": "v_en", "extra.mp4": "corrupt"},
        CONVENTION,
        None,
        Raises(SourceError, "extra.mp4: not a readable media file"),
        id="convention: corrupt media file",
    ),
    pytest.param(
        {"movie.mp4": "v_en", "logo.png": "png"},
        CONVENTION,
        {"VisibleVideoWatermarks": [{"WatermarkFileName": "LOGO.png"}]},
        {"watermarks": ["logo.png"]},
        id="convention: watermark, name matched without case",
    ),
]


@pytest.mark.parametrize(
    ("files", "mapping_fields", "processing_fields", "expected"), CONVENTION_CASES
)
def test_convention_mode(tmp_path, templates, files, mapping_fields, processing_fields, expected):
    run_case(tmp_path, templates, files, mapping_fields, processing_fields, expected)


@pytest.mark.parametrize(
    "field",
    ["VideoStreamExpression", "AudioFileLanguageExpression", "SubtitleFileLanguageExpression"],
)
def test_pathological_expression_finishes_quickly(tmp_path, templates, field):
    # (a+)+$ backtracks exponentially in a backtracking engine on "aaaa…!" (Python's re needs
    # ages for 30 a's); RE2 is linear. 240 a's: about the longest name a file system allows.
    name = "a" * 240 + "!.mp4"
    files = work_folder(tmp_path, templates, {"movie.mp4": "v_en"})
    long_name = files[0].with_name(name)
    long_name.write_bytes(b"")  # never probed: it matches nothing
    fields = {"VideoStreamExpression": VIDEO, field: "(a+)+$"}
    start = time.perf_counter()
    if field == "VideoStreamExpression":
        with pytest.raises(MappingError, match="FailOnNoVideoTracks"):
            map_media([*files, long_name], mappings(**fields), processing())
    else:
        media = map_media([*files, long_name], mappings(**fields), processing())
        assert media.ignored_files == (long_name,)
    assert time.perf_counter() - start < 2


@pytest.mark.parametrize(
    ("name", "language"),
    [
        ("movie-de.vtt", "de"),
        ("movie_en.srt", "en"),
        ("movie.fr.ttml", "fr"),
        ("movie.ger.vtt", "ger"),
        ("movie-en-cc.vtt", "en"),
        ("movie-cc-en.vtt", "en"),
        ("movie.pt-BR.vtt", "pt"),
        ("movie.English.srt", "English"),
        ("de.vtt", "de"),
        ("movie.vtt", None),
        ("movie_final.vtt", None),
        ("movie_hd.vtt", None),
        ("movie-cc.vtt", None),
    ],
)
def test_language_from_file_name(name, language):
    assert _language_from_name(name) == language
