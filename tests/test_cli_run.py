"""exitsim run / compare / list: output, JSON, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exitsim.cli import main
from tests.clikit import assert_usage_error

SMALL = ["--param", "jobs=2", "--param", "cc1_user_ms=2"]


def test_run_json_is_one_result_with_the_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--policy", "purge", "--cpus", "2", "--json", *SMALL]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["config"]["policy"] == "purge"
    assert r["config"]["workload_params"] == {"jobs": 2, "cc1_user_ms": 2}
    assert r["processes"]["count"] == 1 + 2 * 3  # make, and per job sh(cc), cc1, as


def test_run_prints_the_config_then_tables(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--policy", "reaper", "--arch", "arm64", "--cpus", "2", *SMALL]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# policy reaper\n# arch arm64\n# cpus 2\n")
    for title in ("arm64, 2 CPUs", "CPUs (makespan", "Locks", "TLB work"):
        assert title in out


def test_compare_json_lists_every_run_in_order(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    plot = tmp_path / "wall.svg"
    assert (
        main(
            [
                "compare",
                "--policies",
                "reaper,purge",
                "--arches",
                "amd64",
                "--cpus",
                "1,2",
                "--workers",
                "1",
                "--json",
                "--plot",
                str(plot),
                *SMALL,
            ]
        )
        == 0
    )
    rs = json.loads(capsys.readouterr().out)
    assert [(r["config"]["cpus"], r["config"]["policy"]) for r in rs] == [
        (1, "reaper"),
        (1, "purge"),
        (2, "reaper"),
        (2, "purge"),
    ]
    assert plot.read_text().lstrip().startswith("<?xml")


def test_compare_with_two_workers_gives_the_same_results_as_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = [
        "compare",
        "--policies",
        "reaper,purge+pmap_purge",
        "--arches",
        "arm64",
        "--cpus",
        "2",
        "--json",
        *SMALL,
    ]
    main([*args, "--workers", "1"])
    one = capsys.readouterr().out
    main([*args, "--workers", "2"])
    two = capsys.readouterr().out
    assert one == two


def test_list_names_every_design_arch_and_workload(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in (
        "reaper",
        "purge",
        "purge+pmap_purge",
        "purge-locked",
        "no-reaper",
        "linux",
        "freebsd",
        "amd64",
        "arm64",
        "build",
    ):
        assert f"  {name} " in out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["run", "--policy", "nope"], "unknown design 'nope'"),
        (["run", "--arch", "sparc64"], "--arch"),
        (["run", "--cpus", "0"], "--cpus"),
        (["run", "--workload", "nope"], "unknown workload 'nope'"),
        (["run", "--param", "jobs"], "KEY=VALUE"),
        (["run", "--param", "jobz=2"], "unknown parameter 'jobz'"),
        (["run", "--param", "jobs=0"], "jobs must be at least 1"),
        (["run", "--policy-file", "/nonexistent.py"], "/nonexistent.py"),
        (["compare", "--cpus", "4,x"], "--cpus"),
        (["compare", "--arches", "mips"], "unknown arch 'mips'"),
        (["compare", "--policies", "reaper,nope"], "unknown design 'nope'"),
        (["compare", "--plot", "/tmp/x.jpg"], ".png or .svg"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_usage_error(argv, needle, capsys)


def test_a_policy_file_that_does_not_load_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("this is not python\n")
    assert main(["run", "--policy-file", str(bad), *SMALL]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "does not load" in err


def test_a_policy_file_runs_as_its_own_design(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = tmp_path / "mine.py"
    mine.write_text(
        "from exitsim.engine.sync import KERNEL_LOCK, mp_release_all\n"
        "from exitsim.kern.exit import uvm_purge_checked\n"
        "from exitsim.policies.base import Policy\n\n\n"
        "class Mine(Policy):\n"
        "    name = 'mine'\n"
        "    summary = 'purge with pmap_purge, written outside'\n\n"
        "    def exit1_teardown(self, k, p):\n"
        "        yield from mp_release_all(k.kernel_lock, p)\n"
        "        yield from uvm_purge_checked(k, p, True)\n"
        "        yield from KERNEL_LOCK(k)\n"
    )
    assert main(["run", "--policy-file", str(mine), "--cpus", "2", "--json", *SMALL]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["config"]["policy"] == "mine"
    assert r["reaper"]["busy_ns"] < 5_000_000  # the reaper no longer tears down
