"""Local → Local jobs share files instead of copying them (issue 18): the input files are hard
links of the sources, the published files hard links of the package in the work folder. Nothing
may then write into a shared file: a second job in the same work folder (a resumed attempt
does this) leaves the first job's published package and the sources as they were."""

from __future__ import annotations

import pytest
from e2e_helpers import input_folder, make_job

from engine.pipeline import run_job

pytestmark = pytest.mark.e2e


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_shared_files_are_never_written_through(e2e_media, tmp_path):
    folder = input_folder(
        tmp_path,
        (e2e_media.rendition(180), "movie_180.mp4"),
        (e2e_media.rendition(144), "movie_144.mp4"),
    )
    sources = _files(folder)
    work = tmp_path / "work"

    def package(output, seconds):
        job = make_job(
            folder,
            output,
            formats=["Cmaf"],
            VideoFormat="DoNotEncode",
            VideoRepresentations=None,
            SegmentLengthInSeconds=seconds,
            DrmProtection="Base64Key",
            KeyId="6f0c9c53-3b0d-4f0e-9b6a-5f2b7a1c9d10",
            ContentKey="Hy49TFtqeYgBI0VniavN7w==",
            EncryptionScheme="cbcs",
        )
        job["MediaMappings"]["FailOnNoAudioTracks"] = False
        report = run_job(job, workdir=work, keep_workdir=True)
        assert report["Success"], report

    package(tmp_path / "first", 2)
    first = _files(tmp_path / "first")
    # shared, not copied: the input is the sources' files, the package the work folder's
    input_file = work / "input" / "movie_180.mp4"
    assert input_file.stat().st_ino == (folder / "movie_180.mp4").stat().st_ino
    segment = next(p for p in (tmp_path / "first").rglob("*.m4s"))
    assert segment.stat().st_ino == (work / "output" / segment.name).stat().st_ino

    # Another package (4 s segments: other bytes under the same names) in the same work folder
    package(tmp_path / "second", 4)
    second = _files(tmp_path / "second")
    assert set(second) & set(first), "the two packages share no names: nothing is tested"
    assert any(second[name] != first[name] for name in set(second) & set(first))
    assert _files(tmp_path / "first") == first
    assert _files(folder) == sources
