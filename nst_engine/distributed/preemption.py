"""A render worker told to stop (SIGTERM: a pod deleted or a node drained, a spot notice
relayed) saves every synthesis it holds at once, then exits within its grace period.

On SIGTERM the worker sets the engine's stop notice (``engine/stop_notice.py``): each
checkpointed synthesis saves at its next iteration and ends. The worker waits for those
(``Holdings``), at most ``grace_seconds()``, then exits with ``EXIT_CODE`` without a
reply to its calls, so the driver records their items as lost and retries them, and the
retries resume from the checkpoints. A synthesis with checkpointing off has nothing to
save and is not waited for.

Ray's worker has its own SIGTERM handler (``Worker.main_loop``: ``SystemExit`` in the
main thread). Seen in Ray 2.60: an actor whose calls run in its main thread dies at
once, its synthesis unsaved; a threaded actor's main thread waits in Ray's C++ task
loop, so the handler runs only once the calls running have ended, a synthesis of
minutes outliving any grace period. ``install`` replaces it, and hears the signal from
a thread (``nst_engine.signals``), whatever the main thread is doing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from nst_engine.engine.stop_notice import StopRequested, request_stop
from nst_engine.signals import watch_signals

log = logging.getLogger(__name__)

#: The environment variable that sets a worker's grace period, in seconds.
GRACE_ENV = "NST_STOP_GRACE_SECONDS"
#: Seconds a stopped worker waits for its syntheses to save before it exits anyway:
#: well inside Kubernetes' default 30 s, which the deployment files raise beyond this.
DEFAULT_GRACE_SECONDS = 20.0
#: A stopped worker's exit status, as a shell reports a process SIGTERM ended.
EXIT_CODE = 128 + signal.SIGTERM


def grace_seconds(environ: Mapping[str, str] = os.environ) -> float:
    """The grace period from ``NST_STOP_GRACE_SECONDS``; the default when unset or not a
    positive number (said in the worker's log: a stop must not fail for a typo)."""
    text = environ.get(GRACE_ENV, "").strip()
    if not text:
        return DEFAULT_GRACE_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        log.warning(
            "%s=%r is not a positive number of seconds; using %s", GRACE_ENV, text, DEFAULT_GRACE_SECONDS
        )
        return DEFAULT_GRACE_SECONDS
    return value


class Holdings:
    """The checkpointed syntheses a worker runs now: a stop waits until each has saved
    (or finished), and a stopped one never replies (its item is lost, then resumed)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._count = 0
        self.saved: list[int | None] = []  # each stopped synthesis's iteration saved, for the log

    @contextlib.contextmanager
    def holding(self, checkpointed: bool) -> Iterator[None]:
        """Around a synthesis; one with checkpointing off is not counted. On
        ``StopRequested`` it waits for the exit the stop brings, so no row goes back."""
        if not checkpointed:
            yield
            return
        with self._cond:
            self._count += 1
        released = False
        try:
            yield
        except StopRequested as stop:
            self._release(stop.saved_at)
            released = True
            _await_exit()
        finally:
            if not released:
                self._release(None, stopped=False)

    def _release(self, saved_at: int | None, stopped: bool = True) -> None:
        with self._cond:
            self._count -= 1
            if stopped:
                self.saved.append(saved_at)
            self._cond.notify_all()

    def wait_saved(self, timeout: float) -> bool:
        """Until no synthesis is held; False when ``timeout`` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: self._count == 0, timeout)


#: Set once SIGTERM was heard: a second one only repeats the same stop.
_stopping = threading.Event()


def _await_exit() -> None:
    """Wait for the stop's exit: a stopped synthesis's thread must not return its row
    first. Should no exit come (the grace period, then some), exit from here: a worker
    with the notice set would fail every item it is given."""
    time.sleep(grace_seconds() + 10)
    os._exit(EXIT_CODE)


def install(holdings: Holdings) -> None:
    """Make SIGTERM stop this worker as the module says; from the actor's main thread
    (``RenderWorker.__init__`` runs there, threaded actor or not)."""
    # a Python handler, so the C-level one wakes the watcher; it only sets the notice
    signal.signal(signal.SIGTERM, lambda _signum, _frame: request_stop())
    watch_signals((signal.SIGTERM,), lambda _signum: _stop(holdings))


def _stop(holdings: Holdings) -> None:
    """Heard SIGTERM: the notice, then the exit once every synthesis held has saved, in a
    thread of its own (a second signal only repeats the same stop)."""
    if _stopping.is_set():
        return
    _stopping.set()
    request_stop()
    grace = grace_seconds()
    log.warning(
        "told to stop (SIGTERM): saving the syntheses in progress, then exiting (within %.0f s)", grace
    )

    def finish() -> None:
        whole = holdings.wait_saved(grace)
        log.warning(
            "stopping: %s; saved at iterations %s; exiting",
            "every synthesis saved" if whole else f"the grace period ({grace:.0f} s) ran out",
            holdings.saved,
        )
        os._exit(EXIT_CODE)

    threading.Thread(target=finish, name="nst-preemption", daemon=True).start()


# --- relaying the notice: Kubernetes' preStop hook, the AWS spot notice ----------------

#: How Ray titles a render worker's process (``ray::<actor class>``, ``.method`` while
#: a call runs): what a relay looks for.
PROCESS_TITLE = "ray::RenderWorker"
#: Seconds a relay waits beyond the grace period for the workers to be gone.
RELAY_MARGIN_SECONDS = 5.0


def titled(title: str = PROCESS_TITLE, proc: Path = Path("/proc")) -> list[int]:
    """The pids of this machine's processes whose command line starts with ``title``."""
    pids = []
    for entry in proc.glob("[0-9]*"):
        try:
            command = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if command.startswith(title.encode()):
            pids.append(int(entry.name))
    return pids


def relay(title: str = PROCESS_TITLE, wait: float | None = None) -> int:
    """SIGTERM every render worker on this machine, then wait until they are gone (their
    syntheses saved) or ``wait`` seconds (default: the grace period and a margin) pass;
    how many are still there. For a node about to go: Kubernetes' preStop hook, before
    it stops ``ray start`` (whose end would kill the workers at once), and the AWS spot
    notice (``cluster/spot-notice.sh``)."""
    for pid in titled(title):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + (grace_seconds() + RELAY_MARGIN_SECONDS if wait is None else wait)
    while (left := titled(title)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return len(left)


if __name__ == "__main__":  # python -m nst_engine.distributed.preemption
    left = relay()
    print(f"nst: {left} render workers still running" if left else "nst: render workers stopped", flush=True)
