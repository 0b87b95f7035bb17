"""A real headless Chromium for the tests that check pages (the report, the docs site)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

#: Headless, sandboxless (containers), nothing fetched in the background, no first-run work.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium() -> str:
    """The browser's executable; the test is skipped where none is installed (CI installs it)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not found:
        pytest.skip("Chromium not installed (apt-get install chromium)")
    return found


def flags(profile: Path, *more: str) -> list[str]:
    """Chromium's flags for a test: ``FLAGS``, a fresh profile folder, and ``more``."""
    return [*FLAGS, f"--user-data-dir={profile}", *more]
