"""One writer per output root: a run holds the root's lease while it writes there.

Two runs writing one output root at once would each render every item (neither sees the
other's rows until they are flushed) and race each other's compactions of the result
table. So a run that writes results (``nst render``, ``nst bench scaling``) takes the
root's lease before it starts Ray and holds it to its end; a second run is refused at
once, naming the holder, or with ``--wait`` waits for it. There is one lease per root,
whatever the manifest: the result table, its compaction and the runs table are shared by
every manifest that writes there, so a run of another manifest waits or is refused like a
rerun of the same one. ``nst plan`` takes none (it writes only its hash cache,
atomically) but says when one is held.

The lease is ``.nst-lease.json`` in the root: the holder's random ``owner`` token, user,
host, pid, command, manifest, start time and heartbeat time (UTC). While it is held a
thread rewrites the heartbeat every ``HEARTBEAT_SECONDS``. A lease whose heartbeat is
older than ``STALE_SECONDS`` belongs to a run that died (or whose whole process stalled:
the heartbeat is a thread of the driver, so a driver stuck in its own work still renews it) and is taken over,
with a warning naming it. Each heartbeat reads the lease first: one taken over behind the
holder's back (the holder stalled for longer than ``STALE_SECONDS``) or deleted sets
``lost`` and warns once; the run checks ``lost`` / ``check()``. Release (the context
manager's exit, also on an error or Ctrl-C) deletes the lease only while it is still ours.

Creating it, and what that guarantees:

* **Local filesystem**: ``os.open(O_CREAT | O_EXCL)``, atomic in the kernel (NFS v3 and
  later too): of any number of racing processes exactly one creates the file. A stale
  lease is first renamed to a name of the taker's own (``rename`` is atomic, so of several
  takers exactly one moves it) and checked to be the stale one it read; then the taker
  races on ``O_EXCL`` like everyone else.
* **Object stores** (``s3://``, ``gs://``): pyarrow 26 has no conditional write (its S3
  output streams send no ``If-None-Match``, dropping that metadata key; GCS generation
  preconditions are not exposed), so the protocol is: read; if absent or stale, put ours;
  wait ``SETTLE_SECONDS``; read back. S3 and GCS are strongly read-after-write
  consistent, so the read-back returns the last put that completed: of contenders whose
  puts land within the settle delay of each other, only the last writer reads back its
  own token and holds the lease; the others see it and are refused (or wait). Two
  holders need a contender whose read-to-put took longer than ``SETTLE_SECONDS`` (its
  put landing after the first holder's read-back): then the overwritten holder's next
  heartbeat finds the other's token and sets ``lost`` within ``HEARTBEAT_SECONDS``.

Clocks: staleness compares the holder's heartbeat time with the reader's clock, so hosts
sharing a root need clocks within a few seconds of each other (NTP); the 60 s timeout
leaves 50 s of margin over the 10 s heartbeat. A heartbeat time in the future proves no
life either: its distance from now counts as its age, so a clock off by more than
``STALE_SECONDS`` (or a lease forged with a far-off time) is stale at once, and one a
little ahead blocks for at most that much longer than ``STALE_SECONDS``.

What a lease says is shown to people (who holds it, and what to do), never trusted to be
plain text: anyone who can write the root can write it, so every field is shown through
``errors.printable`` (no terminal escape sequence passes). The lease file is a plain
file; a symbolic link there (which no run makes) that points nowhere is an error naming
it, never followed (a create through it would write wherever it points).
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import posixpath
import shlex
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from nst_engine.errors import NSTError, one_line, printable
from nst_engine.storage.files import TMP_PREFIX, write_atomic
from nst_engine.storage.roots import OutputRoot

log = logging.getLogger(__name__)

LEASE_FILE = ".nst-lease.json"
#: The holder rewrites its heartbeat this often (seconds) ...
HEARTBEAT_SECONDS = 10.0
#: ... and a lease with no heartbeat for longer than this is stale: taken over by the next
#: run (its holder died, or its process stalled for six heartbeats).
STALE_SECONDS = 60.0
#: Object stores: how long a writer waits between its put and its read-back (seconds); a
#: contender whose read-to-put takes longer can overwrite a lease already won (see above).
SETTLE_SECONDS = 2.0
#: How often ``--wait`` looks at the lease again (seconds).
WAIT_POLL_SECONDS = 2.0
#: A try that finds no live holder but cannot create the lease pauses this long times the
#: tries so far before it looks again (never a busy loop) ...
RETRY_PAUSE_SECONDS = 0.05
#: ... and after this many tries says so rather than try forever: a lease file that stays
#: in the way unseen is no race (racing runs settle in one or two tries).
MAX_CREATE_TRIES = 20
#: How a heartbeat time ahead of this clock by more than this (seconds) is described: as
#: lying in the future (a smaller lead is the clocks' usual disagreement).
FUTURE_SLACK_SECONDS = 1.0


class LeaseHeldError(NSTError):
    """The output root's lease belongs to another live run."""


class LeaseLostError(NSTError):
    """This run's lease was taken over (or deleted) while it ran."""


class LeaseFileError(NSTError):
    """The lease file is something no run made (a symbolic link to nothing) or cannot be
    created for a reason no other run explains: the user must look at it."""


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(text: str) -> datetime:
    """A stored time; one without a zone is no lease's (ages could not be computed)."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"{text}: a time without a zone")
    return moment


def _process_identity(pid: int) -> str:
    """``boot id/pid namespace/start time`` of process ``pid`` on this machine: equal only
    for the same process (a reused pid starts later), or "" where there is no ``/proc``
    or no such process. The pid namespace tells containers sharing a kernel apart."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            boot = handle.read().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except OSError:
        return ""
    return f"{boot}/{namespace}/{stat[stat.rindex(')') + 2 :].split()[19]}"


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name (a container with an unnamed uid)
        return str(os.getuid()) if hasattr(os, "getuid") else "?"


@dataclass(frozen=True)
class Holder:
    """Who holds a lease: what its file says."""

    owner: str  # random token of the holding process
    user: str
    host: str
    pid: int
    command: str
    manifest: str | None
    started_at: datetime
    heartbeat_at: datetime
    process: str = ""  # _process_identity of the holder ("" when unknown, e.g. older leases)

    @classmethod
    def mine(cls, command: str, manifest: str | None) -> Holder:
        now = _now()
        pid = os.getpid()
        return cls(
            uuid.uuid4().hex,
            _user(),
            socket.gethostname(),
            pid,
            command,
            manifest,
            now,
            now,
            _process_identity(pid),
        )

    @classmethod
    def unreadable(cls, modified: datetime) -> Holder:
        """A lease file that is no lease (damaged by hand, or half written): held by nobody
        known, fresh until its modification time is ``STALE_SECONDS`` old."""
        return cls("", "?", "?", 0, "an unreadable lease file", None, modified, modified)

    def to_json(self) -> bytes:
        stored: dict[str, Any] = asdict(self)
        stored.update(started_at=self.started_at.isoformat(), heartbeat_at=self.heartbeat_at.isoformat())
        return json.dumps(stored, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Holder:
        """Raises ``ValueError``, ``KeyError`` or ``TypeError`` for anything but a lease."""
        stored = json.loads(data)
        # a newer writer's extras ignored; an older one's missing optional fields defaulted
        known = {f.name: stored[f.name] for f in fields(cls) if f.name in stored or f.name != "process"}
        known.update(pid=int(known["pid"]), started_at=_utc(known["started_at"]))
        known.update(heartbeat_at=_utc(known["heartbeat_at"]))
        return cls(**known)

    def since(self) -> float:
        """Seconds since the last heartbeat by this machine's clock (negative: a heartbeat
        time in the future)."""
        return (_now() - self.heartbeat_at).total_seconds()

    def age(self) -> float:
        """How far the last heartbeat is from now, either way: a time in the future is no
        proof of life (a clock that is off, or a forged lease), so it ages like a past one."""
        return abs(self.since())

    def stale(self, timeout: float = STALE_SECONDS) -> bool:
        return self.age() > timeout

    def why_stale(self, timeout: float = STALE_SECONDS) -> str:
        """Why a stale lease is taken over, in a phrase."""
        if self.since() < 0:
            return (
                f"its heartbeat time lies over {timeout:.0f} s in the future, which no clock "
                "in step with this one writes, so it is no sign of a live run"
            )
        return f"no heartbeat for over {timeout:.0f} s, so its run is gone or stuck"

    def gone(self) -> bool:
        """The holder ran on this machine (same boot, same pid namespace) and its process
        is no more: a driver killed by SIGKILL or the OOM killer need not be waited out
        for ``STALE_SECONDS``. Holders elsewhere are judged by their heartbeat only."""
        if not self.process or self.user != _user():  # others' processes may be hidden (hidepid)
            return False
        machine = self.process.rsplit("/", 1)[0]
        mine = _process_identity(os.getpid())
        return (
            bool(mine) and mine.rsplit("/", 1)[0] == machine and _process_identity(self.pid) != self.process
        )

    def describe(self) -> str:
        """The holder in one phrase: what runs, who and where, since when, last heartbeat;
        each field as the file has it, escaped (``printable``): anyone may have written it."""
        command, user, host = printable(self.command), printable(self.user), printable(self.host)
        what = f"{command} of {printable(self.manifest)}" if self.manifest else command
        since = self.since()
        beat = (
            f"heartbeat time {-since:.0f} s in the future"
            if since < -FUTURE_SLACK_SECONDS
            else f"last heartbeat {max(since, 0.0):.0f} s ago"
        )
        return (
            f"{what} ({user}@{host}, pid {self.pid}, since {self.started_at:%Y-%m-%d %H:%M:%S} UTC, {beat})"
        )


def removal(root: OutputRoot) -> str:
    """The command that deletes ``root``'s lease file, for a person to run: whole (never
    cut short, unlike other shown values) and quoted for a shell."""
    where = shlex.quote(printable(root.display(LEASE_FILE), limit=sys.maxsize))
    if root.is_local:
        return f"rm {where}"
    tool = {"s3": "aws s3 rm", "gs": "gcloud storage rm"}.get(root.uri.split("://", 1)[0], "delete")
    return f"{tool} {where}"


def clear_hint(root: OutputRoot) -> str:
    """How to clear a stale lease, in a clause: every message about a held lease ends so."""
    return (
        f"if that run is gone, its lease is taken over {STALE_SECONDS:.0f} s after its last "
        f"heartbeat, or remove it now: {removal(root)}"
    )


def held_message(root: OutputRoot, holder: Holder) -> str:
    """The one-line refusal of a run on a root whose lease ``holder`` has."""
    return (
        f"{printable(root.uri)}: in use by {holder.describe()}; rerun with --wait to start when it "
        f"ends, or wait until it finishes; {clear_hint(root)}"
    )


def read_holder(location: str | OutputRoot) -> Holder | None:
    """Who holds the lease of an output root now (stale or not), or None. Storage errors
    propagate."""
    root = location if isinstance(location, OutputRoot) else OutputRoot(str(location))
    return Lease(root, "read").read()


def lease_note(location: str | OutputRoot) -> str | None:
    """The root's lease in one line for a report (``nst plan``): its holder and age, or
    None when there is none or it cannot be read (a report never fails on it)."""
    root = location if isinstance(location, OutputRoot) else OutputRoot(str(location))
    lease = Lease(root, "read")
    try:
        holder = lease.read()
        dangling = lease.dangling() if holder is None else None
    except (OSError, ValueError, pa.ArrowException):
        return None
    if dangling is not None:
        return (
            f"a symbolic link to {printable(dangling)}, which does not exist; "
            f"nst render stops until it is removed: {removal(root)}"
        )
    if holder is None:
        return None
    if holder.stale():
        return f"stale: {holder.describe()}; the next run takes it over"
    return (
        f"held by {holder.describe()}; nst render stops (or waits, --wait) until it ends; {clear_hint(root)}"
    )


class Lease:
    """The lease of one output root for one run (see the module's docstring).

    ``acquire`` takes it (or raises ``LeaseHeldError``; with ``wait`` it waits) and starts
    the heartbeat; ``release`` gives it back; ``with lease:`` releases on any exit. ``lost``
    (and ``check``, which raises) tells the run when someone else took it over."""

    def __init__(
        self,
        root: OutputRoot,
        command: str,
        manifest: str | None = None,
        *,
        warn: Callable[[str], None] = log.warning,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        stale_seconds: float = STALE_SECONDS,
        settle_seconds: float = SETTLE_SECONDS,
    ) -> None:
        self.root = root
        self.where = printable(root.uri)  # the root as messages name it
        self.holder = Holder.mine(command, manifest)
        self.warn = warn
        self.heartbeat_seconds = heartbeat_seconds
        self.stale_seconds = stale_seconds
        self.settle_seconds = settle_seconds
        self.held = False
        self.waited = False  # acquire had to wait: what the caller planned before may be stale
        self._path = root.full_path(LEASE_FILE)
        self._stop = threading.Event()
        self._lost: str | None = None  # why the lease is no longer ours
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ taking and giving back

    def acquire(
        self,
        wait: bool = False,
        on_wait: Callable[[str], None] | None = None,
        poll: float = WAIT_POLL_SECONDS,
    ) -> Lease:
        """Take the lease, or raise ``LeaseHeldError`` naming its holder; with ``wait``,
        call ``on_wait`` once (a line saying who is waited for) and look again every
        ``poll`` seconds until it is released or goes stale."""
        while (holder := self._attempt()) is not None:
            if not wait:
                raise LeaseHeldError(held_message(self.root, holder))
            if not self.waited and on_wait is not None:
                on_wait(f"{self.where}: waiting for {holder.describe()} to finish; {clear_hint(self.root)}")
            self.waited = True
            time.sleep(poll)
        self.held = True
        self._thread = threading.Thread(target=self._beat, name="nst-lease-heartbeat", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if it is still ours (a storage error is
        a warning: the lease then goes stale in ``STALE_SECONDS``)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self.held:
            return
        self.held = False
        try:
            current = self.read()
            if current is not None and current.owner == self.holder.owner:
                self.root.filesystem.delete_file(self._path)
        except OSError as exc:
            self.warn(
                f"{self.where}: could not release the lease ({one_line(exc)}); "
                f"it goes stale in {self.stale_seconds:.0f} s"
            )

    def __enter__(self) -> Lease:
        return self if self.held else self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    @property
    def lost(self) -> str | None:
        """Why the lease is no longer ours (the heartbeat found it taken over or deleted:
        one line naming the new holder), or None while it is."""
        return self._lost

    def check(self) -> None:
        """Raise ``LeaseLostError`` once the lease is lost: the hook a run calls per tick."""
        if self._lost is not None:
            raise LeaseLostError(self._lost)

    # ------------------------------------------------------------------ the protocol

    def read(self) -> Holder | None:
        """The lease as stored now, or None. A file that is no lease is read again once
        (a local create is briefly empty), then counts as held since its modification."""
        for attempt in range(2):
            try:
                with self.root.filesystem.open_input_stream(self._path) as stream:
                    data = stream.read()
            except FileNotFoundError:
                return None
            except OSError:  # on S3 pyarrow reads with a HEAD, then a GET: deleted in between?
                if self.root.filesystem.get_file_info(self._path).type == pafs.FileType.NotFound:
                    return None
                raise
            try:
                return Holder.from_json(data)
            except (ValueError, KeyError, TypeError):
                if attempt == 0:
                    time.sleep(0.05)
        modified = self.root.filesystem.get_file_info(self._path).mtime
        return Holder.unreadable(modified if isinstance(modified, datetime) else _now())

    def _attempt(self) -> Holder | None:
        """One try: None when the lease is ours now, else the live holder in the way."""
        for tries in range(1, MAX_CREATE_TRIES + 1):
            current = self.read()
            if current is not None and not current.stale(self.stale_seconds) and not current.gone():
                return current
            if (current is None or self._clear_stale(current)) and self._create():
                if current is not None:
                    why = "its process is gone" if current.gone() else current.why_stale(self.stale_seconds)
                    self.warn(f"{self.where}: took over the lease of {current.describe()}: {why}")
                return None
            # another run won this race: look again (it holds the lease now, or has already
            # left), unless what is in the way is no run's (a dangling link reads as no
            # lease and fails every create: without this, a busy loop)
            if current is None and (target := self.dangling()) is not None:
                raise LeaseFileError(self._dangling_message(target))
            time.sleep(RETRY_PAUSE_SECONDS * tries)
        raise LeaseFileError(
            f"{printable(self.root.display(LEASE_FILE))}: cannot create the output root's lease "
            f"although no live run holds it ({MAX_CREATE_TRIES} tries); look at that file, "
            f"remove it if no run uses the root ({removal(self.root)}), and run again"
        )

    def dangling(self) -> str | None:
        """Where the local lease file is a symbolic link to nothing: its target (else None)."""
        if not self.root.is_local:
            return None
        try:
            target = os.readlink(self._path)
        except OSError:  # no file, or a plain one
            return None
        return None if os.path.exists(self._path) else target

    def _dangling_message(self, target: str) -> str:
        """Why a dangling link is not treated as no lease: a create through it would write
        wherever it points, and deleting a link no run made hides whoever made it."""
        return (
            f"{printable(self.root.display(LEASE_FILE))}: the output root's lease file is a symbolic "
            f"link to {printable(target)}, which does not exist (runs never make links there); "
            f"remove it ({removal(self.root)}) and run again"
        )

    def _create(self) -> bool:
        """Write our lease where there is none (or only a stale one); True if it is ours."""
        if self.root.is_local:
            return self._create_exclusive(self.holder.to_json())
        self._put(self.holder.to_json())
        time.sleep(self.settle_seconds)  # let every racing put land, then see who wrote last
        back = self.read()
        return back is not None and back.owner == self.holder.owner

    def _create_exclusive(self, data: bytes) -> bool:
        """Local: create the lease file only if there is none (``O_EXCL``)."""
        os.makedirs(posixpath.dirname(self._path), exist_ok=True)
        try:
            fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        return True

    def _clear_stale(self, stale: Holder) -> bool:
        """Remove the stale lease ``stale`` so that ``_create`` can race for the root; False
        when another taker got there first. On object stores the put simply overwrites it
        (the read-back settles races); locally it is renamed to a name of ours (atomic:
        one taker moves it), and put back if it turns out to be a fresh lease."""
        if not self.root.is_local:
            return True
        aside = posixpath.join(posixpath.dirname(self._path), f"{TMP_PREFIX}lease-{self.holder.owner}.json")
        try:
            os.rename(self._path, aside)
        except FileNotFoundError:  # released, or moved by another taker: race on O_EXCL
            return True
        with open(aside, "rb") as handle:
            data = handle.read()
        os.remove(aside)
        try:
            moved = Holder.from_json(data).owner
        except (ValueError, KeyError, TypeError):
            moved = ""  # an unreadable file, as ``Holder.unreadable`` has it
        if moved == stale.owner:
            return True
        self._create_exclusive(data)  # a lease taken over meanwhile: give it back
        return False

    def _put(self, data: bytes) -> None:
        """Overwrite the lease: locally atomically (temporary sibling, rename), on object
        stores with one put (atomic there)."""
        if self.root.is_local:
            write_atomic(self._path, data, self.root.filesystem)
        else:
            with self.root.filesystem.open_output_stream(self._path) as stream:
                stream.write(data)

    def _beat(self) -> None:
        """The heartbeat thread: check the lease is still ours, then renew it."""
        failing = False
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                current = self.read()
                if current is None or current.owner != self.holder.owner:
                    self._lose(current)
                    return
                self.holder = replace(self.holder, heartbeat_at=_now())
                self._put(self.holder.to_json())
                failing = False
            except (OSError, ValueError, pa.ArrowException) as exc:  # a storage hiccup: try again
                if not failing:
                    self.warn(f"{self.where}: could not renew the lease ({one_line(exc)}); retrying")
                failing = True
            except Exception as exc:  # anything else would end the heartbeat unseen: the
                # lease would go stale and be taken over while this run still writes
                self._lost = (
                    f"{self.where}: the lease's heartbeat failed ({one_line(exc)}); "
                    "this run must stop writing there"
                )
                self.warn(self._lost)
                return

    def _lose(self, current: Holder | None) -> None:
        who = f"taken over by {current.describe()}" if current is not None else "deleted"
        self._lost = f"{self.where}: this run's lease was {who}; this run must stop writing there"
        self.warn(self._lost)
