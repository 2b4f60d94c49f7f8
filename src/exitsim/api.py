"""The Python API: what the command line does, as functions a notebook or a script
calls. Pure config in, plain records out (``simulate(config) -> Result``), so any
pool can map them.

    from exitsim import SimConfig, compare, load_workload, simulate, sweep, to_frame

``simulate`` and ``compare`` take a workload as a generator's name, a workload file's
path, or what ``load_workload`` returned; everything else as ``SimConfig`` fields.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from exitsim.experiment.frame import to_frame
from exitsim.experiment.spec import Sweep, load_sweep
from exitsim.sim import SimConfig
from exitsim.sim import simulate as _simulate
from exitsim.workloads.spec import load_workload_file, to_config

Result = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Workload:
    """A workload ready to run: a generator's name and parameters, or a process tree
    (``name`` "tree", ``params`` the tree), and where it came from."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    source: str | None = None


def load_workload(what: str | Path, **params: Any) -> Workload:
    """A workload file (any path, or a name ending in ``.toml``), or a generator by
    name, with ``params`` on top of the file's or the defaults. A bad file or
    parameter raises ``ValueError`` with one line naming it."""
    text = str(what)
    if not (text.endswith(".toml") or "/" in text or Path(text).is_file()):
        return Workload(text, dict(params), None)
    name, base = to_config(load_workload_file(text))
    if name == "tree" and set(params) - {"jobs"}:
        raise ValueError(f"{text}: a process tree takes one parameter, jobs (make -jN)")
    return Workload(name, base | params, text)


def _resolve(workload: str | Path | Workload | None, cfg: SimConfig) -> SimConfig:
    if workload is None:
        return cfg
    w = workload if isinstance(workload, Workload) else load_workload(workload)
    return replace(cfg, workload=w.name, workload_params=w.params | cfg.workload_params)


def simulate(
    config: SimConfig | None = None,
    *,
    workload: str | Path | Workload | None = None,
    **fields: Any,
) -> Result:
    """One run: ``config`` (default ``SimConfig()``) with ``fields`` replaced and the
    workload given, to its Result (docs/result-schema.md)."""
    cfg = replace(config or SimConfig(), **fields)
    return _simulate(_resolve(workload, cfg))


def compare(
    designs: Sequence[str] = ("reaper", "purge", "purge+pmap_purge"),
    arches: Sequence[str] = ("arm64", "amd64"),
    cpus: Sequence[int] = (4, 8, 16, 32),
    *,
    workload: str | Path | Workload | None = None,
    seeds: Iterable[int] = (0,),
    mapper: Callable[..., Iterable[Result]] = map,
    **fields: Any,
) -> list[Result]:
    """Every design on every arch at every CPU count, for each seed, in the order
    ``exitsim compare`` runs them (arch, CPUs, seed, design; the first design is the
    baseline). ``mapper`` may be a pool's ``map``: the configs are plain data."""
    base = _resolve(workload, replace(SimConfig(), **fields))
    configs = [
        replace(base, policy=d, arch=a, cpus=n, seed=s)
        for a in arches
        for n in cpus
        for s in seeds
        for d in designs
    ]
    return list(mapper(_simulate, configs))


def sweep(
    spec: str | Path | Sweep,
    store: str | Path = ":memory:",
    *,
    workers: int = 2,
    scheduler: str | None = None,
    dask_local: int = 0,
) -> list[Result]:
    """Every run of a sweep spec (a file, or what ``load_sweep`` returned), in the
    spec's order. With a ``store`` file, runs already there are read back, not run
    again, and each new one is committed as it finishes (docs/experiments.md).
    ``scheduler`` (``tcp://HOST:PORT``) or ``dask_local`` (workers of a LocalCluster)
    run it on dask instead of ``workers`` local processes. A bad spec raises
    ``ValueError`` with one line naming it."""
    from exitsim.experiment.runner import executor, run_missing
    from exitsim.experiment.store import Store, config_key

    sw = spec if isinstance(spec, Sweep) else load_sweep(spec)
    configs = sw.configs()
    with Store(store) as st, executor(workers, scheduler, dask_local) as mapper:
        run_missing(configs, st, mapper)
        return list(st.results(config_key(c) for c in configs))


__all__ = ["Result", "Workload", "compare", "load_workload", "simulate", "sweep", "to_frame"]
