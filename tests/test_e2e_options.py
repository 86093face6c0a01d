"""End to end, job options: Archiving (Tar, SingleTar), Naming, DeleteFilesFromSourceWhenDone,
UseNativeLanguageNames and EncodingMode PerScene.

The packages (extracted from their archives where archived) go through `check_package`.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
from e2e_helpers import (
    check_events,
    check_package,
    input_folder,
    make_job,
    output_files,
    read_dash,
    read_hls,
    run,
    run_simple,
)

pytestmark = pytest.mark.e2e


def _extract(archive: Path, target: Path) -> list[str]:
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        for member in tar.getmembers():  # relative, inside the archive: nothing escapes
            assert member.isfile() and not member.name.startswith(("/", "..")), member.name
        tar.extractall(target, filter="data")
    return names


def test_archiving_tar(e2e_media, tmp_path):
    """Tar: one archive per output format folder."""
    job_run = run_simple(tmp_path, e2e_media.cfr(), formats=["Dash", "Hls"], Archiving="Tar")
    job_run.assert_success()
    check_events(job_run)
    assert [p.name for p in output_files(job_run.output_dir)] == ["dash.tar", "hls.tar"]
    extracted = tmp_path / "extracted"
    dash_names = _extract(job_run.output_dir / "dash.tar", extracted / "dash")
    hls_names = _extract(job_run.output_dir / "hls.tar", extracted / "hls")
    assert "manifest.mpd" in dash_names and "manifest.m3u8" in hls_names
    check_package(
        job_run,
        manifests=[extracted / "dash" / "manifest.mpd", extracted / "hls" / "manifest.m3u8"],
    )
    assert job_run.report["PublishedFilesSizeInBytes"] == sum(
        p.stat().st_size for p in output_files(job_run.output_dir)
    )


def test_archiving_single_tar(e2e_media, tmp_path):
    """SingleTar: everything in one archive, the format folders inside it."""
    job_run = run_simple(tmp_path, e2e_media.cfr(), formats=["Dash", "Hls"], Archiving="SingleTar")
    job_run.assert_success()
    assert [p.name for p in output_files(job_run.output_dir)] == ["output.tar"]
    extracted = tmp_path / "extracted"
    names = _extract(job_run.output_dir / "output.tar", extracted)
    assert "dash/manifest.mpd" in names and "hls/manifest.m3u8" in names
    check_package(
        job_run,
        manifests=[extracted / "dash" / "manifest.mpd", extracted / "hls" / "manifest.m3u8"],
    )


def test_naming(e2e_media, tmp_path):
    naming = {
        "VideoChunksPattern": "v",
        "AudioChunksPattern": "a",
        "SubtitlePattern": "sub",
        "DashManifestName": "stream.mpd",
        "HlsManifestName": "index",
    }
    job_run = run_simple(
        tmp_path,
        e2e_media.cfr(),
        (e2e_media.srt(), "cfr-fr.srt"),
        formats=["Dash", "Hls"],
        Naming=naming,
        mappings={"SubtitleFileLanguageExpression": r"^cfr-(\w+)\.srt$"},
    )
    check = check_package(job_run)
    check_events(job_run)
    names = {p.relative_to(job_run.output_dir).as_posix() for p in output_files(tmp_path / "out")}
    assert {"dash/stream.mpd", "hls/index.m3u8"} <= names
    assert not [n for n in names if "manifest" in n]
    for folder in ("dash", "hls"):
        assert f"{folder}/v-H264-180-300k_init.mp4" in names
        assert f"{folder}/v-H264-120-150k_1.m4s" in names
        assert f"{folder}/a-en_1.m4s" in names
        assert f"{folder}/sub-fr.vtt" in names
    assert "hls/sub-fr.m3u8" in names
    assert not [n for n in names if Path(n).name.startswith(("video", "audio", "subtitle"))]
    assert sorted(check.video) == ["v-H264-120-150k", "v-H264-180-300k"]


def test_delete_files_from_source_when_done(e2e_media, tmp_path):
    job_run = run_simple(
        tmp_path,
        e2e_media.cfr(),
        (e2e_media.srt(), "cfr-fr.srt"),
        formats=["Dash"],
        DeleteFilesFromSourceWhenDone=True,
        mappings={"SubtitleFileLanguageExpression": r"^cfr-(\w+)\.srt$"},
    )
    job_run.assert_success()
    # check_package counts the source's frames from the input, which is gone: give them
    check_package(job_run, source_frames=100)
    assert list(job_run.input_dir.iterdir()) == []
    check_events(job_run)


def test_sources_kept_when_the_job_fails(e2e_media, tmp_path):
    """DeleteFilesFromSourceWhenDone deletes only after success."""
    folder = input_folder(tmp_path, e2e_media.cfr())
    (folder / "broken.mkv").write_bytes(b"\x1a\x45\xdf\xa3 not really a matroska file" * 100)
    job = make_job(
        folder,
        tmp_path / "out",
        DeleteFilesFromSourceWhenDone=True,
        mappings={"VideoStreamExpression": r"^broken\.mkv$"},
    )
    job_run = run(tmp_path, job)
    assert not job_run.report["Success"]
    assert sorted(p.name for p in folder.iterdir()) == ["broken.mkv", "cfr.mp4"]
    assert output_files(tmp_path / "out") == []


def test_native_language_names(e2e_media, tmp_path):
    job_run = run_simple(
        tmp_path,
        e2e_media.two_languages_mkv(),
        formats=["Dash", "Hls"],
        UseNativeLanguageNames=True,
        mappings={"VideoStreamExpression": r"^movie\.mkv$"},
    )
    check_package(job_run)
    expected = {"en": "English", "de": "Deutsch"}
    _, dash = read_dash(job_run.output_dir / "dash" / "manifest.mpd")
    _, hls = read_hls(job_run.output_dir / "hls" / "manifest.m3u8")
    for tracks in (dash, hls):
        audio = {t.attributes["lang"]: t.attributes["label"] for t in tracks if t.kind == "audio"}
        assert audio == expected
        text = {t.attributes["lang"]: t.attributes["label"] for t in tracks if t.kind == "text"}
        assert text == expected


def test_english_names_by_default(e2e_media, tmp_path):
    job_run = run_simple(
        tmp_path,
        e2e_media.two_languages_mkv(),
        formats=["Hls"],
        mappings={"VideoStreamExpression": r"^movie\.mkv$"},
    )
    job_run.assert_success()
    _, hls = read_hls(job_run.output_dir / "manifest.m3u8")
    labels = {t.attributes["lang"]: t.attributes["label"] for t in hls if t.kind == "audio"}
    assert labels == {"en": "English", "de": "German"}


def test_per_scene_encodes_without_warning(e2e_media, tmp_path):
    """PerScene works now (issue 16, tests/test_perscene.py): no PerSceneNotAvailable. (One
    rung: on this easy source the small ladder's two rungs come out near-duplicates.)"""
    job_run = run_simple(
        tmp_path,
        e2e_media.cfr(),
        formats=["Dash"],
        EncodingMode="PerScene",
        VideoRepresentations=[{"Height": 180, "BitrateInKbps": 300}],
    )
    check_package(job_run)
    check_events(job_run)
    assert job_run.of_type("Warning") == []
    streams = job_run.one("EncodingFinished")["Streams"]
    assert all("PerScene" in s for s in streams if s["Type"] == "Video")
