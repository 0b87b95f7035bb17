"""Connecting to Ray: an embedded local cluster by default, or an existing one."""

from __future__ import annotations

import logging
import os
import socket

import ray

from nst_engine.engine.errors import NSTError

LOCALHOST = "127.0.0.1"


def connect(address: str | None = None, num_cpus: int | None = None) -> str:
    """Start (``address`` None) or join a Ray cluster; returns a description.

    The embedded cluster runs no dashboard and, as Ray 2.60 does for local clusters,
    requires its token for every connection; workers see the project through the
    installed package, nothing is shipped from the driver.
    """
    if ray.is_initialized():
        return "already connected"
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    if address:
        _check_reachable(address)
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
    ray.init(
        address="local",  # always a new embedded cluster, never one found in /tmp/ray
        num_cpus=num_cpus,
        include_dashboard=False,
        dashboard_host=LOCALHOST,
        _node_ip_address=LOCALHOST,
        logging_level=logging.WARNING,
        configure_logging=True,
    )
    return "embedded local Ray (token-protected, no dashboard)"


def _check_reachable(address: str) -> None:
    """Fail fast on HOST:PORT nobody listens on (ray.init would retry for minutes)."""
    if address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except (OSError, ValueError) as exc:
        raise NSTError(
            f"--address {address}: no Ray head answers there ({exc}); is the cluster up?"
        ) from None


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
    if ray.is_initialized():
        ray.shutdown()
