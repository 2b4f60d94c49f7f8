"""The comparison table: each metric per design, and its ratio to a baseline design,
for every (arch, CPUs) cell. Formats results; computes only ratios."""

from __future__ import annotations

from typing import Any

from rich.table import Table

#: (column title, how to read it from a Result, unit divisor)
METRICS: tuple[tuple[str, tuple[str, ...], float], ...] = (
    ("wall ms", ("makespan_ns",), 1e6),
    ("%sys", ("_pct_sys",), 1.0),
    ("sys/proc us", ("processes", "charged_sys_ns_mean"), 1e3),
    ("exit p50 us", ("processes", "exit_latency_ns_p50"), 1e3),
    ("exit p99 us", ("processes", "exit_latency_ns_p99"), 1e3),
    ("reaper ms", ("reaper", "busy_ns"), 1e6),
    ("backlog", ("reaper", "backlog_peak"), 1.0),
    ("klock wait ms", ("locks", "kernel_lock", "wait_ns"), 1e6),
    ("tlbi/ipi", ("_tlb_msgs",), 1.0),
    ("held MiB*s", ("memory", "held_after_exit_integral_byte_ns"), 1048576 * 1e9),
)


def metric(r: dict[str, Any], path: tuple[str, ...]) -> float:
    if path == ("_pct_sys",):
        c = r["cpu"]
        whole = c["user_ns"] + c["sys_ns"] + c["spin_ns"] + c["idle_ns"]
        return 100.0 * (c["sys_ns"] + c["spin_ns"]) / whole if whole else 0.0
    if path == ("_tlb_msgs",):
        return float(r["tlb"]["broadcasts"] + r["tlb"]["ipis"])
    v: Any = r
    for key in path:
        v = v[key]
    return float(v)


def _fmt(v: float) -> str:
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def compare_tables(results: list[dict[str, Any]], baseline: str) -> list[Table]:
    """One table per (arch, CPUs), designs as rows, in the order given."""
    cells: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in results:
        cfg = r["config"]
        cells.setdefault((cfg["arch"], cfg["cpus"]), []).append(r)
    tables = []
    for (arch, cpus), rs in cells.items():
        base = next((r for r in rs if r["config"]["policy"] == baseline), None)
        t = Table(
            title=f"{arch}, {cpus} CPUs, workload {rs[0]['config']['workload']} "
            f"(ratio to {baseline})"
        )
        t.add_column("design")
        for title, _, _ in METRICS:
            t.add_column(title, justify="right")
        for r in rs:
            row = [r["config"]["policy"]]
            for _, path, div in METRICS:
                v = metric(r, path) / div
                cell = _fmt(v)
                if base is not None and r is not base:
                    b = metric(base, path) / div
                    cell += f" ({v / b:.2f})" if b else " (-)"
                row.append(cell)
            t.add_row(*row)
        tables.append(t)
    return tables
