"""exitsim sensitivity: the ranges rule, the OAT and LHS runs, the rank correlation,
and the command end to end against the Results in its store."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from exitsim.cli import main
from exitsim.experiment import sensitivity as sn
from exitsim.experiment.store import Store, config_key, result_text
from exitsim.machine.costs import COST_KEYS, builtin_profile, source_kind
from exitsim.report import claims as cl
from exitsim.sim import simulate
from tests.clikit import assert_usage_error

CLAIM = {c.key: c for c in cl.CLAIMS}


# -- ranges ---------------------------------------------------------------------------


def test_each_key_is_scaled_by_what_backs_its_value() -> None:
    arm, amd = builtin_profile("arm64"), builtin_profile("amd64")
    ctx = sn.param_range(arm, "ctxsw_ns")  # an assumption
    assert ctx is not None and ctx.kind == "assumption"
    assert (ctx.low, ctx.high) == (500, 8_000)
    tlbi = sn.param_range(arm, "tlbi_ns")  # cost-anchors row 9
    assert tlbi is not None and tlbi.kind == "sourced"
    assert (tlbi.low, tlbi.high) == (175, 700)
    namei = sn.param_range(amd, "namei_ns")  # measured here
    assert namei is not None and namei.kind == "measured"
    assert (namei.low, namei.high) == (round(714 * 0.5), 714 * 2)
    for key in COST_KEYS:
        r = sn.param_range(arm, key)
        assert r is not None
        assert (r.low_factor, r.high_factor) == sn.SCALES[source_kind(arm.sources[key])]


def test_a_zero_key_is_skipped_with_a_reason_and_the_quantum_stays_positive() -> None:
    amd = builtin_profile("amd64")
    assert sn.param_range(amd, "tlbi_ns") is None
    got, skipped = sn.ranges(amd, ("tlbi_ns", "ctxsw_ns"))
    assert [r.key for r in got] == ["ctxsw_ns"]
    assert "0 in the amd64 profile" in skipped["tlbi_ns"]
    q = sn.Range("quantum_ns", "sourced", 1, 0.25, 4.0)
    assert q.low == 1 and q.value(0.2) == 1
    assert sn.Range("pte_ns", "sourced", 1, 0.25, 4.0).low == 0


def test_the_default_keys_are_the_suspects_and_the_assumptions() -> None:
    for arch in ("amd64", "arm64"):
        prof = builtin_profile(arch)
        keys = sn.default_params(prof)
        want = {
            k for k in COST_KEYS if k in sn.SUSPECTS or source_kind(prof.sources[k]) == "assumption"
        }
        assert set(keys) == want
        assert keys == [k for k in COST_KEYS if k in want]
    assert set(sn.SUSPECTS) <= set(COST_KEYS)


@pytest.mark.parametrize(
    ("text", "needle"),
    [("nope_ns", "unknown cost key"), ("tlbi_ns,,pte_ns", "empty"), ("pte_ns,pte_ns", "twice")],
)
def test_bad_params_are_refused(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        sn.parse_params(text)


# -- OAT and LHS ----------------------------------------------------------------------


def _plan(**kw: object) -> sn.Plan:
    args: dict[str, object] = {
        "arches": ["arm64"],
        "params": ("tlbi_ns", "tlbi_receiver_ns"),
        "cpus": 4,
        "seeds": 2,
    }
    args |= kw
    return sn.make_plan([CLAIM["arm64-purge-wall"]], **args)  # type: ignore[arg-type]


def test_oat_moves_one_charged_key_at_a_time_to_each_end() -> None:
    plan = _plan()
    prof = sn.profile_configs(plan)
    assert len(prof) == 2 * 2  # purge and reaper, two seeds
    assert all(not c.cost_overrides for c in prof)
    everything = {"arm64": frozenset(COST_KEYS)}
    configs = sn.oat_configs(plan, everything)
    assert len(configs) == 2 * 2 * 2 * 2  # keys x ends x designs x seeds
    tlbi = {r.key: r for r in plan.ranges["arm64"]}
    for c in configs:
        ((key, value),) = c.cost_overrides.items()
        assert value in (tlbi[key].low, tlbi[key].high)
        assert c.cpus == 4 and c.arch == "arm64" and c.policy in ("purge", "reaper")
    # A key no profile run reads is not run: its ends would give the profile's Results.
    only = {"arm64": frozenset({"tlbi_ns"})}
    assert {k for c in sn.oat_configs(plan, only) for k in c.cost_overrides} == {"tlbi_ns"}


def test_the_star_baseline_is_the_one_asked_for() -> None:
    plan = _plan(baseline="reaper-fifo")
    assert {c.policy for c in sn.profile_configs(plan)} == {"purge", "reaper-fifo"}
    (t,) = sn.targets([CLAIM["release-all"]], ["amd64"], "reaper-fifo")
    assert t.baseline == "purge"  # a claim with a baseline of its own keeps it


def test_lhs_hits_each_stratum_once_per_key_and_is_fixed_by_its_seed() -> None:
    n, k = 9, 4
    u = sn.lhs_unit(n, k, 5)
    for j in range(k):
        assert sorted(np.floor(u[:, j] * n).astype(int)) == list(range(n))
    assert np.array_equal(u, sn.lhs_unit(n, k, 5))
    assert not np.array_equal(u, sn.lhs_unit(n, k, 6))
    rs = list(_plan().ranges["arm64"])
    v = sn.lhs_values(rs, n, 3)
    for j, r in enumerate(rs):
        lo, hi = r.profile * r.low_factor, r.profile * r.high_factor
        assert ((v[:, j] >= lo) & (v[:, j] < hi)).all()
        strata = np.floor((np.log(v[:, j]) - math.log(lo)) / (math.log(hi) - math.log(lo)) * n)
        assert sorted(strata.astype(int)) == list(range(n))


def test_lhs_samples_pair_design_and_baseline_on_one_seed_each() -> None:
    plan = _plan(lhs=4, lhs_seed=1)
    configs = sn.lhs_configs(plan)
    assert len(configs) == 4 * 2
    for i in range(4):
        pair = [c for c in configs if c.seed == i]
        assert {c.policy for c in pair} == {"purge", "reaper"}
        assert pair[0].cost_overrides == pair[1].cost_overrides
        assert set(pair[0].cost_overrides) == {"tlbi_ns", "tlbi_receiver_ns"}
    assert sn.lhs_configs(plan) == configs
    with pytest.raises(ValueError, match="at least 3"):
        _plan(lhs=2)


def test_rank_correlation_by_hand() -> None:
    assert list(sn.ranks([10, 20, 20, 30])) == [1, 2.5, 2.5, 4]
    # y ranks 1, 2, 3.5, 5, 3.5 against 1..5: sum dx*dy = 8, sum dx^2 = 10,
    # sum dy^2 = 9.5, so rho = 8 / sqrt(95).
    rho = sn.spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7])
    assert rho == pytest.approx(8 / math.sqrt(95))
    assert sn.spearman([1, 2, 3], [1, 10, 1000]) == pytest.approx(1.0)
    assert sn.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert sn.spearman([1, 2, 3], [4, 4, 4]) is None
    assert sn.spearman([1, 2], [1, 2]) is None


def test_the_probe_gives_the_result_of_a_plain_run_and_what_it_read() -> None:
    cfg = sn.config("purge", "arm64", 2, 0, {"jobs": 2, "cc1_user_ms": 1}, {})
    key, text, keys, _ = sn.probe(cfg)
    assert key == config_key(cfg)
    assert text == result_text(simulate(cfg))
    assert {"tlbi_ns", "tlbi_receiver_ns", "fork_ns"} <= set(keys)
    # Accounting is off (kern/exit.py ACCOUNTING): acct_process never charges.
    assert "acct_ns" not in keys


# -- the command ----------------------------------------------------------------------

ARGS = [
    "sensitivity",
    "--claim",
    "arm64-purge-wall",
    "--params",
    "tlbi_ns,tlbi_receiver_ns",
    "--cpus",
    "4",
    "--seeds",
    "2",
    "--param",
    "jobs=8",
    "--workers",
    "1",
    "--lhs",
    "3",
]


def _ratios(store: Store, plan: sn.Plan, t: sn.Target, costs: dict[str, int]) -> list[float]:
    c, w = t.claim, plan.workload_of(t)
    out = []
    for s in plan.seeds:
        mine = store.get(config_key(sn.config(c.design, t.arch, plan.cpus, s, w, costs)))
        theirs = store.get(config_key(sn.config(t.baseline, t.arch, plan.cpus, s, w, costs)))
        assert mine is not None and theirs is not None
        out.append(cl.ratio(c.read(mine), c.read(theirs)))
    return out


def test_the_command_reports_what_the_stored_results_give(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, out, png = tmp_path / "s.sqlite", tmp_path / "s.json", tmp_path / "s.png"
    argv = [*ARGS, "--store", str(db), "-o", str(out), "--plot", str(png)]
    assert main(argv) == 0
    first = capsys.readouterr()
    assert "2 parameters" in first.err and "to run" in first.err
    assert "arm64-purge-wall on arm64" in first.out
    rec = json.loads(out.read_text())
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (entry,) = rec["claims"]
    plan = _plan(workload={"jobs": 8}, lhs=3)
    (t,) = plan.targets
    with Store(db) as store:
        mean, lo, hi = cl.ratio_interval(_ratios(store, plan, t, {}))
        assert entry["profile"]["ratio"] == round(mean, 4)
        assert entry["profile"]["verdict"] == cl.verdict(cl.UP, lo, hi)
        for e in entry["params"]:
            assert e["charged"]
            for end in ("low", "high"):
                mean, lo, hi = cl.ratio_interval(_ratios(store, plan, t, {e["key"]: e[end]}))
                got = e[f"at_{end}"]
                assert (got["ratio"], got["lo"], got["hi"]) == tuple(
                    round(x, 4) for x in (mean, lo, hi)
                )
                assert got["verdict"] == cl.verdict(cl.UP, lo, hi)
            was = entry["profile"]["verdict"]
            ends = {e["at_low"]["verdict"], e["at_high"]["verdict"]}
            assert e["flips"] == (ends != {was})
            assert e["reverses"] == ({"holds", "fails"} <= ends | {was})
        rows = len(store)
    swings = [e["swing"] for e in entry["params"]]
    assert swings == sorted(swings, reverse=True)
    assert entry["lhs"]["samples"] == 3 and len(entry["lhs"]["spearman"]) == 2
    # Kettenis's mechanism: the purge issues many more broadcast TLBIs than the
    # reaper, so the dearer each is, the slower the purge against the reaper.
    for e in entry["params"]:
        assert e["at_low"]["ratio"] < entry["profile"]["ratio"] < e["at_high"]["ratio"]

    # A restart finds every run in the store, runs none and says the same.
    assert main([*argv, "--json"]) == 0
    again = capsys.readouterr()
    assert "0 profile runs to run first" in again.err and ", 0 to run" in again.err
    assert again.out == out.read_text()
    with Store(db) as store:
        assert len(store) == rows


def test_the_tornado_is_reproducible(tmp_path: Path) -> None:
    from exitsim.report.tornado import render

    db = tmp_path / "s.sqlite"
    argv = [*ARGS, "--params", "tlbi_ns", "--lhs", "0", "--seeds", "2", "--store", str(db)]
    assert main([*argv, "-q", "-o", str(tmp_path / "r.json")]) == 0
    rec = json.loads((tmp_path / "r.json").read_text())
    assert render(rec, "svg") == render(rec, "svg")


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--params", "nope_ns"], "unknown cost key"),
        (["--params", "tlbi_ns,,pte_ns"], "empty entry"),
        (["--lhs", "2"], "--lhs"),
        (["--lhs", "-1"], "--lhs"),
        (["--claim", "nope"], "unknown claim"),
        (["--claim", "arm64-tlbi", "--arches", "amd64"], "no claim concerns"),
        (["--params", "tlbi_ns", "--arches", "amd64", "--claim", "release-all"], "nothing to vary"),
        (["--baseline", "purge"], "--baseline"),
        (["--param", "nope=1"], "unknown parameter"),
        (["--plot", "x.pdf"], "--plot"),
        (["--scheduler", "tcp://h:1", "--dask-local", "2"], "not both"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(
    extra: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, out = tmp_path / "s.sqlite", tmp_path / "o.json"
    assert_usage_error(["sensitivity", *extra, "--store", str(db), "-o", str(out)], needle, capsys)
    assert list(tmp_path.iterdir()) == []
