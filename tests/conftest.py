"""Fixtures shared by the test files: tracefs, for the tests that record with bpftrace."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def tracefs() -> Iterator[None]:
    """tracefs mounted for the test (bpftrace's tracepoints live there), and unmounted
    again afterwards if the test mounted it."""
    path = Path("/sys/kernel/tracing")
    if (path / "events").is_dir():
        yield
        return
    assert os.geteuid() == 0, "recording with bpftrace needs root (tracefs, probes)"
    subprocess.run(["mount", "-t", "tracefs", "nodev", str(path)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", str(path)], check=False)
