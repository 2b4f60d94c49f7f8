"""Plots of results: one figure of panels for a comparison or for one run, as PNG or
SVG bytes or a file (by its suffix). The same result gives byte-identical output.

One scale rule for every figure: a value axis is linear (from 0) unless its positive
values span more than ``LOG_SPAN`` times, then logarithmic, and its label says so.
Distributions of durations (the exit-latency CDF, lock waits by duration) are always
drawn on a logarithmic time axis.

Over several seeds (report/seeds.py) a comparison draws wall time as means and its
ratio as the geometric mean of the per-seed ratios, with 95% intervals as error bars,
lock wait by lock as means with error bars, pools every seed's processes and lock
waits in the distributions, and draws memory held for one seed."""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.style
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure, SubFigure
from matplotlib.gridspec import SubplotSpec
from matplotlib.ticker import FixedLocator, LogFormatter, MaxNLocator, NullLocator

from exitsim.report.files import write_atomic
from exitsim.report.result import add_hist, exit_latencies, percentile
from exitsim.report.seeds import (
    Estimate,
    Runs,
    group_runs,
    mean_of,
    paired_ratio,
    seed_count,
    seeds_text,
)
from exitsim.report.table import workload_text
from exitsim.vm.uvm import PAGE_SIZE

#: The file suffixes a plot can be written as.
SUFFIXES = (".png", ".svg")

#: A value axis turns logarithmic when its largest positive value is more than this
#: many times its smallest.
LOG_SPAN = 100

# Reproducible output: matplotlib's defaults (not the user's matplotlibrc), a fixed
# salt for the ids SVG elements get (random otherwise), no date or version in the
# metadata.
_RC = {"svg.hashsalt": "exitsim", "figure.dpi": 100, "savefig.dpi": 100}
_META: dict[str, dict[str, str | None]] = {
    "png": {"Software": "exitsim"},
    "svg": {"Creator": "exitsim", "Date": None},
}

_MIB = 1 << 20

# Open markers of different shapes, so designs with equal values stay visible.
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
# Line styles likewise, for lines that may lie on top of each other (the CDFs).
_DASHES = ("-", "--", ":", "-.")


def _design_line(
    ax: Any,
    pts: list[tuple[int, float]],
    i: int,
    color: str,
    design: str,
    style: str = "-",
    spans: list[tuple[float, float]] | None = None,
) -> None:
    """One design's points against CPUs, with its own marker (nothing if none); with
    ``spans`` (each point's interval, low and high), error bars."""
    if not pts:
        return
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    look = {
        "marker": _MARKERS[i % len(_MARKERS)],
        "fillstyle": "none",
        "markersize": 8,
        "color": color,
        "linestyle": style,
        "label": design,
    }
    if spans is None:
        ax.plot(xs, ys, **look)
        return
    err = [[y - lo for y, (lo, _) in zip(ys, spans, strict=True)]]
    err.append([hi - y for y, (_, hi) in zip(ys, spans, strict=True)])
    ax.errorbar(xs, ys, yerr=err, capsize=4, elinewidth=1, **look)


# -- times for people ----------------------------------------------------------------

_UNITS = (("ns", 1), ("us", 1_000), ("ms", 1_000_000), ("s", 1_000_000_000))


def time_unit(ns: float) -> tuple[str, int]:
    """The unit a time of ``ns`` nanoseconds reads best in, and its size in ns: the
    largest of ns, us, ms and s in which it is at least 1."""
    unit = _UNITS[0]
    for u in _UNITS:
        if abs(ns) >= u[1]:
            unit = u
    return unit


def _digits(v: float) -> str:
    """Three significant digits (more left of the point), thousands separated."""
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def format_ns(ns: float) -> str:
    """A time for people, in the unit it reads best in, to three significant digits:
    ``11.3 s``, ``2.40 ms``, ``950 ns``, ``0``."""
    if ns == 0:
        return "0"
    name, size = time_unit(ns)
    if name == "ns":
        return f"{ns:.0f} ns" if float(ns).is_integer() else f"{_digits(ns)} ns"
    text = _digits(ns / size)
    if abs(float(text.replace(",", ""))) >= 1000 and name != "s":  # 999.7 us rounds up
        return format_ns(math.copysign(1000 * size, ns))
    return f"{text} {name}"


# -- style -------------------------------------------------------------------------


@contextmanager
def _style() -> Iterator[None]:
    with matplotlib.style.context("default"), matplotlib.rc_context(_RC):
        yield


def _palette(*names: str) -> list[Any]:
    return [c for name in names for c in matplotlib.colormaps[name].colors]  # type: ignore[attr-defined]


def _design_colors(designs: Sequence[str]) -> dict[str, Any]:
    palette = _palette("tab10")
    return {d: palette[i % len(palette)] for i, d in enumerate(designs)}


def _lock_colors(families: Sequence[str]) -> dict[str, Any]:
    # Other qualitative maps than the designs', so a lock never looks like a design.
    palette = _palette("Set2", "Dark2")
    return {f: palette[i % len(palette)] for i, f in enumerate(families)}


def _jitter(n: int) -> np.ndarray:
    """Fixed horizontal offsets for a strip of ``n`` points (golden-ratio spread: no
    randomness, so the plot is reproducible)."""
    return ((np.arange(n) * 0.6180339887) % 1.0 - 0.5) * 0.4


def _grid_box(ax: Axes, axis: str = "both") -> None:
    ax.grid(True, axis=axis, alpha=0.3)  # type: ignore[arg-type]


# -- the one scale rule --------------------------------------------------------------


def _tick_text(v: float) -> str:
    return f"{v:g}"


def _tick_ns(ns: float) -> str:
    """A tick of a time axis in ns: ``100 ns``, ``1 us``, ``20 ms``, ``1 s``."""
    name, size = time_unit(ns)
    return f"{ns / size:g} {name}"


class _PlainLog(LogFormatter):
    """Log ticks as plain numbers (0.1, 1, 10), not powers of ten."""

    def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
        return _tick_text(x)


class _TimeLog(LogFormatter):
    """Log ticks of a time axis in ns as times (100 ns, 1 us, 20 ms)."""

    def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
        return _tick_ns(x)


def _value_axis(ax: Axes, which: str, values: Sequence[float], what: str, unit: str) -> bool:
    """Label a value axis ``what (unit)`` and give it the figure's one scale rule:
    linear from 0, unless its positive values span more than ``LOG_SPAN`` times, then
    logarithmic (symmetric-logarithmic, linear below the smallest value's power of
    ten, when there are zeros to show), said in the label. True when logarithmic."""
    positive = [v for v in values if v > 0]
    log = bool(positive) and max(positive) > LOG_SPAN * min(positive)
    note = ""
    if log:
        note = _log_scale(ax, which, positive, len(positive) < len(values))
    elif which == "y":
        ax.set_ylim(bottom=0)
    else:
        ax.set_xlim(left=0)
    (ax.set_ylabel if which == "y" else ax.set_xlabel)(_label(what, unit, note))
    return log


def _empty(ax: Axes, why: str) -> None:
    """A panel with nothing to draw says why, and shows no axis of made-up values."""
    ax.text(0.5, 0.5, why, transform=ax.transAxes, ha="center", va="center")
    ax.set_xticks([])
    ax.set_yticks([])


def _headroom(ax: Axes, top: float) -> None:
    """Room above the highest bar for the legend."""
    if ax.get_yscale() == "linear":
        ax.set_ylim(top=top * 1.25)
    else:
        ax.set_ylim(top=top * 6)


def _label(what: str, *notes: str) -> str:
    """``what (note, note)``, empty notes left out."""
    said = ", ".join(n for n in notes if n)
    return f"{what} ({said})" if said and what else what


def _log_scale(
    ax: Axes, which: str, positive: Sequence[float], zeros: bool, times: bool = False
) -> str:
    """Make an axis logarithmic, its ticks plain numbers (``times``: the values are ns,
    the ticks times); the note its label gets."""
    setter = ax.set_yscale if which == "y" else ax.set_xscale
    axis = ax.yaxis if which == "y" else ax.xaxis
    fmt = _TimeLog if times else _PlainLog
    note = "log scale"
    if zeros:
        lin = 10 ** math.floor(math.log10(min(positive)))
        setter("symlog", linthresh=lin, linscale=0.25)
        if which == "y":
            ax.set_ylim(bottom=0)
        else:
            ax.set_xlim(left=0)
        note = f"log scale above {_tick_ns(lin) if times else _tick_text(lin)}"
    else:
        setter("log")
    axis.set_major_formatter(fmt())
    axis.set_minor_formatter(fmt(labelOnlyBase=False, minor_thresholds=(1, 0.4)))
    return note


# -- layout --------------------------------------------------------------------------


def _lanes(fig: Figure, spec: SubplotSpec, n: int) -> tuple[SubFigure, list[Axes]]:
    """``n`` axes stacked in one panel's place (a subfigure, so that the stack has one
    value-axis label), sharing their time and value axes: one lane per design (or
    series), so step lines never hide each other."""
    sub = fig.add_subfigure(spec)
    axes: list[Axes] = sub.subplots(n, 1, sharex=True, sharey=True, squeeze=False)[:, 0].tolist()
    return sub, axes


def _categories(ax: Axes, names: Sequence[str]) -> None:
    ax.xaxis.set_major_locator(FixedLocator(list(range(len(names)))))
    long = len(names) > 3 or any(len(n) > 12 for n in names)
    ax.set_xticklabels(names, rotation=20 if long else 0, ha="right" if long else "center")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(-0.6, len(names) - 0.4)


# -- panels ------------------------------------------------------------------------


def _distribution(
    ax: Axes, groups: Sequence[tuple[str, list[float]]], colors: Sequence[Any], what: str
) -> None:
    """Durations in ns per group: a box (quartiles, whiskers to 1.5 IQR) with every
    value as a point over it."""
    everything = [v for _, vs in groups for v in vs]
    unit, size = time_unit(max(everything, default=0))
    for i, ((_, values), color) in enumerate(zip(groups, colors, strict=True)):
        if not values:
            continue
        ys = [v / size for v in values]
        ax.boxplot(
            [ys],
            positions=[i],
            widths=0.55,
            showfliers=False,
            patch_artist=True,
            boxprops={"facecolor": (*color[:3], 0.25), "edgecolor": color},
            medianprops={"color": "black"},
            whiskerprops={"color": color},
            capprops={"color": color},
        )
        ax.scatter(i + _jitter(len(ys)), ys, s=7, color=color, alpha=0.7, linewidths=0, zorder=3)
    _categories(ax, [g[0] for g in groups])
    _value_axis(ax, "y", [v / size for v in everything], what, unit)
    _grid_box(ax, "y")


def cdf_points(values_ns: Sequence[int]) -> tuple[list[int], list[float]]:
    """The empirical CDF of ``values_ns``: the values sorted, and for each the share of
    values at or below it (the last is 1.0)."""
    xs = sorted(values_ns)
    n = len(xs)
    return xs, [(i + 1) / n for i in range(n)]


def _cdf_panel(ax: Axes, series: Sequence[tuple[str, list[int], Any]], title: str) -> None:
    """Exit latency as a CDF per series (label, latencies in ns, colour): a step line
    on a logarithmic time axis, with its median and 99th percentile marked (nearest
    rank, as the Result's ``exit_latency_ns_p50``/``_p99``)."""
    everything: list[int] = []
    for i, (label, lat, color) in enumerate(series):
        if not lat:
            continue
        xs, ys = cdf_points(lat)
        p50, p99 = percentile(xs, 0.5), percentile(xs, 0.99)
        ax.plot(
            xs,
            ys,
            drawstyle="steps-post",
            linestyle=_DASHES[i % len(_DASHES)],
            linewidth=1.4,
            color=color,
            label=f"{label}: p50 {format_ns(p50)}, p99 {format_ns(p99)}",
        )
        ax.plot(
            [p50, p99],
            [0.5, 0.99],
            linestyle="none",
            marker=_MARKERS[i % len(_MARKERS)],
            fillstyle="none",
            markersize=7,
            color=color,
            label=f"_{label} p50 and p99",
        )
        everything += xs
    if everything:
        positive = [v for v in everything if v > 0]
        note = _log_scale(ax, "x", positive, len(positive) < len(everything), times=True)
        ax.set_xlabel(_label("exit1 entry to the parent's wait4 return", note))
        ax.legend(fontsize=7, loc="lower right", title="p50 and p99 marked", title_fontsize=7)
    else:
        _empty(ax, "no process was waited for")
    ax.set_ylim(0, 1.03)
    ax.set_ylabel("share of exited processes")
    ax.set_title(title)
    _grid_box(ax)


def _wait_hist_panel(
    ax: Axes,
    series: Sequence[tuple[str, list[int], Any]],
    title: str,
    what: str,
    rs: Sequence[dict[str, Any]],
) -> None:
    """Lock waits one by one in log2 buckets (the Result's ``wait_log2_hist``), a bar
    per series side by side in each bucket, on a logarithmic time axis. Waits of 0 ns
    are drawn in the bucket below 1 ns. ``rs``: the results drawn from."""
    series = [s for s in series if any(s[1])]
    top = max((len(h) for _, h, _ in series), default=0)
    if not series:
        older = not all(has_wait_buckets(r) for r in rs)
        _empty(
            ax,
            "no lock-wait buckets in this result\n(an older exitsim made it)"
            if older
            else "no lock waits",
        )
        ax.set_title(title)
        return
    k = len(series)
    counts: list[float] = []
    for j, (label, hist, color) in enumerate(series):
        lefts, widths, heights = [], [], []
        for b, n in enumerate(hist):
            if not n:
                continue
            lo = 2.0 ** (b - 1)  # bucket b: 2**(b-1) <= wait < 2**b ns; bucket 0 below 1 ns
            a, z = lo * 2 ** ((j + 0.08) / k), lo * 2 ** ((j + 0.92) / k)
            lefts.append(a)
            widths.append(z - a)
            heights.append(n)
        counts += heights
        ax.bar(
            lefts,
            heights,
            widths,
            align="edge",
            color=color,
            edgecolor=color,
            linewidth=0.4,
            label=f"{label}: {sum(hist):,} waits",
        )
    _log_scale(ax, "x", [2.0**top], False, times=True)
    ax.set_xlim(2.0 ** (_first(series) - 1), 2.0**top)
    ax.set_xlabel("one wait, in log2 buckets (log scale)")
    if not _value_axis(ax, "y", counts, what, ""):
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    _headroom(ax, max(counts))
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(title)
    _grid_box(ax)


def _first(series: Sequence[tuple[str, list[int], Any]]) -> int:
    """The lowest bucket any series has a wait in."""
    return min(next(b for b, n in enumerate(h) if n) for _, h, _ in series)


def _steps(
    ax: Axes, samples: Sequence[Sequence[int]], scale: float, size: float, color: Any
) -> None:
    """A quantity sampled at each change, drawn as the step function it is (a line:
    matplotlib thins its points, where a filled area would keep every one)."""
    t = [s[0] / size for s in samples]
    v = [s[1] * scale for s in samples]
    ax.plot(t, v, drawstyle="steps-post", linewidth=0.9, color=color)


def _lane_panel(
    fig: Figure,
    spec: SubplotSpec,
    lanes: Sequence[tuple[str, Sequence[Sequence[int]], Any, str]],
    scale: float,
    end_ns: int,
    what: str,
    unit: str,
    title: str,
    gids: Sequence[str],
    integer: bool = False,
) -> list[Axes]:
    """Step series (label, samples, colour, note), each in its own lane over the same
    time and value axes."""
    sub, axes = _lanes(fig, spec, len(lanes))
    tunit, size = time_unit(end_ns)
    values = [s[1] * scale for _, samples, _, _ in lanes for s in samples]
    for ax, gid, (label, samples, color, note) in zip(axes, gids, lanes, strict=True):
        ax.set_gid(gid)
        _steps(ax, samples, scale, size, color)
        ax.text(
            0.005,
            0.95,
            f"{label}{': ' + note if note else ''}",
            transform=ax.transAxes,
            va="top",
            fontsize=8,
            bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none", "pad": 1.5},
        )
        _grid_box(ax)
    # The lanes share their axes: the scale set on one is every lane's, and its label
    # is the stack's.
    top = max(values, default=0)
    if _value_axis(axes[0], "y", values, what, unit):
        axes[0].set_ylim(top=top * 4)  # room for the lane's label
    else:
        axes[0].set_ylim(0, top * 1.35 or 1)
        if integer:
            axes[0].yaxis.set_major_locator(MaxNLocator(integer=True, nbins=3))
    sub.supylabel(axes[0].get_ylabel(), fontsize=10)
    axes[0].set_ylabel("")
    axes[0].set_xlim(0, end_ns / size or 1)
    axes[0].set_title(title)
    axes[-1].set_xlabel(f"simulated time ({tunit})")
    return axes


def _makespan(r: dict[str, Any]) -> float:
    return float(r["makespan_ns"])


def _over_seeds(
    results: list[dict[str, Any]], arch: str, design: str, how: Any
) -> list[tuple[int, Estimate]]:
    """(CPUs, ``how(runs)``) per CPU count of ``arch`` where ``design`` ran, over its
    seeds (``how`` gives None where there is nothing to draw)."""
    pts = []
    for g in group_runs(results):
        if g.config["arch"] == arch and g.design == design:
            est = how(g)
            if est is not None:
                pts.append((int(g.config["cpus"]), est))
    return sorted(pts, key=lambda p: p[0])


def _seed_wall_panel(
    ax: Axes, results: list[dict[str, Any]], arch: str, colors: dict[str, Any]
) -> None:
    """Wall time against CPUs over several seeds: the mean, its 95% interval as bars."""
    per = {d: _over_seeds(results, arch, d, lambda g: mean_of(g, _makespan)) for d in colors}
    tops = [e.hi for pts in per.values() for _, e in pts]
    unit, size = time_unit(max(tops))
    cpus: set[int] = set()
    means: list[float] = []
    for i, (design, pts) in enumerate(per.items()):
        cpus.update(n for n, _ in pts)
        means += [e.mean / size for _, e in pts]
        spans = [(e.lo / size, e.hi / size) for _, e in pts]
        _design_line(
            ax, [(n, e.mean / size) for n, e in pts], i, colors[design], design, spans=spans
        )
    _cpu_axis(ax, cpus)
    # The scale rule by the means; the axis reaches the intervals' tops.
    if _value_axis(ax, "y", means, "wall time", unit):
        ax.set_ylim(top=max(tops) / size * 1.5)
    else:
        ax.set_ylim(0, max(tops) / size * 1.08)
    ax.set_title(f"{arch}: wall time vs CPUs (mean, 95% interval)")
    ax.legend(fontsize=8, loc="lower left")
    _grid_box(ax)


def _wall_panel(ax: Axes, results: list[dict[str, Any]], arch: str, colors: dict[str, Any]) -> None:
    if seed_count(results) > 1:
        _seed_wall_panel(ax, results, arch, colors)
        return
    walls = [r["makespan_ns"] for r in results if r["config"]["arch"] == arch]
    unit, size = time_unit(max(walls))
    cpus: set[int] = set()
    for i, (design, color) in enumerate(colors.items()):
        pts = sorted(
            (r["config"]["cpus"], r["makespan_ns"] / size)
            for r in results
            if r["config"]["arch"] == arch and r["config"]["policy"] == design
        )
        cpus.update(p[0] for p in pts)
        _design_line(ax, pts, i, color, design)
    _cpu_axis(ax, cpus)
    if not _value_axis(ax, "y", [w / size for w in walls], "wall time", unit):
        ax.set_ylim(0, max(walls) / size * 1.08)  # room for the markers at the top
    ax.set_title(f"{arch}: wall time vs CPUs")
    ax.legend(fontsize=8, loc="lower left")
    _grid_box(ax)


def _cpu_axis(ax: Axes, cpus: set[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(sorted(cpus)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(n) for n in sorted(cpus)])
    ax.set_xlabel("CPUs (log 2 scale)")


def ratios(results: list[dict[str, Any]], arch: str, design: str) -> list[tuple[int, float]]:
    """(CPUs, the design's wall time / the baseline's) per CPU count of ``arch`` where
    both ran; the baseline is the first design of the results."""
    baseline = results[0]["config"]["policy"]
    walls = {
        (r["config"]["policy"], r["config"]["cpus"]): r["makespan_ns"]
        for r in results
        if r["config"]["arch"] == arch
    }
    return sorted(
        (n, w / walls[baseline, n])
        for (d, n), w in walls.items()
        if d == design and walls.get((baseline, n))
    )


def seed_ratios(
    results: list[dict[str, Any]], arch: str, design: str
) -> list[tuple[int, Estimate]]:
    """(CPUs, the design's wall time over the baseline's, paired by seed) per CPU
    count of ``arch`` where both ran with a seed in common: the geometric mean of the
    per-seed ratios and its 95% interval. The baseline is the first design."""
    baseline = results[0]["config"]["policy"]
    bases = {
        g.config["cpus"]: g
        for g in group_runs(results)
        if g.config["arch"] == arch and g.design == baseline
    }

    def how(g: Runs) -> Estimate | None:
        base = bases.get(g.config["cpus"])
        return None if base is None else paired_ratio(g, base, _makespan)

    return _over_seeds(results, arch, design, how)


def _ratio_panel(
    ax: Axes, results: list[dict[str, Any]], arch: str, colors: dict[str, Any]
) -> None:
    """Each design's wall time over the baseline's, per CPU count: the differences
    the absolute panel is too coarse to show. Over several seeds, the geometric mean
    of the per-seed ratios with its 95% interval as bars (``seed_ratios``)."""
    baseline = results[0]["config"]["policy"]
    multi = seed_count(results) > 1
    cpus: set[int] = set()
    values = [1.0]
    for i, (design, color) in enumerate(colors.items()):
        style = "--" if design == baseline else "-"
        if multi:
            ests = seed_ratios(results, arch, design)
            spans = [(e.lo, e.hi) for _, e in ests]
            values += [v for lo, hi in spans for v in (lo, hi)]
            pts = [(n, e.mean) for n, e in ests]
            cpus.update(p[0] for p in pts)
            values += [p[1] for p in pts]
            _design_line(ax, pts, i, color, design, style, spans)
            continue
        pts = ratios(results, arch, design)
        cpus.update(p[0] for p in pts)
        values += [p[1] for p in pts]
        _design_line(ax, pts, i, color, design, style)
    _cpu_axis(ax, cpus)
    what = f"wall time / {baseline}'s"
    if not _value_axis(ax, "y", values, what, "below 1: faster"):
        # The differences are the point here: the axis spans the ratios, not 0 up.
        lo, hi = min(values), max(values)
        pad = max((hi - lo) * 0.15, 0.005)
        ax.set_ylim(lo - pad, hi + pad)
    paired = " (by seed, 95% interval)" if multi else ""
    ax.set_title(f"{arch}: wall time relative to {baseline}{paired}")
    ax.legend(fontsize=8, loc="best")
    _grid_box(ax)


def _lock_wait(family: str) -> Any:
    return lambda r: float(r["locks"].get(family, {}).get("wait_ns", 0))


def _lock_bars_panel(
    ax: Axes, gs: list[Runs], families: Sequence[str], colors: dict[str, Any]
) -> None:
    """Lock wait per lock family, a bar per design side by side; locks nobody waited
    for are left out. Over several seeds, the mean with its 95% interval as a bar."""
    rs = [r for g in gs for r in g.results]
    waited = [f for f in families if any(r["locks"].get(f, {}).get("wait_ns") for r in rs)]
    if not waited:
        _empty(ax, "no lock waits")
        return
    ests = [[mean_of(g, _lock_wait(f)) for f in waited] for g in gs]
    unit, size = time_unit(max(e.hi for row in ests for e in row))
    k = len(gs)
    width = 0.8 / k
    for j, (g, row) in enumerate(zip(gs, ests, strict=True)):
        err = None
        if len(g.by_seed) > 1:
            err = [[(e.mean - e.lo) / size for e in row], [(e.hi - e.mean) / size for e in row]]
        ax.bar(
            [i - 0.4 + (j + 0.5) * width for i in range(len(waited))],
            [e.mean / size for e in row],
            width * 0.92,
            color=colors[g.design],
            label=g.design,
            yerr=err,
            capsize=2 if err else 0,
        )
    _categories(ax, waited)
    values = [v / size for row in ests for e in row for v in (e.mean, e.hi)]
    _value_axis(ax, "y", values, "lock wait, summed over CPUs", unit)
    _headroom(ax, max(values))
    ax.legend(fontsize=7, loc="upper right")
    _grid_box(ax, "y")


def _lock_families(results: list[dict[str, Any]]) -> list[str]:
    """Every lock, the most waited-for first (over all results), then by name."""
    total: dict[str, int] = {}
    for r in results:
        for name, s in r["locks"].items():
            total[name] = total.get(name, 0) + s["wait_ns"]
    return sorted(total, key=lambda n: (-total[n], n))


def has_wait_buckets(r: dict[str, Any]) -> bool:
    """Whether ``r`` counts its lock waits in buckets (results made before it did not)."""
    return all("wait_log2_hist" in s for s in r["locks"].values())


def wait_hist(r: dict[str, Any], locks: Sequence[str] | None = None) -> list[int]:
    """The lock waits of ``r`` in log2 buckets, summed over ``locks`` (all by
    default); empty for a result made before the buckets were recorded."""
    out: list[int] = []
    for name, s in r["locks"].items():
        if locks is not None and name not in locks:
            continue
        add_hist(out, s.get("wait_log2_hist") or [])
    return out


def _held_lanes(r: dict[str, Any], label: str, color: Any) -> tuple[str, Any, Any, str]:
    mem = r["memory"]
    note = (
        f"peak {mem['held_after_exit_peak_bytes'] / _MIB:,.1f} MiB, "
        f"{mem['held_after_exit_integral_byte_ns'] / _MIB / 1e9:,.2f} MiB*s"
    )
    return label, r["series"]["held_after_exit_pages"], color, note


def _held_integral(r: dict[str, Any]) -> float:
    return float(r["memory"]["held_after_exit_integral_byte_ns"]) / _MIB / 1e9


def _seed_held_lanes(g: Runs, color: Any) -> tuple[str, Any, Any, str]:
    """A design's memory held over several seeds: its first seed's steps, and the
    integral over the seeds as a mean with its 95% interval."""
    seed = g.seeds[0]
    label, samples, _, note = _held_lanes(g.by_seed[seed], f"{g.design}, seed {seed}", color)
    est = mean_of(g, _held_integral)
    note += f"; {est.n} seeds: {est.mean:,.2f} ±{est.half:,.2f} MiB*s"
    return label, samples, color, note


# -- figures -----------------------------------------------------------------------

#: The rows of a comparison's figure, top to bottom.
COMPARE_PANELS = ("wall", "ratio", "sys", "latency", "locks", "waits", "held")


def compare_figure(results: list[dict[str, Any]]) -> Figure:
    """Per arch: wall time against CPUs per design, and relative to the baseline (the
    first design); at its largest CPU count the sys time charged to each process, the
    exit latency as a CDF, lock wait by lock, lock waits by duration, and memory held
    after exit over time, a lane per design. One arch: two panels a row, the memory
    over the whole width; more: a column per arch, a row per panel."""
    designs = list(dict.fromkeys(r["config"]["policy"] for r in results))
    arches = list(dict.fromkeys(r["config"]["arch"] for r in results))
    nseeds = seed_count(results)
    colors = _design_colors(designs)
    families = _lock_families(results)
    if len(arches) == 1:
        fig = Figure(figsize=(12.8, 4.3 * 4.1 + 0.6), layout="constrained")
        grid = fig.add_gridspec(4, 2, height_ratios=(1, 1, 1, 1.3))
        places = [*(grid[i // 2, i % 2] for i in range(6)), grid[3, :]]
        slots = [(k, arches[0], p) for k, p in zip(COMPARE_PANELS, places, strict=True)]
    else:
        fig = Figure(figsize=(6.4 * len(arches), 7.4 * 3.9 + 0.6), layout="constrained")
        grid = fig.add_gridspec(7, len(arches), height_ratios=(1, 1, 1, 1, 1, 1, 1.4))
        slots = [
            (kind, arch, grid[i, j])
            for i, kind in enumerate(COMPARE_PANELS)
            for j, arch in enumerate(arches)
        ]
    FigureCanvasAgg(fig)
    cfg = results[0]["config"]
    seeds = f"seed {cfg['seed']}"
    pooled = mean = ""
    if nseeds > 1:
        every = sorted({r["config"]["seed"] for r in results})
        seeds = f"{nseeds} seeds ({seeds_text(every)}), means with 95% intervals"
        pooled, mean = f" ({nseeds} seeds pooled)", " (mean, 95% interval)"
    fig.suptitle(
        f"exitsim compare: workload {workload_text(cfg)}, {seeds}, "
        f"granularity {cfg['granularity']}",
        fontsize=12,
    )
    for kind, arch, spec in slots:
        of_arch = [r for r in results if r["config"]["arch"] == arch]
        top = max(r["config"]["cpus"] for r in of_arch)
        rs = [r for r in of_arch if r["config"]["cpus"] == top]
        gs = group_runs(rs)
        where = f"{arch}, {top} CPUs"
        if kind == "held":
            end = max(r["makespan_ns"] for r in rs)
            if nseeds > 1:
                lanes = [_seed_held_lanes(g, colors[g.design]) for g in gs]
                end = max(g.results[0]["makespan_ns"] for g in gs)
            else:
                lanes = [
                    _held_lanes(r, r["config"]["policy"], colors[r["config"]["policy"]]) for r in rs
                ]
            gids = [f"held-{arch}-{i}" for i in range(len(lanes))]
            what = "held after exit"
            title = f"{where}: memory held after exit"
            if nseeds > 1:
                title += " (one seed drawn)"
            _lane_panel(fig, spec, lanes, PAGE_SIZE / _MIB, end, what, "MiB", title, gids)
            continue
        ax = fig.add_subplot(spec)
        ax.set_gid(f"{kind}-{arch}")
        if kind == "wall":
            _wall_panel(ax, results, arch, colors)
        elif kind == "ratio":
            _ratio_panel(ax, results, arch, colors)
        elif kind == "sys":
            groups = [
                (g.design, [p["sys_ns"] for r in g.results for p in r["per_process"]]) for g in gs
            ]
            _distribution(
                ax, groups, [colors[g[0]] for g in groups], "charged sys time per process"
            )
            ax.set_title(f"{where}: sys time charged per process{pooled}")
        elif kind == "latency":
            series = [
                (g.design, [v for r in g.results for v in exit_latencies(r)], colors[g.design])
                for g in gs
            ]
            _cdf_panel(ax, series, f"{where}: exit latency (CDF){pooled}")
        elif kind == "locks":
            _lock_bars_panel(ax, gs, families, colors)
            ax.set_title(f"{where}: lock wait by lock{mean}")
        else:
            hists = []
            for g in gs:
                h: list[int] = []
                for r in g.results:
                    add_hist(h, wait_hist(r))
                hists.append((g.design, h, colors[g.design]))
            title = f"{where}: lock waits by duration (all locks){pooled}"
            _wait_hist_panel(ax, hists, title, "waits", rs)
    return fig


def run_figure(result: dict[str, Any]) -> Figure:
    """One run: sys time charged per process by command, the exit latency as a CDF,
    lock wait by lock, lock waits by duration per lock, memory held after exit over
    time, and the reaper's backlog and zombies over time."""
    cfg = result["config"]
    fig = Figure(figsize=(12.8, 3 * 4.1 + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(
        f"exitsim run: {cfg['policy']} on {cfg['arch']}, {cfg['cpus']} CPUs, workload "
        f"{workload_text(cfg)}, seed {cfg['seed']}: wall {format_ns(result['makespan_ns'])}",
        fontsize=12,
    )
    grid = fig.add_gridspec(3, 2)
    color = _design_colors([cfg["policy"]])[cfg["policy"]]

    # Commands with the most sys time in all first: where the kernel's time went.
    ax_sys = fig.add_subplot(grid[0, 0])
    by_comm: dict[str, list[float]] = {}
    for p in result["per_process"]:
        by_comm.setdefault(p["comm"], []).append(p["sys_ns"])
    groups = sorted(by_comm.items(), key=lambda g: (-sum(g[1]), g[0]))
    ax_sys.set_gid("sys")
    _distribution(ax_sys, groups, [color] * len(groups), "charged sys time per process")
    ax_sys.set_xlabel("command (all exited processes)")
    ax_sys.set_title("sys time charged per process, by command")

    ax_lat = fig.add_subplot(grid[0, 1])
    ax_lat.set_gid("latency")
    lat = exit_latencies(result)
    series = [(f"all {len(lat)} waited for", lat, color)]
    _cdf_panel(ax_lat, series, "exit latency (CDF)")

    ax_locks = fig.add_subplot(grid[1, 0])
    ax_locks.set_gid("locks")
    names = _lock_families([result])
    stats = [result["locks"][n] for n in names]
    lcolors = _lock_colors(names)
    unit, size = time_unit(max((s["wait_ns"] for s in stats), default=0))
    waits = [s["wait_ns"] / size for s in stats]
    y = np.arange(len(names))
    ax_locks.barh(y, waits, color=[lcolors[n] for n in names])
    ax_locks.set_yticks(y, names)
    ax_locks.invert_yaxis()
    for i, s in enumerate(stats):
        ax_locks.annotate(
            f" {s['contended']}/{s['acquisitions']} contended",
            (waits[i], i),
            va="center",
            fontsize=7,
        )
    _value_axis(ax_locks, "x", waits, "lock wait, summed over CPUs", unit)
    if ax_locks.get_xscale() == "linear":
        ax_locks.set_xlim(0, max(waits, default=0) * 1.4 or 1)  # room for the counts
    if not any(s["wait_ns"] for s in stats):
        ax_locks.text(0.5, 0.5, "no lock waits", transform=ax_locks.transAxes, ha="center")
        ax_locks.set_xticks([])
    ax_locks.set_title("lock wait by lock")
    _grid_box(ax_locks, "x")

    ax_waits = fig.add_subplot(grid[1, 1])
    ax_waits.set_gid("waits")
    waited = [n for n in names if result["locks"][n]["wait_ns"]]
    wseries = [(n, wait_hist(result, [n]), lcolors[n]) for n in waited]
    _wait_hist_panel(ax_waits, wseries, "lock waits by duration, per lock", "waits", [result])

    end = result["makespan_ns"]
    _lane_panel(
        fig,
        grid[2, 0],
        [_held_lanes(result, cfg["policy"], color)],
        PAGE_SIZE / _MIB,
        end,
        "held after exit",
        "MiB",
        "memory held after exit",
        ["held"],
    )
    s = result["series"]
    _lane_panel(
        fig,
        grid[2, 1],
        [
            (
                "reaper backlog",
                s["reaper_backlog"],
                "tab:red",
                f"peak {_peak(s['reaper_backlog'])}",
            ),
            ("zombies", s["zombies"], "tab:gray", f"peak {_peak(s['zombies'])}"),
        ],
        1.0,
        end,
        "count",
        "",
        "reaper backlog (threads on deadproc) and zombies",
        ["backlog", "zombies"],
        integer=True,
    )
    return fig


def _peak(samples: Sequence[Sequence[int]]) -> int:
    return max((v for _, v in samples), default=0)


# -- output ------------------------------------------------------------------------


def _figure(results: dict[str, Any] | list[dict[str, Any]]) -> Figure:
    """A single result (what ``run`` writes) gets the run figure; a list (what
    ``compare`` writes) the comparison."""
    return run_figure(results) if isinstance(results, dict) else compare_figure(results)


def figure_bytes(make: Callable[[], Figure], fmt: str) -> bytes:
    """The figure ``make`` draws, as ``png`` or ``svg`` bytes, in the one style every
    exitsim plot uses (reproducible: the same figure gives the same bytes)."""
    if f".{fmt}" not in SUFFIXES:
        raise ValueError(f"plot format must be png or svg (got {fmt!r})")
    with _style():
        fig = make()
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, metadata=_META[fmt])
    return buf.getvalue()


def write_figure(make: Callable[[], Figure], path: str) -> None:
    """The figure ``make`` draws written to ``path``, PNG or SVG by its suffix, whole
    or not at all."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: a plot must end in .png or .svg")
    write_atomic(path, figure_bytes(make, suffix[1:]))


def render(results: dict[str, Any] | list[dict[str, Any]], fmt: str) -> bytes:
    """The figure for ``results`` as ``png`` or ``svg`` bytes."""
    return figure_bytes(lambda: _figure(results), fmt)


def write_plot(results: dict[str, Any] | list[dict[str, Any]], path: str) -> None:
    """The figure for ``results`` written to ``path`` (``write_figure``)."""
    write_figure(lambda: _figure(results), path)
