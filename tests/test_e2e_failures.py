"""End to end, `vipe run` exit codes, failures and cancellation (through `vipe run` and
`run_job`).

A successful `vipe run` exits 0 and writes the events (JSON lines) and the report it was asked
for.

Each failing job must end with the right `FinalError` code as its last event, a report with
`Success: false` and that `ErrorCode`, exit code 1 from `vipe run`, and nothing in the
ContentPublishing folder; an invalid job gives exit code 2 before anything runs. A cancelled
job (a `CancelToken` set from another thread, or SIGINT to `vipe run`) ends with 5001 within a
few seconds and leaves the output folder empty.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from e2e_helpers import (
    JobRun,
    check_events,
    check_package,
    input_folder,
    make_job,
    output_files,
    run,
)

from engine.cancel import CancelToken
from engine.cli import main as vipe

pytestmark = pytest.mark.e2e


def vipe_run(root: Path, job: dict) -> tuple[int, JobRun]:
    """`vipe run` in this process, with --events and --report files."""
    job_path = root / "job.json"
    job_path.write_text(json.dumps(job))
    events_path, report_path = root / "events.jsonl", root / "report.json"
    code = vipe(["run", str(job_path), "--events", str(events_path), "--report", str(report_path)])
    events = [json.loads(line) for line in events_path.read_text().splitlines()]
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    output = Path(job["ContentPublishing"]["UriPath"].removeprefix("file://"))
    source = Path(job["ContentAcquisition"]["UriPath"].removeprefix("file://"))
    return code, JobRun(job, report, events, source, output)


def _inputs(case: str, media, root: Path) -> tuple[Path, dict]:
    mappings: dict = {}
    folder = root / "in"
    if case == "random-bytes":
        folder.mkdir()
        (folder / "movie.mp4").write_bytes(os.urandom(64 * 1024))
    elif case == "truncated-mp4":  # index (moov) at the end: cut away
        folder.mkdir()
        data = media.cfr().read_bytes()
        (folder / "movie.mp4").write_bytes(data[: len(data) // 2])
    elif case == "truncated-after-index":  # index first: the last frames' data is missing
        folder.mkdir()
        data = media.faststart().read_bytes()
        (folder / "movie.mp4").write_bytes(data[: len(data) * 97 // 100])
    elif case == "missing-input-folder":
        folder = root / "no-such-folder"
    elif case == "empty-input-folder":
        folder.mkdir()
    elif case == "no-video-mapped":
        input_folder(root, media.cfr())
        mappings = {"VideoStreamExpression": r"^nothing\.mp4$"}
    return folder, mappings


FAILURES = {
    "random-bytes": 3002,
    "truncated-mp4": 3002,
    "truncated-after-index": 3002,
    "missing-input-folder": 2003,
    "empty-input-folder": 2003,
    "no-video-mapped": 3001,
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_failure_codes(e2e_media, tmp_path, case):
    folder, mappings = _inputs(case, e2e_media, tmp_path)
    output = tmp_path / "out"
    code, job_run = vipe_run(tmp_path, make_job(folder, output, mappings=mappings))
    assert code == 1
    error = job_run.final_error
    assert error is not None and job_run.events[-1] is error
    assert error["ErrorCode"] == FAILURES[case], error
    assert error["ErrorMessage"] and error["Phase"]
    assert job_run.report["Success"] is False
    assert job_run.report["ErrorCode"] == FAILURES[case]
    assert job_run.report["State"] == "Failed"
    check_events(job_run, success=False)
    assert output_files(output) == []


def test_success_exits_0(e2e_media, tmp_path):
    job = make_job(input_folder(tmp_path, e2e_media.cfr()), tmp_path / "out", formats=["Cmaf"])
    code, job_run = vipe_run(tmp_path, job)
    assert code == 0
    assert job_run.report["Success"] is True and job_run.report["State"] == "Succeeded"
    assert job_run.events[-1]["MessageType"] == "JobSuccess"
    check_events(job_run)
    check_package(job_run)


def test_invalid_job_exits_2(tmp_path):
    job = make_job(tmp_path, tmp_path / "out", formats=["NotAFormat"])
    del job["ContentPublishing"]
    job_path = tmp_path / "job.json"
    job_path.write_text(json.dumps(job))
    events = tmp_path / "events.jsonl"
    assert vipe(["run", str(job_path), "--events", str(events)]) == 2
    assert not events.exists() or events.read_text() == ""  # nothing ran, nothing emitted
    job_path.write_text("{ not json")
    assert vipe(["run", str(job_path)]) == 2
    assert vipe(["run", str(tmp_path / "missing.json")]) == 2


def _assert_cancelled(job_run: JobRun, phase: str) -> None:
    error = job_run.final_error
    assert error is not None and job_run.events[-1] is error
    assert (error["ErrorCode"], error["Phase"]) == (5001, phase), error
    assert "JobSuccess" not in job_run.types
    assert job_run.report["State"] == "Cancelled" and job_run.report["ErrorCode"] == 5001
    assert output_files(job_run.output_dir) == []
    check_events(job_run, success=False)


def test_cancel_from_another_thread_while_encoding(e2e_media, tmp_path):
    token = CancelToken()
    cancelled_at: list[float] = []

    def cancel_soon() -> None:
        time.sleep(0.5)
        cancelled_at.append(time.monotonic())
        token.cancel("cancelled by the test")

    def on_event(event: dict) -> None:
        if event["MessageType"] == "VideoEncodingStarted":
            threading.Thread(target=cancel_soon, daemon=True).start()

    job = make_job(input_folder(tmp_path, e2e_media.medium()), tmp_path / "out")
    job_run = run(tmp_path, job, cancel=token, on_event=on_event)
    ended = time.monotonic()
    assert cancelled_at, "the job ended before the cancel"
    assert ended - cancelled_at[0] < 3.0
    _assert_cancelled(job_run, "Encoding")
    assert "EncodingFinished" not in job_run.types
    assert job_run.final_error["ErrorMessage"] == "cancelled by the test"


@pytest.mark.parametrize(
    ("event", "phase"),
    [
        ("ContentAcquired", "Media Mapping"),
        ("ContentPreProcessed", "Encoding"),
        ("EncodingFinished", "Image Extraction"),
        ("PublishingProgress", "Publishing"),
    ],
)
def test_cancel_in_each_phase(e2e_media, tmp_path, event, phase):
    """Cancelled when `event` is emitted: the job stops at its next check, in `phase`; a
    publish under way is rolled back."""
    token = CancelToken()

    def on_event(emitted: dict) -> None:
        if emitted["MessageType"] == event:
            token.cancel()

    job = make_job(input_folder(tmp_path, e2e_media.cfr()), tmp_path / "out", formats=["Cmaf"])
    job_run = run(tmp_path, job, cancel=token, on_event=on_event)
    _assert_cancelled(job_run, phase)


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_signal_to_vipe_run(e2e_media, tmp_path, signal_number):
    """Ctrl-C (and a stop by a service manager: SIGTERM) cancels the job."""
    job = make_job(input_folder(tmp_path, e2e_media.medium()), tmp_path / "out")
    job_path, events_path = tmp_path / "job.json", tmp_path / "events.jsonl"
    job_path.write_text(json.dumps(job))
    process = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "run", str(job_path), "--events", str(events_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if events_path.exists() and "EncodingProgress" in events_path.read_text():
                break
            assert process.poll() is None, process.stderr.read()
            time.sleep(0.05)
        else:
            pytest.fail("the job never started encoding")
        interrupted = time.monotonic()
        process.send_signal(signal_number)
        code = process.wait(timeout=15)
        assert time.monotonic() - interrupted < 5.0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert code == 1, process.stderr.read()
    events = [json.loads(line) for line in events_path.read_text().splitlines()]
    assert events[-1]["MessageType"] == "FinalError"
    assert events[-1]["ErrorCode"] == 5001
    assert signal.Signals(signal_number).name in events[-1]["ErrorMessage"]
    assert output_files(tmp_path / "out") == []
