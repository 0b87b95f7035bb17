"""Connecting to Ray: an embedded local cluster by default, or an existing one."""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import logging
import os
import secrets
import socket
import subprocess
import threading
from pathlib import Path

import ray
import ray.util

from nst_engine.distributed import reaper
from nst_engine.errors import NSTError

LOCALHOST = "127.0.0.1"
#: Ray's switch for "a cluster of one machine on the loopback interface" (its default on
#: macOS and Windows); read by Ray's processes at import, hence set in the environment.
LOOPBACK_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
#: Seconds ``ray.shutdown()`` may take before the driver goes on without it. It takes
#: 1-2 s, alone or on a 2-core machine loaded to 6 (most of it Ray's processes ending on
#: SIGTERM), but its calls to the GCS (closing the log and error subscriptions, joining
#: the threads that poll them) have no deadline: a GCS stopped never answers, one
#: starved of CPU answers late (a Ctrl-C on such a machine was seen not to end within
#: 60 s). 5 s spares the usual shutdown and ends a stopped run within seconds.
SHUTDOWN_SECONDS = 5.0
#: The TCP port the embedded cluster's metrics agent serves Prometheus metrics on, at
#: 127.0.0.1 (``distributed.metrics``); unset, Ray picks a free one.
METRICS_PORT_ENV = "NST_METRICS_EXPORT_PORT"
#: The watchdog of the embedded cluster (see ``reaper``), while one runs.
_watchdog: subprocess.Popen | None = None
#: Set once the last ``ray.shutdown()`` (``disconnect``) has returned.
_shutdown_done: threading.Event | None = None

log = logging.getLogger(__name__)


def connect(address: str | None = None, num_cpus: int | None = None) -> str:
    """Start (``address`` None) or join a Ray cluster; returns a description.

    The embedded cluster runs no dashboard, listens on 127.0.0.1 only, and dies with the
    driver, however the driver dies (``reaper``). Its RPC and HTTP services want its
    token (as Ray 2.60 does for local clusters; the token file is readable by its owner
    only), except three read-only Prometheus exporters Ray cannot switch off: the
    dashboard agent's metrics export port, the autoscaler monitor's 44217 and the
    dashboard head's 44227 (docs/rendering.md, Security). Workers see the project
    through the installed package; nothing is shipped from the driver.
    """
    global _watchdog
    _after_unfinished_shutdown()
    if ray.is_initialized():
        return "already connected"
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    if address:
        _check_reachable(address)
        _join_loopback_cluster(address)
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            hint = (
                ""
                if os.environ.get("RAY_AUTH_MODE")
                else "; if it uses token authentication, set RAY_AUTH_MODE=token"
            )
            raise NSTError(f"--address {address}: cannot connect to a Ray cluster ({first}){hint}") from None
        return f"Ray cluster at {address}"
    port = metrics_port()  # a bad value said before anything starts
    _loopback_only()
    _private_token_file()
    _watchdog = reaper.start()
    ray.init(
        address="local",  # always a new embedded cluster, never one found in /tmp/ray
        num_cpus=num_cpus,
        include_dashboard=False,
        dashboard_host=LOCALHOST,
        _node_ip_address=LOCALHOST,
        _metrics_export_port=port,
        logging_level=logging.WARNING,
        configure_logging=True,
    )
    return "embedded local Ray (token-protected, no dashboard)"


def metrics_port() -> int | None:
    """The embedded cluster's metrics port from ``METRICS_PORT_ENV``; None: Ray's choice."""
    value = os.environ.get(METRICS_PORT_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise NSTError(
            f"{METRICS_PORT_ENV}={value}: not a TCP port; set it to one from 1 to 65535 or unset it"
        )
    return int(value)


def _loopback_only() -> None:
    """Make every port of the embedded cluster bind 127.0.0.1. Ray replaces a loopback
    node address by the host's reachable one (``resolve_ip_for_localhost``), so its gRPC
    servers, agents and metrics exporter would listen on every interface; its
    single-machine mode keeps them on loopback. The flag is read at import, by this
    process (already importing Ray: hence the private constant, left alone if it moves)
    and by the processes Ray starts (the environment)."""
    os.environ[LOOPBACK_ONLY_ENV] = "0"
    with contextlib.suppress(ImportError, AttributeError):
        import ray._private.ray_constants as ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False


def _private_token_file() -> None:
    """Ray writes a new cluster's token to ``~/.ray/auth_token`` with the umask's mode
    (world-readable under the usual 022), and anyone who reads it may run code on the
    cluster. Create it first, owner-only, or tighten one this user owns."""
    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token" or os.environ.get("RAY_AUTH_TOKEN"):
        return
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_uid == os.getuid() and path.stat().st_mode & 0o077:
            path.chmod(0o600)
        return
    except OSError:  # an unwritable home: Ray reports its own error
        return
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secrets.token_hex(32))  # what Ray itself generates: 256 random bits


def _gcs_endpoint(address: str) -> tuple[str, str] | None:
    """HOST and PORT of a ``HOST:PORT`` address; None for ``auto`` and URLs."""
    if address == "auto" or "://" in address or ":" not in address:
        return None
    host, _, port = address.rpartition(":")
    return host, port


def _dial(host: str, port: str) -> Exception | None:
    """None when something accepts connections at HOST:PORT, else why not."""
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            return None
    except (OSError, ValueError) as exc:
        return exc


def _check_reachable(address: str) -> None:
    """Fail fast on HOST:PORT nobody listens on (ray.init would retry for minutes)."""
    endpoint = _gcs_endpoint(address)
    problem = _dial(*endpoint) if endpoint else None
    if problem:
        raise NSTError(
            f"--address {address}: no Ray head answers there ({problem}); is the cluster up?"
        ) from None


def _join_loopback_cluster(address: str) -> None:
    """A cluster kept on 127.0.0.1 (``cluster/local-cluster.sh``, Ray's single-machine
    mode) answers there only, but a driver in Ray's normal mode dials the machine's
    address in place of 127.0.0.1 and waits minutes for a head that never answers. When
    the head answers on loopback and not on the machine's address, every node of the
    cluster is on this machine: join it in single-machine mode too. (A head that answers
    on both is a normal cluster, whose other machines must reach this driver: left alone.)"""
    endpoint = _gcs_endpoint(address)
    if endpoint is None or not _is_loopback(endpoint[0]):
        return
    machine = ray.util.get_node_ip_address()
    if not _is_loopback(machine) and _dial(machine, endpoint[1]):
        _loopback_only()


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        return False


def autoscaler_max_resources() -> dict[str, float] | None:
    """The most of each resource the connected cluster's autoscaler may bring up (its node
    groups' max counts × their resources), or None when no autoscaler publishes a config
    (a fixed or embedded cluster).

    This is how Ray Train and Ray Data size work against an autoscaling cluster, so a pool
    can request GPU workers for nodes that do not exist yet. It is a private Ray API,
    hence the broad fallback: without it the caller uses what is present.
    """
    try:
        from ray._private.state import state

        limits = state.get_max_resources_from_cluster_config()
    except Exception:  # an older or newer Ray without this call, or no GCS answer
        return None
    return {key: float(value) for key, value in limits.items()} if limits else None


def disconnect() -> None:
    """Leave the cluster; an embedded one is stopped, and its watchdog with it.

    Called once the run's rows and record are written, so only the exit waits for it:
    ``ray.shutdown()`` gets ``SHUTDOWN_SECONDS``, and when it takes longer, or a second
    Ctrl-C cuts the wait short, the driver goes on without it (``shutdown_unfinished``
    then says so). Stopping the watchdog SIGKILLs whatever is left of the embedded
    cluster; a joined cluster (``--address``) is never touched: only this driver's
    connection to it is left, to end with the process.
    """
    global _watchdog
    try:
        if ray.is_initialized() and not _shut_down_within(SHUTDOWN_SECONDS):
            log.warning("Ray's shutdown took over %.0f s: not waiting for it", SHUTDOWN_SECONDS)
    finally:
        reaper.stop(_watchdog)
        _watchdog = None


def shutdown_unfinished() -> bool:
    """Whether a ``ray.shutdown()`` that ``disconnect`` stopped waiting for still runs.
    The process should then end with ``os._exit`` (its output flushed first), as ``nst``
    does: finalizing the interpreter tears down Ray's core under that thread, which was
    seen to crash the process (SIGSEGV) after the summary was printed."""
    return _shutdown_done is not None and not _shutdown_done.is_set()


def _after_unfinished_shutdown() -> None:
    """Wait (``SHUTDOWN_SECONDS`` more) for a shutdown ``disconnect`` left running, else
    refuse: until it ends Ray still says it is connected, to a cluster whose processes the
    watchdog has killed, so a second render in this process would hand work to no one."""
    done = _shutdown_done  # set at once when the last shutdown finished (or none was left)
    if done is not None and not done.wait(SHUTDOWN_SECONDS):
        raise NSTError(
            "Ray's shutdown after the last run in this process has not finished; "
            "start the next run in a new process"
        )


def _shut_down_within(seconds: float) -> bool:
    """Run ``ray.shutdown()`` on a daemon thread and wait up to ``seconds`` for it;
    whether it finished. Only the main thread gets a second Ctrl-C, so it ends this wait,
    never Ray's shutdown half-way; it is raised once the shutdown is left to itself.

    An event, not ``Thread.join``: a join that Ctrl-C interrupts marks the thread as
    stopped while it still runs (CPython 3.11's ``_wait_for_tstate_lock``)."""
    global _shutdown_done
    done = _shutdown_done = threading.Event()
    threading.Thread(target=_shutdown_quietly, args=(done,), name="nst-ray-shutdown", daemon=True).start()
    finished = False
    try:
        finished = done.wait(seconds)
    finally:
        if not finished:
            # Ray's exit hook is the same function behind the same lock: at interpreter
            # exit it would wait for this one
            atexit.unregister(ray.shutdown)
    return finished


def _shutdown_quietly(done: threading.Event) -> None:
    """``ray.shutdown()``, then ``done`` set; a failure is logged only: the run is over and
    recorded, and a peer may be gone mid-shutdown (the watchdog kills what it waits for)."""
    try:
        ray.shutdown()
    except Exception as exc:
        log.debug("ray.shutdown() failed: %s", exc)
    finally:
        done.set()
