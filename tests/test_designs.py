"""The teardown designs end to end: the claims of the uvm_purge thread (seed mail,
"uvm_purge()", mpi and kettenis, May 2025) and of openbsd-exit-path.md section 2, held on
whole runs.

Two kinds of run:

- ``simulate(SimConfig(...))`` on the built-in ``build`` workload, for what a design does
  to a whole machine (charged times, makespan, reaper, kernel lock, TLB totals).
  ``simulate`` runs the end-of-run leak audit itself.
- A kernel from ``tests/kernkit.py`` with user processes whose bodies are written here,
  for one exit observed step by step. Steps are observed by wrapping the function the
  kernel path calls through its module attribute (``monkeypatch``), never by changing
  what it does.

Thresholds were measured on these exact configs and are asserted with margin; the
numbers measured are in each docstring.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import pytest

from exitsim.engine.sync import KERNEL_LOCK, KERNEL_UNLOCK
from exitsim.engine.thread import DEAD, KPath
from exitsim.kern import exit as exit_mod
from exitsim.kern.exit import exit1, sys_exit, sys_wait4
from exitsim.kern.fork import fork1, thread_fork
from exitsim.kern.kernel import Kernel
from exitsim.kern.proc import (
    EXIT_NORMAL,
    EXIT_THREAD,
    P_SYSTEM,
    P_THREAD,
    P_WEXIT,
    PS_NOZOMBIE,
    PS_ZOMBIE,
    SAS_NOCLDWAIT,
    SDEAD,
    Proc,
    Process,
)
from exitsim.kern.sig import userret
from exitsim.kern.syscall import user
from exitsim.policies import purge as purge_mod
from exitsim.policies.registry import DESIGNS, get_policy
from exitsim.sim import SimConfig, build_kernel, simulate
from exitsim.vm.audit import audit_all_exited
from exitsim.vm.fault import uvm_touch
from exitsim.vm.map import PROT_READ, uvm_map
from exitsim.vm.object import uvn_attach
from exitsim.vm.shm import ShmSegment, shmat, shmctl_rmid, shmget
from exitsim.vm.uvm import PTP_PAGES
from tests.kernkit import Body, make_kernel, run_to_end, user_process

ARCHES = ["amd64", "arm64"]
PURGE_DESIGNS = ["purge", "purge+pmap_purge"]

# Mapping addresses, in pages: each mapping sits in its own 2 MB block.
ANON_VA = 4 * PTP_PAGES
TEXT_VA = 8 * PTP_PAGES
SHM_VA = 12 * PTP_PAGES
ANON_PAGES = 32
TEXT_PAGES = 16
SHM_PAGES = 16

#: A bound on every polling loop below, so a claim that fails cannot hang the suite.
MAX_POLLS = 10_000

#: An exit-heavy build: short compiles, so the run is mostly fork, exec and exit.
EXIT_HEAVY = {"jobs": 64, "cc1_user_ms": 1, "as_user_ms": 0.5}


# -- helpers ---------------------------------------------------------------------------


@functools.cache
def _result(
    policy: str, arch: str, cpus: int, seed: int = 0, params: tuple = (("jobs", 8),)
) -> dict[str, Any]:
    """``simulate`` once per config for the whole module (Results are only read)."""
    return simulate(
        SimConfig(policy=policy, arch=arch, cpus=cpus, seed=seed, workload_params=dict(params))
    )


def _heavy(policy: str, arch: str, cpus: int) -> dict[str, Any]:
    return _result(policy, arch, cpus, params=tuple(sorted(EXIT_HEAVY.items())))


def _map_and_touch(k: Kernel, p: Proc) -> KPath:
    """Give p's fresh address space resident pages: anonymous memory written (zero-fill
    faults) and a read-only file mapping read (object pages)."""
    vm = p.p_vmspace
    assert vm is not None
    yield from uvm_map(k.uvm, p, vm.vm_map, ANON_VA, ANON_PAGES)
    yield from uvm_touch(k.uvm, p, vm, ANON_VA, ANON_PAGES, write=True)
    obj = uvn_attach(k.uvm, "/usr/bin/true", TEXT_PAGES)
    yield from uvm_map(
        k.uvm, p, vm.vm_map, TEXT_VA, TEXT_PAGES, obj, 0, PROT_READ, copy_on_write=False
    )
    yield from uvm_touch(k.uvm, p, vm, TEXT_VA, TEXT_PAGES)


def _wrap_uvm_purge(
    monkeypatch: pytest.MonkeyPatch, record: Callable[[Kernel, Proc], None]
) -> None:
    """Call ``record(k, p)`` at every ``uvm_purge`` entry of the purge designs."""
    orig = purge_mod.uvm_purge_checked

    def wrapped(k: Kernel, p: Proc, with_pmap_purge: bool) -> KPath:
        record(k, p)
        yield from orig(k, p, with_pmap_purge)

    monkeypatch.setattr(purge_mod, "uvm_purge_checked", wrapped)


def _threxit(k: Kernel, t: Proc) -> KPath:
    """``sys___threxit``: a locked system call; the thread leaves with EXIT_THREAD."""
    yield from KERNEL_LOCK(k)
    yield from exit1(k, t, 0, 0, EXIT_THREAD)


def _user_procs(k: Kernel) -> list[Proc]:
    return [t for t in k.engine.threads if isinstance(t, Proc) and not t.p_flag & P_SYSTEM]


# -- 1. who pays for the teardown -----------------------------------------------------
#
# The whole-run claims of the seed thread (sys time, wall time, exit latency, the
# reaper's load, the kernel lock, arm64 TLB work) are checked over arches, CPU counts,
# seeds and every reading of the reaper in tests/test_claims.py against
# docs/claims.md. Here: the mechanisms under them, on one config each.


@pytest.mark.parametrize("baseline", ["reaper", "reaper-locked", "reaper-fifo"])
@pytest.mark.parametrize("arch", ARCHES)
def test_purge_moves_the_reapers_teardown_work_into_the_exiting_processes(
    arch: str, baseline: str
) -> None:
    """openbsd-exit-path.md 2.2 ("What the reaper still does"): under ``purge`` the
    sys time the user processes spend working (sys minus spin) grows by at least
    what the reaper stops doing (90% of it: the reaper's own switches and cache of
    work differ a little), whichever reading of the reaper it is set against. On
    arm64 it grows much more: without ``pmap_purge`` every page is flushed by
    broadcast while the pmap is still active (kettenis in the seed mail)."""
    work: dict[str, int] = {}
    busy: dict[str, int] = {}
    for pol in (baseline, "purge"):
        k = build_kernel(SimConfig(policy=pol, arch=arch, cpus=4, workload_params={"jobs": 8}))
        k.engine.run()
        k.engine.finish()
        work[pol] = sum(t.sys_ns - t.spin_ns for t in _user_procs(k))
        assert k.reaper_proc is not None
        busy[pol] = k.reaper_proc.sys_ns + k.reaper_proc.user_ns
    moved = busy[baseline] - busy["purge"]
    assert moved > 0
    assert work["purge"] - work[baseline] >= moved * 9 // 10


@pytest.mark.parametrize("cpus", [8, 16])
def test_pmap_purge_adds_no_page_invalidation_to_the_reapers(cpus: int) -> None:
    """arm64 ``pmap_purge`` flushes the address space once per exit (an ASID pair),
    never page by page: the committed design invalidates exactly the pages the
    reaper did; ``purge`` without it invalidates every resident page (the per-page
    count is held in section 4)."""
    reaper = _heavy("reaper", "arm64", cpus)
    purge = _heavy("purge", "arm64", cpus)
    committed = _heavy("purge+pmap_purge", "arm64", cpus)
    assert committed["tlb"]["page_invalidations"] == reaper["tlb"]["page_invalidations"]
    assert purge["tlb"]["page_invalidations"] > committed["tlb"]["page_invalidations"]


# -- 3. the kernel lock around uvm_purge ---------------------------------------------------


@pytest.mark.parametrize("policy", PURGE_DESIGNS)
@pytest.mark.parametrize("depth", [1, 2, 5])
def test_uvm_purge_runs_without_kernel_lock_and_exit1_takes_exactly_one_level_back(
    monkeypatch: pytest.MonkeyPatch, policy: str, depth: int
) -> None:
    """openbsd-exit-path.md 2, step 6 and "Kernel lock": exit1 may be entered holding the
    kernel lock recursively; ``__mp_release_all`` drops every level before
    ``uvm_purge`` (KERNEL_ASSERT_UNLOCKED inside), and ``KERNEL_LOCK()`` takes exactly
    one back, whatever the depth was, for ``sched_exit`` (KERNEL_ASSERT_LOCKED)."""
    seen: dict[str, Any] = {}

    def at_purge(k: Kernel, p: Proc) -> None:
        seen["purge_depth"] = k.kernel_lock.depth(p)
        seen["purge_holds"] = k.kernel_lock.holds(p)

    _wrap_uvm_purge(monkeypatch, at_purge)

    pol = get_policy(policy)
    orig_teardown = pol.exit1_teardown

    def teardown(k: Kernel, p: Proc) -> KPath:
        seen["teardown_in"] = k.kernel_lock.depth(p)
        yield from orig_teardown(k, p)
        seen["teardown_out"] = k.kernel_lock.depth(p)

    pol.exit1_teardown = teardown  # type: ignore[method-assign]

    orig_sched_exit = exit_mod.sched_exit

    def sched_exit(k: Kernel, p: Proc) -> KPath:
        if p.p_p is not None and p.p_p.comm == "deep":
            seen["sched_exit"] = k.kernel_lock.depth(p)
        yield from orig_sched_exit(k, p)

    monkeypatch.setattr(exit_mod, "sched_exit", sched_exit)

    def body(k: Kernel, p: Proc) -> Body:
        yield from _map_and_touch(k, p)
        for _ in range(depth):
            yield from KERNEL_LOCK(k)
        seen["exit1"] = k.kernel_lock.depth(p)
        yield from exit1(k, p, 0, 0, EXIT_NORMAL)

    k = make_kernel(pol, "arm64", cpus=2)
    user_process(k, "deep", body)
    run_to_end(k)
    assert seen["exit1"] == depth
    assert seen["teardown_in"] == depth
    assert seen["purge_depth"] == 0
    assert seen["purge_holds"] is False
    assert seen["teardown_out"] == 1
    assert seen["sched_exit"] == 1


# -- 4. TLB work of the teardown ------------------------------------------------------------


@pytest.mark.parametrize("granularity", ["exact", "range"])
@pytest.mark.parametrize(
    ("policy", "per_page", "asid_flushes"),
    [
        # pmap_deactivate first (pm_active 0): no per-page flush; pmap_destroy's pair.
        ("reaper", 0, 2),
        # The seed's diff: the pmap is active, two broadcast TLBIs per page.
        ("purge", 2, 2),
        # pmap_purge: one pair flush up front, none per page, then pmap_destroy's pair.
        ("purge+pmap_purge", 0, 4),
    ],
)
def test_arm64_teardown_flushes_per_page_only_without_pmap_purge(
    policy: str, per_page: int, asid_flushes: int, granularity: str
) -> None:
    """kettenis in the seed mail and openbsd-exit-path.md 5: on arm64 ``purge`` issues
    two broadcast invalidations (the ASID pair) per resident page at teardown, because
    the pmap is still active; ``purge+pmap_purge`` issues none per page and one
    ASID-pair flush from ``pmap_purge``. In every design ``pmap_destroy``'s
    ``pmap_free_asid`` flushes the pair again (vm/pmap.py), so the exact counts around
    one exit of R resident pages are: reaper 0 and 2; purge 2R and 2; purge+pmap_purge
    0 and 4 (page invalidations and ASID flushes; every one is a broadcast)."""
    seen: dict[str, Any] = {}

    def body(k: Kernel, p: Proc) -> Body:
        yield from _map_and_touch(k, p)
        assert p.p_vmspace is not None
        seen["resident"] = p.p_vmspace.resident()
        seen["before"] = k.machine.stats.as_dict()
        yield from sys_exit(k, p, 0)

    k = make_kernel(policy, "arm64", cpus=2, granularity=granularity)
    user_process(k, "one", body)
    run_to_end(k)
    after = k.machine.stats.as_dict()
    delta = {key: after[key] - seen["before"][key] for key in after}
    r = seen["resident"]
    assert r == ANON_PAGES + TEXT_PAGES
    assert delta == {
        "page_invalidations": per_page * r,
        "asid_flushes": asid_flushes,
        "full_flushes": 0,
        "ipis": 0,
        "broadcasts": per_page * r + asid_flushes,
    }


def test_amd64_purge_and_pmap_purge_do_the_same_tlb_work() -> None:
    """openbsd-exit-path.md 5/6: amd64 has no ``pmap_purge`` (no __HAVE_PMAP_PURGE), so
    the committed design is the seed's diff there: the same TLB work on the same
    workload and seed, and indeed the same run."""
    a = _result("purge", "amd64", 4)
    b = _result("purge+pmap_purge", "amd64", 4)
    assert a["tlb"] == b["tlb"]
    assert a["tlb"]["page_invalidations"] > 0
    assert a["makespan_ns"] == b["makespan_ns"]


# -- 5. threads ----------------------------------------------------------------------------


def _sibling_in_user(k: Kernel, t: Proc) -> KPath:
    """A thread computing in user mode, returning to user space between chunks
    (``userret``), where single-threading makes it exit1."""
    for _ in range(MAX_POLLS):
        yield user(20_000)
        yield from userret(k, t)
    raise AssertionError(f"{t.name} was never told to exit")


def _purge_recorder(
    monkeypatch: pytest.MonkeyPatch, comm: str, seen: dict[str, Any], sibs: list[Proc]
) -> None:
    def at_purge(k: Kernel, p: Proc) -> None:
        pr = p.p_p
        assert pr is not None
        if pr.comm != comm:
            return
        seen["purger"] = p
        seen["threadcnt"] = pr.ps_threadcnt
        seen["siblings"] = [(bool(t.p_flag & P_WEXIT), t.p_stat) for t in sibs]

    _wrap_uvm_purge(monkeypatch, at_purge)


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("policy", PURGE_DESIGNS)
def test_uvm_purge_waits_until_every_sibling_thread_has_exited(
    monkeypatch: pytest.MonkeyPatch, policy: str, arch: str
) -> None:
    """openbsd-exit-path.md 2, step 4 and "Who runs uvm_purge": the main thread's exit1
    sleeps ("thrdeath") until every sibling has passed step 12, so ``uvm_purge`` finds
    ``ps_threadcnt == 0`` and every sibling P_WEXIT and SDEAD. The siblings were
    running user code when the main thread called exit(2) (single_thread_set
    SINGLE_EXIT makes them exit1 at their next userret)."""
    seen: dict[str, Any] = {}
    sibs: list[Proc] = []
    _purge_recorder(monkeypatch, "mt", seen, sibs)

    def main(k: Kernel, p: Proc) -> Body:
        yield from _map_and_touch(k, p)
        for i in range(2):
            t = yield from thread_fork(k, p, f"mt.{i}", lambda t: _sibling_in_user(k, t))
            sibs.append(t)
        yield user(300_000)
        pr = p.p_p
        assert pr is not None
        seen["threadcnt_at_exit"] = pr.ps_threadcnt
        seen["siblings_at_exit"] = [bool(t.p_flag & P_WEXIT) for t in sibs]
        yield from sys_exit(k, p, 0)

    k = make_kernel(policy, arch, cpus=4)
    pr = user_process(k, "mt", main)
    run_to_end(k)
    assert seen["threadcnt_at_exit"] == 3
    assert seen["siblings_at_exit"] == [False, False]
    assert all(t.user_ns > 0 for t in sibs)
    assert seen["purger"] is pr.ps_mainproc
    assert seen["threadcnt"] == 0
    assert seen["siblings"] == [(True, SDEAD), (True, SDEAD)]
    assert pr.zapped


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("policy", PURGE_DESIGNS)
def test_a_sibling_calling_exit_makes_the_main_thread_purge(
    monkeypatch: pytest.MonkeyPatch, policy: str, arch: str
) -> None:
    """openbsd-exit-path.md 2, "Who runs uvm_purge": a sibling that calls exit(2) does not
    purge; it only triggers single_thread_set, the main thread is forced through exit1
    at its next userret and purges, after both siblings are dead. The exit status is
    the sibling's (step 3 ran in the sibling)."""
    seen: dict[str, Any] = {}
    sibs: list[Proc] = []
    _purge_recorder(monkeypatch, "st", seen, sibs)

    def leaver(k: Kernel, t: Proc) -> KPath:
        yield user(200_000)
        yield from sys_exit(k, t, 7)

    def main(k: Kernel, p: Proc) -> Body:
        yield from _map_and_touch(k, p)
        sibs.append((yield from thread_fork(k, p, "st.leaver", lambda t: leaver(k, t))))
        sibs.append((yield from thread_fork(k, p, "st.busy", lambda t: _sibling_in_user(k, t))))
        yield from _sibling_in_user(k, p)

    k = make_kernel(policy, arch, cpus=4)
    pr = user_process(k, "st", main)
    run_to_end(k)
    main_thread = pr.ps_mainproc
    assert main_thread is not None and not main_thread.p_flag & P_THREAD
    assert seen["purger"] is main_thread
    assert seen["threadcnt"] == 0
    assert seen["siblings"] == [(True, SDEAD), (True, SDEAD)]
    assert pr.ps_xexit == 7


# -- 6. SysV shared memory ----------------------------------------------------------------


@pytest.mark.parametrize(
    "policy",
    ["reaper", "reaper-locked", "reaper-fifo", "purge", "purge-locked", "purge+pmap_purge"],
)
@pytest.mark.parametrize("arch", ARCHES)
def test_shm_segment_survives_the_first_exit_and_is_freed_at_the_last(
    policy: str, arch: str
) -> None:
    """openbsd-exit-path.md 10.3 and the seed's ``uvmspace_purge`` (shmexit under the
    kernel lock, then the map teardown): an exiting process only detaches; a segment
    marked removed (IPC_RMID) and attached by two processes keeps its object and pages
    after the first exits, and is freed when the last one detaches at its exit."""
    seg: ShmSegment | None = None
    seen: dict[str, Any] = {}
    procs: dict[str, Process] = {}

    def attach(k: Kernel, p: Proc) -> KPath:
        assert seg is not None and p.p_vmspace is not None
        yield from KERNEL_LOCK(k)  # shmat(2) is a locked system call
        yield from shmat(k.uvm, p, p.p_vmspace, seg, SHM_VA)
        yield from KERNEL_UNLOCK(k)
        yield from uvm_touch(k.uvm, p, p.p_vmspace, SHM_VA, SHM_PAGES, write=True)

    def first(k: Kernel, p: Proc) -> Body:
        yield from attach(k, p)
        yield user(200_000)
        yield from sys_exit(k, p, 0)

    def last(k: Kernel, p: Proc) -> Body:
        assert seg is not None and p.p_vmspace is not None
        yield from attach(k, p)
        for _ in range(MAX_POLLS):
            if seg.shm_nattch == 2:
                break
            yield user(10_000)
        yield from KERNEL_LOCK(k)  # shmctl(IPC_RMID)
        yield from shmctl_rmid(k.uvm, p, seg)
        yield from KERNEL_UNLOCK(k)
        a = procs["first"]
        for _ in range(MAX_POLLS):
            if a.zapped:
                break
            yield user(50_000)
        seen["first_zapped"] = a.zapped
        seen["segment_listed"] = seg.shmid in k.uvm.shm_segments
        seen["aobj_freed"] = seg.aobj.freed
        seen["aobj_resident"] = seg.aobj.resident()
        seen["nattch"] = seg.shm_nattch
        seen["mapped_here"] = p.p_vmspace.pmap.lookup(SHM_VA) is not None
        yield from sys_exit(k, p, 0)

    k = make_kernel(policy, arch, cpus=2)
    seg = shmget(k.uvm, SHM_PAGES)
    procs["first"] = user_process(k, "first", first)
    procs["last"] = user_process(k, "last", last)
    run_to_end(k)
    assert seen == {
        "first_zapped": True,
        "segment_listed": True,
        "aobj_freed": False,
        "aobj_resident": SHM_PAGES,
        "nattch": 1,
        "mapped_here": True,
    }
    assert seg.deallocated
    assert seg.shmid not in k.uvm.shm_segments
    assert seg.aobj.freed
    assert seg.aobj.resident() == 0
    assert seg.shm_nattch == 0


# -- 7. PS_NOZOMBIE --------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["reaper", "purge", "purge+pmap_purge"])
def test_nozombie_children_are_zapped_by_the_reaper_and_never_become_zombies(
    monkeypatch: pytest.MonkeyPatch, policy: str
) -> None:
    """openbsd-exit-path.md 2, step 6 ("if parent's sigacts has SAS_NOCLDWAIT: set
    PS_NOZOMBIE"), step 11 and 2.2: such a child is never PS_ZOMBIE, its parent's
    wait4 returns ECHILD once it is reparented to init, and the reaper frees it with
    ``process_zap``. Nothing is left or leaked at the end (run_to_end)."""
    zapped_by: dict[int, Proc] = {}
    orig_zap = exit_mod.process_zap

    def process_zap(k: Kernel, q: Proc, pr: Process) -> KPath:
        zapped_by[pr.ps_pid] = q
        yield from orig_zap(k, q, pr)

    monkeypatch.setattr(exit_mod, "process_zap", process_zap)
    children: list[Process] = []
    seen: dict[str, Any] = {}

    def child(k: Kernel, c: Proc, n: int) -> KPath:
        assert c.p_vmspace is not None
        yield from uvm_touch(k.uvm, c, c.p_vmspace, ANON_VA, ANON_PAGES, write=True)
        yield user(50_000 * (n + 1))
        yield from sys_exit(k, c, 0)

    def parent(k: Kernel, p: Proc) -> Body:
        pr = p.p_p
        assert pr is not None
        pr.ps_sigflags |= SAS_NOCLDWAIT  # sigaction(SIGCHLD, SA_NOCLDWAIT)
        yield from _map_and_touch(k, p)
        for n in range(3):
            children.append((yield from fork1(k, p, f"kid{n}", lambda c, n=n: child(k, c, n))))
        seen["wait4"] = yield from sys_wait4(k, p)
        for _ in range(MAX_POLLS):
            if all(c.zapped for c in children):
                break
            yield user(20_000)
        # Before the parent itself exits (and becomes init's zombie).
        seen["zombies_peak"] = k.meters.zombies.peak
        yield from sys_exit(k, p, 0)

    k = make_kernel(policy, "amd64", cpus=4)
    user_process(k, "parent", parent)
    run_to_end(k)
    assert seen["wait4"] is None  # ECHILD
    assert seen["zombies_peak"] == 0
    assert len(children) == 3
    for c in children:
        assert c.ps_flags & PS_NOZOMBIE
        assert not c.ps_flags & PS_ZOMBIE
        assert c.zapped
        assert c.ps_pptr is k.initprocess
        assert zapped_by[c.ps_pid] is k.reaper_proc
        assert c.ps_vmspace is None


# -- 8. every design ------------------------------------------------------------------------


@pytest.mark.parametrize("policy", list(DESIGNS))
def test_every_design_runs_a_build_to_the_end_without_leaks(policy: str) -> None:
    """design.md invariant 2: at the end of a run nothing leaks (``simulate`` runs the
    audit), in every design, on both arches."""
    for arch in ARCHES:
        r = simulate(SimConfig(policy=policy, arch=arch, cpus=2, workload_params={"jobs": 4}))
        assert r["processes"]["count"] == 13  # make + 4 x (sh, cc1, as)
        assert r["vm"]["vmspaces_freed"] == 13
        assert r["vm"]["pmaps_destroyed"] == 13


@pytest.mark.parametrize("policy", list(DESIGNS))
def test_every_design_leaves_no_zombie_and_no_unfreed_thread_behind(policy: str) -> None:
    """openbsd-exit-path.md 2.3: a waited-for process leaves ``zombprocess``
    (``proc_finish_wait``) and ``process_zap`` frees its main thread's struct proc last.
    After a build every process was waited for, so ``zombprocess`` is empty and no dead
    thread is still waiting to be freed, in every design (what ``simulate`` does not
    check, and ``run_to_end`` does)."""
    k = build_kernel(SimConfig(policy=policy, arch="amd64", cpus=4, workload_params={"jobs": 4}))
    k.engine.run()
    k.engine.finish()
    audit_all_exited(k.uvm)
    assert [pr.comm for pr in k.zombprocess] == []
    assert k.meters.unfreed_threads.value == 0
    assert not k.deadproc


@pytest.mark.parametrize("policy", [n for n, cls in DESIGNS.items() if cls.uses_reaper])
def test_the_reaper_frees_every_user_thread_uarea_in_every_design_with_one(policy: str) -> None:
    """openbsd-exit-path.md 2.2: whatever the design does with the address space, the
    reaper still frees every dead thread's u-area (``uvm_uarea_free``: p_addr = NULL)
    and every process is freed (``process_zap``)."""
    k = build_kernel(SimConfig(policy=policy, arch="arm64", cpus=3, workload_params={"jobs": 4}))
    k.engine.run()
    k.engine.finish()
    audit_all_exited(k.uvm)
    procs = _user_procs(k)
    assert len(procs) == 13
    assert all(t.state == DEAD for t in procs)
    assert [t.name for t in procs if t.p_addr] == []
    assert all(t.p_p is not None and t.p_p.zapped for t in procs)
    assert not k.deadproc
    assert k.reaper_proc is not None and k.reaper_proc.sys_ns > 0


# -- 9. no-reaper -----------------------------------------------------------------------------


def test_no_reaper_lets_a_parent_reap_a_child_whose_memory_is_still_mapped() -> None:
    """docs/designs.md, no-reaper: the child hands itself to its parent as a zombie before
    its own purge, so a parent's wait4 can return a child that still maps pages
    (design.md invariant 6, known to this design: counted in a timed run). The purge
    designs never do (their runs would stop on it)."""
    for params in ((("jobs", 4),), tuple(sorted((EXIT_HEAVY | {"jobs": 8}).items()))):
        r = _result("no-reaper", "amd64", 2, params=params)
        assert r["known_violations"].get("6", 0) > 0
        for policy in PURGE_DESIGNS:
            assert _result(policy, "amd64", 2, params=params)["known_violations"] == {}


@pytest.mark.parametrize(("policy", "kept"), [("no-reaper", 3), ("reaper", 0)])
def test_no_reaper_keeps_a_live_processs_dead_threads_until_it_exits(
    policy: str, kept: int
) -> None:
    """The first objection to "R.I.P the reaper" (docs/designs.md, no-reaper): a dead
    thread cannot free its own u-area and struct proc, and without a reaper nobody else
    does until its process is freed. A long-lived process whose threads come and go
    keeps them all (threads.unfreed_peak); with the reaper none stay behind."""
    threads: list[Proc] = []
    seen: dict[str, Any] = {}

    def worker(k: Kernel, t: Proc) -> KPath:
        yield user(30_000)
        yield from _threxit(k, t)

    def main(k: Kernel, p: Proc) -> Body:
        yield from _map_and_touch(k, p)
        for i in range(3):
            t = yield from thread_fork(k, p, f"lived.{i}", lambda t: worker(k, t))
            threads.append(t)
            for _ in range(MAX_POLLS):
                if t.state == DEAD:
                    break
                yield user(10_000)
        for _ in range(20):  # give the reaper, if any, time to free them
            yield user(10_000)
        seen["dead"] = [t.state == DEAD for t in threads]
        seen["unfreed"] = k.meters.unfreed_threads.value
        seen["uareas"] = sum(1 for t in threads if t.p_addr)
        yield from sys_exit(k, p, 0)

    k = make_kernel(policy, "amd64", cpus=2)
    user_process(k, "lived", main)
    run_to_end(k)
    assert seen["dead"] == [True, True, True]
    assert seen["unfreed"] == kept
    assert seen["uareas"] == kept
    assert k.meters.unfreed_threads.peak >= kept


# -- 10. determinism --------------------------------------------------------------------------


def test_same_config_and_seed_give_byte_identical_results() -> None:
    """style.md "Ordering is deterministic": the same config and seed produce
    byte-identical JSON; another seed draws other jobs and gives another result."""
    cfg = SimConfig(policy="purge+pmap_purge", arch="arm64", cpus=4, workload_params={"jobs": 4})
    a = json.dumps(simulate(cfg), sort_keys=True)
    b = json.dumps(simulate(cfg), sort_keys=True)
    assert a == b
    other = SimConfig(
        policy="purge+pmap_purge", arch="arm64", cpus=4, seed=1, workload_params={"jobs": 4}
    )
    c = json.dumps(simulate(other), sort_keys=True)
    assert c != a
