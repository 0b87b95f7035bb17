"""Stopping a real ``nst render``: Ctrl-C and SIGTERM end with a summary and how to go on;
SIGKILL of the driver leaves no process of its embedded Ray behind, and the rerun
finishes the job without rendering anything twice. While it runs, the embedded cluster
listens on 127.0.0.1 only and its token file is readable by its owner only.

Each case starts a real embedded Ray in a subprocess (about 10 s here), so the items are
made long enough (tiny random network, many iterations) to be caught mid-run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from nst_engine.distributed import runtime
from nst_engine.results.runs import read_runs
from tests.ray_helpers import assert_outputs_whole, rows, tiny_manifest

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")

#: Iterations that make one 32 px item take a few seconds with the random network.
LONG = 4000


def start_render(manifest: Path, home: Path, *extra: str) -> subprocess.Popen:
    # Ray's socket paths must stay under 107 bytes: a short folder, not one under tmp_path
    ray_tmp = tempfile.mkdtemp(prefix="nst-ray-", dir="/tmp")
    env = {**os.environ, "HOME": str(home), "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_AUTH_TOKEN", None)
    return subprocess.Popen(
        [sys.executable, "-m", "nst_engine.cli.main", "render", str(manifest), "-q", "--no-gpus", *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def descendants(pid: int) -> set[int]:
    found, stack = set(), [pid]
    while stack:
        for child in children(stack.pop()):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a parent to reap it runs nothing and listens nowhere)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def ray_processes(driver: int) -> set[int]:
    """The driver's descendants that are Ray's (its binaries, its renamed workers)."""
    found = set()
    for pid in descendants(driver):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if command.startswith(b"ray::") or b"/ray/" in command:
            found.add(pid)
    return found


def listening(pids: set[int]) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp*) of the TCP sockets ``pids`` listen on."""
    inodes: dict[str, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                inodes[fields[9]] = fields[1]
    found = []
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                found.append(inodes[target[8:-1]])
    return found


#: 127.0.0.1, ::1 and ::ffff:127.0.0.1 as /proc/net/tcp* writes them.
LOOPBACK = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}


def is_loopback(hex_address: str) -> bool:
    return hex_address.split(":")[0] in LOOPBACK


def wait_for(condition, timeout: float, what: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"exited {process.returncode}: {process.communicate()[1]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def pngs(output: Path) -> list[Path]:
    return [p for p in output.rglob("*.png") if not p.name.startswith(".nst-tmp-")]


def test_sigterm_summary_loopback_ports_and_private_token(tmp_path: Path) -> None:
    manifest = tiny_manifest(tmp_path, contents=4, styles=1, iterations=LONG)
    home = tmp_path / "home"
    home.mkdir()
    render = start_render(manifest, home, "--workers", "1")
    try:
        wait_for(
            lambda: any(_cmd(p).startswith(b"ray::RenderWorker") for p in ray_processes(render.pid)),
            300,
            "a worker",
            render,
        )
        addresses = listening(ray_processes(render.pid) | {render.pid})
        token = home / ".ray" / "auth_token"
        token_mode = token.stat().st_mode & 0o777
        render.send_signal(signal.SIGTERM)
        _, stderr = render.communicate(timeout=60)
    finally:
        render.kill()
    assert addresses, "the embedded Ray listens somewhere; the check below must see it"
    assert all(is_loopback(a) for a in addresses), addresses
    assert token_mode == 0o600, oct(token_mode)
    assert render.returncode == 143, stderr
    assert "terminated (SIGTERM)" in stderr and "to render the rest, run again: nst render" in stderr
    assert "Traceback" not in stderr and "received at time" not in stderr, stderr  # Ray's C++ dump
    assert "render summary" in stderr


def _cmd(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_ctrl_c_prints_what_finished_and_exits_130(tmp_path: Path) -> None:
    manifest = tiny_manifest(tmp_path, contents=4, styles=1, iterations=LONG)
    home = tmp_path / "home"
    home.mkdir()
    token = home / ".ray" / "auth_token"
    token.parent.mkdir()
    token.write_text("0" * 64)
    token.chmod(0o644)  # as Ray itself leaves it under umask 022: tightened, kept
    render = start_render(manifest, home, "--workers", "1")
    try:
        # the second image is begun only after the first item's call came back (one worker,
        # one item per call while no item has been timed): its row is then the driver's
        wait_for(lambda: len(pngs(tmp_path / "out")) >= 2, 300, "a second image", render)
        render.send_signal(signal.SIGINT)
        _, stderr = render.communicate(timeout=60)
    finally:
        render.kill()
    assert render.returncode == 130, stderr
    assert "interrupted (Ctrl-C)" in stderr and " of 4 items finished" in stderr, stderr
    assert "Traceback" not in stderr, stderr
    assert token.read_text() == "0" * 64 and token.stat().st_mode & 0o777 == 0o600
    finished = [r for r in rows(tmp_path / "out") if r["status"] == "ok"]
    assert finished, "the rows of items finished before Ctrl-C are written"


def _started(pid: int) -> str:
    """When ``pid`` started (clock ticks since boot): with the pid, one process, whatever its pid's reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat[stat.rindex(")") + 2 :].split()[19]


def _recorded_as(output: Path, state: str) -> bool:
    with contextlib.suppress(Exception):  # not written yet, or being replaced
        return state in read_runs(str(output)).column("state").to_pylist()
    return False


@pytest.mark.parametrize("presses", [1, 2], ids=["ctrl-c", "ctrl-c-twice"])
def test_ctrl_c_ends_the_driver_when_ray_stops_answering(tmp_path: Path, presses: int) -> None:
    """A loaded machine starves the embedded GCS and raylet, and ray.shutdown()'s calls to
    them have no deadline: the driver waited for them for over a minute after Ctrl-C.
    Stopped here (SIGSTOP) so the wait is certain, it must not be forever: the driver
    writes what finished, gives up on Ray, exits 130, and leaves none of its Ray behind.
    A second Ctrl-C while it waits still ends in 130, without a traceback."""
    manifest = tiny_manifest(tmp_path, contents=4, styles=1, iterations=LONG)
    home = tmp_path / "home"
    home.mkdir()
    output = tmp_path / "out"
    render = start_render(manifest, home, "--workers", "1")
    session: dict[int, str] = {}

    def leftovers() -> list[int]:
        return [p for p, started in session.items() if alive(p) and _started(p) == started]

    try:
        wait_for(lambda: len(pngs(output)) >= 2, 300, "a second image", render)
        session = {pid: _started(pid) for pid in ray_processes(render.pid) if alive(pid)}
        core = [p for p in session if _cmd(p).split(b"\0")[0].endswith((b"/gcs_server", b"/raylet"))]
        assert len(core) == 2, [_cmd(p)[:60] for p in session]
        for pid in core:
            os.kill(pid, signal.SIGSTOP)
        render.send_signal(signal.SIGINT)
        if presses == 2:  # once the run is recorded, the driver waits for Ray's shutdown
            wait_for(lambda: _recorded_as(output, "interrupted"), 60, "the run's record", render)
            render.send_signal(signal.SIGINT)
        _, stderr = render.communicate(timeout=30)  # far above the deadline; before: forever
        deadline = time.monotonic() + 5
        while leftovers() and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [(p, _cmd(p)[:60]) for p in leftovers()]
    finally:
        render.kill()
        for pid in leftovers():  # what the driver left (stopped ones too): not for the next test
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    assert render.returncode == 130, stderr
    assert "interrupted (Ctrl-C)" in stderr and "Traceback" not in stderr, stderr
    if "did not end within" in stderr:  # so loaded that even the rows waited on Ray: the
        # last resort (EXIT_DEADLINE_SECONDS) ended it; the images stay for the next run
        assert len(pngs(output)) >= 2 and not left, (stderr, left)
        return
    if presses == 1:
        assert " of 4 items finished" in stderr, stderr
    assert [r for r in rows(output) if r["status"] == "ok"], "the rows of finished items are written"
    assert not left, left


#: A command that ignores every stop, as one blocked in a call that swallows the
#: interrupt would: only the exit's deadline (shortened here) can end it.
STUCK = """
import time
from nst_engine.cli import app
app.EXIT_DEADLINE_SECONDS = 1.0
app.stop_on_signals()
ready = False
while True:
    try:  # the signal may land while "ready" is printed: caught there too
        if not ready:
            print("ready", flush=True)
            ready = True
        time.sleep(60)
    except KeyboardInterrupt:
        pass
"""


#: A main thread blocked in C for good, never back in Python to run a signal handler (as
#: one inside Ray's C++ calls was seen): only the C-level handler's wake-up can act.
STUCK_IN_C = """
import ctypes, signal
from nst_engine.cli import app
app.EXIT_DEADLINE_SECONDS = 1.0
app.stop_on_signals()
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})  # another thread gets them
try:  # a signal that lands before the pause is run by the Python handler: caught here
    print("ready", flush=True)
    while True:
        ctypes.CDLL(None).pause()
except KeyboardInterrupt:
    while True:
        ctypes.CDLL(None).pause()
"""


@pytest.mark.parametrize("script", [STUCK, STUCK_IN_C], ids=["in-python", "in-c"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_command_stuck_after_a_stop_ends_at_the_deadline(sig: signal.Signals, script: str) -> None:
    """Whatever blocks the exit (Ray's calls on a starved machine), the command ends
    within its deadline of the first signal, with one line and 128 + the signal."""
    stuck = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert stuck.stdout.readline().strip() == "ready"
        time.sleep(0.5)  # into its sleep or pause
        stuck.send_signal(sig)
        _, stderr = stuck.communicate(timeout=30)  # 1 s deadline; before: never
    finally:
        stuck.kill()
    assert stuck.returncode == 128 + sig, stderr
    assert stderr.count("error:") == 1 and "did not end within 1 s" in stderr, stderr


@pytest.fixture
def hanging_shutdown(monkeypatch: pytest.MonkeyPatch):
    """A connected Ray whose ``ray.shutdown()`` returns only once the event is set."""
    release = threading.Event()
    monkeypatch.setattr(runtime.ray, "is_initialized", lambda: True)
    monkeypatch.setattr(runtime.ray, "shutdown", release.wait)
    yield release
    release.set()


def test_disconnect_leaves_a_hanging_shutdown_after_its_deadline(
    hanging_shutdown: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime, "SHUTDOWN_SECONDS", 0.1)
    runtime.disconnect()  # returns: it did not wait for ever
    assert runtime.shutdown_unfinished()  # so the CLI ends with os._exit
    hanging_shutdown.set()
    deadline = time.monotonic() + 10
    while runtime.shutdown_unfinished() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not runtime.shutdown_unfinished()


def test_no_new_run_in_a_process_whose_ray_shutdown_hangs(
    hanging_shutdown: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Until the left shutdown ends, Ray says it is connected, to a cluster the watchdog
    has killed: a second run in the process is refused rather than handed to no one."""
    from nst_engine.errors import NSTError

    monkeypatch.setattr(runtime, "SHUTDOWN_SECONDS", 0.1)
    runtime.disconnect()
    with pytest.raises(NSTError, match="start the next run in a new process"):
        runtime.connect()
    hanging_shutdown.set()  # once it ends, the next connect is Ray's own business again
    deadline = time.monotonic() + 10
    while runtime.shutdown_unfinished() and time.monotonic() < deadline:
        time.sleep(0.05)
    runtime._after_unfinished_shutdown()  # no longer refuses


def test_a_second_ctrl_c_ends_the_wait_and_the_shutdown_is_still_known_unfinished(
    hanging_shutdown: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime, "SHUTDOWN_SECONDS", 60.0)  # the Ctrl-C comes first
    # a real SIGINT to the main thread: interrupt_main() would not end a waiting lock
    threading.Timer(0.2, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        runtime.disconnect()
    assert runtime.shutdown_unfinished()  # (an interrupted Thread.join calls it stopped)


def test_sigkill_leaves_no_ray_process_and_the_rerun_renders_nothing_twice(tmp_path: Path) -> None:
    manifest = tiny_manifest(tmp_path, contents=6, styles=1, iterations=LONG // 2)
    home = tmp_path / "home"
    home.mkdir()
    output = tmp_path / "out"
    render = start_render(manifest, home, "--workers", "2")
    try:
        wait_for(lambda: len(pngs(output)) >= 1, 300, "a first image", render)
        session = ray_processes(render.pid)
        started = {pid: Path(f"/proc/{pid}/stat").read_text() for pid in session if alive(pid)}
        render.kill()  # SIGKILL: no handler, no flush, no ray.shutdown()
        render.wait(10)
    finally:
        render.kill()
    assert len(started) >= 4, started  # GCS, raylet, agents, workers: the check below must see them

    def leftovers() -> list[int]:
        return [p for p in started if alive(p) and Path(f"/proc/{p}/stat").read_text() == started[p]]

    deadline = time.monotonic() + 5
    while leftovers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not leftovers(), [(p, _cmd(p)[:60]) for p in leftovers()]
    written = {p: p.stat().st_mtime_ns for p in pngs(output)}  # rows may be lost: adopted, not redone

    rerun = start_render(manifest, home, "--workers", "2")
    _, stderr = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, stderr
    ok = [r for r in rows(output) if r["status"] == "ok"]
    assert sorted(Counter(r["item_id"] for r in ok).values()) == [1] * 6, ok  # none rendered twice
    assert_outputs_whole(output)
    assert written and all(p.stat().st_mtime_ns == mtime for p, mtime in written.items())
    assert len(pngs(output)) == 6
