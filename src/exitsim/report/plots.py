"""Plots of results: one figure of panels for a comparison or for one run, as PNG or
SVG bytes or a file (by its suffix). The same result gives byte-identical output."""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.style
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator

from exitsim.report.files import write_atomic
from exitsim.report.table import workload_text
from exitsim.vm.uvm import PAGE_SIZE

#: The file suffixes a plot can be written as.
SUFFIXES = (".png", ".svg")

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


def _ms(ns: float) -> float:
    return ns / 1e6


def _axes_grid(fig: Figure, n: int, ncols: int) -> list[Axes]:
    nrows = -(-n // ncols)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return axes[:n]


# -- panels ------------------------------------------------------------------------


def _distribution(
    ax: Axes, groups: Sequence[tuple[str, list[float]]], colors: Sequence[Any]
) -> None:
    """A box (quartiles, whiskers to 1.5 IQR) with every value as a point over it; a
    logarithmic axis (linear near 0) when the largest value dwarfs the median."""
    for i, ((_, values), color) in enumerate(zip(groups, colors, strict=True)):
        if not values:
            continue
        ax.boxplot(
            [values],
            positions=[i],
            widths=0.55,
            showfliers=False,
            patch_artist=True,
            boxprops={"facecolor": (*color[:3], 0.25), "edgecolor": color},
            medianprops={"color": "black"},
            whiskerprops={"color": color},
            capprops={"color": color},
        )
        ax.scatter(
            i + _jitter(len(values)), values, s=7, color=color, alpha=0.7, linewidths=0, zorder=3
        )
    _categories(ax, [g[0] for g in groups])
    positive = sorted(v for _, vs in groups for v in vs if v > 0)
    # One big process (bigexit) would flatten everyone else against 0 on a linear axis;
    # symlog keeps the processes charged nothing, at 0.
    if positive and positive[-1] > 20 * positive[len(positive) // 2]:
        ax.set_yscale("symlog", linthresh=10 ** math.floor(math.log10(positive[0])))
    ax.set_ylim(bottom=0)
    ax.grid(True, axis="y", alpha=0.3)


def _categories(ax: Axes, names: Sequence[str]) -> None:
    ax.xaxis.set_major_locator(FixedLocator(list(range(len(names)))))
    long = len(names) > 3 or any(len(n) > 12 for n in names)
    ax.set_xticklabels(names, rotation=20 if long else 0, ha="right" if long else "center")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(-0.6, len(names) - 0.4)


def _steps(ax: Axes, samples: Sequence[Sequence[int]], scale: float, **kw: Any) -> None:
    """A quantity sampled at each change, drawn as the step function it is."""
    t = [_ms(s[0]) for s in samples]
    v = [s[1] * scale for s in samples]
    ax.step(t, v, where="post", linewidth=1.2, **kw)


def _wall_panel(ax: Axes, results: list[dict[str, Any]], arch: str, colors: dict[str, Any]) -> None:
    cpus: set[int] = set()
    top = 0.0
    for i, (design, color) in enumerate(colors.items()):
        pts = sorted(
            (r["config"]["cpus"], _ms(r["makespan_ns"]))
            for r in results
            if r["config"]["arch"] == arch and r["config"]["policy"] == design
        )
        cpus.update(p[0] for p in pts)
        top = max([top, *(p[1] for p in pts)])
        if pts:
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                marker=_MARKERS[i % len(_MARKERS)],
                fillstyle="none",
                markersize=8,
                color=color,
                label=design,
            )
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(sorted(cpus)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(n) for n in sorted(cpus)])
    ax.set_ylim(0, top * 1.08 or 1)  # from 0, with room for the markers at the top
    ax.set_xlabel("CPUs")
    ax.set_ylabel("wall time (ms)")
    ax.set_title(f"{arch}: wall time vs CPUs")
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(True, alpha=0.3)


def _lock_stack_panel(
    ax: Axes, rs: list[dict[str, Any]], families: Sequence[str], lcolors: dict[str, Any]
) -> None:
    """Lock wait per design, stacked by lock family."""
    bottom = np.zeros(len(rs))
    for fam in families:
        waits = np.array([_ms(r["locks"].get(fam, {}).get("wait_ns", 0)) for r in rs])
        if not waits.any():
            continue
        ax.bar(range(len(rs)), waits, 0.6, bottom=bottom, color=lcolors[fam], label=fam)
        bottom += waits
    _categories(ax, [r["config"]["policy"] for r in rs])
    if not bottom.any():
        ax.text(0.5, 0.5, "no lock waits", transform=ax.transAxes, ha="center", va="center")
    else:
        ax.legend(fontsize=7, title="lock", title_fontsize=7, loc="upper left")
        ax.set_ylim(0, bottom.max() * 1.35)  # room for the legend above the bars
    ax.set_ylabel("lock wait (ms, summed over CPUs)")
    ax.grid(True, axis="y", alpha=0.3)


def _held_panel(ax: Axes, rs: list[dict[str, Any]], colors: dict[str, Any]) -> None:
    """Step lines; the legend gives each design's peak and time integral, since
    exits are short next to a run and the steps are often thin spikes."""
    for r in rs:
        design = r["config"]["policy"]
        mem = r["memory"]
        _steps(
            ax,
            r["series"]["held_after_exit_pages"],
            PAGE_SIZE / _MIB,
            color=colors[design],
            alpha=0.85,
            label=f"{design}: peak {mem['held_after_exit_peak_bytes'] / _MIB:,.1f} MiB, "
            f"{mem['held_after_exit_integral_byte_ns'] / _MIB / 1e9:,.2f} MiB*s",
        )
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, loc="upper right")
    ax.set_xlabel("simulated time (ms)")
    ax.set_ylabel("held after exit (MiB)")
    ax.grid(True, alpha=0.3)


def _lock_families(results: list[dict[str, Any]]) -> list[str]:
    """Every lock, the most waited-for first (over all results), then by name."""
    total: dict[str, int] = {}
    for r in results:
        for name, s in r["locks"].items():
            total[name] = total.get(name, 0) + s["wait_ns"]
    return sorted(total, key=lambda n: (-total[n], n))


# -- figures -----------------------------------------------------------------------


def compare_figure(results: list[dict[str, Any]]) -> Figure:
    """Per arch: wall time against CPUs per design; and at its largest CPU count the
    sys time charged to each process, lock wait by lock family, and memory held after
    exit over time, per design. Rows are panels, columns arches."""
    designs = list(dict.fromkeys(r["config"]["policy"] for r in results))
    arches = list(dict.fromkeys(r["config"]["arch"] for r in results))
    colors = _design_colors(designs)
    families = _lock_families(results)
    lcolors = _lock_colors(families)
    ncols = max(2, len(arches))
    npanels = 4 * len(arches)
    fig = Figure(figsize=(6.4 * ncols, 4.2 * -(-npanels // ncols) + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
    cfg = results[0]["config"]
    fig.suptitle(
        f"exitsim compare: workload {workload_text(cfg)}, seed {cfg['seed']}, "
        f"granularity {cfg['granularity']}",
        fontsize=12,
    )
    axes = iter(_axes_grid(fig, npanels, ncols))
    panels = [(kind, arch) for kind in ("wall", "sys", "locks", "held") for arch in arches]
    for kind, arch in panels:
        ax = next(axes)
        ax.set_gid(f"{kind}-{arch}")
        of_arch = [r for r in results if r["config"]["arch"] == arch]
        top = max(r["config"]["cpus"] for r in of_arch)
        rs = [r for r in of_arch if r["config"]["cpus"] == top]
        where = f"{arch}, {top} CPUs"
        if kind == "wall":
            _wall_panel(ax, results, arch, colors)
        elif kind == "sys":
            groups = [
                (r["config"]["policy"], [_ms(p["sys_ns"]) for p in r["per_process"]]) for r in rs
            ]
            _distribution(ax, groups, [colors[g[0]] for g in groups])
            ax.set_ylabel("charged sys time per process (ms)")
            ax.set_title(f"{where}: sys time charged per process")
        elif kind == "locks":
            _lock_stack_panel(ax, rs, families, lcolors)
            ax.set_title(f"{where}: lock wait by lock")
        else:
            _held_panel(ax, rs, colors)
            ax.set_title(f"{where}: memory held after exit")
    return fig


def run_figure(result: dict[str, Any]) -> Figure:
    """One run: sys time charged per process by command, lock wait by lock, memory
    held after exit over time, and the reaper's backlog and zombies over time."""
    cfg = result["config"]
    fig = Figure(figsize=(12.8, 9.2), layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(
        f"exitsim run: {cfg['policy']} on {cfg['arch']}, {cfg['cpus']} CPUs, workload "
        f"{workload_text(cfg)}, seed {cfg['seed']}: "
        f"wall {_ms(result['makespan_ns']):,.1f} ms",
        fontsize=12,
    )
    ax_sys, ax_locks, ax_held, ax_backlog = _axes_grid(fig, 4, 2)
    color = _design_colors([cfg["policy"]])[cfg["policy"]]

    # Commands with the most sys time in all first: where the kernel's time went.
    by_comm: dict[str, list[float]] = {}
    for p in result["per_process"]:
        by_comm.setdefault(p["comm"], []).append(_ms(p["sys_ns"]))
    groups = sorted(by_comm.items(), key=lambda g: (-sum(g[1]), g[0]))
    ax_sys.set_gid("sys")
    _distribution(ax_sys, groups, [color] * len(groups))
    ax_sys.set_xlabel("command (all exited processes)")
    ax_sys.set_ylabel("charged sys time per process (ms)")
    ax_sys.set_title("sys time charged per process, by command")

    ax_locks.set_gid("locks")
    names = _lock_families([result])
    stats = [result["locks"][n] for n in names]
    lcolors = _lock_colors(names)
    y = np.arange(len(names))
    ax_locks.barh(y, [_ms(s["wait_ns"]) for s in stats], color=[lcolors[n] for n in names])
    ax_locks.set_yticks(y, names)
    ax_locks.invert_yaxis()
    for i, s in enumerate(stats):
        ax_locks.annotate(
            f" {s['contended']}/{s['acquisitions']} contended",
            (_ms(s["wait_ns"]), i),
            va="center",
            fontsize=7,
        )
    ax_locks.margins(x=0.35)
    ax_locks.set_xlim(left=0)
    if not any(s["wait_ns"] for s in stats):
        ax_locks.text(0.5, 0.5, "no lock waits", transform=ax_locks.transAxes, ha="center")
    ax_locks.set_xlabel("lock wait (ms, summed over CPUs)")
    ax_locks.set_title("lock wait by lock")
    ax_locks.grid(True, axis="x", alpha=0.3)

    ax_held.set_gid("held")
    _held_panel(ax_held, [result], {cfg["policy"]: color})
    ax_held.set_title("memory held after exit")

    ax_backlog.set_gid("backlog")
    series = result["series"]
    _steps(ax_backlog, series["zombies"], 1.0, color="tab:gray", label="zombies")
    _steps(ax_backlog, series["reaper_backlog"], 1.0, color="tab:red", label="reaper backlog")
    ax_backlog.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax_backlog.set_xlim(left=0)
    ax_backlog.set_ylim(bottom=0)
    ax_backlog.set_xlabel("simulated time (ms)")
    ax_backlog.set_ylabel("count")
    ax_backlog.set_title("reaper backlog (threads on deadproc) and zombies")
    ax_backlog.legend(fontsize=8, loc="upper left")
    ax_backlog.grid(True, alpha=0.3)
    return fig


# -- output ------------------------------------------------------------------------


def _figure(results: dict[str, Any] | list[dict[str, Any]]) -> Figure:
    """A single result (what ``run`` writes) gets the run figure; a list (what
    ``compare`` writes) the comparison."""
    return run_figure(results) if isinstance(results, dict) else compare_figure(results)


def render(results: dict[str, Any] | list[dict[str, Any]], fmt: str) -> bytes:
    """The figure for ``results`` as ``png`` or ``svg`` bytes."""
    if f".{fmt}" not in SUFFIXES:
        raise ValueError(f"plot format must be png or svg (got {fmt!r})")
    with _style():
        fig = _figure(results)
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, metadata=_META[fmt])
    return buf.getvalue()


def write_plot(results: dict[str, Any] | list[dict[str, Any]], path: str) -> None:
    """The figure written to ``path``, PNG or SVG by its suffix, whole or not at all."""
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: a plot must end in .png or .svg")
    write_atomic(path, render(results, suffix[1:]))
