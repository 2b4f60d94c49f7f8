"""The mutant generator of the mutation campaign (``exitsim.check.mutate``): keys stable
and free of line numbers, every operator a real edit that compiles, a known bad mutant
killed and a known equivalent one surviving, the tree never touched."""

from __future__ import annotations

import sys

import pytest

from exitsim.check.mutate import OPERATORS, Mutant, check_design, generate, mutated


@pytest.fixture(scope="module")
def mutants() -> list[Mutant]:
    return generate()


def _one(mutants: list[Mutant], op: str, function: str, start: str) -> Mutant:
    found = [
        m for m in mutants if m.op == op and m.function == function and m.text.startswith(start)
    ]
    assert len(found) == 1, found
    return found[0]


def test_generation_is_deterministic_and_keys_unique(mutants: list[Mutant]) -> None:
    again = generate()
    assert [m.key for m in again] == [m.key for m in mutants]
    assert len({m.key for m in mutants}) == len(mutants)
    assert len({m.id for m in mutants}) == len(mutants)


def test_every_operator_yields_a_patch_that_compiles_and_differs(mutants: list[Mutant]) -> None:
    for op in OPERATORS:
        ms = [m for m in mutants if m.op == op]
        assert ms, op
        for m in ms:
            src = m.path.read_text()
            new = m.apply(src)
            assert new != src, m.key
            compile(new, str(m.path), "exec")
        patch = ms[0].patch()
        assert patch.startswith("--- a/src/exitsim/") and "\n+++ b/src/exitsim/" in patch


def test_keys_do_not_depend_on_line_numbers(mutants: list[Mutant]) -> None:
    """Lines added above a function move it; the same key makes the same edit."""
    for m in mutants[::7]:
        src = m.path.read_text()
        assert m.apply("\n\n\n" + src) == "\n\n\n" + m.apply(src)


def test_a_dropped_thrdeath_wait_is_killed(mutants: list[Mutant]) -> None:
    """Without the wait for its siblings the main thread purges while one still runs
    user code: invariant 3, on threads3 (a third thread, created while the exit
    single-threads, is still on its way to its first userret)."""
    m = _one(mutants, "drop-wait", "exit1", "while pr.ps_threadcnt")
    before = m.path.read_text()
    exit_mod = sys.modules["exitsim.kern.exit"]
    with mutated(m):
        from exitsim.check.mutate import check_design as fresh

        r = fresh("purge+pmap_purge", ["threads2", "threads3"], ["arm64"], 1)
        assert sys.modules["exitsim.kern.exit"] is not exit_mod
    assert r["result"] == "killed" and r["scenario"] == "threads3" and r["invariant"] == 3
    assert sys.modules["exitsim.kern.exit"] is exit_mod
    assert m.path.read_text() == before


def test_a_swap_of_two_costs_survives(mutants: list[Mutant]) -> None:
    """``semexit`` and ``killjobc`` only charge time in the model (no lock, no shared
    state): their order is invisible to every invariant."""
    m = _one(mutants, "swap", "exit1", "yield from semexit")
    assert m.text2.startswith("yield from killjobc")
    with mutated(m):
        from exitsim.check.mutate import check_design as fresh

        r = fresh("purge+pmap_purge", ["threads2"], ["arm64"], 1)
    assert r == {"result": "survived", "runs": 1}
    # The unmutated tree passes the same run.
    assert check_design("purge+pmap_purge", ["threads2"], ["arm64"], 1)["result"] == "survived"
