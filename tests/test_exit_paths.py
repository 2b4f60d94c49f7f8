"""Every way into exit1 (kern/sig.py, kern/exit.py) enters it with the kernel-lock depth
and flags the C has, and single-threading waits for every sibling before the exit goes
on. Each test watches exit1's entries over whole searches of a check scenario."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from exitsim.check.run import search
from exitsim.check.scenarios import SCENARIOS, factory
from exitsim.engine.explore import run_schedule
from exitsim.engine.sync import kernel_lock_depth
from exitsim.kern import exit as kern_exit
from exitsim.kern.proc import EXIT_NORMAL, EXIT_THREAD, EXIT_THREAD_NOCHECK, P_WEXIT, Proc
from exitsim.kern.sig import SIGKILL, SIGSEGV
from exitsim.policies.registry import get_policy


@dataclass(frozen=True)
class Entry:
    thread: str
    main: bool  # the process's main thread
    flags: int
    depth: int
    xsig: int


@pytest.fixture
def entries(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[Entry]]:
    """Record each exit1 entry: who, with which flags, at which kernel-lock depth."""
    seen: set[Entry] = set()
    real = kern_exit.exit1

    def watched(k, p: Proc, xexit: int, xsig: int, flags: int):
        pr = p.p_p
        assert pr is not None
        seen.add(
            Entry(
                p.name,
                pr.ps_mainproc is p,
                flags,
                kernel_lock_depth(k, p),
                xsig,
            )
        )
        return real(k, p, xexit, xsig, flags)

    monkeypatch.setattr(kern_exit, "exit1", watched)
    yield seen


def _search(scenario: str, arch: str) -> None:
    r = search(
        SCENARIOS[scenario], lambda: get_policy("purge+pmap_purge"), arch, preemptions=1, allow={8}
    )
    assert r.violation is None, r.violation
    assert r.complete


def test_sys_exit_and_threxit_enter_once_locked(entries: set[Entry]) -> None:
    _search("threxit", "arm64")
    assert Entry("t1", False, EXIT_THREAD, 1, 0) in entries
    assert Entry("threxit", True, EXIT_NORMAL, 1, 0) in entries


def test_the_loser_of_two_exits_reenters_exit1_twice_locked(entries: set[Entry]) -> None:
    """Both threads call exit(2): in some order the second finds the first
    single-threading, inside its own exit1, and enters exit1 again at depth 2; either
    thread can be that one."""
    _search("exitrace", "arm64")
    twice = {(e.thread, e.flags) for e in entries if e.depth == 2}
    assert twice == {("t1", EXIT_THREAD_NOCHECK), ("race", EXIT_THREAD_NOCHECK)}
    assert all(e.depth == 1 for e in entries if e.flags == EXIT_NORMAL)


def test_a_sibling_told_to_exit_goes_from_userret_once_locked(entries: set[Entry]) -> None:
    _search("threads2", "amd64")
    assert Entry("t1", False, EXIT_THREAD_NOCHECK, 1, 0) in entries


def test_sigkill_exits_through_postsig_once_locked(entries: set[Entry]) -> None:
    """The thread of the child that takes SIGKILL at its userret exits with it as the
    process's signal, from postsig at depth 1; the other is made to follow."""
    _search("killed", "amd64")
    killed = {(e.thread, e.flags, e.depth) for e in entries if e.xsig == SIGKILL}
    assert ("c.t1", EXIT_NORMAL, 1) in killed
    assert {depth for _, _, depth in killed} == {1}
    assert Entry("child", True, EXIT_THREAD_NOCHECK, 1, 0) in entries


@pytest.mark.parametrize(("arch", "depth"), [("amd64", 2), ("arm64", 1)])
def test_a_fatal_trap_enters_at_the_arch_trap_handlers_depth(
    entries: set[Entry], arch: str, depth: int
) -> None:
    """amd64 trap.c holds the kernel lock around trapsignal, arm64's does not: the
    blocked SIGSEGV's sigexit adds one level to what the trap handler holds."""
    _search("segv", arch)
    assert Entry("segv", True, EXIT_NORMAL, depth, SIGSEGV) in entries


@pytest.mark.parametrize("scenario", ["threads2", "threads3", "exitrace", "killed", "segv"])
def test_single_threading_waits_for_every_sibling(
    scenario: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the exiting thread comes back from single_thread_set(SINGLE_EXIT), every
    other thread of the process is in exit1 for good (P_WEXIT): none can run user
    code again. Checked along the default schedule and every schedule of a search."""
    from exitsim.kern import sig as kern_sig

    real = kern_sig.single_thread_set
    bad: list[str] = []

    def watched(k, p: Proc, mode: int):
        yield from real(k, p, mode)
        pr = p.p_p
        assert pr is not None
        if mode == kern_sig.SINGLE_EXIT:
            bad.extend(t.name for t in pr.ps_threads if t is not p and not t.p_flag & P_WEXIT)

    monkeypatch.setattr(kern_sig, "single_thread_set", watched)
    f = factory(SCENARIOS[scenario], lambda: get_policy("reaper"), "arm64", allow=frozenset({8}))
    assert run_schedule(f, []).error is None
    r = search(SCENARIOS[scenario], lambda: get_policy("reaper"), "arm64", preemptions=1, allow={8})
    assert r.violation is None, r.violation
    assert bad == []
