"""What a sweep found: per cell (a level of every factor but the design), each
design's figures as a mean with its 95% interval over the seeds, and its ratio to
the baseline design paired by seed (the same seed draws the same workload), as a
geometric mean with its interval (report/claims.py does the arithmetic). Then, per
factor, the ratio at each of its levels over every run at that level: the factor's
main effect, averaged over the other factors. Tables, a JSON record, a plot, and
the rows as CSV or Parquet for a notebook.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

from rich.table import Table

from exitsim.experiment.frame import CONFIG_COLUMNS
from exitsim.report.claims import interval, ratio, ratio_interval
from exitsim.report.compare import fmt_value

#: The figures a report shows unless asked for others (``--metric``): column, title,
#: unit divisor.
METRICS: tuple[tuple[str, str, float], ...] = (
    ("makespan_ns", "wall ms", 1e6),
    ("processes.wait4_sys_ns_total", "wait4 sys ms", 1e6),
    ("locks.kernel_lock.wait_ns", "klock wait ms", 1e6),
    ("reaper.busy_ns", "reaper ms", 1e6),
)

#: Config columns that are never factors: they name, they do not vary a run.
_NOT_FACTORS = frozenset({"seed", "policy", "workload", "granularity", "policy_file"})


def metric_specs(
    names: Sequence[str] | None, columns: Sequence[str]
) -> list[tuple[str, str, float]]:
    """The metrics to report: the defaults, or columns by name (a ``_ns`` column is
    shown in ms). ValueError naming an unknown column."""
    if not names:
        return list(METRICS)
    known = {m[0]: m for m in METRICS}
    out = []
    for n in names:
        if n not in columns or n in CONFIG_COLUMNS or n.startswith(("param.", "cost.")):
            raise ValueError(
                f"--metric: {n!r} is not a figure of these results (to_frame's columns)"
            )
        out.append(
            known.get(n)
            or ((n, n.removesuffix("_ns") + " ms", 1e6) if n.endswith("_ns") else (n, n, 1.0))
        )
    return out


#: The first part of every figure's column (docs/result-schema.md), so a misspelt
#: ``--metric`` is refused before a sweep runs, not after.
SECTIONS = frozenset(
    {"makespan_ns", "events", "ops", "cpu", "processes", "machine", "locks", "tlb"}
    | {"memory", "reaper", "zombies", "threads", "vm"}
)


def check_metric_names(names: Sequence[str] | None) -> None:
    """ValueError for a ``--metric`` that cannot be a figure's column."""
    for n in names or ():
        if n.split(".", 1)[0] not in SECTIONS:
            raise ValueError(
                f"--metric: {n!r} is not a figure of a Result (to_frame's columns, "
                f"e.g. makespan_ns, locks.kernel_lock.wait_ns)"
            )


def factors(frame: Any) -> list[str]:
    """The config columns that take more than one value, in column order; the design
    (``policy``) is never one: it is what is compared."""
    cols = [c for c in frame.columns if c.startswith(("param.", "cost.")) or c in CONFIG_COLUMNS]
    return [
        c for c in cols if c not in _NOT_FACTORS and frame[c].astype(str).nunique(dropna=False) > 1
    ]


def _level(v: Any) -> Any:
    """A factor's value as JSON has it (pandas gives NaN for a missing override)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return v.item() if hasattr(v, "item") else v


def _sortable(v: Any) -> tuple[int, Any, str]:
    """A factor's level as a sort key: the profile's value (no override) first, then
    numbers by value, then text."""
    if v is None:
        return (0, 0, "")
    if isinstance(v, int | float) and not isinstance(v, bool):
        return (1, v, "")
    return (2, 0, str(v))


def _key(frame: Any, cols: Sequence[str]) -> list[tuple[Any, ...]]:
    return [tuple(_level(v) for v in row) for row in frame[list(cols)].itertuples(index=False)]


def summarize(
    frame: Any,
    baseline: str,
    metrics: Sequence[tuple[str, str, float]] = METRICS,
    designs: Sequence[str] = (),
) -> dict[str, Any]:
    """The report as a plain record: ``cells`` (a row per design per cell, designs
    in the order of ``designs`` then as found) and ``effects`` (per factor, per
    level, per design: the ratio to the baseline)."""
    fs = factors(frame)
    present = list(dict.fromkeys(frame["policy"]))
    designs = [d for d in designs if d in present] + [d for d in present if d not in designs]
    if baseline not in designs:
        raise ValueError(
            f"baseline {baseline!r} is not among the results' designs ({', '.join(designs)})"
        )
    designs.remove(baseline)
    designs.insert(0, baseline)
    keys = _key(frame, fs)
    cells: dict[tuple[Any, ...], dict[str, dict[int, dict[str, float]]]] = {}
    for k, pol, seed, vals in zip(
        keys,
        frame["policy"],
        frame["seed"],
        frame[[m[0] for m in metrics]].itertuples(index=False),
        strict=True,
    ):
        cells.setdefault(k, {}).setdefault(pol, {})[int(seed)] = {
            m[0]: float(v) for m, v in zip(metrics, vals, strict=True)
        }
    rows = []
    order = sorted(cells, key=lambda k: tuple(_sortable(v) for v in k))
    cells = {k: cells[k] for k in order}
    pairs: dict[tuple[str, int, Any, str], list[float]] = {}
    for k, by_design in cells.items():
        base = by_design.get(baseline, {})
        for d in designs:
            runs = by_design.get(d)
            if runs is None:
                continue
            seeds = sorted(runs)
            rec: dict[str, Any] = {f: lv for f, lv in zip(fs, k, strict=True)}
            rec |= {"policy": d, "seeds": len(seeds), "figures": {}}
            for col, _, _ in metrics:
                mean, lo, hi = interval([runs[s][col] for s in seeds])
                fig: dict[str, Any] = {"mean": mean, "lo": lo, "hi": hi}
                paired = [s for s in seeds if s in base]
                if d != baseline and paired:
                    rs = [ratio(runs[s][col], base[s][col]) for s in paired]
                    q, qlo, qhi = ratio_interval(rs)
                    fig["ratio"] = {"mean": q, "lo": qlo, "hi": qhi, "pairs": len(rs)}
                    for i in range(len(fs)):
                        pairs.setdefault((col, i, k[i], d), []).extend(rs)
                rec["figures"][col] = fig
            rows.append(rec)
    effects = []
    for i, f in enumerate(fs):
        levels = sorted(dict.fromkeys(k[i] for k in keys), key=_sortable)
        for lv in levels:
            for d in designs[1:]:
                rec = {"factor": f, "level": lv, "policy": d, "ratios": {}}
                for col, _, _ in metrics:
                    rs = pairs.get((col, i, lv, d))
                    if rs:
                        q, qlo, qhi = ratio_interval(rs)
                        rec["ratios"][col] = {"mean": q, "lo": qlo, "hi": qhi, "pairs": len(rs)}
                if rec["ratios"]:
                    effects.append(rec)
    return {
        "baseline": baseline,
        "factors": fs,
        "metrics": [m[0] for m in metrics],
        "runs": len(frame),
        "cells": rows,
        "effects": effects,
    }


def _mean_text(fig: dict[str, Any], div: float) -> str:
    half = (fig["hi"] - fig["lo"]) / 2 / div
    text = fmt_value(fig["mean"] / div)
    return f"{text} ±{fmt_value(half)}" if half else text


def _ratio_text(q: dict[str, Any]) -> str:
    if any(math.isinf(q[k]) for k in ("mean", "lo", "hi")):
        return "from 0"
    if q["lo"] == q["hi"]:
        return f"{q['mean']:.3f}"
    return f"{q['mean']:.3f} [{q['lo']:.3f}..{q['hi']:.3f}]"


def _level_text(v: Any) -> str:
    return "profile" if v is None else str(v)


def tables(
    summary: dict[str, Any], metrics: Sequence[tuple[str, str, float]] = METRICS
) -> list[Table]:
    """The cells as one table (a row per design per cell), then a table per factor
    of its main effect on the first metric... and every other metric."""
    fs = summary["factors"]
    seeds = sorted({c["seeds"] for c in summary["cells"]})
    seed_text = f"{seeds[0]} seeds" if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]} seeds"
    t = Table(
        title=f"{summary['runs']} runs: mean ±95% interval over {seed_text}; "
        f"(ratio to {summary['baseline']}, paired by seed)"
    )
    for f in fs:
        t.add_column(f)
    t.add_column("design", no_wrap=True)
    for _, title, _ in metrics:
        t.add_column(title, justify="right")
    for c in summary["cells"]:
        cells = [_level_text(c[f]) for f in fs] + [c["policy"]]
        for col, _, div in metrics:
            fig = c["figures"][col]
            text = _mean_text(fig, div)
            if "ratio" in fig:
                text += f"\n({_ratio_text(fig['ratio'])})"
            cells.append(text)
        t.add_row(*cells)
    out = [t]
    for f in fs:
        e = Table(title=f"by {f}: ratio to {summary['baseline']}, over every run at that level")
        e.add_column(f)
        e.add_column("design", no_wrap=True)
        for _, title, _ in metrics:
            e.add_column(title, justify="right")
        for rec in summary["effects"]:
            if rec["factor"] != f:
                continue
            e.add_row(
                _level_text(rec["level"]),
                rec["policy"],
                *(
                    _ratio_text(rec["ratios"][col]) if col in rec["ratios"] else ""
                    for col, _, _ in metrics
                ),
            )
        out.append(e)
    return out


def csv_bytes(frame: Any) -> bytes:
    return frame.to_csv(index=False, lineterminator="\n").encode("utf-8")


def parquet_bytes(frame: Any) -> bytes:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False, engine="pyarrow")
    return buf.getvalue()
