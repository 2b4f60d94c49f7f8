"""``exitsim calibrate``: the host microbenchmarks, the linux-host profile fitted to
them, and the model set beside them (src/exitsim/calibrate/, docs/calibration.md).

No test here asserts how fast anything is: the quick run really forks and measures,
and what is checked is the shape of what it writes, the sources of the keys it sets,
and the arithmetic on known inputs (the model's own figures fed back as measurements
must give back the profile that made them, and a 0% error)."""

from __future__ import annotations

import datetime
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from exitsim.calibrate.hostcheck import check_rows
from exitsim.calibrate.hostprofile import MEASURED_BY, MEASURED_KEYS, TEARDOWN_KEYS, fit_profile
from exitsim.calibrate.measured import from_doc
from exitsim.calibrate.micro import MIB_PAGES, Layout, MicroSpec, model_figures, run_bench
from exitsim.calibrate.stats import (
    figure,
    line_fit,
    median,
    quantile,
    relative_error,
    slopes_by_repeat,
)
from exitsim.cli import main
from exitsim.machine.costs import COST_KEYS, CostProfile, builtin_profile, load_profile
from tests.clikit import assert_usage_error

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "src" / "exitsim" / "machine" / "profiles" / "linux-host.toml"

# -- the arithmetic -----------------------------------------------------------------------


def test_median_and_quantiles_interpolate_between_ranks() -> None:
    assert median([5, 1, 3]) == 3
    assert median([4, 1, 3, 2]) == 2.5
    vals = list(range(11))  # 0..10: the q-quantile is 10 q
    assert quantile(vals, 0.1) == pytest.approx(1.0)
    assert quantile(vals, 0.9) == pytest.approx(9.0)
    assert quantile([7], 0.9) == 7
    with pytest.raises(ValueError):
        quantile([], 0.5)


def test_figure_gives_median_and_spread() -> None:
    f = figure([10, 20, 30, 40, 1000])  # one outlier: the median does not move
    assert f.median == 30
    assert (f.q1, f.q3, f.iqr) == (20, 40, 20)
    assert f.min == 10 and f.max == 1000 and f.n == 5
    assert f.p10 == pytest.approx(14.0)
    assert f.p90 == pytest.approx(616.0)
    assert f.as_dict()["median"] == 30.0


def test_line_fit_finds_the_slope_and_intercept_of_a_line() -> None:
    xs = [0, 4096, 8192, 16384]
    slope, icpt = line_fit(xs, [300_000 + 200 * x for x in xs])
    assert slope == pytest.approx(200.0)
    assert icpt == pytest.approx(300_000.0)
    # Least squares through points off the line: (0,1), (1,3), (2,2) -> y = 0.5x + 1.5.
    assert line_fit([0, 1, 2], [1, 3, 2]) == pytest.approx((0.5, 1.5))
    with pytest.raises(ValueError):
        line_fit([1, 1], [2, 3])


def test_slopes_are_fitted_per_repeat() -> None:
    slopes, icpts = slopes_by_repeat([0, 10], [[5, 25], [5, 45], [0, 10]])
    assert slopes == pytest.approx([2.0, 4.0, 1.0])
    assert icpts == pytest.approx([5.0, 5.0, 0.0])
    assert median(slopes) == 2.0


def test_relative_error() -> None:
    assert relative_error(120, 100) == pytest.approx(0.2)
    assert relative_error(80, 100) == pytest.approx(-0.2)
    assert relative_error(5, 0) is None


# -- the model's own figures as measurements ----------------------------------------------

SPEC = MicroSpec(
    ncpu=2,
    mib=(0, 1, 2),
    big_mib=2,
    counts=(1, 2),
    layout=Layout(entries=40, anon_pages=300, child_faults=20, parent_faults=10),
    program_pages=9,
    exec_faults=30,
)
REPEATS = 3


def rep(row: dict[str, int]) -> dict[str, list[int]]:
    """The same sample in every repeat, as host.py's columns."""
    return {k: [v] * REPEATS for k, v in row.items()}


def med(rows: list[dict[str, int]]) -> dict[str, int]:
    """Each field's median over the model's runs, as micro.model_figures takes it."""
    return {k: round(median([r[k] for r in rows])) for k in rows[0]}


def model_host_doc(spec: MicroSpec, prof: CostProfile) -> dict[str, Any]:
    """The document host.py would print if the host were the model: each benchmark's
    model figures as its samples (all repeats alike), with the model's layout.
    Page-table copies at fork, which the model does not make, cost nothing here."""
    lay = spec.layout
    te = run_bench(spec, prof, "touch_exit")
    fe = med(run_bench(spec, prof, "fork_exit")["0"])["latency_ns"]
    ex = med(run_bench(spec, prof, "exec")["0"])["latency_ns"]
    cw = run_bench(spec, prof, "cow")
    fl = run_bench(spec, prof, "file")
    cc = run_bench(spec, prof, "concurrent")
    big = spec.big_mib * MIB_PAGES

    samples = {
        "fork_exit": {
            str(m): rep(
                {
                    "latency_ns": fe,
                    "fork_ns": 0,
                    "exit_ns": fe,
                    "child_minflt": lay.child_faults,
                    "parent_minflt": lay.parent_faults,
                    "child_cpu_ns": 0,
                }
            )
            for m in spec.mib
        },
        "touch_exit": {
            str(m): rep(med(te[str(m)]) | {"write_ns": 0, "child_minflt": 0, "child_cpu_ns": 0})
            for m in spec.mib
        },
        "copy": {
            str(spec.big_mib): rep(
                {"zero_ns": prof.costs.page_zero_ns * big, "copy_ns": prof.costs.page_copy_ns * big}
            )
        },
        "exec": {
            "0": rep(
                {
                    "latency_ns": ex,
                    "child_minflt": spec.exec_faults + lay.child_faults,
                    "child_cpu_ns": 0,
                }
            )
        },
        "cow": {
            str(m): rep(med(cw[str(m)]) | {"write_ns": 0, "child_minflt": 0}) for m in spec.mib
        },
        "file": {
            str(m): rep(med(fl[str(m)]) | {"read_ns": 0, "child_minflt": m * MIB_PAGES})
            for m in spec.mib
            if m
        },
        "concurrent": {
            str(c): {"exit_ns": [r["exit_ns"] for r in cc[str(c)]]} for c in spec.counts
        },
    }
    return {
        "format": 1,
        "date": "2026-01-02",
        "machine": {"kernel": "model", "cpu": "exitsim", "ncpu": spec.ncpu},
        "load_1min": [0.0, 0.0],
        "seconds": 0.0,
        "repeats": REPEATS,
        "warmup": 0,
        "mib": list(spec.mib),
        "big_mib": spec.big_mib,
        "program": {"path": "/bin/true", "bytes": spec.program_pages * 4096},
        "parent": {"entries": lay.entries, "anon_pages": lay.anon_pages, "file_pages": 0},
        "samples": samples,
    }


def doubled_teardown(prof: CostProfile) -> CostProfile:
    """``prof`` with every per-page teardown key twice its value."""
    return replace(
        prof, costs=replace(prof.costs, **{k: 2 * getattr(prof.costs, k) for k in TEARDOWN_KEYS})
    )


@pytest.fixture(scope="module")
def amd64() -> CostProfile:
    return builtin_profile("amd64")


@pytest.fixture(scope="module")
def model_meas(amd64: CostProfile) -> Any:
    return from_doc(model_host_doc(SPEC, amd64))


def test_measurements_give_the_model_back_the_benchmarks_it_ran(model_meas: Any) -> None:
    assert model_meas.spec() == SPEC


def test_the_model_against_its_own_figures_is_off_by_nothing(
    model_meas: Any, amd64: CostProfile
) -> None:
    """Every row whose figure the model produces compares the model with itself."""
    rows = check_rows(model_meas, amd64)
    names = {r.name for r in rows}
    assert {"teardown_per_mib_ns", "fork_exit_unshared_ns", "fault_per_page_ns"} <= names
    assert {"cow_fault_per_page_ns", "file_fault_per_page_ns", "concurrent_ratio@2"} <= names
    for r in rows:
        assert r.error == pytest.approx(0.0, abs=1e-9), r.name
    assert all(r.ok for r in rows if r.target)
    assert [r.name for r in rows if r.target] == ["teardown_per_mib_ns", "fork_exit_unshared_ns"]


def test_fitting_the_models_own_figures_gives_back_its_profile(
    model_meas: Any, amd64: CostProfile
) -> None:
    """The fit's rules invert the model: measurements the amd64 profile made give the
    amd64 values back, key by key."""
    prof, sources = fit_profile(model_meas, amd64)
    assert set(sources) == set(MEASURED_KEYS)
    for key in MEASURED_KEYS:
        assert getattr(prof.costs, key) == getattr(amd64.costs, key), key
        assert sources[key].startswith(MEASURED_BY)
        assert sources[key].endswith("2026-01-02, Linux model, exitsim, 2 CPUs")


def test_a_slower_teardown_scales_every_teardown_key_alike(
    model_meas: Any, amd64: CostProfile
) -> None:
    """hostprofile's split rule: one factor over TEARDOWN_KEYS, amd64's proportions."""
    slow = doubled_teardown(amd64)
    doc = model_host_doc(SPEC, slow)
    prof, sources = fit_profile(from_doc(doc), amd64)
    for key in TEARDOWN_KEYS:
        assert getattr(prof.costs, key) == pytest.approx(2 * getattr(amd64.costs, key), abs=1)
        assert "split: the per-page teardown keys" in sources[key]


def test_the_models_teardown_per_page_is_linear_in_the_teardown_keys(amd64: CostProfile) -> None:
    """What lets one factor split one slope over several keys: doubling them all
    doubles the slope (to within how the exits of the runs overlap the parent's work;
    pte_ns takes that rest in the fit)."""
    one = model_figures(SPEC, amd64, ("touch_exit",))["teardown_per_page_ns"]
    double = doubled_teardown(amd64)
    two = model_figures(SPEC, double, ("touch_exit",))["teardown_per_page_ns"]
    assert two == pytest.approx(2 * one, rel=0.01)


# -- a real run ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path, Path]:
    """``exitsim calibrate --quick``: really forks, execs and measures, small."""
    d = tmp_path_factory.mktemp("calibrate")
    prof, js = d / "host.toml", d / "host.json"
    rc = main(["calibrate", "--quick", "-o", str(prof), "--json", str(js)])
    return rc, prof, js


def test_a_quick_run_writes_a_profile_load_profile_accepts(
    quick_run: tuple[int, Path, Path],
) -> None:
    rc, path, _ = quick_run
    # 1 only if noise left a fitted key with a negative rest (clamped to 0) and so a
    # target off; the profile is written either way.
    assert rc in (0, 1)
    prof = load_profile(path)
    assert prof.arch == "amd64"
    assert prof.description.startswith("linux-host: this Linux host")
    assert "1-min load" in prof.description


def test_measured_keys_say_so_with_todays_date_and_the_rest_keep_amd64s_sources(
    quick_run: tuple[int, Path, Path],
) -> None:
    _, path, _ = quick_run
    prof = load_profile(path)
    amd64 = builtin_profile("amd64")
    today = datetime.date.today().isoformat()
    for key in COST_KEYS:
        src = prof.sources[key]
        if key in MEASURED_KEYS:
            assert src.startswith(f"{MEASURED_BY} ("), key
            assert f"), {today}, Linux " in src, key
            assert "CPUs" in src
        else:
            assert src == amd64.sources[key], key
            assert getattr(prof.costs, key) == getattr(amd64.costs, key), key


def test_the_json_holds_samples_figures_and_the_model(quick_run: tuple[int, Path, Path]) -> None:
    _, path, js = quick_run
    doc = json.loads(js.read_text())
    assert doc["format"] == 1
    assert doc["host"]["repeats"] == 3 and doc["host"]["mib"] == [0, 1, 2]
    assert len(doc["host"]["samples"]["touch_exit"]["2"]["exit_ns"]) == 3
    assert doc["figures"]["teardown_per_mib_ns"]["unit"] == "ns/MiB"
    assert doc["model"]["profile"] == str(path)
    assert [r["name"] for r in doc["model"]["rows"] if r["target"]] == [
        "teardown_per_mib_ns",
        "fork_exit_unshared_ns",
    ]


def test_saved_measurements_give_the_same_bytes_every_time(
    quick_run: tuple[int, Path, Path], tmp_path: Path
) -> None:
    """A measurement is what it is; what is made from it is deterministic."""
    _, path, js = quick_run
    outs = []
    p, j = tmp_path / "p.toml", tmp_path / "j.json"
    for _ in range(2):
        main(["calibrate", "--measurements", str(js), "-o", str(p), "--json", str(j)])
        outs.append((p.read_bytes(), j.read_bytes()))
    assert outs[0] == outs[1]
    assert outs[0][0] == path.read_bytes()


def test_check_compares_a_profile_without_writing_one(
    quick_run: tuple[int, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, _, js = quick_run
    rc = main(["calibrate", "--measurements", str(js), "--check", str(SHIPPED)])
    assert rc in (0, 1)
    out = capsys.readouterr().out
    assert f"# model: {SHIPPED}, design linux" in out
    assert "teardown per MiB" in out and "fork+exit" in out


# -- the shipped profile -------------------------------------------------------------------


def test_the_shipped_linux_host_profile_is_measured_here_and_amd64_elsewhere() -> None:
    prof = load_profile(SHIPPED)
    amd64 = builtin_profile("amd64")
    assert prof.arch == "amd64" and prof.description.startswith("linux-host:")
    for key in COST_KEYS:
        if key in MEASURED_KEYS:
            assert prof.sources[key].startswith(MEASURED_BY), key
        else:
            assert prof.sources[key] == amd64.sources[key], key


def test_the_shipped_profile_runs_the_linux_design(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["run", "--policy", "linux", "--arch", "amd64", "--cpus", "2", "-q", "--json"]
    argv += ["--profile", str(SHIPPED), "--workload", "forkstorm", "--param", "iterations=3"]
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["config"]["profile"] == str(SHIPPED)


# -- bad flags ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--mib", "16"], "--mib: give at least two sizes"),
        (["--mib", "0,0"], "--mib: 0 is given twice"),
        (["--mib", "0,x"], "--mib: 'x' is not a whole number"),
        (["--mib", "0,99999"], "--mib: 99999 must be from 0 to 1024"),
        (["--repeats", "0"], "--repeats"),
        (["--check", "a.toml", "-o", "b.toml"], "-o: --check compares a profile"),
        (["--measurements", "m.json", "--quick"], "--quick: not with --measurements"),
        (["--check", "/nonexistent/p.toml"], "/nonexistent/p.toml: cannot read"),
        (["--measurements", "/nonexistent/m.json"], "/nonexistent/m.json: cannot read"),
        (["-o", "/nonexistent/dir/p.toml"], "--output: directory /nonexistent/dir"),
        (["--json", "-"], "--json -: standard output already carries the profile"),
    ],
)
def test_bad_flags_are_refused_in_one_line(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_usage_error(["calibrate", *argv], needle, capsys)


def test_a_file_that_is_not_a_measurement_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "m.json"
    bad.write_text('{"format": 1, "date": "2026-01-01"}')
    assert_usage_error(["calibrate", "--measurements", str(bad)], f"{bad}: missing field", capsys)
    bad.write_text("not json")
    assert_usage_error(["calibrate", "--measurements", str(bad)], f"{bad}: not JSON", capsys)
