"""exitsim fit: the solver recovers known multipliers from a synthetic model, and the
calibrated profile it writes is a valid profile that says what was fitted."""

from __future__ import annotations

import math
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from exitsim.calibrate import fit as fitmod
from exitsim.calibrate.fit import (
    GROUPS,
    TARGETS,
    FitResult,
    calibrated_profile,
    check,
    fit,
    overrides,
)
from exitsim.cli import main
from exitsim.machine.costs import builtin_profile, parse_profile, source_kind

#: The multipliers the synthetic model below answers to.
TRUE = {"fault": 3.0, "kernel_lock": 0.5, "pageq": 20.0}


def _fake_simulate(cfg: Any) -> dict[str, Any]:
    """A stand-in for the simulator whose metrics are known power laws of the fitted
    costs: each target's metric equals its published value exactly at TRUE."""
    base = builtin_profile(cfg.arch).costs
    # Each group read from its largest key, where rounding to whole ns costs least.
    keys = {g: max(GROUPS[g], key=lambda k: getattr(base, k)) for g in GROUPS}
    m = {g: cfg.cost_overrides[k] / getattr(base, k) for g, k in keys.items()}
    by = {t.fits: t.value for t in TARGETS if t.fits}
    sys_user = by["fault"] * (m["fault"] / TRUE["fault"]) ** 0.8
    kl = by["kernel_lock"] * (m["kernel_lock"] / TRUE["kernel_lock"]) ** 1.5
    pq = by["pageq"] * (m["pageq"] / TRUE["pageq"]) ** 0.5
    busy = 1_000_000
    return {
        "processes": {"wait4_sys_ns_total": round(sys_user * 1e9), "wait4_user_ns_total": 10**9},
        "locks": {
            "kernel_lock": {"wait_ns": round(kl * busy)},
            "pageqlock": {"wait_ns": round(pq * busy)},
        },
        "machine": {"user_ns": busy // 2, "sys_ns": busy // 2, "spin_ns": 0, "intr_ns": 0},
    }


def test_the_solver_recovers_known_multipliers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fitmod, "simulate", _fake_simulate)
    res = fit(units=10)
    for g, want in TRUE.items():
        assert res.multipliers[g] == pytest.approx(want, rel=0.03), g
    assert res.bounded == []
    rows = {c["target"]: c for c in check(res, [0, 1])}
    for t in TARGETS:
        if t.fits:
            assert abs(rows[t.name]["error"]) < 0.03
            assert rows[t.name]["role"] == f"fits {t.fits}"
        else:
            assert rows[t.name]["role"] == "held back"


def test_an_unreachable_target_leaves_its_multiplier_at_a_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def flat(cfg: Any) -> dict[str, Any]:
        r = _fake_simulate(cfg)
        r["locks"]["kernel_lock"]["wait_ns"] = 10**9  # spin far above 18% whatever it costs
        return r

    monkeypatch.setattr(fitmod, "simulate", flat)
    res = fit(units=10)
    assert res.bounded == ["kernel_lock"]
    assert res.multipliers["kernel_lock"] == pytest.approx(fitmod.LOW, rel=0.02)


def test_overrides_scale_every_key_of_a_group() -> None:
    mult = {"fault": 2.0, "kernel_lock": 0.5, "pageq": 1.0}
    got = overrides("arm64", mult)
    base = builtin_profile("arm64").costs
    assert got["fault_ns"] == 2 * base.fault_ns
    assert got["namei_ns"] == round(base.namei_ns / 2)
    assert got["readlink_ns"] == round(base.readlink_ns / 2)
    assert "syscall_ns" not in got  # entry and return take no lock


def test_the_calibrated_profile_is_a_profile_that_says_what_was_fitted() -> None:
    res = FitResult(60, "locked-faults", {"fault": 4.0, "kernel_lock": 1.0, "pageq": 2.5}, [], 9)
    text = calibrated_profile("amd64", res, date(2026, 12, 5))
    prof = parse_profile(text, "calibrated-amd64.toml")
    base = builtin_profile("amd64")
    assert prof.arch == "amd64"
    assert prof.costs.fault_ns == 4 * base.costs.fault_ns
    assert prof.costs.pageq_ns == round(2.5 * base.costs.pageq_ns)
    assert "fitted by exitsim fit (2026-12-05" in prof.sources["fault_ns"]
    assert "locked-faults" in prof.sources["pageq_ns"]
    assert source_kind(prof.sources["fault_ns"]) == "fitted"
    assert source_kind(prof.sources["ctxsw_ns"]) == source_kind(base.sources["ctxsw_ns"])
    assert prof.sources["tlb_local_flush_ns"] == base.sources["tlb_local_flush_ns"]
    assert prof.costs.ctxsw_ns == base.costs.ctxsw_ns


@pytest.mark.parametrize(
    "argv, words",
    [
        (["fit", "--units", "5"], "--units"),
        (["fit", "--seeds", "0"], "--seeds"),
        (["fit", "-o", "/nonexistent-dir"], "--output-dir"),
    ],
)
def test_cli_fit_bad_flags_are_one_line_and_status_2(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


def test_cli_fit_writes_both_profiles(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(fitmod, "simulate", _fake_simulate)
    assert main(["fit", "--units", "10", "--seeds", "2", "-o", str(tmp_path), "-q"]) == 0
    out = capsys.readouterr().out
    assert "held back" in out and "multipliers:" in out
    for arch in ("amd64", "arm64"):
        prof = parse_profile((tmp_path / f"calibrated-{arch}.toml").read_text(), arch)
        assert math.isclose(
            prof.costs.pageq_ns / builtin_profile(arch).costs.pageq_ns, 20.0, rel_tol=0.05
        )
