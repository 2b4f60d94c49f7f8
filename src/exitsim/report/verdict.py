"""The answer first: what a comparison says, per arch at its largest CPU count, in a
few lines a reader takes in at a glance. For each design against the baseline: the
change in wall time, in the sys time ``wait4`` reports, in kernel-lock wait and in
TLB operations; over several seeds, the ratio's geometric mean with its 95% interval
(report/claims.py). Two designs whose Results are identical but for their names are
said to have done identical work, with the reason where the model knows it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from exitsim.report.claims import ratio, ratio_interval, same_work

#: (what, how to read it from a Result)
FIGURES: tuple[tuple[str, Callable[[dict[str, Any]], float]], ...] = (
    ("wall", lambda r: float(r["makespan_ns"])),
    ("wait4 sys", lambda r: float(r["processes"]["wait4_sys_ns_total"])),
    ("kernel-lock wait", lambda r: float(r["locks"]["kernel_lock"]["wait_ns"])),
    (
        "TLB ops",
        lambda r: float(
            sum(
                r["tlb"][k]
                for k in (
                    "page_invalidations",
                    "asid_flushes",
                    "full_flushes",
                    "ipis",
                    "broadcasts",
                )
            )
        ),
    ),
)


def _change(ratios: list[float]) -> str:
    """A ratio as a change: "+12.3%", "-4.0%", "x35.2" past doubling, with its
    interval when there are several."""
    mean, lo, hi = ratio_interval(ratios)

    def one(q: float) -> str:
        if math.isinf(q):
            return "from 0"
        if q >= 2:
            return f"x{q:.1f}"
        return f"{(q - 1) * 100:+.1f}%"

    if len(ratios) == 1:
        return one(mean)
    return f"{one(mean)} [{one(lo)} .. {one(hi)}]"


def _why_identical(a: str, b: str, arch: str) -> str:
    pair = {a, b}
    if pair == {"purge", "purge+pmap_purge"}:
        return (
            "they differ only in pmap_purge, which exists on arm64 (and sparc64) "
            f"but not on {arch}, so both run the same code"
        )
    return "their Results are the same but for the design's name"


def verdict_lines(results: list[dict[str, Any]], baseline: str) -> list[str]:
    """The verdict as lines of text, an arch at a time, in the order first seen."""
    by: dict[tuple[str, int, str], dict[int, dict[str, Any]]] = {}
    archs: dict[str, int] = {}
    designs: dict[str, None] = {}
    for r in results:
        cfg = r["config"]
        key = (cfg["arch"], cfg["cpus"], cfg["policy"])
        by.setdefault(key, {})[cfg["seed"]] = r
        archs[cfg["arch"]] = max(archs.get(cfg["arch"], 0), cfg["cpus"])
        designs[cfg["policy"]] = None
    lines: list[str] = []
    for arch, cpus in archs.items():
        base = by.get((arch, cpus, baseline))
        if base is None:
            continue
        seeds = sorted(base)
        n = len(seeds)
        seed_text = f"seed {seeds[0]}" if n == 1 else f"{n} seeds, 95% intervals"
        lines.append(f"{arch}, {cpus} CPUs ({seed_text}), against {baseline}:")
        width = max(len(d) for d in designs)
        same: list[tuple[str, str]] = []
        seen: list[str] = []
        for d in designs:
            runs = by.get((arch, cpus, d))
            if d == baseline or runs is None or sorted(runs) != seeds:
                continue
            twin = next(
                (
                    e
                    for e in [baseline, *seen]
                    if all(same_work(runs[s]) == same_work(by[(arch, cpus, e)][s]) for s in seeds)
                ),
                None,
            )
            seen.append(d)
            if twin is not None:
                same.append((d, twin))
                continue
            parts = []
            for what, read in FIGURES:
                ratios = [ratio(read(runs[s]), read(base[s])) for s in seeds]
                parts.append(f"{what} {_change(ratios)}")
            lines.append(f"  {d:<{width}}  " + ", ".join(parts))
        for d, twin in same:
            lines.append(f"  {d} did identical work to {twin}: {_why_identical(d, twin, arch)}.")
    return lines
