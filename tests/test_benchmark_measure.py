"""The benchmarks' peak memory is the measured process's own: a child that allocates 50 MB
reports about 50 MB however much the benchmark driver itself holds (issue 18)."""

from __future__ import annotations

import sys

import pytest

from benchmarks.common import measure

# A child that touches 50 MB (one write per page so every page is resident) and exits.
CHILD = [
    sys.executable, "-S", "-I", "-c",
    "b = bytearray(50 * 1024 * 1024)\nfor i in range(0, len(b), 4096): b[i] = 1",
]  # fmt: skip


def child_alone_mb() -> float:
    """The bare interpreter's own peak (no allocation), to subtract from the child's."""
    return measure([sys.executable, "-S", "-I", "-c", "pass"]).peak_mb


def test_child_peak_is_its_own_while_the_driver_holds_300_mb() -> None:
    held = bytearray(300 * 1024 * 1024)
    for i in range(0, len(held), 4096):
        held[i] = 1  # resident, so the driver's high-water mark is above 300 MB
    baseline = child_alone_mb()
    run = measure(CHILD)
    assert len(held) == 300 * 1024 * 1024
    # The interpreter's own few MB plus the 50 MB it touched; nothing near the driver's 300 MB.
    assert 48 <= run.peak_mb - baseline <= 56, (run.peak_mb, baseline)
    assert run.peak_mb < 100
    assert baseline < 30
    assert run.wall_s > 0 and run.cpu_s > 0


def test_a_failing_command_raises() -> None:
    with pytest.raises(RuntimeError, match="failed \\(3\\)"):
        measure([sys.executable, "-S", "-I", "-c", "import sys; sys.exit(3)"])


def test_a_command_working_in_several_processes_reports_their_sum() -> None:
    # two children that hold 60 MB each at the same time, and a parent that waits for both
    parent = [
        sys.executable, "-S", "-I", "-c",
        "import subprocess, sys\n"
        "hold = ('import time\\nb = bytearray(60 * 1024 * 1024)\\n'"
        " 'for i in range(0, len(b), 4096): b[i] = 1\\ntime.sleep(0.5)')\n"
        "children = [subprocess.Popen([sys.executable, '-S', '-I', '-c', hold])"
        " for _ in range(2)]\n"
        "assert all(c.wait() == 0 for c in children)",
    ]  # fmt: skip
    run = measure(parent)
    # 120 MB held at once plus three interpreters; the largest single process is ~70 MB
    assert 120 <= run.peak_mb - child_alone_mb() <= 170, run.peak_mb
