"""Shared fixtures: tiny real images, a tiny random VGG-19, and a local S3 server."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nst_engine.engine import Stylizer, random_weights


def out_of_memory_report(child: str, folder: Path) -> dict:
    """Run ``tests/<child>``, a script that caps its own address space (RLIMIT_AS) to make
    allocations really fail, and return the JSON of its last line. glibc is told to unmap
    freed buffers at once, so the cap meets what is live, not heap fragmentation."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_ARENA_MAX": "2"}
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name(child)), str(folder)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_image(path: Path, width: int, height: int, seed: int) -> Path:
    """A smooth random colour image (gradients plus blobs), so features are non-trivial."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    channels = []
    for _ in range(3):
        a, b, c = rng.uniform(-6, 6, size=3)
        channels.append(0.5 + 0.5 * np.sin(a * x + b * y + c))
    array = (np.stack(channels, -1) * 255).astype(np.uint8)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def content_path(tmp_path: Path) -> Path:
    return write_image(tmp_path / "content.png", 48, 40, seed=1)


@pytest.fixture
def style_path(tmp_path: Path) -> Path:
    return write_image(tmp_path / "style.png", 40, 48, seed=2)


@pytest.fixture
def stylizer() -> Stylizer:
    return Stylizer(random_weights(seed=0), device="cpu")


@dataclass(frozen=True)
class S3Server:
    """A real S3-compatible server (moto's server mode) on 127.0.0.1, and a fresh bucket."""

    endpoint: str
    bucket: str

    def filesystem(self):
        """A pyarrow S3 filesystem on the server that may create buckets (tests only)."""
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(endpoint_override=self.endpoint, allow_bucket_creation=True)

    def put(self, key: str, data: bytes) -> str:
        """Upload ``data`` to ``key`` in the bucket; returns its ``s3://`` URI."""
        with self.filesystem().open_output_stream(f"{self.bucket}/{key}") as stream:
            stream.write(data)
        return f"s3://{self.bucket}/{key}"


@pytest.fixture(scope="session")
def _moto_endpoint() -> Iterator[str]:
    """Start moto's S3 server once per session, on 127.0.0.1 and a free port, and point
    pyarrow at it the way users do, through the environment: dummy credentials and
    ``AWS_ENDPOINT_URL``, so manifests keep plain ``s3://bucket/key`` URIs. Ray workers
    started afterwards inherit this environment."""
    moto_server = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # not a line per request
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as env:
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",  # no probing of a cloud metadata service
        }.items():
            env.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            env.delenv(name, raising=False)
        yield endpoint
    server.stop()


@pytest.fixture
def s3(_moto_endpoint: str) -> S3Server:
    """A new, empty bucket on the session's local S3 server."""
    server = S3Server(_moto_endpoint, f"nst-test-{uuid.uuid4().hex[:12]}")
    server.filesystem().create_dir(server.bucket)
    return server
