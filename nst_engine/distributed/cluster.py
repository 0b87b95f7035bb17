"""What the connected Ray cluster offers a pool: its live nodes' CPUs, the resources it
has, and what its autoscaler may add; read here, decided in ``autoscaling``."""

from __future__ import annotations

import os

import ray

from nst_engine.distributed.autoscaling import PoolShape, shape_pool, worker_threads
from nst_engine.distributed.options import PoolOptions
from nst_engine.distributed.runtime import autoscaler_max_resources


def alive_node_cpus() -> list[int]:
    """CPUs of each live node of the connected cluster (at least one entry)."""
    cpus = [int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
    cpus = [c for c in cpus if c > 0]
    return cpus or [max(1, int(ray.cluster_resources().get("CPU", os.cpu_count() or 1)))]


def cpu_worker_threads(requested: int | None = None, node_cpus: list[int] | None = None) -> int:
    """Torch threads of one CPU worker (``autoscaling.worker_threads``); the cluster is
    read only when neither ``requested`` nor ``node_cpus`` settles it."""
    if requested:
        return requested
    return worker_threads(None, node_cpus or alive_node_cpus())


def pool_shape(options: PoolOptions, items: int) -> PoolShape:
    """The render pool for ``items`` items on the cluster as it is now (``shape_pool``)."""
    return shape_pool(
        options,
        items,
        present=ray.cluster_resources(),
        ceiling=autoscaler_max_resources() or {},
        node_cpus=alive_node_cpus(),
    )
