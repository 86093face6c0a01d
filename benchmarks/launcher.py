"""A tiny fresh process that starts one measured command and reports the command's own wall
time, CPU time and peak RSS on stdout as `wall_s cpu_s peak_kb exit_code`.

Why: `wait4` on a child of the benchmark driver reports the larger of the child's peak and
the memory it had before `exec` — for a child started by fork/vfork/posix_spawn that is the
driver's own high-water mark (Linux records the pre-exec mm's peak in the child's maxrss).
This launcher is a bare interpreter (`python -S -I`, about 8 MB), so the command it spawns
inherits at most the launcher's 8 MB: every figure above that is the command's own.

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
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    print(f"{wall:.6f} {usage.ru_utime + usage.ru_stime:.6f} {usage.ru_maxrss} {code}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
