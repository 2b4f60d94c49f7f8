"""Plots of results (matplotlib, Agg; PNG or SVG by the file's suffix)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_compare(results: list[dict[str, Any]], path: str) -> None:
    """Wall time against CPUs, one line per design, one panel per arch. The file is
    written whole (temporary name, then rename)."""
    arches = sorted({r["config"]["arch"] for r in results})
    fig, axes = plt.subplots(1, len(arches), figsize=(6 * len(arches), 4), squeeze=False)
    for ax, arch in zip(axes[0], arches, strict=True):
        designs: dict[str, list[tuple[int, float]]] = {}
        for r in results:
            if r["config"]["arch"] == arch:
                designs.setdefault(r["config"]["policy"], []).append(
                    (r["config"]["cpus"], r["makespan_ns"] / 1e6)
                )
        for name, pts in designs.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("CPUs")
        ax.set_ylabel("wall time (ms)")
        ax.set_title(arch)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp{target.suffix}")
    fmt = target.suffix.lstrip(".").lower() or "png"
    meta = {"Software": None} if fmt == "png" else {"Date": None}
    fig.savefig(tmp, format=fmt, metadata=meta)
    plt.close(fig)
    tmp.replace(target)
