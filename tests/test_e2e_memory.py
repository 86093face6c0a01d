"""Memory stays flat whatever the source's length (DESIGN: frames stream through).

The same job runs on a 15 s and a 60 s 640×360 source, each `vipe run` in a subprocess of its
own small wrapper process, which reads the job's peak resident set size with
`resource.getrusage(RUSAGE_CHILDREN)` (the wrapper has no other child). Four times the duration
may cost at most 20% more peak memory.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_helpers import (
    check_progress,
    input_folder,
    make_job,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

WRAPPER = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
print(done.returncode, peak)
sys.stderr.write(done.stderr[-4000:])
"""


def peak_rss_of_job(root: Path, source: Path) -> tuple[int, list[dict]]:
    """(peak RSS in KiB, events) of `vipe run` on a job for `source`."""
    job = make_job(
        input_folder(root, source),
        root / "out",
        formats=["Dash", "Hls"],
        SegmentLengthInSeconds=4,
        VideoRepresentations=[
            {"Height": 360, "BitrateInKbps": 1200},
            {"Height": 180, "BitrateInKbps": 400},
        ],
    )
    job_path, events_path = root / "job.json", root / "events.jsonl"
    job_path.write_text(json.dumps(job))
    command = [sys.executable, "-m", "engine.cli", "run", str(job_path), "--events"]
    done = subprocess.run(
        [sys.executable, "-c", WRAPPER, *command, str(events_path)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    code, peak = map(int, done.stdout.split())
    assert code == 0, done.stderr
    events = [json.loads(line) for line in events_path.read_text().splitlines()]
    return peak, events


def test_peak_memory_does_not_grow_with_duration(e2e_media, tmp_path):
    short, short_events = peak_rss_of_job(tmp_path / "short", e2e_media.long(15))
    long, long_events = peak_rss_of_job(tmp_path / "long", e2e_media.long(60))
    print(f"peak RSS: 15 s source {short / 1024:.1f} MiB, 60 s source {long / 1024:.1f} MiB")
    assert long <= short * 1.2, (short, long)
    for events in (short_events, long_events):
        assert events[-1]["MessageType"] == "JobSuccess"
        check_progress([e for e in events if e["MessageType"] == "EncodingProgress"])
    # a long encode reports progress as it goes, not just at the end
    assert len([e for e in long_events if e["MessageType"] == "EncodingProgress"]) >= 5
