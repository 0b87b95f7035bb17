"""Run by ``tests/test_output_write_errors.py`` inside a user and mount namespace whose
output root (argv[2]) is a small tmpfs: ``nst render`` of the manifest (argv[1]) until its
first image is written, then the filesystem filled to the last byte; then, with the space
freed, ``nst render`` again. Prints one JSON line: each run's exit code and stderr, the
images after each (modification times), and every row."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from nst_engine.results.table import read_results


def fill(path: Path) -> None:
    """Write zeros to ``path`` until the filesystem refuses even one more byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (1 << 20, 1 << 12, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError:  # ENOSPC: on to smaller writes, for the last page's bytes
                    break
    finally:
        os.close(fd)


def images(output: Path) -> dict[str, int]:
    return {p.relative_to(output).as_posix(): p.stat().st_mtime_ns for p in output.rglob("*.png")}


def main() -> None:
    manifest, output = Path(sys.argv[1]), Path(sys.argv[2])
    cmd = [sys.executable, "-m", "nst_engine.cli.main", "render", str(manifest), "--cpu-actors", "1", "-q"]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and first.poll() is None and not images(output):
        time.sleep(0.05)
    fill(output / "filler.bin")
    _, first_err = first.communicate(timeout=300)
    after_first = images(output)
    leftovers = [p.name for p in output.rglob(".nst-tmp-*")]
    (output / "filler.bin").unlink()
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    columns = ["item_id", "status", "attempt", "error", "output_path"]
    table = read_results(str(output), columns).to_pylist()
    report = {
        "first": {
            "code": first.returncode,
            "stderr": first_err,
            "images": after_first,
            "leftovers": leftovers,
        },
        "second": {"code": second.returncode, "stderr": second.stderr, "images": images(output)},
        "rows": table,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
