"""The comparison table: each metric per design, and its ratio to a baseline design,
for every (arch, CPUs) cell; over several seeds, each metric's mean with its 95%
interval and the ratio paired by seed (report/seeds.py). Formats results; computes
only ratios."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.table import Table

from exitsim.report.seeds import Estimate, Runs, group_runs, mean_of, paired_ratio, seeds_text
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


def fmt_value(v: float) -> str:
    """A figure as the tables show it: three significant digits or so."""
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


@dataclass(frozen=True, slots=True)
class Cell:
    """One (arch, CPUs) cell of a comparison: a row per design, each metric as its
    formatted value and its ratio to the baseline ("" for the baseline itself or when
    the cell has no baseline, "-" when the baseline's value is 0). Over several
    ``seeds`` the value is the mean and the half-width of its 95% interval
    (``12.3 ±0.4``), the ratio the geometric mean of the per-seed ratios and its 95%
    interval (``0.93 [0.91..0.95]``)."""

    arch: str
    cpus: int
    workload: str
    baseline: str
    rows: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]
    seeds: int = 1

    @property
    def title(self) -> str:
        head = f"{self.arch}, {self.cpus} CPUs, workload {self.workload}"
        if self.seeds > 1:
            head += f", {self.seeds} seeds: mean ±95% interval"
            if len(self.rows) < 2:
                return head
            return f"{head}; ratio to {self.baseline} by seed: geometric mean [95% interval]"
        if len(self.rows) < 2:
            return head
        return f"{head} (ratio to {self.baseline})"

    def text(self, value: str, ratio: str) -> str:
        """A table cell: the value, and its ratio in brackets after it (one seed) or
        on a line of its own under it (several)."""
        if not ratio:
            return value
        return f"{value}\n{ratio}" if self.seeds > 1 else f"{value} ({ratio})"


#: Formats metric ``i``'s value (in the Result's own units, ns for times) as text.
Number = Callable[[int, float], str]


def number_text(i: int, raw: float) -> str:
    """Metric ``i``'s value (in the Result's own units) in its column's unit."""
    return fmt_value(raw / METRICS[i][2])


def _ratio_text(q: float) -> str:
    return "inf" if math.isinf(q) else f"{q:.2f}"


def ratio_text(est: Estimate) -> str:
    """A ratio over seeds as the tables show it: ``0.93 [0.91..0.95]`` (one seed:
    ``0.93``)."""
    if est.n == 1:
        return _ratio_text(est.mean)
    return f"{_ratio_text(est.mean)} [{_ratio_text(est.lo)}..{_ratio_text(est.hi)}]"


def mean_text(est: Estimate, number: Callable[[float], str]) -> str:
    """A mean over seeds with the half-width of its 95% interval: ``12.3 ±0.40``."""
    if est.n == 1:
        return number(est.mean)
    return f"{number(est.mean)} ±{number(est.half) if est.half else '0'}"


def _reader(path: tuple[str, ...]) -> Callable[[dict[str, Any]], float]:
    return lambda r: metric(r, path)


def _workload(cfg: dict[str, Any]) -> str:
    workload = cfg["workload"]
    if workload == "tree":
        workload = f"tree ({params_text(cfg)})"
    return str(workload)


def compare_cells(
    results: list[dict[str, Any]], baseline: str, number: Number | None = None
) -> list[Cell]:
    """One cell per (arch, CPUs) in the order first seen, designs in the order given;
    ``number`` formats a metric's value (default: in the column's unit). When a
    config ran with several seeds, a row per design over its seeds (``seed_cells``)."""
    if any(len(g.by_seed) > 1 for g in group_runs(results)):
        return seed_cells(results, baseline, number or number_text)
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
            for i, (_, path, div) in enumerate(METRICS):
                raw = metric(r, path)
                v = raw / div
                ratio = ""
                if base is not None and r is not base:
                    b = metric(base, path) / div
                    ratio = f"{v / b:.2f}" if b else "-"
                values.append((number(i, raw) if number else fmt_value(v), ratio))
            rows.append((r["config"]["policy"], tuple(values)))
        cells.append(Cell(arch, cpus, _workload(rs[0]["config"]), baseline, tuple(rows)))
    return cells


def seed_cells(results: list[dict[str, Any]], baseline: str, number: Number) -> list[Cell]:
    """``compare_cells`` over seeds: a row per config (less its seed), each metric's
    mean and 95% interval, and its ratio to the baseline's run of the same seed as a
    geometric mean with its 95% interval; "-" where the baseline's value is 0 in
    every seed."""
    cells: dict[tuple[str, int], list[Runs]] = {}
    for g in group_runs(results):
        cells.setdefault((g.config["arch"], g.config["cpus"]), []).append(g)
    out = []
    for (arch, cpus), gs in cells.items():
        base = next((g for g in gs if g.design == baseline), None)
        rows = []
        for g in gs:
            values = []
            for i, (_, path, _) in enumerate(METRICS):
                read = _reader(path)
                text = mean_text(mean_of(g, read), lambda v, i=i: number(i, v))
                q = ""
                if base is not None and g is not base:
                    if not any(read(r) for r in base.results):
                        q = "-"
                    elif (est := paired_ratio(g, base, read)) is not None:
                        q = ratio_text(est)
                values.append((text, q))
            rows.append((g.design, tuple(values)))
        n = max(len(g.by_seed) for g in gs)
        out.append(Cell(arch, cpus, _workload(gs[0].config), baseline, tuple(rows), n))
    return out


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


def _column_width(title: str, cells: list[str], wrap: bool = True) -> int:
    """What rich needs for a column: its widest cell line, or the widest word of its
    heading (headings wrap at spaces; with ``wrap`` False the whole heading, so that
    rich has no column to narrow and no cell wraps), plus a space each side and a
    rule."""
    words = max(len(w) for w in title.split()) if wrap else len(title)
    return max([words, *(len(line) for c in cells for line in c.split("\n"))]) + 3


def fitted_columns(cells: list[Cell], width: int) -> list[int]:
    """The metric columns (indices into METRICS) that fit ``width`` with every design
    name whole, dropping by ``DROP_ORDER``. Over several seeds the cells are two lines
    (the mean, the ratio under it) and are never wrapped."""
    keep = list(range(len(METRICS)))
    names = [d for cell in cells for d, _ in cell.rows]
    name_w = max([len("design"), *(len(n) for n in names)]) + 3
    wrap = all(cell.seeds == 1 for cell in cells)

    def needed(cols: list[int]) -> int:
        w = name_w + 1
        for i in cols:
            texts = [cell.text(*vs[i]) for cell in cells for _, vs in cell.rows]
            w += _column_width(METRICS[i][0], texts, wrap)
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
        t = Table(title=cell.title, show_lines=cell.seeds > 1)
        t.add_column("design", no_wrap=True)
        for i in cols:
            t.add_column(METRICS[i][0], justify="right")
        for design, values in cell.rows:
            t.add_row(design, *(cell.text(*values[i]) for i in cols))
        tables.append(t)
    return tables


def seed_tables(results: Sequence[dict[str, Any]]) -> list[Table]:
    """A table per config (less its seed) over its seeds: each metric's mean, its 95%
    interval (Student's t), and the smallest and largest value of a seed."""
    tables = []
    for g in group_runs(results):
        cfg = g.config
        t = Table(
            title=f"{g.design} on {cfg['arch']}, {cfg['cpus']} CPUs, workload "
            f"{_workload(cfg)}: {len(g.by_seed)} seeds ({seeds_text(g.seeds)}), "
            "mean and 95% interval"
        )
        for col in ("metric", "mean", "95% interval", "min", "max"):
            t.add_column(col, justify="left" if col == "metric" else "right", no_wrap=True)
        for title, path, div in METRICS:
            values = [metric(r, path) / div for r in g.results]
            est = mean_of(g, lambda r, path=path, div=div: metric(r, path) / div)
            span = f"{fmt_value(est.lo)} .. {fmt_value(est.hi)}" if est.n > 1 else "-"
            t.add_row(
                title,
                fmt_value(est.mean),
                span,
                fmt_value(min(values)),
                fmt_value(max(values)),
            )
        tables.append(t)
    return tables
