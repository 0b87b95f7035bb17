"""nst submit / status / logs / cancel against a real Ray head with its dashboard."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.ray_helpers import assert_outputs_whole, tiny_manifest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory):
    ray = BIN / "ray"
    if not ray.exists():
        pytest.skip(f"no ray executable next to {sys.executable}")
    # token authentication on, for the head and every client, as Ray advises
    marker = f"NST_TEST_HEAD={uuid.uuid4().hex}"
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "RAY_AUTH_MODE": "token",
        marker.split("=")[0]: marker.split("=")[1],
    }
    env.pop("RAY_ADDRESS", None)
    port, dashboard = free_port(), free_port()
    start = [
        str(ray),
        "start",
        "--head",
        "--port",
        str(port),
        "--node-ip-address",
        "127.0.0.1",
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        str(dashboard),
        "--include-dashboard",
        "true",
        "--num-cpus",
        "2",
        "--disable-usage-stats",
    ]
    subprocess.run(start, check=True, capture_output=True, env=env, cwd=REPO, timeout=180)
    try:
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        # stop only this head's processes (`ray stop` would end every Ray on the machine)
        for proc in Path("/proc").iterdir():
            try:
                if marker.encode() in (proc / "environ").read_bytes():
                    os.kill(int(proc.name), signal.SIGKILL)
            except (OSError, ValueError):
                continue


def nst(env: dict, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "nst_engine.cli.main", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)


def wait_for(env: dict, address: str, job_id: str, states: set[str], timeout: float = 240) -> str:
    deadline = time.time() + timeout
    state = ""
    while time.time() < deadline:
        state = nst(env, "status", job_id, "--address", address).stdout.strip()
        if state in states:
            return state
        time.sleep(2)
    raise AssertionError(f"job {job_id} still {state} after {timeout} s")


def test_submit_status_logs(head, tmp_path: Path) -> None:
    address, env = head
    manifest = tiny_manifest(tmp_path, contents=1, styles=2)
    submitted = nst(env, "submit", str(manifest), "--address", address, "--submission-id", "nst-test-ok")
    assert submitted.returncode == 0, submitted.stderr
    assert submitted.stdout.strip() == "nst-test-ok"
    assert wait_for(env, address, "nst-test-ok", {"SUCCEEDED", "FAILED", "STOPPED"}) == "SUCCEEDED"
    logs = nst(env, "logs", "nst-test-ok", "--address", address)
    assert logs.returncode == 0 and "render summary" in logs.stdout
    assert len(assert_outputs_whole(tmp_path / "out")) == 2
    assert (tmp_path / "out" / "results.parquet").exists()


def test_cancel_and_bad_addresses(head, tmp_path: Path) -> None:
    address, env = head
    manifest = tiny_manifest(tmp_path, contents=4, styles=2, sizes=(48,), iterations=200)
    assert (
        nst(env, "submit", str(manifest), "--address", address, "--submission-id", "nst-test-stop").returncode
        == 0
    )
    wait_for(env, address, "nst-test-stop", {"RUNNING"}, timeout=120)
    cancelled = nst(env, "cancel", "nst-test-stop", "--address", address)
    assert cancelled.returncode == 0 and cancelled.stdout.strip() == "stopping"
    assert wait_for(env, address, "nst-test-stop", {"STOPPED", "FAILED", "SUCCEEDED"}) == "STOPPED"
    unknown = nst(env, "status", "no-such-job", "--address", address)
    assert unknown.returncode == 2 and "error:" in unknown.stderr and "Traceback" not in unknown.stderr
    no_token = nst({**env, "RAY_AUTH_MODE": "disabled"}, "status", "nst-test-stop", "--address", address)
    assert no_token.returncode == 2 and "RAY_AUTH_MODE=token" in no_token.stderr
    unreachable = nst(
        env, "submit", str(manifest), "--address", f"http://127.0.0.1:{free_port()}", timeout=180
    )
    assert unreachable.returncode == 2 and "cannot reach" in unreachable.stderr
