"""launch/reaper.py: a driver leaving with os._exit has its local Ray processes ended after it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mvae_dist.launch import reaper

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")


def _gone_within(proc: subprocess.Popen, seconds: float) -> bool:
    try:
        proc.wait(seconds)
        return True
    except subprocess.TimeoutExpired:
        return False


def test_the_processes_and_their_children_end_only_after_the_driver_is_gone(tmp_path):
    """A "driver" starts a process that has a child of its own (as the raylet has its agents),
    hands it to the reaper and leaves with os._exit: both end, and not before the driver left."""
    pids = tmp_path / "pids"
    driver = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, subprocess, sys, time
        from mvae_dist.launch.reaper import reap_after_exit
        parent = subprocess.Popen(["sh", "-c", "sleep 300 & wait"])
        time.sleep(0.5)  # its child is up
        open({str(pids)!r}, "w").write(str(parent.pid))
        reap_after_exit([parent.pid], grace_s=0.2)
        time.sleep(float(sys.argv[1]))
        os._exit(143)
        """), "2"])
    deadline = time.monotonic() + 20
    while not (pids.exists() and pids.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    parent = int(pids.read_text())
    child = [p for p in reaper.descendants([parent]) if p != parent]
    assert len(child) == 1, child
    time.sleep(1)
    assert driver.poll() is None and reaper.proc_start_time(parent) is not None  # not before it left
    assert driver.wait(20) == 143
    deadline = time.monotonic() + 10
    while any(reaper.proc_start_time(p) for p in (parent, *child)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert reaper.proc_start_time(child[0]) is None
    assert reaper.proc_start_time(parent) is None


def test_a_reused_pid_is_not_killed():
    """The reaper ends a pid only when its start time is the one recorded."""
    victim = subprocess.Popen(["sleep", "30"])
    try:
        started = reaper.proc_start_time(victim.pid)
        assert started is not None
        reaper.main([str(2 ** 22 + 7), "0", f"{victim.pid}:{int(started) + 1}"])  # no such driver pid
        assert victim.poll() is None
        reaper.main([str(2 ** 22 + 7), "0", f"{victim.pid}:{started}"])
        assert _gone_within(victim, 5)
    finally:
        victim.kill()
