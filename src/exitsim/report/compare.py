"""The comparison table: each metric per design, and its ratio to a baseline design,
for every (arch, CPUs) cell. Formats results; computes only ratios."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.table import Table

from exitsim.report.table import params_text

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

#: What each metric means, by column title (the HTML report shows it on hover).
METRIC_HELP: dict[str, str] = {
    "wall ms": "simulated time until the last event (makespan)",
    "%sys": "sys + spin time as a share of all CPU time",
    "sys/proc us": "mean sys time charged to an exited process (what wait4 reports)",
    "exit p50 us": "median time from exit1 entry to the parent's wait4 return",
    "exit p99 us": "99th percentile of the same exit latency",
    "reaper ms": "user + sys time of the reaper thread",
    "backlog": "most threads waiting on deadproc for the reaper at once",
    "klock wait ms": "time spent waiting for the kernel lock, summed over CPUs",
    "tlbi/ipi": "broadcast TLB invalidations + shootdown IPIs issued",
    "held MiB*s": "memory still mapped by exited processes, integrated over time",
}


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


@dataclass(frozen=True, slots=True)
class Cell:
    """One (arch, CPUs) cell of a comparison: a row per design, each metric as its
    formatted value and its ratio to the baseline ("" for the baseline itself or when
    the cell has no baseline, "-" when the baseline's value is 0)."""

    arch: str
    cpus: int
    workload: str
    baseline: str
    rows: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]

    @property
    def title(self) -> str:
        head = f"{self.arch}, {self.cpus} CPUs, workload {self.workload}"
        if len(self.rows) < 2:
            return head
        return f"{head} (ratio to {self.baseline})"


def compare_cells(results: list[dict[str, Any]], baseline: str) -> list[Cell]:
    """One cell per (arch, CPUs) in the order first seen, designs in the order given."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in results:
        cfg = r["config"]
        groups.setdefault((cfg["arch"], cfg["cpus"]), []).append(r)
    cells = []
    for (arch, cpus), rs in groups.items():
        base = next((r for r in rs if r["config"]["policy"] == baseline), None)
        rows = []
        for r in rs:
            values = []
            for _, path, div in METRICS:
                v = metric(r, path) / div
                ratio = ""
                if base is not None and r is not base:
                    b = metric(base, path) / div
                    ratio = f"{v / b:.2f}" if b else "-"
                values.append((_fmt(v), ratio))
            rows.append((r["config"]["policy"], tuple(values)))
        cfg = rs[0]["config"]
        workload = cfg["workload"]
        if workload == "tree":
            workload = f"tree ({params_text(cfg)})"
        cells.append(Cell(arch, cpus, workload, baseline, tuple(rows)))
    return cells


#: Columns a narrow terminal loses first, in this order; the design and wall time
#: always stay (docs/reports.md, "Fitting the terminal").
DROP_ORDER: tuple[str, ...] = (
    "held MiB*s",
    "backlog",
    "exit p99 us",
    "tlbi/ipi",
    "%sys",
    "reaper ms",
    "exit p50 us",
    "klock wait ms",
    "sys/proc us",
)


def _column_width(title: str, cells: list[str]) -> int:
    """What rich needs for a column: its widest cell, or the widest word of its
    heading (headings wrap at spaces), plus a space each side and a rule."""
    words = max(len(w) for w in title.split())
    return max([words, *(len(c) for c in cells)]) + 3


def fitted_columns(cells: list[Cell], width: int) -> list[int]:
    """The metric columns (indices into METRICS) that fit ``width`` with every design
    name whole, dropping by ``DROP_ORDER``."""
    keep = list(range(len(METRICS)))
    names = [d for cell in cells for d, _ in cell.rows]
    name_w = max([len("design"), *(len(n) for n in names)]) + 3

    def needed(cols: list[int]) -> int:
        w = name_w + 1
        for i in cols:
            texts = [
                f"{v} ({q})" if q else v
                for cell in cells
                for _, vs in cell.rows
                for v, q in [vs[i]]
            ]
            w += _column_width(METRICS[i][0], texts)
        return w

    for title in DROP_ORDER:
        if needed(keep) <= width:
            break
        keep.remove(next(i for i, m in enumerate(METRICS) if m[0] == title))
    return keep


def compare_tables(
    results: list[dict[str, Any]], baseline: str, width: int | None = None
) -> list[Table]:
    """One table per (arch, CPUs), designs as rows, in the order given; with a
    ``width``, only the columns that fit it (``fitted_columns``)."""
    cells = compare_cells(results, baseline)
    cols = list(range(len(METRICS))) if width is None else fitted_columns(cells, width)
    tables = []
    for cell in cells:
        t = Table(title=cell.title)
        t.add_column("design", no_wrap=True)
        for i in cols:
            t.add_column(METRICS[i][0], justify="right")
        for design, values in cell.rows:
            t.add_row(design, *(f"{v} ({q})" if q else v for v, q in (values[i] for i in cols)))
        tables.append(t)
    return tables
