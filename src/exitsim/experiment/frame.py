"""Results as a table: ``to_frame(results)`` gives a pandas DataFrame with a row per
run, so a notebook takes over where the report stops.

Columns: the config (``policy``, ``arch``, ``cpus``, ``workload``, ``seed``,
``granularity``, ``profile``), one ``param.<name>`` per workload parameter and one
``cost.<key>`` per cost override (empty where a run had none), then every number of
the Result by its dotted path (``makespan_ns``, ``processes.wait4_sys_ns_total``,
``locks.kernel_lock.wait_ns``...). Lists (per CPU, per process, time series,
histograms) are left out: they are in the Result, not in a table.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

#: The config's fields that become columns, in this order.
CONFIG_COLUMNS: tuple[str, ...] = (
    "policy",
    "arch",
    "cpus",
    "workload",
    "seed",
    "granularity",
    "profile",
    "policy_file",
)

#: Parts of a Result that are not figures of the run.
_NOT_FIGURES = frozenset({"config", "costs", "schema", "kprof"})


def _numbers(d: dict[str, Any], prefix: str, out: dict[str, Any]) -> None:
    for k, v in d.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict):
            _numbers(v, path + ".", out)
        elif isinstance(v, bool):
            out[path] = int(v)
        elif isinstance(v, int | float):
            out[path] = v


def row(result: dict[str, Any]) -> dict[str, Any]:
    """One Result as a flat record (the frame's row)."""
    cfg = result["config"]
    out: dict[str, Any] = {c: cfg.get(c) for c in CONFIG_COLUMNS}
    params = cfg.get("workload_params", {})
    if cfg["workload"] == "tree":
        out["param.name"] = params.get("name")
    else:
        out |= {f"param.{k}": v for k, v in sorted(params.items())}
    out |= {f"cost.{k}": v for k, v in sorted(cfg.get("cost_overrides", {}).items())}
    out["costs.digest"] = result.get("costs", {}).get("digest")
    figures: dict[str, Any] = {}
    _numbers({k: v for k, v in result.items() if k not in _NOT_FIGURES}, "", figures)
    return out | figures


def to_frame(results: Iterable[dict[str, Any]]) -> Any:
    """A pandas DataFrame, a row per Result, in the order given."""
    import pandas as pd

    rows = [row(r) for r in results]
    seen: dict[str, None] = {}
    for r in rows:
        seen |= dict.fromkeys(r)
    factors = sorted(c for c in seen if c.startswith("param.")) + sorted(
        c for c in seen if c.startswith("cost.")
    )
    figures = [c for c in seen if c not in factors and c not in CONFIG_COLUMNS]
    columns = [*CONFIG_COLUMNS, *factors, *figures]
    return pd.DataFrame.from_records(rows, columns=columns)
