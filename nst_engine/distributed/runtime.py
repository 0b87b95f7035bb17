"""Connecting to Ray: an embedded local cluster by default, or an existing one."""

from __future__ import annotations

import logging
import os

import ray

LOCALHOST = "127.0.0.1"


def connect(address: str | None = None, num_cpus: int | None = None) -> str:
    """Start (``address`` None) or join a Ray cluster; returns a description.

    The embedded cluster binds to 127.0.0.1 only and runs no dashboard; workers see
    the project through the installed package, nothing is shipped from the driver.
    """
    if ray.is_initialized():
        return "already connected"
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    if address:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
        return f"Ray cluster at {address}"
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        dashboard_host=LOCALHOST,
        _node_ip_address=LOCALHOST,
        logging_level=logging.WARNING,
        configure_logging=True,
    )
    return "embedded local Ray (127.0.0.1)"


def disconnect() -> None:
    if ray.is_initialized():
        ray.shutdown()
