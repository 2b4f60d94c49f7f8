"""Running the host microbenchmarks: ``host.py`` in a fresh interpreter of its own, so
that the process that forks is a bare CPython (``-I -S``: no site, no environment),
not the one that imported the simulator; its JSON is read back into figures.

=> Linux only: the benchmarks use fork, /proc and Linux's madvise flags.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from exitsim.calibrate import host
from exitsim.calibrate.measured import MeasurementError, Measurements, from_doc

#: The defaults of a full run (about a minute on two CPUs) and of ``--quick``.
DEFAULT_REPEATS = 101
DEFAULT_MIB = (0, 16, 32, 64)
QUICK_REPEATS = 3
QUICK_MIB = (0, 1, 2)
#: The largest size a benchmark may map (MiB): the concurrent one maps it once per CPU.
MAX_MIB = 1024


class HostRunError(RuntimeError):
    """The benchmarks could not run here: one line."""


def measure(repeats: int, mib: tuple[int, ...], warmup: int = 1) -> Measurements:
    """Run every benchmark ``repeats`` times at ``mib`` sizes; progress goes to
    standard error as the benchmarks print it."""
    if not sys.platform.startswith("linux"):
        raise HostRunError(f"the host benchmarks need Linux (this is {sys.platform})")
    script = Path(host.__file__).resolve()
    cmd = [
        sys.executable,
        "-I",
        "-S",
        str(script),
        "--repeats",
        str(repeats),
        "--mib",
        ",".join(str(m) for m in mib),
        "--warmup",
        str(warmup),
    ]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise HostRunError(f"the host benchmarks failed (exit status {proc.returncode})")
    try:
        doc = json.loads(proc.stdout)
    except json.JSONDecodeError as e:
        raise HostRunError(f"the host benchmarks printed no JSON: {e}") from None
    try:
        return from_doc(doc, "host benchmarks")
    except MeasurementError as e:
        raise HostRunError(str(e)) from None
