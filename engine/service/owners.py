"""Who runs a job: the owner id a queue's process writes on the jobs it claims, and what
recovery reads back from one (`JobService.orphaned`).

An owner id is `host:pid:instance`; the instance part tells a restarted process (a container
that got the same pid) from the one that claimed the job. The queues (in-process, Celery API,
Celery worker) create ids here and the service's recovery parses them here, so the format
lives in one place.
"""

from __future__ import annotations

import os
import socket
import uuid


def new_owner(hostname: str | None = None) -> str:
    """A fresh owner id for this process: `host:pid:instance`."""
    return f"{hostname or socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def owner_parts(owner: str) -> tuple[str, int, str]:
    """(host, pid, instance) of an owner id; pid -1 when it cannot be read."""
    parts = owner.rsplit(":", 2)
    if len(parts) != 3:
        return owner, -1, ""
    host, pid, instance = parts
    try:
        return host, int(pid), instance
    except ValueError:
        return host, -1, instance


def process_alive(pid: int) -> bool:
    """Whether a process of this host with this id runs."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by someone else
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """Whether the process has exited but not been reaped: `kill(pid, 0)` still succeeds on
    it, yet its sockets are closed and the broker has already re-delivered its messages."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # "pid (comm) STATE ...": comm may hold spaces and parentheses, so split at the last ")"
            return stat.read().rpartition(b")")[2].split()[0] in (b"Z", b"X")
    except FileNotFoundError:
        return os.path.isdir("/proc/self")  # reaped meanwhile; without /proc, kill() answered
    except (OSError, IndexError):
        return False


def owner_gone(theirs: str, mine: str) -> bool:
    """Whether the owner `theirs` was a process of the host of `mine` that no longer runs: an
    older instance under this very pid (a restarted container), or another pid that is gone.
    An owner on another host is never judged here (its lease tells)."""
    host, pid, instance = owner_parts(mine)
    their_host, their_pid, their_instance = owner_parts(theirs)
    if their_host != host:
        return False
    if their_pid == pid:
        return their_instance != instance
    return not process_alive(their_pid)
