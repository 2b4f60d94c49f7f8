"""The small things a first-time user runs into: ``--version``, ``list --json``,
lists with an empty or repeated entry refused, commands saying what they wrote, the
config echo with every parameter's real value and the cost profile, and progress
lines when stderr is a log, not a terminal."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from exitsim.cli import main
from exitsim.policies.registry import DESIGNS
from exitsim.report import progress
from exitsim.workloads.registry import WORKLOADS
from tests.clikit import assert_usage_error

SMALL = ["--param", "jobs=2", "--param", "cc1_user_ms=2"]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == "exitsim 0.1.0"


def test_list_json_names_every_design_arch_and_workload(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["name"] for d in data["designs"]] == list(DESIGNS)
    assert [w["name"] for w in data["workloads"]] == list(WORKLOADS)
    assert {a["name"] for a in data["arches"]} == {"amd64", "arm64"}
    assert all(d["summary"] for d in data["designs"])


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["compare", "--cpus", "4,4"], "--cpus: '4' is given twice"),
        (["compare", "--cpus", "4,04"], "--cpus: a CPU count is given twice"),
        (["compare", "--cpus", "4,,8"], "--cpus: an empty entry"),
        (["compare", "--cpus", ""], "--cpus: an empty entry"),
        (["compare", "--policies", "reaper,reaper"], "--policies: 'reaper' is given twice"),
        (["compare", "--policies", "reaper,"], "--policies: an empty entry"),
        (["compare", "--arches", "arm64,arm64"], "--arches: 'arm64' is given twice"),
        (["claims", "--cpus", "8,8"], "--cpus: '8' is given twice"),
    ],
)
def test_a_list_with_an_empty_or_repeated_entry_is_refused(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_usage_error(argv, needle, capsys)


def test_run_says_where_its_trace_went(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "t.pftrace"
    assert main(["run", "--cpus", "2", *SMALL, "--quiet", "--trace", str(trace)]) == 0
    out = capsys.readouterr().out
    assert f"trace: {trace}" in out
    assert trace.stat().st_size > 0


def test_report_says_what_it_wrote(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res = tmp_path / "r.json"
    assert main(["run", "--cpus", "2", *SMALL, "--quiet", "-o", str(res)]) == 0
    capsys.readouterr()
    page = tmp_path / "r.html"
    assert main(["report", str(res), "-o", str(page)]) == 0
    assert capsys.readouterr().out.strip() == f"report: {page} (1 run; open it in a browser)"


def test_the_echo_shows_every_parameter_value_and_the_cost_profile(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run", "--arch", "arm64", "--cpus", "2", *SMALL, "--quiet"]) == 0
    out = capsys.readouterr().out.splitlines()
    params = next(line for line in out if line.startswith("# workload_params "))
    assert "jobs=2*" in params and "cc1_user_ms=2.0*" in params
    assert "as_user_ms=" in params and "as_user_ms=6.3*" not in params  # a default
    costs = next(line for line in out if line.startswith("# costs arm64: "))
    assert "profiles/arm64.toml" in costs and "assumptions" in costs


def test_stderr_that_is_a_log_gets_a_progress_line_now_and_then(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not a terminal: no bar, but a line every LINE_PERIOD_S seconds (0 here, so one
    per step); --quiet turns it off."""
    assert not sys.stderr.isatty()
    monkeypatch.setattr(progress, "LINE_PERIOD_S", 0.0)
    argv = ["compare", "--policies", "reaper,purge", "--arches", "amd64", "--cpus", "2,3"]
    argv += ["--workers", "1", *SMALL]
    assert main(argv) == 0
    err = capsys.readouterr().err.splitlines()
    assert err and all(line.startswith("compare: ") for line in err)
    assert "4/4 runs" in err[-1]
    assert "━" not in "".join(err)
    assert main([*argv, "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["check", "wait2", "--preemptions", "0"]) == 0
    assert capsys.readouterr().err.startswith("check: ")
