"""Nothing of an embedded Ray cluster outlives the driver that started it.

``nst render`` without ``--address`` starts Ray's processes itself (GCS, raylet, the
raylet's dashboard and runtime-env agents, workers). When the driver exits normally,
``ray.shutdown()`` stops them. When it is killed (SIGKILL, the OOM killer), Ray's own
fate-sharing stops the GCS and raylet at once, but its workers go on for seconds
(writing images whose rows are lost) and the agents, which poll for their parent,
were seen listening for up to 90 s.

So the driver starts this small watchdog first. It notes, every ``POLL_SECONDS``, each
Ray process descended from the driver (pid and start time, from ``/proc``); its stdin is
a pipe whose only writer is the driver, so end of file means the driver is gone,
however it went. It then SIGKILLs every noted process that is still the same process
(same pid and start time), and their descendants, twice a moment apart (a worker may
be forking). Only processes started after the watchdog and named like Ray's are
touched, so a driver's other children (a test's S3 server) are safe.

Hand-written because Ray offers no "kill my local cluster when I die" switch and
psutil is not a dependency; ``/proc`` makes it Linux-only, and elsewhere it is not
started (``start`` returns None).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

#: Seconds between two looks at the driver's descendants.
POLL_SECONDS = 0.2
#: Seconds between the two rounds of kills.
SECOND_ROUND_SECONDS = 0.5
PROC = Path("/proc")


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of ``pid``, or None when it is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the name may hold spaces and parentheses
    return int(fields[1]), int(fields[19])


def _is_ray(pid: int) -> bool:
    """Ray's processes: its binaries and scripts live in the ``ray`` package's folder, and
    its workers rename themselves ``ray::...``."""
    try:
        command = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return False
    return command.startswith(b"ray::") or _RAY_PACKAGE in command


def _ray_package() -> bytes:
    """The installed ``ray`` package's folder (found, not imported): matching it rather
    than any ``/ray/`` spares the driver's other children where a home is ``/home/ray``,
    as in Ray's own images."""
    spec = importlib.util.find_spec("ray")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    return os.fsencode(os.path.join(folders[0], "")) if folders else b"/ray/"


_RAY_PACKAGE = _ray_package()


def _children(pid: int) -> list[int]:
    """Children of ``pid`` from each of its threads' ``children`` file (a walk that costs
    the size of the tree, not of the machine's process table)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in (PROC / str(pid) / "task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _descendants(root: int) -> set[int]:
    """Every living process below ``root``."""
    found, stack = set(), [root]
    while stack:
        for child in _children(stack.pop()):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _kill(noted: dict[int, int]) -> None:
    """SIGKILL each noted process that is still the one noted, and whatever is below it."""
    for pid, started in list(noted.items()):
        stat = _stat(pid)
        if stat is None or stat[1] != started:
            continue  # gone, or the pid was reused by another process
        for victim in [pid, *_descendants(pid)]:
            with contextlib.suppress(OSError):
                os.kill(victim, signal.SIGKILL)


def watch(driver: int) -> None:
    """The watchdog's body: note the driver's Ray descendants until stdin closes, then kill."""
    before = _descendants(driver) | {os.getpid()}
    noted: dict[int, int] = {}
    closed = threading.Event()

    def wait_for_eof() -> None:
        with contextlib.suppress(OSError):
            sys.stdin.buffer.read()
        closed.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    while not closed.wait(POLL_SECONDS):
        for pid in _descendants(driver) - before - noted.keys():
            if _is_ray(pid) and (stat := _stat(pid)) is not None:
                noted[pid] = stat[1]
    _kill(noted)
    time.sleep(SECOND_ROUND_SECONDS)
    _kill(noted)


def start() -> subprocess.Popen | None:
    """Start the watchdog of this process's embedded Ray (before ``ray.init``); None where
    there is no ``/proc`` with ``children`` files (Linux 3.5+). ``stop`` it after ``ray.shutdown()``."""
    if not (PROC / "self" / "task" / str(os.getpid()) / "children").exists():
        return None
    return subprocess.Popen(
        [sys.executable, "-m", __name__, str(os.getpid())],
        stdin=subprocess.PIPE,  # non-inheritable: Ray's processes never hold it open
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C to the terminal's process group does not reach it
    )


def stop(watchdog: subprocess.Popen | None, timeout: float = 5.0) -> None:
    """Close the watchdog's pipe (it kills any leftover, then exits) and wait for it."""
    if watchdog is None:
        return
    with contextlib.suppress(OSError):
        watchdog.stdin.close()
    try:
        watchdog.wait(timeout)
    except subprocess.TimeoutExpired:
        watchdog.kill()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watch(int(sys.argv[1]))
