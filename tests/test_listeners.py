"""Every port the embedded Ray and ``cluster/local-cluster.sh`` open is on 127.0.0.1, and
the only things that answer there without the token are the read-only Prometheus
exporters the docs name (probed from /proc and over HTTP, on real clusters)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.listeners import Listener, answers_without_token, listeners, pids_with_environment, process_tree
from tests.ray_helpers import tiny_manifest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
#: the owners of Ray's Prometheus exporters: each node's dashboard agent (a port of its
#: own), the autoscaler monitor (44217) and the dashboard head (44227)
EXPORTERS = ("ray::DashboardAgent", "/monitor.py", "/dashboard/dashboard.py")
#: what docs/rendering.md and cluster/README.md must name, the exporters' ports
DOCUMENTED = ("44217", "44227", "metrics export port")

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc (Linux)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def settled(pids: set[int], want_exporters: int, timeout: float = 60) -> list[Listener]:
    """The listeners of the process tree once its agents are up: Ray starts them after
    the node registers, so poll until ``want_exporters`` Prometheus ports are open."""
    deadline = time.time() + timeout
    while True:
        found = listeners(process_tree(pids))
        exporters = [
            item for item in found if "DashboardAgent" in item.command and answers_without_token(item)
        ]
        if len(exporters) >= want_exporters or time.time() > deadline:
            return found
        time.sleep(1)


def check_open_doors(found: list[Listener]) -> list[Listener]:
    """Assert what the docs say: every listener on loopback; the ones answering without a
    token serve Prometheus text and belong to an exporter. Returns those."""
    assert found, "no listener found: the probe is broken"
    wide = [item for item in found if not item.loopback]
    assert not wide, f"listening beyond 127.0.0.1: {wide}"
    open_doors = [item for item in found if answers_without_token(item)]
    for item in open_doors:
        _, content_type, body = answers_without_token(item)
        assert content_type.startswith("text/plain") and (not body or body.startswith(b"#")), item
        assert any(owner in item.command for owner in EXPORTERS), item
    return open_doors


def test_embedded_ray_listens_on_loopback_and_docs_name_what_answers_without_token(tmp_path: Path) -> None:
    driver = (
        "import sys, ray\n"
        "from nst_engine.distributed.runtime import connect\n"
        "connect(num_cpus=1)\n"
        "ray.get(ray.remote(lambda: 1).remote())\n"  # a worker process, with its own ports
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"
    )
    env = {
        k: v for k, v in os.environ.items() if k not in {"RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    }
    process = subprocess.Popen(
        [sys.executable, "-c", driver],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    try:
        assert process.stdout.readline().strip() == "ready"
        found = settled({process.pid}, want_exporters=1)
        open_doors = check_open_doors(found)
        assert any("DashboardAgent" in item.command for item in open_doors), found
    finally:
        process.stdin.close()
        process.wait(timeout=60)
    security = (REPO / "docs" / "rendering.md").read_text()
    assert "requires its token for every connection" not in security
    assert all(name in security for name in DOCUMENTED), DOCUMENTED


@pytest.mark.skipif(not (BIN / "ray").exists(), reason=f"no ray executable next to {sys.executable}")
def test_local_cluster_listens_on_loopback_only_and_renders(tmp_path: Path) -> None:
    """Head and one worker node of cluster/local-cluster.sh; a render from a shell that
    did not eval the script's environment joins it (single-machine mode, chosen by nst)."""
    # a short path: Ray's socket paths under it must stay within 107 bytes
    cluster_dir = Path(f"/tmp/nst-lc-{uuid.uuid4().hex[:8]}")
    port = free_port()
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if k not in {"RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
        },
        "CLUSTER_DIR": str(cluster_dir),
        "RAY_PORT": str(port),
        "DASHBOARD_PORT": str(free_port()),
        "RAY": str(BIN / "ray"),
        "RAY_AUTH_MODE": "token",
    }
    script = ["bash", str(REPO / "cluster" / "local-cluster.sh")]
    marker = f"NST_LOCAL_CLUSTER={cluster_dir}:{port}"
    try:
        started = subprocess.run(  # from REPO: the cluster's processes work there
            [*script, "start", "1"], env=env, capture_output=True, text=True, timeout=300, cwd=REPO
        )
        assert started.returncode == 0, started.stdout + started.stderr
        found = settled(pids_with_environment(marker), want_exporters=2)
        check_open_doors(found)
        gcs = [item for item in found if item.port == port]
        assert gcs and all(item.loopback for item in gcs), found

        # the GCS wants the token: a wrong one is refused, the right one is not
        status = [str(BIN / "ray"), "status", "--address", f"127.0.0.1:{port}"]
        cluster_env = {**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
        wrong = subprocess.run(
            status, env={**cluster_env, "RAY_AUTH_TOKEN": "0" * 64}, capture_output=True, timeout=120
        )
        right = subprocess.run(status, env=cluster_env, capture_output=True, text=True, timeout=120)
        assert wrong.returncode != 0 and right.returncode == 0, right.stderr
        assert right.stdout.count("node_") >= 2, right.stdout

        manifest = tiny_manifest(tmp_path, contents=1, styles=1, iterations=2)
        render = subprocess.run(
            [
                sys.executable,
                "-m",
                "nst_engine.cli.main",
                "render",
                str(manifest),
                "--address",
                f"127.0.0.1:{port}",
                "--output",
                "relative-out",  # to this cwd, not the workers' (the cluster's is REPO)
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
        assert render.returncode == 0, render.stdout[-2000:] + render.stderr[-2000:]
        rows = pq.read_table(tmp_path / "relative-out" / "results.parquet").to_pylist()
        assert [row["status"] for row in rows] == ["ok"]
        assert (tmp_path / "relative-out" / rows[0]["output_path"]).is_file()
        assert not (REPO / "relative-out").exists()
    finally:
        stopped = subprocess.run([*script, "stop"], env=env, capture_output=True, text=True, timeout=120)
        for pid in process_tree(pids_with_environment(marker)):  # whatever stop left
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(cluster_dir, ignore_errors=True)
    assert stopped.returncode == 0, stopped.stderr
    cluster_readme = (REPO / "cluster" / "README.md").read_text()
    assert all(name in cluster_readme for name in DOCUMENTED), DOCUMENTED


def test_a_driver_joins_a_loopback_head_in_single_machine_mode_and_leaves_others_alone() -> None:
    """Ray's normal mode would dial the machine's address for a head that listens on
    127.0.0.1 only and wait minutes; a head on every interface must keep normal mode (its
    other machines have to reach the driver)."""
    probe = (
        "import os, socket, sys\n"
        "from nst_engine.distributed.runtime import _join_loopback_cluster\n"
        "head = socket.socket(); head.bind((sys.argv[1], 0)); head.listen()\n"
        "_join_loopback_cluster(f'127.0.0.1:{head.getsockname()[1]}')\n"
        "print(os.environ.get('RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER', 'unset'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}

    def mode(bind: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", probe, bind], capture_output=True, text=True, env=env, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    machine = subprocess.run(
        [sys.executable, "-c", "import ray.util; print(ray.util.get_node_ip_address())"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    ).stdout.strip()
    if machine.startswith("127."):
        pytest.skip("this machine has no address but loopback")
    assert mode("127.0.0.1") == "0"
    assert mode("0.0.0.0") == "unset"
