"""exitsim sweep: a spec checked and expanded, a store that keeps each result once,
a sweep killed with SIGKILL and started again that runs only what is missing, the
same results on a dask LocalCluster as on the local pool, and the report's numbers
read back from the store."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from exitsim.cli import main
from exitsim.experiment.frame import to_frame
from exitsim.experiment.runner import executor, run_missing
from exitsim.experiment.spec import SweepSpecError, load_sweep, parse_seeds
from exitsim.experiment.store import Store, StoreError, config_key, result_text
from exitsim.machine.costs import COST_KEYS, builtin_profile
from exitsim.report.claims import interval, ratio_interval
from exitsim.sim import SimConfig, simulate
from tests.clikit import assert_usage_error

SMALL = """
format = 1
designs = ["reaper", "purge+pmap_purge"]
arches = ["arm64"]
cpus = [2]
seeds = 2
[workload.params]
jobs = 3
cc1_user_ms = [1, 3]
[costs]
tlbi_ns = ["x1", "x4", 500]
"""


def _spec(tmp_path: Path, text: str = SMALL, name: str = "s.toml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def _rows(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT key, result FROM results").fetchall())


def _count(path: Path) -> int:
    """Rows in a store being written by another process: 0 while it is being
    created (no file, no table yet)."""
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            return int(db.execute("SELECT count(*) FROM results").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


# -- the spec ------------------------------------------------------------------


def test_a_spec_expands_to_its_full_factorial(tmp_path: Path) -> None:
    sw = load_sweep(_spec(tmp_path))
    configs = sw.configs()
    assert sw.size() == len(configs) == 2 * 2 * 3 * 2
    assert sw.factors() == {
        "policy": ("reaper", "purge+pmap_purge"),
        "param.cc1_user_ms": (1, 3),
        "cost.tlbi_ns": ("x1", "x4", 500),
    }
    tlbi = builtin_profile("arm64").costs.tlbi_ns
    assert {c.cost_overrides["tlbi_ns"] for c in configs} == {tlbi, 4 * tlbi, 500}
    assert {c.workload_params["cc1_user_ms"] for c in configs} == {1, 3}
    assert all(c.workload_params["jobs"] == 3 for c in configs)
    assert len({config_key(c) for c in configs}) == len(configs)
    # A seed's designs side by side, as compare runs them.
    assert [(c.policy, c.seed) for c in configs[:4]] == [
        ("reaper", 0),
        ("purge+pmap_purge", 0),
        ("reaper", 1),
        ("purge+pmap_purge", 1),
    ]


def test_seed_forms() -> None:
    assert parse_seeds(3) == [0, 1, 2]
    assert parse_seeds("4..6") == [4, 5, 6]
    assert parse_seeds([7, 2]) == [7, 2]
    assert parse_seeds("3,5,9") == [3, 5, 9]
    assert parse_seeds(" 2 ") == [0, 1]
    for bad in (0, "6..4", "x", [], [1, 1], [-1], "1,", "1,01", "1.5", "", 10_001):
        with pytest.raises(SweepSpecError):
            parse_seeds(bad)


BAD_SPECS = [
    ("format = 2\ndesigns = ['reaper']\n", "format"),
    ("format = 1\n", "designs: required field missing"),
    ("format = 1\ndesigns = ['nope']\n", "designs[0]: unknown design 'nope'"),
    ("format = 1\ndesigns = ['reaper', 'reaper']\n", "designs: 'reaper' is given twice"),
    ("format = 1\ndesigns = ['reaper']\narches = ['vax']\n", "arches: unknown arch 'vax'"),
    ("format = 1\ndesigns = ['reaper']\ncpus = [0]\n", "cpus: CPU counts are 1..256"),
    ("format = 1\ndesigns = ['reaper']\ncpus = ['8']\n", "cpus[0]"),
    ("format = 1\ndesigns = ['reaper']\nseeds = '9..1'\n", "seeds: '9..1' is an empty range"),
    ("format = 1\ndesigns = ['reaper']\nbaseline = 'purge'\n", "baseline: 'purge' is not one"),
    ("format = 1\ndesigns = ['reaper']\ncolour = 1\n", "colour: unknown field"),
    ("format = 1\ndesigns = ['reaper']\n[workload]\nname = 'nope'\n", "workload.name"),
    (
        "format = 1\ndesigns = ['reaper']\n[workload.params]\njobs = [4, 0]\n",
        "workload.params.jobs",
    ),
    (
        "format = 1\ndesigns = ['reaper']\n[workload.params]\nwidth = 3\n",
        "workload.params",
    ),
    ("format = 1\ndesigns = ['reaper']\n[costs]\nwarp_ns = 1\n", "costs.warp_ns: unknown cost"),
    ("format = 1\ndesigns = ['reaper']\n[costs]\ntlbi_ns = -1\n", "costs.tlbi_ns: must not"),
    ("format = 1\ndesigns = ['reaper']\n[costs]\ntlbi_ns = 'x-2'\n", "costs.tlbi_ns"),
    ("format = 1\ndesigns = ['reaper']\n[costs]\nquantum_ns = 'x0'\n", "quantum_ns: must be"),
    ("format = 1\ndesigns = ['reaper']\n[costs]\ntlbi_ns = []\n", "costs.tlbi_ns: an empty"),
    ("format = 1\ndesigns = ['reaper']\nseeds = 2000000\n", "seeds: at most 10,000 seeds"),
    (
        "format = 1\ndesigns = ['reaper']\nseeds = 10000\ncpus = " + str(list(range(1, 201))),
        "4,000,000 runs, more than 1,000,000: split it",
    ),
    ("format = 1\ndesigns = ['reaper']\nprofiles = {arm64 = 'none.toml'}\n", "profiles.arm64"),
    ("format = 1\ndesigns = [\n", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "needle"), BAD_SPECS)
def test_a_bad_spec_is_one_line_and_exit_2_and_no_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, needle: str
) -> None:
    spec = _spec(tmp_path, text)
    assert_usage_error(["sweep", str(spec)], needle, capsys)
    assert not (tmp_path / "s.sqlite").exists()


def test_a_bad_spec_names_its_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _spec(tmp_path, "format = 1\ndesigns = ['nope']\n")
    assert main(["sweep", str(spec)]) == 2
    assert capsys.readouterr().err.startswith(f"exitsim: error: {spec}: designs[0]")


def test_bad_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = str(_spec(tmp_path))
    assert_usage_error(["sweep", "report"], "give the STORE", capsys)
    assert_usage_error(["sweep", "report", str(tmp_path / "none.sqlite")], "no such store", capsys)
    assert_usage_error(
        ["sweep", spec, "--scheduler", "tcp://127.0.0.1:1", "--dask-local", "2"], "not both", capsys
    )
    assert_usage_error(["sweep", spec, "--plot", str(tmp_path / "a.gif")], "--plot", capsys)
    assert_usage_error(["sweep", spec, "--csv", str(tmp_path / "no/x.csv")], "--csv", capsys)
    junk = tmp_path / "junk.sqlite"
    junk.write_text("not a database\n")
    assert_usage_error(["sweep", spec, "--store", str(junk)], "not a sweep store", capsys)
    assert junk.read_text() == "not a database\n"


# -- the store -----------------------------------------------------------------


def test_the_store_keeps_a_result_once(tmp_path: Path) -> None:
    cfg = SimConfig(cpus=2, workload_params={"jobs": 2})
    text = result_text(simulate(cfg))
    with Store(tmp_path / "st.sqlite") as st:
        assert st.put(config_key(cfg), cfg, text)
        assert not st.put(config_key(cfg), cfg, "{}")
        assert len(st) == 1
        assert st.get(config_key(cfg)) == json.loads(text)


def test_a_store_of_another_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "st.sqlite"
    Store(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '99' WHERE name = 'version'")
    with pytest.raises(StoreError, match="store version 99"):
        Store(path)


def test_the_key_follows_a_profile_files_contents(tmp_path: Path) -> None:
    prof = tmp_path / "p.toml"
    base = builtin_profile("arm64")

    def write(tlbi: int) -> None:
        lines = ['[profile]\narch = "arm64"\n[costs]']
        for k in COST_KEYS:
            v = tlbi if k == "tlbi_ns" else getattr(base.costs, k)
            lines.append(f'{k} = {{ value = {v}, source = "assumption: test" }}')
        prof.write_text("\n".join(lines) + "\n")

    write(350)
    cfg = SimConfig(arch="arm64", profile=str(prof))
    k1 = config_key(cfg)
    write(700)
    assert config_key(cfg) != k1


def test_run_missing_runs_each_config_once_and_its_result_is_simulates(tmp_path: Path) -> None:
    configs = load_sweep(_spec(tmp_path)).configs()[:4]
    with Store(tmp_path / "st.sqlite") as st, executor(1) as mapper:
        first = run_missing(configs + configs[:2], st, mapper)
        again = run_missing(configs, st, mapper)
        stored = {k: st.get(k) for k in st.keys()}  # noqa: SIM118 (a method, not a dict)
    assert (first.total, first.found, first.ran) == (4, 0, 4)
    assert (again.total, again.found, again.ran) == (4, 4, 0)
    for cfg in configs:
        assert result_text(stored[config_key(cfg)]) == result_text(simulate(cfg))


# -- killed and started again ------------------------------------------------------

KILL_SPEC = """
format = 1
designs = ["reaper", "purge", "purge+pmap_purge"]
arches = ["arm64"]
cpus = [2, 4]
seeds = 4
[workload.params]
jobs = 6
"""


def _sweep_cmd(spec: Path, store: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "exitsim.cli", "sweep", str(spec), "--store", str(store), *extra]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_sweep_killed_with_sigkill_resumes_with_nothing_lost_or_doubled(
    tmp_path: Path, workers: str
) -> None:
    spec = _spec(tmp_path, KILL_SPEC)
    store = tmp_path / "st.sqlite"
    total = load_sweep(spec).size()
    proc = subprocess.Popen(
        _sweep_cmd(spec, store, "--workers", workers, "--json"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its pool's workers die with it
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if 3 <= _count(store) < total:
                break
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the sweep ended before it could be killed"
    kept = _rows(store)
    assert 3 <= len(kept) < total
    done = subprocess.run(
        _sweep_cmd(spec, store, "--workers", workers, "-o", str(tmp_path / "r.json")),
        capture_output=True,
        text=True,
        check=True,
    )
    # Only what was missing ran.
    assert f"{total} runs, {len(kept)} in {store}, {total - len(kept)} to run" in done.stderr
    assert f"ran {total - len(kept)}, {total} results" in done.stderr
    after = _rows(store)
    assert len(after) == total
    assert {k: after[k] for k in kept} == kept  # nothing committed before was lost
    # Every row is its config's Result, as an uninterrupted run gives it.
    for cfg in load_sweep(spec).configs():
        assert after[config_key(cfg)] == result_text(simulate(cfg))


# -- on dask -------------------------------------------------------------------------


@pytest.mark.slow
def test_dask_localcluster_gives_the_local_pools_results_byte_for_byte(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    pool, dask = tmp_path / "pool.sqlite", tmp_path / "dask.sqlite"
    assert main(["sweep", str(spec), "--store", str(pool), "--workers", "2", "-q", "--json"]) == 0
    argv = ["sweep", str(spec), "--store", str(dask), "--dask-local", "2", "-q", "--json"]
    assert main(argv) == 0
    a, b = _rows(pool), _rows(dask)
    assert len(a) == load_sweep(spec).size()
    assert a == b


@pytest.mark.slow
def test_a_sweep_runs_on_an_existing_cluster_by_its_schedulers_address(tmp_path: Path) -> None:
    """--scheduler tcp://HOST:PORT: a cluster started elsewhere (here a LocalCluster
    of two worker processes on loopback) runs the sweep; the store is the pool's."""
    from distributed import LocalCluster

    spec = _spec(tmp_path)
    pool = tmp_path / "pool.sqlite"
    assert main(["sweep", str(spec), "--store", str(pool), "--workers", "1", "-q", "--json"]) == 0
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        there = tmp_path / "cluster.sqlite"
        argv = ["sweep", str(spec), "--store", str(there), "--scheduler", cluster.scheduler_address]
        assert main([*argv, "-q", "--json"]) == 0
        # The runs went out as tasks (named exitsim-run_one-<key>) and the
        # cluster's workers spent time computing them.
        assert cluster.scheduler.task_prefixes["exitsim"].all_durations["compute"] > 0
    assert _rows(there) == _rows(pool)


# -- the report ------------------------------------------------------------------------


def test_the_report_reads_back_what_the_store_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _spec(tmp_path)
    store = tmp_path / "s.sqlite"
    out, csv, pq, png = (tmp_path / n for n in ("r.json", "r.csv", "r.parquet", "r.png"))
    argv = ["sweep", str(spec), "-q", "-o", str(out), "--csv", str(csv), "--parquet", str(pq)]
    assert main([*argv, "--plot", str(png)]) == 0
    printed = capsys.readouterr().out
    assert "ratio to reaper, paired by seed" in printed
    assert "by cost.tlbi_ns" in printed and "by param.cc1_user_ms" in printed
    assert png.read_bytes().startswith(b"\x89PNG")
    report = json.loads(out.read_text())
    assert report["factors"] == ["param.cc1_user_ms", "cost.tlbi_ns"]
    assert report["runs"] == 24

    # The exports are to_frame of the store's results, row for row.
    with Store(store) as st:
        results = list(st.results())
    frame = to_frame(results)
    for back in (pd.read_csv(csv), pd.read_parquet(pq)):
        key = ["param.cc1_user_ms", "cost.tlbi_ns", "seed", "policy"]
        left = back.sort_values(key).reset_index(drop=True)
        right = frame.sort_values(key).reset_index(drop=True)
        assert list(left.columns) == list(right.columns)
        assert left["makespan_ns"].tolist() == right["makespan_ns"].tolist()

    # A cell's mean and paired ratio are claims' arithmetic on the stored figures.
    tlbi = builtin_profile("arm64").costs.tlbi_ns * 4
    cell = next(
        c
        for c in report["cells"]
        if c["policy"] == "purge+pmap_purge"
        and c["param.cc1_user_ms"] == 3
        and c["cost.tlbi_ns"] == tlbi
    )

    def wall(policy: str, seed: int) -> float:
        r = next(
            r
            for r in results
            if r["config"]["policy"] == policy
            and r["config"]["seed"] == seed
            and r["config"]["workload_params"]["cc1_user_ms"] == 3
            and r["config"]["cost_overrides"]["tlbi_ns"] == tlbi
        )
        return float(r["makespan_ns"])

    fig = cell["figures"]["makespan_ns"]
    mean, lo, hi = interval([wall("purge+pmap_purge", s) for s in (0, 1)])
    assert (fig["mean"], fig["lo"], fig["hi"]) == (mean, lo, hi)
    q = ratio_interval([wall("purge+pmap_purge", s) / wall("reaper", s) for s in (0, 1)])
    assert (fig["ratio"]["mean"], fig["ratio"]["lo"], fig["ratio"]["hi"]) == q
    assert fig["ratio"]["pairs"] == 2
    assert not math.isnan(q[0])

    # sweep report on the store alone says the same, byte for byte.
    again = tmp_path / "again.json"
    assert main(["sweep", "report", str(store), "-o", str(again)]) == 0
    assert again.read_bytes() == out.read_bytes()


def test_a_second_sweep_runs_nothing_and_reports_the_same(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _spec(tmp_path)
    assert main(["sweep", str(spec), "--json"]) == 0
    first = capsys.readouterr()
    assert main(["sweep", str(spec), "--json", "--workers", "1"]) == 0
    second = capsys.readouterr()
    assert first.out == second.out
    assert main(["sweep", str(spec), "--dry-run"]) == 0
    assert "24 runs, 24 in" in capsys.readouterr().out


def test_metric_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _spec(tmp_path)
    assert main(["sweep", str(spec), "-q", "--metric", "tlb.broadcasts", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["metrics"] == ["tlb.broadcasts"]
    assert_usage_error(["sweep", str(spec), "--metric", "nope"], "--metric: 'nope'", capsys)


def test_progress_lines_say_done_total_rate_and_time_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """stderr not a terminal: a line per LINE_PERIOD_S (0 here: one per run)."""
    from exitsim.report import progress

    assert not sys.stderr.isatty()
    monkeypatch.setattr(progress, "LINE_PERIOD_S", 0.0)
    spec = _spec(tmp_path)
    assert main(["sweep", str(spec), "--workers", "1"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"sweep s: 24 runs, 0 in {tmp_path / 's.sqlite'}, 24 to run on this process"
    lines = [e for e in err if e.startswith("sweep: ")]
    assert len(lines) == 24
    assert lines[0].startswith("sweep: 1/24 runs, ") and "runs/min, about " in lines[0]
    assert lines[-1].startswith("sweep: 24/24 runs, ")
    assert err[-1] == f"sweep s: ran 24, 24 results in {tmp_path / 's.sqlite'}"


def test_a_worker_with_another_model_is_refused_before_its_result_is_stored(
    tmp_path: Path,
) -> None:
    from exitsim.experiment.runner import SweepError, run_one

    configs = load_sweep(_spec(tmp_path)).configs()[:2]

    def stale(cfgs):  # a worker whose exitsim differs from this one
        for cfg in cfgs:
            key, text, _ = run_one(cfg)
            yield key, text, "0123456789abcdef"

    with Store(tmp_path / "st.sqlite") as st:
        with pytest.raises(SweepError, match="another version of exitsim's model"):
            run_missing(configs, st, stale)
        assert len(st) == 0


def test_the_key_and_the_store_follow_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A result made by another model is another key, and sweep report leaves it out
    with a note."""
    from exitsim.experiment import store as store_mod

    cfg = load_sweep(_spec(tmp_path)).configs()[0]
    here = config_key(cfg)
    store_mod.model_digest.cache_clear()
    real = store_mod.model_digest()
    try:
        store_mod.model_digest.cache_clear()
        orig = store_mod.MODEL_PARTS
        store_mod.MODEL_PARTS = (*orig, "cli.py")  # as if the model's source changed
        assert config_key(cfg) != here
    finally:
        store_mod.MODEL_PARTS = orig
        store_mod.model_digest.cache_clear()
    assert store_mod.model_digest() == real
    path = tmp_path / "st.sqlite"
    with Store(path) as st, executor(1) as mapper:
        run_missing([cfg], st, mapper)
        st.put("old-key", cfg, result_text(simulate(cfg)), model="0123456789abcdef")
    assert main(["sweep", "report", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["runs"] == 1
    assert main(["sweep", "report", str(path)]) == 0
    assert "1 results in" in capsys.readouterr().err


def test_a_spec_may_run_a_workload_file_and_the_frame_names_the_tree(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "tiny.toml").write_text(
        'format = 1\nname = "tiny"\n[[process]]\nid = 1\nprogram = "make"\nuser_ms = 2.0\n'
        '[[process]]\nid = 2\nparent = 1\nprogram = "cc1"\nuser_ms = 5.0\nanon_pages = 500\n'
    )
    spec = _spec(
        tmp_path,
        'format = 1\ndesigns = ["reaper", "purge"]\narches = ["amd64"]\ncpus = [2]\n'
        'seeds = 2\n[workload]\nfile = "tiny.toml"\n',
    )
    assert main(["sweep", str(spec), "-q", "--csv", str(tmp_path / "t.csv")]) == 0
    frame = pd.read_csv(tmp_path / "t.csv")
    assert set(frame["workload"]) == {"tree"} and set(frame["param.name"]) == {"tiny"}
    assert frame["processes.count"].tolist() == [2] * 4
    # A tree takes jobs (make -jN) and nothing else.
    bad = _spec(tmp_path, spec.read_text() + "[workload.params]\nunits = 3\n", "bad.toml")
    assert_usage_error(
        ["sweep", str(bad)], "workload.params: tiny.toml is a process tree, its only", capsys
    )
