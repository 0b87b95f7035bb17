"""One writer per output root: the lease on a local folder and on a real S3 server, racing
acquirers, and two real ``nst render`` processes on one root."""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from nst_engine.results.runs import read_runs
from nst_engine.storage.lease import (
    LEASE_FILE,
    SETTLE_SECONDS,
    Holder,
    Lease,
    LeaseHeldError,
    LeaseLostError,
    lease_note,
    read_holder,
    removal,
)
from nst_engine.storage.roots import OutputRoot
from tests.conftest import S3Server
from tests.ray_helpers import rows, tiny_manifest

REPO = Path(__file__).resolve().parents[1]
#: Settle delay of the S3 unit tests that do not race (the racing test uses the default).
QUICK_SETTLE = 0.2


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> OutputRoot:
    """An output root on the local filesystem, or on the session's moto S3 server."""
    if request.param == "local":
        return OutputRoot(str(tmp_path / "out"))
    s3: S3Server = request.getfixturevalue("s3")
    return OutputRoot(f"s3://{s3.bucket}/out")


def new_lease(root: OutputRoot, warnings: list[str] | None = None, **kwargs: float) -> Lease:
    kwargs.setdefault("settle_seconds", QUICK_SETTLE)
    warn = warnings.append if warnings is not None else print
    return Lease(root, "nst render", "tiny.yaml", warn=warn, **kwargs)


def someone_else(age_seconds: float) -> Holder:
    """Another run's lease, its last heartbeat ``age_seconds`` ago."""
    holder = Holder.mine("nst render", "other.yaml")
    then = holder.heartbeat_at - timedelta(seconds=age_seconds)
    return replace(holder, host="old-host", pid=4242, started_at=then, heartbeat_at=then, process="")


def test_second_lease_refused_naming_the_holder_until_released(root: OutputRoot) -> None:
    first = new_lease(root).acquire()
    with pytest.raises(LeaseHeldError) as refused:
        new_lease(root).acquire()
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"{root.uri}: in use by nst render of tiny.yaml")
    for part in (first.holder.host, f"pid {os.getpid()}", "since", "last heartbeat", "--wait"):
        assert part in message, message
    assert "held by nst render of tiny.yaml" in (lease_note(root) or "")  # what nst plan shows

    first.release()
    assert read_holder(root) is None and lease_note(root) is None
    with new_lease(root) as second:
        assert read_holder(root).owner == second.holder.owner
    assert read_holder(root) is None  # released by the context manager ...
    with pytest.raises(KeyboardInterrupt), new_lease(root):
        raise KeyboardInterrupt  # ... also on Ctrl-C
    assert read_holder(root) is None


def test_stale_lease_is_taken_over_with_a_warning(root: OutputRoot) -> None:
    root.write_bytes(LEASE_FILE, someone_else(age_seconds=300).to_json())
    warnings: list[str] = []
    with new_lease(root, warnings) as lease:
        assert read_holder(root).owner == lease.holder.owner
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    for part in (
        "took over the lease of",
        "old-host",
        "pid 4242",
        "last heartbeat 300 s ago",
        "no heartbeat",
    ):
        assert part in warnings[0], warnings


def test_a_fresh_lease_whose_process_died_on_this_machine_is_taken_over_at_once(tmp_path: Path) -> None:
    """A driver killed by SIGKILL leaves a fresh lease: on the same machine its process is
    seen to be gone, so the next run need not wait ``STALE_SECONDS``."""
    root = OutputRoot(str(tmp_path / "out"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine = Holder.mine("nst render", "tiny.yaml")
    ghost = replace(mine, owner="ghost", pid=dead.pid, process=mine.process.rsplit("/", 1)[0] + "/1")
    alive = replace(mine, owner="alive")  # this very process: alive, so the lease holds
    root.write_bytes(LEASE_FILE, alive.to_json())
    with pytest.raises(LeaseHeldError):
        new_lease(root).acquire()
    root.write_bytes(LEASE_FILE, ghost.to_json())
    warnings: list[str] = []
    with new_lease(root, warnings) as lease:
        assert read_holder(root).owner == lease.holder.owner
    assert "its process is gone" in warnings[0], warnings


def test_lease_taken_over_behind_the_holders_back_is_noticed(root: OutputRoot) -> None:
    warnings: list[str] = []
    lease = new_lease(root, warnings, heartbeat_seconds=0.1).acquire()
    intruder = someone_else(age_seconds=0)
    root.write_bytes(LEASE_FILE, intruder.to_json())  # as a run would after a long stall
    deadline = time.monotonic() + 10
    while not lease.lost and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lease.lost and "taken over by nst render of other.yaml (" in lease.lost
    assert warnings == [lease.lost] and "old-host" in lease.lost and "pid 4242" in lease.lost
    with pytest.raises(LeaseLostError):
        lease.check()
    lease.release()
    assert read_holder(root).owner == intruder.owner  # not ours to delete


def test_wait_takes_the_lease_once_the_holder_releases(root: OutputRoot) -> None:
    holder = new_lease(root).acquire()
    threading.Timer(0.5, holder.release).start()
    said: list[str] = []
    with new_lease(root).acquire(wait=True, on_wait=said.append, poll=0.1) as waiter:
        assert waiter.waited and read_holder(root).owner == waiter.holder.owner
    assert len(said) == 1 and said[0].startswith(f"{root.uri}: waiting for nst render of tiny.yaml (")


def test_unreadable_lease_counts_as_held_until_its_file_is_stale(tmp_path: Path) -> None:
    root = OutputRoot(str(tmp_path / "out"))
    path = Path(root.full_path(LEASE_FILE))
    path.parent.mkdir(parents=True)
    path.write_text("not a lease")
    with pytest.raises(LeaseHeldError, match="in use by an unreadable lease file"):
        new_lease(root).acquire()
    os.utime(path, (time.time() - 300, time.time() - 300))
    warnings: list[str] = []
    with new_lease(root, warnings):
        pass
    assert len(warnings) == 1 and "an unreadable lease file" in warnings[0]


def test_a_heartbeat_in_the_future_is_no_proof_of_life(root: OutputRoot) -> None:
    """A forged lease (or one from a clock far ahead) with its heartbeat an hour from now
    was fresh forever ("last heartbeat 0 s ago"): its distance from now is its age."""
    root.write_bytes(LEASE_FILE, someone_else(age_seconds=-3600).to_json())
    warnings: list[str] = []
    with new_lease(root, warnings) as lease:
        assert read_holder(root).owner == lease.holder.owner
    assert len(warnings) == 1 and "took over the lease of" in warnings[0], warnings
    assert "heartbeat time 3600 s in the future" in warnings[0] and "0 s ago" not in warnings[0]

    root.write_bytes(LEASE_FILE, someone_else(age_seconds=-30).to_json())  # a clock a little ahead
    with pytest.raises(LeaseHeldError, match=r"heartbeat time (29|30) s in the future"):
        new_lease(root).acquire()  # blocks, but only until 60 s past that time (tested above)


def test_an_unreadable_lease_modified_in_the_future_is_stale(tmp_path: Path) -> None:
    root = OutputRoot(str(tmp_path / "out"))
    path = Path(root.full_path(LEASE_FILE))
    path.parent.mkdir(parents=True)
    path.write_text("not a lease")
    os.utime(path, (time.time() + 3600, time.time() + 3600))
    warnings: list[str] = []
    with new_lease(root, warnings):
        pass
    assert len(warnings) == 1 and "in the future" in warnings[0], warnings


def test_every_held_lease_message_says_how_to_clear_a_stale_lease(root: OutputRoot) -> None:
    """The refusal, the ``--wait`` line and ``nst plan``'s note each name ``--wait`` or the
    takeover, and the exact command that removes the lease file."""
    root.write_bytes(LEASE_FILE, someone_else(age_seconds=5).to_json())
    remove = f"rm {root.full_path(LEASE_FILE)}" if root.is_local else f"aws s3 rm {root.uri}/{LEASE_FILE}"
    note = lease_note(root.uri) or ""
    with pytest.raises(LeaseHeldError) as refused:
        new_lease(root).acquire()
    said: list[str] = []
    threading.Timer(0.5, lambda: root.delete(LEASE_FILE)).start()  # as its owner would, once gone
    new_lease(root).acquire(wait=True, on_wait=said.append, poll=0.1).release()
    for message in (str(refused.value), said[0], note):
        assert "\n" not in message and "if that run is gone" in message, message
        assert f"taken over 60 s after its last heartbeat, or remove it now: {remove}" in message, message
    assert "rerun with --wait" in str(refused.value)


def test_the_removal_command_is_whole_and_quoted(tmp_path: Path) -> None:
    """Other shown values are cut at 200 characters; the command to run never is, and a
    path with spaces stays one argument."""
    import shlex

    deep = tmp_path / ("long folder " * 20) / "out"
    command = shlex.split(removal(OutputRoot(str(deep))))
    assert command == ["rm", str(deep / LEASE_FILE)], command
    s3 = shlex.split(removal(OutputRoot("s3://bucket/with space/" + "k" * 300)))
    assert s3[:3] == ["aws", "s3", "rm"] and s3[3] == "s3://bucket/with space/" + "k" * 300 + "/" + LEASE_FILE


#: Lease fields as an adversary writes them: colours, a cleared screen, a terminal title
#: (ESC ] ... BEL), a line break, a C1 control sequence introducer.
HOSTILE = {
    "user": "\x1b[31mroot\x1b[0m\x1b[2J",
    "host": "\x1b]0;pwned\x07box",
    "command": "nst render\nerror: fake line",
    "manifest": "m\x9b31m.yaml",
}


def test_lease_fields_are_escaped_before_they_are_shown(root: OutputRoot) -> None:
    """Every field of a lease reaches a message escaped as the manifest errors' ``!r`` does."""
    root.write_bytes(LEASE_FILE, replace(someone_else(age_seconds=5), **HOSTILE).to_json())
    with pytest.raises(LeaseHeldError) as refused:
        new_lease(root).acquire()
    note = lease_note(root.uri) or ""
    for message in (str(refused.value), note):
        assert not any(c in message for c in "\x1b\x07\x9b\n"), repr(message)
        for value in HOSTILE.values():
            assert repr(value)[1:-1] in message, (value, message)
    root.write_bytes(LEASE_FILE, replace(someone_else(age_seconds=300), **HOSTILE).to_json())
    warnings: list[str] = []
    new_lease(root, warnings).acquire().release()
    assert warnings and not any(c in warnings[0] for c in "\x1b\x07\x9b\n"), warnings


def test_cli_shows_no_escape_sequence_from_a_lease(tmp_path: Path) -> None:
    """``nst plan`` and a refused ``nst render``, as a terminal would get them."""
    manifest = tiny_manifest(tmp_path)
    OutputRoot(str(tmp_path / "out")).write_bytes(
        LEASE_FILE, replace(someone_else(age_seconds=5), **HOSTILE).to_json()
    )
    planned = nst("plan", str(manifest))
    refused = nst("render", str(manifest), "-q")
    assert (planned.returncode, refused.returncode) == (0, 2), (planned.stderr, refused.stderr)
    for stderr in (planned.stderr, refused.stderr):
        assert "\x1b" not in stderr and "\x07" not in stderr and "\x9b" not in stderr, repr(stderr)
        assert "\\x1b[31mroot" in stderr and "fake line" in stderr, stderr
    assert not any(line.startswith("error: fake line") for line in refused.stderr.splitlines())


def test_a_dangling_link_as_lease_is_one_error_not_a_busy_loop(tmp_path: Path) -> None:
    """The link reads as no lease and every exclusive create fails on it: ``nst render``
    spun at 100 % CPU with no output. Now one error line names the link and what to do;
    the link is neither followed (nothing created where it points) nor removed."""
    manifest = tiny_manifest(tmp_path)
    output = tmp_path / "out"
    output.mkdir()
    nowhere = tmp_path / "elsewhere" / "lease.json"
    (output / LEASE_FILE).symlink_to(nowhere)
    started = time.monotonic()
    refused = nst("render", str(manifest), "-q", timeout=60)
    assert refused.returncode == 2, refused.stderr
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in refused.stderr, refused.stderr
    said = " ".join(refused.stderr.split())  # rich wraps long lines
    for part in (str(output / LEASE_FILE), "symbolic link to", str(nowhere), "does not exist", "rm "):
        assert part in said, said
    assert time.monotonic() - started < 60
    assert (output / LEASE_FILE).is_symlink() and not nowhere.exists() and not nowhere.parent.exists()
    assert "which does not exist" in (lease_note(str(output)) or "")  # nst plan says so too


def race(root: OutputRoot, contenders: int, settle: float) -> list[Lease]:
    """``contenders`` threads acquiring at once; returns the leases that were granted."""
    start = threading.Barrier(contenders)
    won: list[Lease] = []
    refused: list[str] = []

    def contend() -> None:
        lease = Lease(root, "nst render", "tiny.yaml", settle_seconds=settle)
        start.wait()
        try:
            won.append(lease.acquire())
        except LeaseHeldError as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=contend) for _ in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) + len(refused) == contenders
    return won


def test_racing_acquirers_on_a_local_root_exactly_one_wins(tmp_path: Path) -> None:
    for attempt in range(5):  # five races, each from an empty root
        won = race(OutputRoot(str(tmp_path / f"out{attempt}")), 8, settle=0)
        assert len(won) == 1
        assert read_holder(won[0].root).owner == won[0].holder.owner
        won[0].release()


def test_racing_acquirers_on_s3_exactly_one_wins(s3: S3Server) -> None:
    """The put, settle, read-back protocol with its default settle delay."""
    won = race(OutputRoot(f"s3://{s3.bucket}/out"), 4, settle=SETTLE_SECONDS)
    assert len(won) == 1
    assert read_holder(won[0].root).owner == won[0].holder.owner
    won[0].release()


def nst(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "nst_engine.cli.main", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_plan_names_the_holder_and_bench_scaling_is_refused(tmp_path: Path) -> None:
    """``nst plan`` takes no lease but says who holds it; ``nst bench scaling`` writes
    result rows, so it takes the lease like ``nst render`` and is refused before Ray."""
    manifest = tiny_manifest(tmp_path)
    held = someone_else(age_seconds=5)
    OutputRoot(str(tmp_path / "out")).write_bytes(LEASE_FILE, held.to_json())
    planned = nst("plan", str(manifest))
    assert planned.returncode == 0, planned.stderr
    lines = [line for line in planned.stderr.splitlines() if line.strip().startswith("lease")]
    assert len(lines) == 1 and "held by nst render of other.yaml (" in lines[0], planned.stderr
    assert "pid 4242" in lines[0] and re.search(r"last heartbeat \d+ s ago", lines[0])

    bench = tmp_path / "bench"
    OutputRoot(str(bench)).write_bytes(LEASE_FILE, held.to_json())
    refused = nst("bench", "scaling", f"--output={bench}", "--sizes=32", "--iterations=2", "--warmup=0")
    assert refused.returncode == 2, refused.stderr
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{bench}: in use by nst render of other.yaml (" in errors[0], refused.stderr
    assert "scaling on" not in refused.stderr  # no Ray, no row
    assert read_holder(str(bench)).owner == held.owner


# ---------------------------------------------------------------------------- two real renders


#: A finished render: its process, its stderr and its Ray temp folder.
Ended = tuple[subprocess.Popen, str, Path]


@pytest.fixture
def ray_dirs() -> Iterator[list[Path]]:
    """A Ray temp folder for each of two renders, so their embedded Rays never meet. Not
    under ``tmp_path``: Ray's socket paths under it would pass the 107-byte limit of a
    Unix socket's name."""
    dirs = [Path(tempfile.mkdtemp(prefix="nst-ray-", dir="/tmp")) for _ in range(2)]
    yield dirs
    for folder in dirs:
        shutil.rmtree(folder, ignore_errors=True)


def two_renders(tmp_path: Path, ray_dirs: list[Path], *extra: str) -> list[Ended]:
    """Two ``nst render`` processes of one 6-item manifest on one output root, started
    together, each with its own Ray temp folder: (process, stderr, Ray folder) of each."""
    manifest = tiny_manifest(tmp_path, contents=3, styles=2, iterations=10)
    command = [sys.executable, "-m", "nst_engine.cli.main", "render", str(manifest), "-q", "--no-gpus"]
    started = []
    for ray_dir in ray_dirs:
        proc = subprocess.Popen(
            [*command, *extra],
            cwd=REPO,
            env={**os.environ, "RAY_TMPDIR": str(ray_dir)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append((proc, ray_dir))
    return [(proc, proc.communicate(timeout=300)[1], ray_dir) for proc, ray_dir in started]


def assert_one_ok_row_per_item(output: Path, items: int) -> None:
    ok = [r["item_id"] for r in rows(output) if r["status"] == "ok"]
    assert len(ok) == items and len(set(ok)) == items, collections.Counter(ok)
    assert len(list(output.rglob("*.png"))) == items
    assert not (output / LEASE_FILE).exists()  # released at the end


def test_two_renders_on_one_root_one_refused_before_ray(tmp_path: Path, ray_dirs: list[Path]) -> None:
    ended = sorted(two_renders(tmp_path, ray_dirs), key=lambda r: r[0].returncode)
    (winner, won, _), (loser, lost, loser_ray) = ended
    assert (winner.returncode, loser.returncode) == (0, 2), (won, lost)
    errors = [line for line in lost.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in lost, lost
    assert "in use by nst render of" in errors[0] and f"pid {winner.pid}," in errors[0], errors
    assert "--wait" in errors[0]
    assert not any(loser_ray.iterdir())  # refused before Ray started
    assert_one_ok_row_per_item(tmp_path / "out", 6)
    assert len(read_runs(str(tmp_path / "out"))) == 1  # the refused run recorded nothing


def test_two_renders_with_wait_the_second_renders_nothing(tmp_path: Path, ray_dirs: list[Path]) -> None:
    (first, first_err, _), (second, second_err, _) = two_renders(tmp_path, ray_dirs, "--wait")
    assert (first.returncode, second.returncode) == (0, 0), (first_err, second_err)
    runs = read_runs(str(tmp_path / "out")).sort_by("started_at").to_pylist()
    assert [(r["rendered"], r["skipped"]) for r in runs] == [(6, 0), (0, 6)], runs
    waited = first_err if "waiting for" in first_err else second_err
    said = " ".join(waited.split())  # rich wraps long lines
    assert "waiting for nst render of" in said and "0 to render" in said, waited
    assert "no cluster (nothing to render)" in said, waited
    assert_one_ok_row_per_item(tmp_path / "out", 6)
