"""Signals seen from a thread of their own, whatever the main thread is doing.

Python runs a signal's handler only when the main thread gets back to Python, and a main
thread blocked inside Ray's C++ calls (a driver waiting on Ray, an actor's task loop)
may never do so. The C-level handler still writes each signal's number to the wake-up
descriptor (``signal.set_wakeup_fd``), so a thread reading it learns of every signal at
once. The CLI's exit deadline and a render worker's preemption both listen here: one
wake-up descriptor per process, shared.
"""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Callable

Listener = Callable[[signal.Signals], None]

#: The socket pair the C-level handler writes to, kept while the process lives.
_wakeup: list[socket.socket] = []
#: Who hears which signals; a listener added twice is called once.
_listeners: dict[Listener, frozenset[int]] = {}
_lock = threading.Lock()


def watch_signals(signals: tuple[signal.Signals, ...], listener: Listener) -> None:
    """Call ``listener(signal)`` from the watcher thread for each of ``signals`` received.

    Call from the main thread, after the signals' Python handlers are installed (the
    C-level handler writes to the descriptor only for signals Python handles). Calling
    again re-arms the descriptor, for a library (``ray.init``) that set its own."""
    with _lock:
        _listeners[listener] = frozenset(int(s) for s in signals)
        if _wakeup:
            signal.set_wakeup_fd(_wakeup[1].fileno(), warn_on_full_buffer=False)
            return
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        _wakeup.extend((reader, writer))
    threading.Thread(target=_watch, args=(reader,), name="nst-signal-watch", daemon=True).start()


def _watch(reader: socket.socket) -> None:
    while data := reader.recv(64):
        with _lock:
            listeners = list(_listeners.items())
        for number in data:
            for listener, wanted in listeners:
                if number in wanted:
                    listener(signal.Signals(number))
