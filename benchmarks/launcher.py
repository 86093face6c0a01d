"""A tiny fresh process that starts one measured command and reports the command's own wall
time, CPU time and peak RSS on stdout as `wall_s cpu_s peak_kb exit_code`.

Why: `wait4` on a child of the benchmark driver reports the larger of the child's peak and
the memory it had before `exec` — for a child started by fork/vfork/posix_spawn that is the
driver's own high-water mark (Linux records the pre-exec mm's peak in the child's maxrss).
This launcher is a bare interpreter (`python -S -I`, about 8 MB), so the command it spawns
inherits at most the launcher's 8 MB: every figure above that is the command's own.

A command that works in several processes at once (vipe's packaging and chunked-encoding
workers) is measured as one: while it runs, the launcher sums the resident memory of the command
and all its descendants every SAMPLE_SECONDS and reports the larger of that sum's peak and the
kernel's (the kernel's is the largest single process's peak, exact but not a sum).

Run as `python -S -I benchmarks/launcher.py COMMAND ARGS...`; imports only os, sys and time.
The command's stdout goes to /dev/null, its stderr is the launcher's.
"""

from __future__ import annotations

import os
import sys
import time


def main(argv: list[str]) -> int:
    """Spawn `argv`, wait for it, print its measurements; the launcher's own exit code is 0
    when the measurements were printed (the command's exit code is the 4th field)."""
    if not argv:
        print("usage: launcher.py COMMAND [ARGS...]", file=sys.stderr)
        return 2
    devnull = os.open(os.devnull, os.O_WRONLY)
    started = time.perf_counter()
    pid = os.posix_spawnp(
        argv[0], argv, dict(os.environ), file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 1)]
    )
    tree_peak_kb = 0
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        tree_peak_kb = max(tree_peak_kb, tree_rss_kb(pid))
        time.sleep(SAMPLE_SECONDS)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    peak_kb = max(usage.ru_maxrss, tree_peak_kb)
    print(f"{wall:.6f} {usage.ru_utime + usage.ru_stime:.6f} {peak_kb} {code}")
    return 0


SAMPLE_SECONDS = 0.01
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def tree_rss_kb(pid: int) -> int:
    """The resident memory of `pid` and all its descendants now (0 for what has exited)."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            with open(f"/proc/{current}/statm", "rb") as statm:
                total += int(statm.read().split()[1]) * PAGE_KB
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children", "rb") as children:
                    pending += [int(child) for child in children.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited between the listing and the read
    return total


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
