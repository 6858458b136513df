"""Ending the local Ray instance of a driver that leaves with ``os._exit`` (a thread still blocked
in Ray: see ``train.driver.ABANDONED_RAY_THREAD``).

``ray.shutdown()`` under such a thread can crash the process, and killing the instance's
processes from the driver lets Ray's core worker see its raylet die and end the process with
exit 1 before ours (143 / 130) is given. So the driver hands the instance's process ids to a
small detached process that waits for the driver to be gone, then ends them (SIGTERM, then
SIGKILL after ``grace_s``). Ray's raylet and GCS die with the driver on Linux (they are started
with a parent-death signal); the agents the raylet started do not, hence this.

Linux only (``/proc``); elsewhere nothing is done and Ray's own fate-sharing is all there is.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def proc_start_time(pid: int) -> str | None:
    """The start time (clock ticks since boot) of a live process, None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else fields[19]


def descendants(pids: list[int]) -> list[int]:
    """``pids`` and every process below them (by ``/proc/*/stat`` parent ids), in no order."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(), list(pids)
    while todo:
        p = todo.pop()
        if p not in out:
            out.add(p)
            todo.extend(children.get(p, []))
    return sorted(out)


def reap_after_exit(pids: list[int], grace_s: float = 1.0) -> subprocess.Popen | None:
    """Start the detached process that ends ``pids`` and their descendants once this process is
    gone. -> it (None when there is nothing to end or no ``/proc``)."""
    if not pids or not Path("/proc/self/stat").exists():
        return None
    targets = [f"{p}:{s}" for p in descendants(pids) if p != os.getpid()
               and (s := proc_start_time(p)) is not None]
    if not targets:
        return None
    return subprocess.Popen([sys.executable, "-m", "mvae_dist.launch.reaper", str(os.getpid()), str(grace_s),
                             *targets],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)


def main(argv: list[str]) -> None:
    """The detached process: argv = driver pid, grace seconds, then "pid:starttime" of each process
    to end. Waits (at most 60 s) for the driver to be gone, then SIGTERM, ``grace`` s, SIGKILL, each
    only to a process whose start time still matches (not a reused pid)."""
    driver, grace = int(argv[0]), float(argv[1])
    targets = [(int(p), t) for p, t in (a.split(":") for a in argv[2:])]
    deadline = time.monotonic() + 60
    while proc_start_time(driver) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid, started in targets:
            if proc_start_time(pid) == started:
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
        time.sleep(grace)


if __name__ == "__main__":
    main(sys.argv[1:])
