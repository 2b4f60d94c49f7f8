"""The command line: the demo table, JSON output, and bad input (exit status 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exitsim.cli import main
from tests.clikit import assert_usage_error


def test_demo_prints_the_config_and_the_tables(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["demo", "--cpus", "2", "--procs", "2", "--threads", "2", "--iterations", "20"]) == 0
    )
    out = capsys.readouterr().out
    assert "# cpus 2" in out and "# seed 0" in out
    for title in ("CPUs", "Locks", "kernel_lock", "TLB work"):
        assert title in out


def test_demo_json_is_byte_identical_for_the_same_seed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["demo", "--json", "--cpus", "4", "--iterations", "30", "--seed", "7"]
    main(args)
    first = capsys.readouterr().out
    main(args)
    second = capsys.readouterr().out
    assert first == second
    record = json.loads(first)
    assert record["config"]["seed"] == 7
    span = record["makespan_ns"]
    for c in record["cpus"]:
        # sys includes interrupt time in the report: the four add up to the makespan.
        assert c["user_ns"] + c["sys_ns"] + c["spin_ns"] + c["idle_ns"] == span


def test_demo_output_file_is_written_whole(tmp_path: Path) -> None:
    out = tmp_path / "demo.json"
    assert main(["demo", "--json", "--iterations", "10", "-o", str(out)]) == 0
    assert json.loads(out.read_text())["config"]["iterations"] == 10
    assert [p.name for p in tmp_path.iterdir()] == ["demo.json"]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["demo", "--cpus", "0"], "--cpus"),
        (["demo", "--cpus", "300"], "1..256"),
        (["demo", "--arch", "mips"], "--arch"),
        (["demo", "--iterations", "x"], "--iterations"),
        (["demo", "--profile", "/nonexistent/p.toml"], "/nonexistent/p.toml"),
        (["demo", "-o", "/nonexistent/dir/out.json"], "/nonexistent/dir"),
        (["frobnicate"], "frobnicate"),
        ([], "a command is needed"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_usage_error(argv, needle, capsys)


def test_a_profile_for_another_arch_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from importlib import resources

    text = resources.files("exitsim.machine").joinpath("profiles", "arm64.toml").read_text()
    prof = tmp_path / "mine.toml"
    prof.write_text(text)
    assert main(["demo", "--arch", "amd64", "--profile", str(prof)]) == 2
    assert "profile is for arm64" in capsys.readouterr().err


def test_a_bad_profile_names_the_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from importlib import resources

    text = resources.files("exitsim.machine").joinpath("profiles", "amd64.toml").read_text()
    prof = tmp_path / "neg.toml"
    prof.write_text(text.replace("value = 2_000\n", "value = -5\n", 1))
    assert main(["demo", "--profile", str(prof)]) == 2
    err = capsys.readouterr().err
    assert str(prof) in err and "costs.ctxsw_ns" in err
