"""exitsim validate: what it measures from captures, what it predicts, and the error
between them, on a capture whose answers are known (tests/data/validate/README.md)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from exitsim.calibrate.validate import (
    Measured,
    Predicted,
    Row,
    error_table,
    measure,
    predicted_of,
    validate,
)
from exitsim.cli import main
from exitsim.report.result import percentile
from exitsim.sim import SimConfig, simulate
from exitsim.workloads.importer import import_trace
from exitsim.workloads.spec import to_config

DATA = Path(__file__).parent / "data"
TINY = DATA / "validate" / "tiny.strace"
TINY_BT = DATA / "validate" / "tiny.bpftrace.txt"
LUA = DATA / "traces" / "lua-make-j2.strace"
LUA_BT = DATA / "traces" / "lua-make-j2.bpftrace.txt"
CFG = SimConfig(policy="linux", arch="amd64", cpus=2)


def test_measure_reads_the_known_figures_of_a_hand_written_capture() -> None:
    m = measure(TINY, TINY_BT, None)
    assert m.wall_ns == 110_200_000
    assert m.sys_ns == 50_000_000  # si_stime 3 + 2 ticks of 10 ms
    assert m.exit_latency_ns == [1_000_000, 2_000_000]
    assert m.teardown_ns == [100_000, 200_000, 300_000]
    assert m.processes == 3


def test_measure_without_bpftrace_has_no_teardown_times() -> None:
    m = measure(TINY, None, None)
    assert m.teardown_ns == []
    assert m.exit_latency_ns == [1_000_000, 2_000_000]


def test_measured_sys_comes_from_the_rusage_file_when_given(tmp_path: Path) -> None:
    ru = tmp_path / "run.rusage.json"
    ru.write_text(json.dumps({"ru_stime_ns": 12_345_000, "ru_utime_ns": 1}))
    m = measure(TINY, None, ru)
    assert m.sys_ns == 12_345_000
    assert "rusage" in m.sys_source


def test_the_error_is_predicted_minus_measured_over_measured() -> None:
    m = Measured(wall_ns=200_000_000, sys_ns=None, sys_source="", teardown_ns=[10, 20, 30])
    p = Predicted(
        wall_ns=150_000_000, sys_ns=7, teardown_ns=[20, 40, 60], exit_latency_ns=[], processes=3
    )
    rows = {r.figure: r for r in error_table(m, p)}
    assert rows["wall time"].error == pytest.approx(-0.25)
    assert rows["total sys"].error is None  # not measured: no error, not 0
    assert rows["teardown per process p50"].measured == pytest.approx(0.020)
    assert rows["teardown per process p50"].error == pytest.approx(1.0)
    assert "exit latency p50" not in rows  # nothing measured: no row
    assert Row("x", 0.0, 5.0, "ms").error is None


def test_validate_predicts_what_a_replay_of_the_imported_tree_gives() -> None:
    """The prediction is the replay's own Result, figure for figure: computed here
    independently from the import and simulate."""
    m, p, rows = validate(TINY, TINY_BT, None, CFG)
    name, params = to_config(import_trace(TINY, TINY_BT).spec)
    r = simulate(replace(CFG, workload=name, workload_params=params))
    assert p == predicted_of(r)
    assert p.wall_ns == r["makespan_ns"]
    assert p.sys_ns == r["processes"]["thread_sys_ns_total"]
    assert p.processes == m.processes == 3
    by = {row.figure: row for row in rows}
    assert by["wall time"].error == pytest.approx((r["makespan_ns"] - 110_200_000) / 110_200_000)
    lat = sorted(x["exit_latency_ns"] for x in r["per_process"] if x["exit_latency_ns"])
    assert by["exit latency p50"].predicted == pytest.approx(percentile(lat, 0.5) / 1e3)
    assert by["exit latency p50"].measured == pytest.approx(1_000.0)


def test_teardown_time_is_recorded_per_process_in_a_result() -> None:
    r = simulate(SimConfig(policy="linux", arch="amd64", cpus=2, workload="cbuild"))
    times = [x["teardown_ns"] for x in r["per_process"]]
    assert all(t > 0 for t in times)
    assert r["processes"]["teardown_ns_p50"] == percentile(times, 0.5)
    # Under the reaper, the teardown happens in the reaper: still counted per process.
    r2 = simulate(SimConfig(policy="reaper", arch="amd64", cpus=2, workload="cbuild"))
    assert all(x["teardown_ns"] > 0 for x in r2["per_process"])


def test_cli_validate_prints_the_table_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "v.json"
    rc = main(["validate", str(LUA), "--bpftrace", str(LUA_BT), "-o", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "teardown per process p50" in text and "wall time" in text
    rec = json.loads(out.read_text())
    assert rec["measured"]["processes"] == 109
    assert rec["config"]["policy"] == "linux" and rec["config"]["cpus"] == 2
    # Deterministic: the same inputs give the same record.
    assert main(["validate", str(LUA), "--bpftrace", str(LUA_BT), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == rec


def test_cli_validate_finds_the_files_of_a_record_keep_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "b.strace").write_bytes(TINY.read_bytes())
    (tmp_path / "b.bpftrace.txt").write_bytes(TINY_BT.read_bytes())
    (tmp_path / "b.rusage.json").write_text(
        json.dumps({"ru_stime_ns": 40_000_000, "machine": {"nproc": 3}})
    )
    assert main(["validate", str(tmp_path), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["measured"]["sys_ns"] == 40_000_000
    assert rec["measured"]["teardown_ns"] == [100_000, 200_000, 300_000]
    assert rec["config"]["cpus"] == 3


@pytest.mark.parametrize(
    "argv, words",
    [
        (["validate", "/nonexistent.strace"], "no such file"),
        (["validate", str(TINY), "--cpus", "0"], "--cpus"),
        (["validate", str(TINY), "--bpftrace", str(TINY)], "tiny.strace"),
        (["validate", str(DATA / "traces")], "expected one NAME.strace"),
    ],
)
def test_cli_validate_bad_input_is_one_line_and_status_2(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
