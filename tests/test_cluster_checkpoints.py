"""Checkpoints: a job run again in its work folder skips the phases that
an earlier, crashed attempt finished, and otherwise starts clean; its output is the same as a
clean run's."""

from __future__ import annotations

from pathlib import Path

import pytest
from api_helpers import tiny_job
from cluster_helpers import relative_files
from mediagen import make_media

import engine.pipeline.runner as runner
import engine.transcode as transcode
from engine.pipeline import run_job
from engine.pipeline.checkpoints import FOLDER, PHASES, Checkpoints


class Crash(BaseException):
    """Stands for the process dying: nothing in the runner catches it."""


@pytest.fixture(scope="module")
def source(media_dir) -> Path:
    folder = media_dir / "checkpoint-source"
    if not (folder / "clip.mp4").exists():
        make_media(folder / "clip.mp4", duration=2, width=160, height=90)
    return folder


def job(source: Path, output: Path) -> dict:
    return tiny_job(source, output, OutputFormat=["Dash", "Hls"])


def run(document: dict, workdir: Path) -> tuple[dict, list[dict]]:
    events: list[dict] = []
    report = run_job(
        document,
        on_event=events.append,
        workdir=workdir,
        keep_workdir=True,
        checkpoints=True,
        job_id="0b3c5a5e-5f7e-4a55-9a39-3f6f3c2b9f11",
    )
    return report, events


def kinds(events: list[dict]) -> list[str]:
    return [e["MessageType"] for e in events]


def resumed(events: list[dict]) -> list[str]:
    return [e["Message"].split(":")[0] for e in events if e.get("Code") == "PhaseResumed"]


# The runner's phase functions, by the name a test gives the phase.
PHASE_FUNCTIONS = {"media_mapping": "map_job_media", "packaging": "package_output"}


def crash_in(monkeypatch, phase: str) -> None:
    def crash(*args):
        raise Crash(phase)

    monkeypatch.setattr(runner, PHASE_FUNCTIONS[phase], crash)


def count_transcodes(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = transcode.transcode  # the encoding phase imports it where used

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(transcode, "transcode", counted)
    return calls


def test_a_crashed_job_resumes_after_its_last_checkpoint(source, tmp_path, monkeypatch):
    clean_report, clean_events = run(job(source, tmp_path / "clean"), tmp_path / "work-clean")
    assert clean_report["Success"], clean_events[-1]

    document = job(source, tmp_path / "out")
    workdir = tmp_path / "work"
    with monkeypatch.context() as patch:  # the first attempt dies in packaging
        crash_in(patch, "packaging")
        with pytest.raises(Crash):
            run(document, workdir)
    assert sorted(p.name for p in (workdir / FOLDER).iterdir()) == [
        "1-acquisition.pickle",
        "2-encoding.pickle",
    ]
    (workdir / "output" / "half-written.m4s").parent.mkdir(exist_ok=True)
    (workdir / "output" / "half-written.m4s").write_bytes(b"partial")

    transcodes = count_transcodes(monkeypatch)
    report, events = run(document, workdir)
    assert report["Success"], events[-1]
    assert transcodes == []  # the encode was not done again
    assert resumed(events) == ["Acquisition", "Encoding"]
    assert "VideoEncodingStarted" not in kinds(events)
    assert {"ContentAcquired", "EncodingFinished", "ContentPublished", "JobSuccess"} <= set(
        kinds(events)
    )
    assert not (workdir / "output" / "half-written.m4s").exists()  # packaging started clean
    # same output as the clean run, and the report keeps what the skipped phases found
    assert relative_files(tmp_path / "out") == relative_files(tmp_path / "clean")
    for name in (
        "Encoder",
        "AcquiredFilesSizeInBytes",
        "EncodedVideoDurationInSeconds",
        "BitrateVariants",
    ):
        assert report[name] == clean_report[name], name
    finished = next(e for e in events if e["MessageType"] == "EncodingFinished")
    clean_finished = next(e for e in clean_events if e["MessageType"] == "EncodingFinished")
    assert [s["Name"] for s in finished["Streams"]] == [
        s["Name"] for s in clean_finished["Streams"]
    ]


def test_a_changed_file_invalidates_its_checkpoint(source, tmp_path, monkeypatch):
    document = job(source, tmp_path / "out")
    workdir = tmp_path / "work"
    with monkeypatch.context() as patch:
        crash_in(patch, "packaging")
        with pytest.raises(Crash):
            run(document, workdir)
    encoded = next((workdir / "encode").glob("*.mp4"))
    with open(encoded, "ab") as file:  # a rendition that is not what the checkpoint says
        file.write(b"garbage")

    transcodes = count_transcodes(monkeypatch)
    report, events = run(document, workdir)
    assert report["Success"], events[-1]
    assert transcodes == [1]
    assert resumed(events) == ["Acquisition"]
    assert kinds(events).count("VideoEncodingStarted") == 1


def test_without_checkpoints_the_work_folder_starts_empty(source, tmp_path, monkeypatch):
    document = job(source, tmp_path / "out")
    workdir = tmp_path / "work"
    with monkeypatch.context() as patch:  # dies in acquisition: no checkpoint at all
        crash_in(patch, "media_mapping")
        with pytest.raises(Crash):
            run(document, workdir)
    (workdir / "encode").mkdir()
    (workdir / "encode" / "stale.mp4").write_bytes(b"stale")
    (workdir / FOLDER / "1-acquisition.pickle").write_bytes(b"torn")  # unreadable

    checkpoints = Checkpoints(workdir, "digest-of-nothing")
    assert checkpoints.prepare() == []
    assert list(workdir.rglob("*")) == []  # emptied

    report, events = run(document, workdir)
    assert report["Success"] and resumed(events) == []


def test_checkpoints_of_another_job_are_not_used(source, tmp_path, monkeypatch):
    workdir = tmp_path / "work"
    with monkeypatch.context() as patch:
        crash_in(patch, "packaging")
        with pytest.raises(Crash):
            run(job(source, tmp_path / "a"), workdir)
    other = job(source, tmp_path / "b")  # another output: another job
    report, events = run(other, workdir)
    assert report["Success"] and resumed(events) == []
    assert PHASES == ("Acquisition", "Encoding", "DRM + Packaging")
