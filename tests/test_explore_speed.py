"""The explorer's pruning (check/statekey.py, engine/explore.py): it loses no violation
and no reachable state the full search finds, its counts are the same every time, and the
state key takes in per-CPU fields it was never told about while leaving out the meters.

How fast it is stays out of the tests: bench/checking.py and docs/benchmarks.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from exitsim.check.run import invariant_of
from exitsim.check.scenarios import SCENARIOS, factory
from exitsim.check.statekey import skipped, state_key
from exitsim.engine.chooser import EVENT, FirstChooser
from exitsim.engine.explore import GuidedChooser, explore
from exitsim.policies.registry import get_policy
from tests.test_check import CASES, MUTANTS, _allow, _maker
from tests.test_check_uaf import CASES as UAF_CASES


def test_every_mutant_has_a_case() -> None:
    """A mutant added to tests/mutants/ must be in the cases below too."""
    files = {p.name for p in Path(MUTANTS).glob("*.py") if p.name != "__init__.py"}
    assert files <= {what for what, *_ in CASES} | {what for what, *_ in UAF_CASES}


@pytest.mark.parametrize(("what", "arch", "scenario", "invariant"), CASES)
def test_pruning_finds_the_violation_the_full_search_finds(
    what: str, arch: str, scenario: str, invariant: int
) -> None:
    """The pruned search and the search that runs every schedule to its end report
    the same violation (type and invariant) for every broken design."""
    f = factory(SCENARIOS[scenario], _maker(what), arch, allow=_allow(scenario))
    pruned = explore(f, 2, max_schedules=5000)
    full = explore(f, 2, max_schedules=5000, prune=False)
    assert pruned.violation is not None and full.violation is not None
    assert invariant_of(pruned.violation.error) == invariant_of(full.violation.error) == invariant
    assert type(pruned.violation.error) is type(full.violation.error)


@pytest.mark.parametrize(("what", "arch", "scenario"), [c[:3] for c in UAF_CASES])
def test_pruning_finds_the_use_after_free_the_full_search_finds(
    what: str, arch: str, scenario: str
) -> None:
    f = factory(SCENARIOS[scenario], _maker(what), arch, allow=_allow(scenario))
    pruned = explore(f, 2, max_schedules=5000)
    full = explore(f, 2, max_schedules=5000, prune=False)
    assert pruned.violation is not None and full.violation is not None
    assert invariant_of(pruned.violation.error) == invariant_of(full.violation.error) == 5


def _recording(f: Any, seen: set[Any], bound: int) -> Any:
    """``f``, with every state met at a choice point where the search may still branch
    (another CPU may go on without a preemption, or preemptions are left), with the
    choices open and the CPU that moved last, added to ``seen``."""

    def build(chooser: GuidedChooser) -> Any:
        run = f(chooser)
        choose = chooser.choose

        def spy(point: str, options: Any) -> int:
            opts = tuple(options)
            # A point inside the prefix was met, in the same state, by the run that
            # pushed the prefix: only points past it are new.
            past = len(chooser.points) >= len(chooser.prefix)
            may = chooser.current not in opts or chooser.preemptions < bound
            if point == EVENT and past and may:
                seen.add((state_key(run.k, run.engine.now), opts, chooser.current))
            return choose(point, options)

        chooser.choose = spy  # type: ignore[method-assign]
        return run

    return build


@pytest.mark.slow
@pytest.mark.parametrize(("scenario", "design", "arch"), [("threads2", "reaper", "amd64")])
def test_the_pruned_search_meets_every_state_the_full_search_meets(
    scenario: str, design: str, arch: str
) -> None:
    """At the default bound, stopping runs at explored states and taking fewer
    preemptions first still reaches every state the full search reaches where it may
    branch, with fewer schedules run. (A state the key merged with another that has a
    different future would show here: the full search would go on to states the pruned
    one never meets.)"""
    f = factory(SCENARIOS[scenario], lambda: get_policy(design), arch, allow=frozenset({8}))
    pruned_seen: set[Any] = set()
    full_seen: set[Any] = set()
    pruned = explore(_recording(f, pruned_seen, 2), 2)
    full = explore(_recording(f, full_seen, 2), 2, prune=False)
    assert pruned.complete and full.complete
    assert pruned.schedules < full.schedules
    assert pruned_seen == full_seen


def test_search_counts_are_deterministic() -> None:
    """Two searches of the same scenario and design explore the same number of
    schedules and states; two that find a violation report the same schedule."""
    f = factory(SCENARIOS["wait2"], lambda: get_policy("reaper"), "amd64")
    a, b = explore(f, 1), explore(f, 1)
    assert (a.schedules, a.states, a.complete) == (b.schedules, b.states, b.complete)
    g = factory(SCENARIOS["exitrace"], _maker("unlock_once.py"), "arm64", allow=frozenset({8}))
    x, y = explore(g, 2), explore(g, 2)
    assert x.violation is not None and y.violation is not None
    assert x.violation.schedule == y.violation.schedule and x.schedules == y.schedules


def _run(steps: int) -> Any:
    f = factory(SCENARIOS["threads2"], lambda: get_policy("purge"), "arm64")
    run = f(FirstChooser())
    for _ in range(steps):
        assert run.engine.step_untimed()
    return run


def test_the_key_takes_in_a_per_cpu_field_it_was_never_told_of() -> None:
    """A field added to the machine (here a per-CPU current ASID) is part of the key
    at once: two runs differing only there have different keys."""
    a, b = _run(40), _run(40)
    assert state_key(a.k, a.engine.now) == state_key(b.k, b.engine.now)
    a.k.machine.cur_asid = [0, 0]
    b.k.machine.cur_asid = [0, 7]
    assert state_key(a.k, a.engine.now) != state_key(b.k, b.engine.now)
    b.k.machine.cur_asid = [0, 0]
    assert state_key(a.k, a.engine.now) == state_key(b.k, b.engine.now)


def test_the_key_leaves_out_time_and_meters_but_not_state() -> None:
    """CPU time accounting and a duration field (``*_ns``) do not change the key; a
    thread's position and a lock's owner do."""
    a, b = _run(40), _run(40)
    cpu = b.engine.cpus[0]
    cpu.acct[0] += 12345
    cpu.switches += 3
    b.k.machine.stall_ns = 99
    assert skipped("acct") and skipped("stall_ns") and not skipped("runq")
    assert state_key(a.k, a.engine.now) == state_key(b.k, b.engine.now)
    assert b.engine.step_untimed()
    assert state_key(a.k, a.engine.now) != state_key(b.k, b.engine.now)
    c = _run(40)
    c.k.deadproc_mutex.owner = c.engine.threads[0]
    assert state_key(a.k, a.engine.now) != state_key(c.k, c.engine.now)
