"""``compare`` answers first: the verdict's numbers are the Results' own, identical
work is named with its reason, and the tables fit the terminal with every design
name whole."""

from __future__ import annotations

import functools
from typing import Any

import pytest
from rich.console import Console

from exitsim.report.compare import DROP_ORDER, METRICS, compare_tables
from exitsim.report.verdict import verdict_lines
from exitsim.sim import SimConfig, simulate

DESIGNS = ("reaper", "purge", "purge+pmap_purge")


@functools.cache
def _results(seeds: tuple[int, ...] = (0,)) -> tuple[dict[str, Any], ...]:
    return tuple(
        simulate(SimConfig(policy=p, arch=a, cpus=c, seed=s, workload_params={"jobs": 4}))
        for a in ("arm64", "amd64")
        for c in (2, 4)
        for s in seeds
        for p in DESIGNS
    )


def _one(arch: str, cpus: int, policy: str, seed: int = 0) -> dict[str, Any]:
    return next(
        r
        for r in _results()
        if (r["config"]["arch"], r["config"]["cpus"], r["config"]["policy"], r["config"]["seed"])
        == (arch, cpus, policy, seed)
    )


def test_the_verdict_is_per_arch_at_the_largest_cpu_count() -> None:
    lines = verdict_lines(list(_results()), "reaper")
    heads = [ln for ln in lines if not ln.startswith(" ")]
    assert heads == [
        "arm64, 4 CPUs (seed 0), against reaper:",
        "amd64, 4 CPUs (seed 0), against reaper:",
    ]


def test_the_verdicts_changes_are_the_results_ratios() -> None:
    lines = verdict_lines(list(_results()), "reaper")
    row = next(ln for ln in lines if ln.strip().startswith("purge ") and "wall" in ln)
    base, purge = _one("arm64", 4, "reaper"), _one("arm64", 4, "purge")
    wall = purge["makespan_ns"] / base["makespan_ns"]
    want = f"x{wall:.1f}" if wall >= 2 else f"{(wall - 1) * 100:+.1f}%"
    assert f"wall {want}," in row
    sys_q = purge["processes"]["wait4_sys_ns_total"] / base["processes"]["wait4_sys_ns_total"]
    want_sys = f"x{sys_q:.1f}" if sys_q >= 2 else f"{(sys_q - 1) * 100:+.1f}%"
    assert f"wait4 sys {want_sys}," in row
    tlb = sum(
        purge["tlb"][k]
        for k in ("page_invalidations", "asid_flushes", "full_flushes", "ipis", "broadcasts")
    ) / sum(
        base["tlb"][k]
        for k in ("page_invalidations", "asid_flushes", "full_flushes", "ipis", "broadcasts")
    )
    assert row.endswith(f"TLB ops x{tlb:.1f}" if tlb >= 2 else f"TLB ops {(tlb - 1) * 100:+.1f}%")


def test_identical_work_is_named_with_its_reason_on_amd64_only() -> None:
    lines = verdict_lines(list(_results()), "reaper")
    amd = lines[lines.index("amd64, 4 CPUs (seed 0), against reaper:") :]
    arm = lines[: lines.index("amd64, 4 CPUs (seed 0), against reaper:")]
    said = [ln for ln in amd if "identical work" in ln]
    assert said == [
        "  purge+pmap_purge did identical work to purge: they differ only in pmap_purge, "
        "which exists on arm64 (and sparc64) but not on amd64, so both run the same code."
    ]
    assert not any("identical" in ln for ln in arm)


def test_several_seeds_give_intervals() -> None:
    results = list(_results((0, 1, 2)))
    lines = verdict_lines(results, "reaper")
    assert lines[0] == "arm64, 4 CPUs (3 seeds, 95% intervals), against reaper:"
    row = next(ln for ln in lines if ln.strip().startswith("purge ") and "wall" in ln)
    assert row.count("[") == 4 and " .. " in row


@pytest.mark.parametrize("width", [60, 80, 100, 200])
def test_the_tables_fit_the_width_with_names_whole(width: int) -> None:
    console = Console(width=width, record=True, force_terminal=False)
    for t in compare_tables(list(_results()), "reaper", width):
        console.print(t)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= width
    for name in DESIGNS:
        assert f" {name} " in text
    assert "wall ms" in text


def test_columns_go_in_the_documented_order() -> None:
    def headers(width: int) -> list[str]:
        t = compare_tables(list(_results()), "reaper", width)[0]
        return [str(c.header) for c in t.columns]

    assert headers(400) == ["design", *(title for title, _, _ in METRICS)]
    kept = headers(70)
    gone = [c for c in DROP_ORDER if c not in kept]
    assert gone and gone == list(DROP_ORDER[: len(gone)])
    assert kept[:2] == ["design", "wall ms"]


def test_a_one_design_table_claims_no_ratio() -> None:
    r = _one("arm64", 2, "purge")
    (t,) = compare_tables([r], "purge", 200)
    assert "ratio" not in str(t.title)
