"""exitsim check: the explorer catches each deliberately broken design (a mutant written
through the public policy hooks), the reported schedule replays the same violation, and
the committed designs pass small searches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exitsim.check.run import invariant_of, replay, search
from exitsim.check.scenarios import SCENARIOS, factory
from exitsim.cli import main
from exitsim.engine.explore import explore, parse_schedule, run_schedule
from exitsim.policies.registry import get_policy, load_policy_file
from exitsim.report.perfetto import TRACK_BASE, read_trace
from tests.clikit import assert_usage_error

MUTANTS = Path(__file__).parent / "mutants"

# (mutant file or design, arch, scenario, the invariant that must fire). On the threaded
# scenarios the search allows invariant 8 (the exit window every design has, see
# test_committed_designs_report_the_exit_window_on_the_threaded_exit), so that what is
# found is the mutant's own breakage.
CASES = [
    ("pmap_purge_nowait.py", "amd64", "threads2", 5),
    ("purge_before_thrdeath.py", "arm64", "threads2", 7),
    ("free_before_shootdown.py", "amd64", "threads2", 1),
    ("no-reaper", "amd64", "wait2", 6),
    ("unlock_once.py", "arm64", "exitrace", 3),
    ("unlock_once.py", "amd64", "segv", 3),
    ("unlock_once.py", "arm64", "killed", 3),
    ("unlock_once.py", "amd64", "threads2", 3),
    ("pmap_purge_no_asid_flush.py", "arm64", "forkrace", 1),
    ("uvmspace_free_in_exit1.py", "amd64", "forkrace", 8),
]
THREADED = {"threads2", "threads3", "exitrace", "killed", "segv", "threxit"}


def _allow(scenario: str) -> frozenset[int]:
    return frozenset({8}) if scenario in THREADED else frozenset()


def _maker(what: str):
    if what.endswith(".py"):
        path = str(MUTANTS / what)
        return lambda: load_policy_file(path)
    return lambda: get_policy(what)


@pytest.mark.parametrize(("what", "arch", "scenario", "invariant"), CASES)
def test_the_checker_catches_each_broken_design_and_the_schedule_replays(
    what: str, arch: str, scenario: str, invariant: int
) -> None:
    """Each mutant breaks the invariant its docstring names; the search finds it within
    the default bound, and replaying the shrunk schedule reproduces it."""
    allow = _allow(scenario)
    r = search(
        SCENARIOS[scenario], _maker(what), arch, preemptions=2, max_schedules=5000, allow=allow
    )
    assert r.violation is not None, f"{what}: no violation in {r.schedules} schedules"
    assert r.invariant == invariant, r.violation
    out, steps = replay(
        SCENARIOS[scenario], _maker(what), arch, parse_schedule(r.schedule or ""), allow=allow
    )
    assert out.error is not None and invariant_of(out.error) == invariant
    assert str(out.error) == r.violation
    assert steps, "the replay shows its steps"


def test_pmap_purge_mutant_needs_a_sibling_still_on_the_pmap() -> None:
    """The same mutant on single-threaded processes does no harm:
    with no sibling, nobody's TTBR0 is left on the user tables."""
    r = search(
        SCENARIOS["forkrace"],
        _maker("pmap_purge_nowait.py"),
        "arm64",
        preemptions=1,
        max_schedules=3000,
    )
    assert r.violation is None


def test_the_unlock_once_mutant_needs_exit1_entered_twice() -> None:
    """Where every exit1 is entered with the kernel lock held once (a single-threaded
    process calling exit), one KERNEL_UNLOCK is as good as dropping every level: the
    mutant passes the complete search. Only the entry paths at depth 2 tell them apart."""
    r = search(SCENARIOS["forkrace"], _maker("unlock_once.py"), "arm64", preemptions=1)
    assert r.complete and r.violation is None, r.violation


@pytest.mark.parametrize("scenario", ["exitrace", "killed", "segv", "threxit"])
@pytest.mark.parametrize("design", ["reaper", "purge", "purge+pmap_purge"])
@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_committed_designs_pass_every_way_into_exit1(scenario: str, design: str, arch: str) -> None:
    """The signal, trap, race and __threxit entries to exit1: no violation but the exit
    window (invariant 8, allowed) with one preemption, searched to the end."""
    r = search(SCENARIOS[scenario], lambda: get_policy(design), arch, preemptions=1, allow={8})
    assert r.violation is None, r.violation
    assert r.complete and r.schedules > 1


@pytest.mark.parametrize("design", ["reaper", "purge", "purge+pmap_purge"])
@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_committed_designs_report_the_exit_window_on_the_threaded_exit(
    design: str, arch: str
) -> None:
    """The finding of docs/checking.md: a sibling wakes the main thread in exit1 and
    only later switches away, so the teardown (or the reaper's pmap_destroy) can run
    while the sibling's CPU still has the pmap loaded. Every committed design reports
    invariant 8 on threads2 by default, and the schedule replays it."""
    r = search(SCENARIOS["threads2"], lambda: get_policy(design), arch, preemptions=1)
    assert r.invariant == 8, r.violation
    out, _ = replay(
        SCENARIOS["threads2"], lambda: get_policy(design), arch, parse_schedule(r.schedule or "")
    )
    assert str(out.error) == r.violation


@pytest.mark.parametrize("design", ["reaper", "purge", "purge+pmap_purge"])
@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_committed_designs_pass_a_bounded_search_of_the_threaded_exit_allowing_8(
    design: str, arch: str
) -> None:
    """With invariant 8 allowed, no other violation in any schedule of threads2 with one
    preemption (the full default bound over every scenario is in docs/checking.md);
    the exit window was met and counted."""
    r = search(SCENARIOS["threads2"], lambda: get_policy(design), arch, preemptions=1, allow={8})
    assert r.violation is None, r.violation
    assert r.complete and r.schedules > 1
    assert r.tolerated["8"]["count"] > 0 and r.tolerated["8"]["first"].startswith("invariant 8:")


def test_a_schedule_replays_exactly() -> None:
    """Two replays of the same schedule take the same steps and end the same way."""
    f = factory(SCENARIOS["wait2"], lambda: get_policy("purge+pmap_purge"), "amd64")
    a = run_schedule(f, ["0", "1", "1", "0", "1"])
    b = run_schedule(f, ["0", "1", "1", "0", "1"])
    assert a.schedule == b.schedule and a.steps == b.steps and a.error is None


def test_the_search_prunes_revisited_states() -> None:
    f = factory(SCENARIOS["threads2"], lambda: get_policy("purge"), "amd64", allow=frozenset({8}))
    r = explore(f, preemptions=1)
    assert r.complete
    assert r.states > 0 and r.schedules < 10_000


def test_check_cli_reports_a_violation_with_a_replay_command(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    trace = tmp_path / "cx.pftrace"
    rc = main(
        [
            "check",
            "threads2",
            "--arch",
            "amd64",
            "--policy-file",
            str(MUTANTS / "free_before_shootdown.py"),
            "--allow",
            "8",
            "--trace",
            str(trace),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 1
    assert "VIOLATION" in out and "invariant 1" in out
    assert "replay: exitsim check threads2" in out and "--schedule" in out
    assert "--allow 8" in out  # the replay command keeps the allowance
    tracks, events = read_trace(trace.read_bytes())
    assert "uvm_pageclean" in {e.name for e in events}  # the page free that broke it
    assert all(uuid >= TRACK_BASE - 1 for uuid in tracks)  # never a pid


def test_check_cli_passes_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "check",
                "forkrace",
                "--policy",
                "purge",
                "--arch",
                "amd64",
                "--preemptions",
                "1",
                "--json",
            ]
        )
        == 0
    )
    res = json.loads(capsys.readouterr().out)
    assert res[0]["scenario"] == "forkrace" and res[0]["violation"] is None


def test_check_replays_a_schedule_step_by_step(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        ["check", "wait2", "--policy", "no-reaper", "--arch", "amd64", "--schedule", "0,0,0,0,1"]
    )
    out = capsys.readouterr().out
    assert rc == 1
    assert "# schedule 0*4,1" in out and "invariant 6" in out  # printed compact
    assert "kernel function" in out and "dowait6" in out


def test_check_lists_its_scenarios(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--list"]) == 0
    out = capsys.readouterr().out
    for name in SCENARIOS:
        assert name in out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["check", "nosuch"], "unknown scenario 'nosuch'"),
        (["check", "wait2", "--schedule", "0,zz"], "is not a step"),
        (["check", "wait2", "--schedule", "7"], "--schedule"),
        (["check", "wait2", "--schedule", ",".join(["0"] * 500)], "the run ended with no choice"),
        (["check", "wait2", "--schedule", "0", "--trace", "/"], "--trace: / is a directory"),
        (["check", "wait2", "shm2", "--schedule", "0"], "exactly one"),
        (["check", "--policy", "nope"], "unknown design 'nope'"),
        (["check", "--preemptions", "-1"], "--preemptions"),
    ],
)
def test_check_bad_input_is_one_line_and_exit_status_2(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_usage_error(argv, needle, capsys)


def test_pmap_purge_never_spins_when_siblings_exit_holding_the_kernel_lock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """arm64 pmap_purge spins while pm_active != 1 (pmap.c 1.113). Siblings enter exit1
    with the kernel lock and keep it until after pmap_deactivate, and the main thread
    must take it back after thrdeath, so in every schedule the spin finds nothing to
    wait for."""
    import exitsim.vm.pmap as pmap_mod
    from exitsim.engine.ops import SpinWait

    spins = []

    def counting(*a: object, **kw: object) -> SpinWait:
        spins.append(a)
        return SpinWait(*a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(pmap_mod, "SpinWait", counting)
    f = factory(
        SCENARIOS["threads2"],
        lambda: get_policy("purge+pmap_purge"),
        "arm64",
        allow=frozenset({8}),
    )
    r = explore(f, preemptions=2)
    assert r.complete and r.violation is None
    assert spins == []
