"""A sweep's picture: per factor (a row of panels) and per metric (a column), each
design's ratio to the baseline at every level of the factor, with its 95% interval,
on a logarithmic axis (a ratio of 2 and one of 0.5 lie equally far from the line at
1). A sweep with no factor but the design gets one row, a point per design."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter, NullLocator

from exitsim.report.plots import _MARKERS, _design_colors, write_figure


def _finite(q: dict[str, Any]) -> bool:
    return all(0 < q[k] < math.inf for k in ("mean", "lo", "hi"))


def _rows(summary: dict[str, Any], col: str) -> list[tuple[str, list[tuple[str, str, dict]]]]:
    """(factor, [(level text, design, ratio record)]) per row of panels."""
    if not summary["factors"]:
        pts = [
            ("all runs", c["policy"], c["figures"][col]["ratio"])
            for c in summary["cells"]
            if "ratio" in c["figures"][col]
        ]
        return [("design", pts)]
    out = []
    for f in summary["factors"]:
        pts = [
            ("profile" if e["level"] is None else str(e["level"]), e["policy"], e["ratios"][col])
            for e in summary["effects"]
            if e["factor"] == f and col in e["ratios"]
        ]
        out.append((f, pts))
    return out


def _ratio_axis(ax: Any) -> None:
    """A log axis with plain ticks: a few evenly spaced ones over a narrow span (1.01
    reads better than 10^0.004), powers of ten over a wide one."""
    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    if hi / lo < 10:
        ax.yaxis.set_major_locator(MaxNLocator(5))
        ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.4g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def effects_figure(summary: dict[str, Any], metrics: Sequence[tuple[str, str, float]]) -> Figure:
    factors = summary["factors"] or ["design"]
    designs = list(dict.fromkeys(c["policy"] for c in summary["cells"]))
    colors = _design_colors(designs)
    nrow, ncol = len(factors), len(metrics)
    fig = Figure(figsize=(3.6 * ncol + 0.6, 2.8 * nrow + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrow, ncol, squeeze=False)
    for j, (col, title, _) in enumerate(metrics):
        for i, (factor, pts) in enumerate(_rows(summary, col)):
            ax = axes[i][j]
            levels = list(dict.fromkeys(lv for lv, _, _ in pts))
            others = [d for d in designs if d != summary["baseline"]]
            for k, d in enumerate(others):
                mine = [(levels.index(lv), q) for lv, dd, q in pts if dd == d and _finite(q)]
                if not mine:
                    continue
                shift = (k - (len(others) - 1) / 2) * 0.08
                xs = [x + shift for x, _ in mine]
                ys = [q["mean"] for _, q in mine]
                err = [
                    [q["mean"] - q["lo"] for _, q in mine],
                    [q["hi"] - q["mean"] for _, q in mine],
                ]
                ax.errorbar(
                    xs,
                    ys,
                    yerr=err,
                    color=colors[d],
                    marker=_MARKERS[k % len(_MARKERS)],
                    mfc="none",
                    capsize=3,
                    label=d,
                    linestyle="-" if len(mine) > 1 and factor != "design" else "none",
                )
            ax.axhline(1.0, color="0.4", linewidth=0.8)
            _ratio_axis(ax)
            ax.set_xticks(range(len(levels)), levels)
            ax.set_xlim(-0.5, len(levels) - 0.5)
            ax.grid(True, axis="y", alpha=0.3)
            ax.set_xlabel(factor)
            if i == 0:
                ax.set_title(f"{title}: ratio to {summary['baseline']}", fontsize=9)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4))
    fig.suptitle(
        f"{summary['runs']} runs; geometric mean of paired ratios, 95% interval", fontsize=10
    )
    return fig


def write_effects_plot(
    summary: dict[str, Any], metrics: Sequence[tuple[str, str, float]], path: str
) -> None:
    """The figure to ``path``, PNG or SVG by its suffix, whole or not at all."""
    write_figure(lambda: effects_figure(summary, metrics), path)
