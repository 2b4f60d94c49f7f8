"""The tornado plot of ``exitsim sensitivity --plot``: per claim (and arch) one panel,
per cost key a horizontal bar from the ratio with the key at the low end of its range
to the ratio at the high end, through the ratio at the profile's costs; the keys with
the largest swing on top, a line at 1 (no change) and one at the profile's ratio.
Drawn from the command's JSON record only. Files are written as ``report/plots.py``
writes its own: PNG or SVG by the suffix, reproducible bytes, whole or not at all.
"""

from __future__ import annotations

import math
import textwrap
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from exitsim.report.plots import _empty, _grid_box, _PlainLog, figure_bytes, write_figure

#: At most this many keys per panel, the largest swings; the caption counts the rest.
MAX_BARS = 12
LOW_COLOR = "tab:blue"
HIGH_COLOR = "tab:orange"
FLIP_COLOR = "tab:red"


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def _mark(e: dict[str, Any]) -> str:
    """What a key's label says of its flip."""
    if e.get("reverses"):
        return "  (holds and fails)"
    return "  (flips)" if e["flips"] else ""


def _panel(ax: Axes, c: dict[str, Any], legend: bool) -> None:
    """One claim on one arch."""
    prof = c["profile"]["ratio"]
    head = f"{c['claim']} on {c['arch']} ({c['design']} / {c['baseline']})"
    summary = textwrap.fill(c["summary"], 100, subsequent_indent="  ")
    ax.set_title(f"{head}\n{summary}", fontsize=8, loc="left")
    bars = [e for e in c["params"] if e["charged"]]
    if c["direction"] == "same":
        differ = [e["key"] for e in bars if e["at_low"]["ratio"] != 1 or e["at_high"]["ratio"] != 1]
        why = "identical Results at the profile and at both ends of every key"
        if prof != 1:
            why = "the Results differ at the profile"
        elif differ:
            why = textwrap.fill("the Results differ with: " + ", ".join(differ), 60)
        _empty(ax, why)
        return
    if not bars:
        _empty(ax, "no key charged at the profile")
        return
    shown = bars[:MAX_BARS]
    values = [prof, 1.0]
    ys = list(range(len(shown)))[::-1]
    for y, e in zip(ys, shown, strict=True):
        ends = [
            (e["at_low"]["ratio"], LOW_COLOR, "the key at the low end of its range"),
            (e["at_high"]["ratio"], HIGH_COLOR, "the key at the high end"),
        ]
        ends = [x for x in ends if _finite(x[0]) and _finite(prof)]
        # The longer bar first, so that a shorter one on the same side shows on it.
        ends.sort(key=lambda x: -abs(math.log(x[0] / prof)))
        for end, color, label in ends:
            values.append(end)
            ax.barh(
                y,
                abs(end - prof),
                left=min(end, prof),
                height=0.6,
                color=color,
                label=label if legend and y == ys[0] else None,
            )
            # A tick at the end, so that an end equal to the profile's still shows.
            ax.plot([end], [y], marker="|", markersize=9, color=color)
    ax.set_yticks(ys)
    labels = ax.set_yticklabels([f"{e['key']}{_mark(e)}" for e in shown], fontsize=7)
    for text, e in zip(labels, shown, strict=True):
        if e["flips"]:
            text.set_color(FLIP_COLOR)
    ax.axvline(1.0, color="black", linewidth=1)
    if _finite(prof):
        ax.axvline(
            prof, color="gray", linewidth=1, linestyle="--", label="profile" if legend else None
        )
    good = [v for v in values if _finite(v)]
    ax.set_xscale("log")
    lo, hi = min(good), max(good)
    pad = (hi / lo) ** 0.08 if hi > lo else 1.05
    ax.set_xlim(lo / pad, hi * pad)
    ax.xaxis.set_major_formatter(_PlainLog())
    ax.xaxis.set_minor_formatter(_PlainLog(labelOnlyBase=False, minor_thresholds=(1, 0.4)))
    ax.tick_params(axis="x", labelsize=7, which="both")
    ax.set_ylim(-0.7, len(shown) - 0.3)
    _grid_box(ax, "x")
    xlabel = f"ratio {c['design']} / {c['baseline']} (log scale), expected {c['direction']}"
    if len(bars) > len(shown):
        xlabel += f"; {len(bars) - len(shown)} more keys swing less"
    ax.set_xlabel(xlabel, fontsize=7)
    if legend:
        ax.legend(fontsize=7, loc="best")


def tornado_figure(rec: dict[str, Any]) -> Figure:
    """The figure for a ``sensitivity`` record: a panel per claim and arch, two
    columns."""
    claims = rec["claims"]
    ncols = 1 if len(claims) == 1 else 2
    nrows = max(1, math.ceil(len(claims) / ncols))
    heights = []
    for i in range(nrows):
        row = claims[i * ncols : (i + 1) * ncols]
        n = max((min(MAX_BARS, sum(e["charged"] for e in c["params"])) for c in row), default=1)
        heights.append(1.4 + 0.25 * max(n, 2))
    fig = Figure(figsize=(7.5 * ncols, sum(heights)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, gridspec_kw={"height_ratios": heights})
    for i, ax in enumerate(axes.flat):
        if i < len(claims):
            _panel(ax, claims[i], legend=i == 0)
        else:
            ax.set_axis_off()
    fig.suptitle(
        f"exitsim sensitivity: {rec['cpus']} CPUs, {len(rec['seeds'])} seeds, "
        "each key alone at the ends of its range",
        fontsize=9,
    )
    return fig


def render(rec: dict[str, Any], fmt: str) -> bytes:
    """The tornado plot as ``png`` or ``svg`` bytes."""
    return figure_bytes(lambda: tornado_figure(rec), fmt)


def write_tornado(rec: dict[str, Any], path: str) -> None:
    """The tornado plot written to ``path``, PNG or SVG by its suffix, whole or not
    at all."""
    write_figure(lambda: tornado_figure(rec), path)
