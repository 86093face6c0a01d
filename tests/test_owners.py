"""Owner ids and the liveness check behind taking a crashed worker's job over at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from engine.service.owners import new_owner, owner_gone, owner_parts, process_alive


def test_owner_id_round_trips():
    owner = new_owner("node-1")
    host, pid, instance = owner_parts(owner)
    assert (host, pid, len(instance)) == ("node-1", os.getpid(), 12)
    assert owner_parts("garbage") == ("garbage", -1, "")


def test_a_killed_but_unreaped_process_is_gone():
    """kill -9 closes the worker's broker connection at once, but its parent may reap it later:
    the zombie still answers kill(pid, 0), yet its job must be taken over now."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert process_alive(child.pid)
        os.kill(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while process_alive(child.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not process_alive(child.pid)
        assert child.poll() is None or child.returncode == -signal.SIGKILL  # not reaped by us
        mine = new_owner("host")
        assert owner_gone(f"host:{child.pid}:abcdef", mine)
        assert not owner_gone(f"other:{child.pid}:abcdef", mine)  # another host: its lease tells
    finally:
        child.kill()
        child.wait()
    assert not process_alive(child.pid)


def test_this_process_is_alive_and_an_older_instance_of_it_is_not():
    mine = new_owner("host")
    assert process_alive(os.getpid())
    assert not owner_gone(mine, mine)
    host, pid, _ = owner_parts(mine)
    assert owner_gone(f"{host}:{pid}:000000000000", mine)
