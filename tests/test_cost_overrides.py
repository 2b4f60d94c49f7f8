"""``--profile FILE`` and ``--cost KEY=VALUE`` on run, compare and check (and
``SimConfig`` for the API): a changed cost changes the run, the Result's config
records the profile file and every override (and stays a SimConfig), its ``costs``
the profile, a digest of its values and the overrides, and a profile file with the
same change gives the same run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exitsim.cli import main
from exitsim.machine.costs import builtin_profile, profile_digest
from exitsim.sim import SimConfig, simulate
from tests.clikit import assert_usage_error

PROFILES = Path(__file__).resolve().parent.parent / "src" / "exitsim" / "machine" / "profiles"
RUN = ["run", "--arch", "arm64", "--cpus", "4", "--policy", "purge", "--param", "jobs=4"]


def _run_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_a_cost_override_changes_the_run_and_is_recorded(
    capsys: pytest.CaptureFixture[str],
) -> None:
    plain = _run_json(RUN, capsys)
    slow = _run_json([*RUN, "--cost", "tlbi_ns=1460"], capsys)
    assert slow["makespan_ns"] > plain["makespan_ns"]
    assert slow["config"]["cost_overrides"] == {"tlbi_ns": 1460}
    assert SimConfig(**slow["config"]).cost_overrides == {"tlbi_ns": 1460}
    costs = slow["costs"]
    assert costs == {
        "profile": "profiles/arm64.toml",
        "digest": profile_digest(builtin_profile("arm64")),
        "overrides": {"tlbi_ns": 1460},
    }
    assert plain["costs"]["overrides"] == {}
    api = simulate(
        SimConfig(
            policy="purge",
            arch="arm64",
            cpus=4,
            workload_params={"jobs": 4},
            cost_overrides={"tlbi_ns": 1460},
        )
    )
    assert json.dumps(api, sort_keys=True) == json.dumps(slow, sort_keys=True)


def test_a_profile_file_with_the_same_change_gives_the_same_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (PROFILES / "arm64.toml").read_text(encoding="utf-8")
    start = text.index("[costs.tlbi_ns]\nvalue = ")
    end = text.index("\n", start + len("[costs.tlbi_ns]\n"))
    mine = tmp_path / "slow-tlbi.toml"
    mine.write_text(text[:start] + "[costs.tlbi_ns]\nvalue = 1_460" + text[end:], encoding="utf-8")
    by_file = _run_json([*RUN, "--profile", str(mine)], capsys)
    by_flag = _run_json([*RUN, "--cost", "tlbi_ns=1460"], capsys)
    assert by_file["config"]["profile"] == by_file["costs"]["profile"] == str(mine)
    assert by_file["costs"]["digest"] != profile_digest(builtin_profile("arm64"))
    strip = lambda r: {k: v for k, v in r.items() if k not in ("config", "costs")}  # noqa: E731
    assert strip(by_file) == strip(by_flag)


def test_compare_takes_the_overrides_for_every_run(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["compare", "--policies", "reaper,purge", "--arches", "arm64", "--cpus", "2"]
    argv += ["--param", "jobs=2", "--cost", "tlbi_ns=700", "--workers", "1", "--json"]
    assert main(argv) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["costs"]["overrides"] for r in results] == [{"tlbi_ns": 700}] * 2


def test_check_takes_them_too(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["check", "wait2", "--preemptions", "0", "--arch", "arm64", "--quiet"]
    assert main([*argv, "--cost", "tlbi_ns=700"]) == 0
    assert "no violation" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--cost", "nope=1"], "unknown cost key 'nope'"),
        (["--cost", "tlbi_ns"], "give KEY=VALUE"),
        (["--cost", "tlbi_ns=fast"], "'fast' is not a whole number"),
        (["--cost", "tlbi_ns=-5"], "must not be negative"),
        (["--cost", "tlbi_ns=1", "--cost", "tlbi_ns=2"], "tlbi_ns is given twice"),
        (["--cost", "quantum_ns=0"], "quantum_ns must be positive"),
        (["--profile", str(PROFILES / "amd64.toml")], "profile is for amd64, not arm64"),
        (["--profile", "/nonexistent.toml"], "/nonexistent.toml: cannot read"),
    ],
)
def test_bad_costs_are_refused_in_one_line(
    extra: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_usage_error([*RUN, *extra], needle, capsys)


def test_check_refuses_a_profile_for_another_arch(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["check", "wait2", "--arch", "arm64", "--profile", str(PROFILES / "amd64.toml")]
    assert_usage_error(argv, "profile is for amd64", capsys)
