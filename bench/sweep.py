"""Sweep speed: runs per minute of the default comparison (``exitsim compare``'s 24
runs) on the local pool against a dask LocalCluster with as many workers, and the
store's cost per result.

Pool and dask run in turn, ``--repeat`` times each, each time the whole command a
user types (``exitsim sweep SPEC``, a fresh store, the cluster's start-up included),
so both are measured on the same machine in the same minutes; the ratio is taken
pair by pair and its median printed. The store's overhead is what ``run_missing``
adds per result besides the run: the key, the canonical JSON and the committed
insert, timed over real Results.

The last lines printed are ``dask/pool runs-per-minute ratio: R`` and
``store overhead per result: X ms (commit), Y ms with the key and the JSON``.
Usage: python bench/sweep.py [--workers N] [--repeat N]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from exitsim.experiment.spec import load_sweep
from exitsim.experiment.store import Store, config_key, result_text

# The default comparison as a spec: what `make run` runs.
SPEC = """
format = 1
name = "default-compare"
designs = ["reaper", "purge", "purge+pmap_purge"]
arches = ["arm64", "amd64"]
cpus = [4, 8, 16, 32]
seeds = 1
"""


def timed_sweep(spec: Path, store: Path, *how: str) -> float:
    store.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "exitsim.cli", "sweep", str(spec), "--store", str(store)]
    t0 = time.perf_counter()
    subprocess.run([*argv, *how, "-q", "--json"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def store_overhead(spec: Path, store: Path, results: list[dict]) -> tuple[float, float]:
    """Seconds per result: the store's committed insert alone (what the process
    handing out runs adds), and with the key and the canonical JSON (what a worker
    adds to each run)."""
    configs = load_sweep(spec).configs()
    rounds = 10
    texts = [result_text(r) for r in results]
    keys = [config_key(c) for c in configs]
    times = []
    for with_work in (False, True):
        store.unlink(missing_ok=True)
        t0 = time.perf_counter()
        with Store(store) as st:
            for i in range(rounds):
                for cfg, r, key, text in zip(configs, results, keys, texts, strict=True):
                    if with_work:
                        key, text = config_key(cfg), result_text(r)
                    # A distinct key per round, so every insert is a new row.
                    st.put(f"{i}-{key}", cfg, text)
        times.append((time.perf_counter() - t0) / (rounds * len(configs)))
    return times[0], times[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="exitsim-bench-"))
    spec = tmp / "default.toml"
    spec.write_text(SPEC)
    n = load_sweep(spec).size()
    print(f"# {platform.python_implementation()} {platform.python_version()}, {n} runs")
    pool_t, dask_t, ratios = [], [], []
    for _ in range(args.repeat):
        p = timed_sweep(spec, tmp / "pool.sqlite", "--workers", str(args.workers))
        d = timed_sweep(spec, tmp / "dask.sqlite", "--dask-local", str(args.workers))
        pool_t.append(p)
        dask_t.append(d)
        ratios.append(p / d)  # runs/min of dask over runs/min of the pool
        print(f"pool {p:6.2f} s ({n / p * 60:5.1f} runs/min)", end="   ")
        print(f"dask {d:6.2f} s ({n / d * 60:5.1f} runs/min)")
    with Store(tmp / "pool.sqlite") as st:
        results = list(st.results(config_key(c) for c in load_sweep(spec).configs()))
    commit, whole = store_overhead(spec, tmp / "overhead.sqlite", results)
    print(
        f"pool median {n / statistics.median(pool_t) * 60:.1f} runs/min, "
        f"dask median {n / statistics.median(dask_t) * 60:.1f} runs/min"
    )
    print(f"dask/pool runs-per-minute ratio: {statistics.median(ratios):.2f}")
    print(f"store overhead per result: {commit * 1e3:.2f} ms (commit), ", end="")
    print(f"{whole * 1e3:.2f} ms with the key and the JSON")


if __name__ == "__main__":
    main()
