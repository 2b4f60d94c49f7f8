"""The model does what the C did: the pre-change reaper in each of its readings
(kern_exit.c 1.212-1.225 with uvm_map.c up to 1.329; 1.227-1.242 with uvm_map.c
1.330-1.338; the TAILQ of 1.252), and exit1's time accounting (which times wait4
reports, kern_exit.c 1.212 against 1.224 on).

Each test observes a step by wrapping the function the kernel path calls through its
module attribute, never by changing what it does, and fails when the mechanism it
holds is taken out.
"""

from __future__ import annotations

from typing import Any

import pytest

from exitsim.engine.thread import KPath
from exitsim.kern import exit as exit_mod
from exitsim.kern.exit import sys_exit, sys_wait4
from exitsim.kern.fork import fork1
from exitsim.kern.kernel import Kernel
from exitsim.kern.proc import TUAGG_AT_STEP4, TUAGG_AT_STEP10, Proc, Process
from exitsim.kern.syscall import user
from exitsim.policies import purge as purge_mod
from exitsim.policies.purge import Purge
from exitsim.policies.registry import get_policy
from exitsim.vm import map as map_mod
from exitsim.vm.fault import uvm_touch
from exitsim.vm.map import uvm_map
from exitsim.vm.object import uvn_attach
from exitsim.vm.uvm import PTP_PAGES
from tests.kernkit import Body, make_kernel, run_to_end, user_process

ANON_VA = 4 * PTP_PAGES
TEXT_VA = 8 * PTP_PAGES
PAGES = 64


def _touch(k: Kernel, c: Proc) -> KPath:
    """Resident anonymous pages and a file mapping, so the teardown has page work and
    an object to detach."""
    vm = c.p_vmspace
    assert vm is not None
    yield from uvm_map(k.uvm, c, vm.vm_map, ANON_VA, PAGES)
    yield from uvm_touch(k.uvm, c, vm, ANON_VA, PAGES, write=True)
    obj = uvn_attach(k.uvm, "/bin/cat", 8)
    yield from uvm_map(k.uvm, c, vm.vm_map, TEXT_VA, 8, obj, 0, copy_on_write=False)
    yield from uvm_touch(k.uvm, c, vm, TEXT_VA, 8)


def _parent_of(n: int, child_body: Any, got: list[Process]) -> Any:
    def parent(k: Kernel, p: Proc) -> Body:
        for i in range(n):
            yield from fork1(k, p, f"kid{i}", lambda c, i=i: child_body(k, c, i))
        for _ in range(n):
            pr = yield from sys_wait4(k, p)
            assert pr is not None
            got.append(pr)
        yield from sys_exit(k, p, 0)

    return parent


# -- 2. what wait4 reports ---------------------------------------------------------------


class PurgeFoldingAtStep10(Purge):
    """The seed's purge with 1.212's accounting: a counterfactual that shows what the
    fold point alone changes."""

    name = "purge-step10"
    tuagg_at = TUAGG_AT_STEP10


@pytest.mark.parametrize(("policy", "reported"), [(Purge(), False), (PurgeFoldingAtStep10(), True)])
def test_wait4_reports_the_purge_only_when_exit1_folds_its_times_after_it(
    monkeypatch: pytest.MonkeyPatch, policy: Purge, reported: bool
) -> None:
    """kern_exit.c 1.252 (and from 1.224): ``tuagg_add_process`` at step 4, ``calcru`` at
    step 11, the rest of the thread's time only in ``exit2``: the purge's sys time
    is in the thread's total but not in the ps_ru that wait4 returns. Folding at step
    10 (1.212) puts it in."""
    purge_ns: dict[int, int] = {}
    orig = purge_mod.uvm_purge_checked

    def wrapped(k: Kernel, p: Proc, with_pmap_purge: bool) -> KPath:
        before = p.sys_ns
        yield from orig(k, p, with_pmap_purge)
        assert p.p_p is not None
        purge_ns[p.p_p.ps_pid] = p.sys_ns - before

    monkeypatch.setattr(purge_mod, "uvm_purge_checked", wrapped)

    def child(k: Kernel, c: Proc, i: int) -> KPath:
        yield from _touch(k, c)
        yield user(10_000)
        yield from sys_exit(k, c, 0)

    got: list[Process] = []
    k = make_kernel(policy, "arm64", cpus=2)
    user_process(k, "parent", _parent_of(2, child, got))
    run_to_end(k)
    assert len(got) == 2
    for pr in got:
        rec = k.meters.records[pr.ps_pid]
        assert purge_ns[pr.ps_pid] > 0
        thread_total = pr.ps_tu_sys_ns
        assert rec.thread_sys_ns == thread_total  # every thread folded by the end
        if reported:
            assert rec.sys_ns >= purge_ns[pr.ps_pid]
            # Only steps 11-13 and exit2 are left out: far less than the purge.
            assert thread_total - rec.sys_ns < purge_ns[pr.ps_pid]
        else:
            assert thread_total - rec.sys_ns >= purge_ns[pr.ps_pid]


def test_the_result_keeps_wait4_thread_and_machine_times_apart() -> None:
    """Result: ``charged_*`` is wait4's figure (unchanged key), ``thread_*`` each
    process's whole thread time, ``machine`` the CPU states; under ``purge`` the
    purge is in the second and third, not in the first."""
    from exitsim.sim import SimConfig, simulate

    r = simulate(SimConfig(policy="purge", arch="arm64", cpus=4, workload_params={"jobs": 4}))
    p = r["processes"]
    assert p["charged_sys_ns_total"] == p["wait4_sys_ns_total"]
    assert p["thread_sys_ns_total"] > p["wait4_sys_ns_total"]
    assert sum(x["thread_sys_ns"] for x in r["per_process"]) == p["thread_sys_ns_total"]
    assert sum(x["sys_ns"] for x in r["per_process"]) == p["wait4_sys_ns_total"]
    m = r["machine"]
    whole = m["user_ns"] + m["sys_ns"] + m["spin_ns"] + m["intr_ns"] + m["idle_ns"]
    assert whole == r["config"]["cpus"] * r["makespan_ns"]
    pct = m["user_pct"] + m["sys_pct"] + m["spin_pct"] + m["intr_pct"] + m["idle_pct"]
    assert abs(pct - 100) < 0.01
    # The machine saw every process's thread time, and the kernel threads' besides.
    assert m["sys_ns"] + m["spin_ns"] + m["intr_ns"] >= p["thread_sys_ns_total"]


# -- 1. the baseline: the reaper's readings -------------------------------------------------


def _reaper_holds_at(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[bool]:
    """Record, each time the reaper thread calls ``module.name``, whether it holds
    the kernel lock."""
    seen: list[bool] = []
    orig = getattr(module, name)

    def wrapped(*a: Any, **kw: Any) -> KPath:
        k_or_uvm, caller = a[0], a[1]
        reaper = _REAPER[0]
        # uvm_uarea_free's second argument is the dead thread; only the reaper calls it.
        if reaper is not None and (name == "uvm_uarea_free" or caller is reaper):
            seen.append(k_or_uvm.kernel_lock.holds(reaper))
        return (yield from orig(*a, **kw))

    monkeypatch.setattr(module, name, wrapped)
    return seen


_REAPER: list[Proc | None] = [None]


@pytest.mark.parametrize(
    ("policy", "locked_uarea", "locked_kill", "locked_detach"),
    [
        ("reaper", False, False, False),
        ("reaper-fifo", False, False, False),
        ("reaper-locked", True, False, True),
    ],
)
def test_where_each_reading_of_the_reaper_holds_the_kernel_lock(
    monkeypatch: pytest.MonkeyPatch,
    policy: str,
    locked_uarea: bool,
    locked_kill: bool,
    locked_detach: bool,
) -> None:
    """kern_exit.c 1.240/1.242 (``reaper``): ``uvm_uarea_free`` and ``uvm_exit`` run
    without the kernel lock. 1.212 with uvm_map.c up to 1.329 (``reaper-locked``):
    the reaper holds it from ``uvm_uarea_free`` on, the teardown lets go of it for
    the page work (``uvm_unmap_kill_entry``) and takes it back around an object's
    detach (``pgo_detach``). Every reading takes it for the notification."""
    uarea = _reaper_holds_at(monkeypatch, exit_mod, "uvm_uarea_free")
    kill = _reaper_holds_at(monkeypatch, map_mod, "uvm_unmap_kill_entry")
    detach = _reaper_holds_at(monkeypatch, map_mod, "pgo_detach")
    notified: list[bool] = []
    orig_zombie = exit_mod.make_zombie

    def make_zombie(k: Kernel, p: Proc, pr: Process) -> None:
        notified.append(k.kernel_lock.holds(p))
        orig_zombie(k, p, pr)

    monkeypatch.setattr(exit_mod, "make_zombie", make_zombie)

    def child(k: Kernel, c: Proc, i: int) -> KPath:
        yield from _touch(k, c)
        yield from sys_exit(k, c, 0)

    k = make_kernel(policy, "amd64", cpus=2)
    _REAPER[0] = k.reaper_proc
    user_process(k, "parent", _parent_of(1, child, []))
    run_to_end(k)
    _REAPER[0] = None
    assert uarea and all(h == locked_uarea for h in uarea)
    assert kill and all(h == locked_kill for h in kill)
    assert detach and all(h == locked_detach for h in detach)
    assert notified and all(notified)


@pytest.mark.parametrize(("policy", "order"), [("reaper", "lifo"), ("reaper-fifo", "fifo")])
def test_the_reaper_takes_the_dead_in_the_order_its_list_gives(
    monkeypatch: pytest.MonkeyPatch, policy: str, order: str
) -> None:
    """``deadproc`` up to kern_exit.c 1.242 is a LIST filled at its head
    (``LIST_INSERT_HEAD`` in exit2, ``LIST_FIRST`` in the reaper): newest first. 1.252
    makes it a TAILQ: oldest first. Three children die while the reaper is kept off
    the CPU; the order it frees their u-areas in is the order of the list."""
    freed: list[str] = []
    orig = exit_mod.uvm_uarea_free

    def wrapped(k: Kernel, p: Proc) -> KPath:
        freed.append(p.name)
        yield from orig(k, p)

    monkeypatch.setattr(exit_mod, "uvm_uarea_free", wrapped)
    pol = get_policy(policy)

    def child(k: Kernel, c: Proc, i: int) -> KPath:
        yield user(1_000 * (i + 1))
        yield from sys_exit(k, c, 0)

    k = make_kernel(pol, "amd64", cpus=1)
    # One CPU: the three children run to their exits one after another; the reaper,
    # woken by the first exit2, runs only once the CPU is free of them.
    user_process(k, "parent", _parent_of(3, child, []))
    run_to_end(k)
    kids = [n for n in freed if n.startswith("kid")]
    assert sorted(kids) == ["kid0", "kid1", "kid2"]
    if order == "lifo":
        assert kids != sorted(kids)
    else:
        assert kids == sorted(kids)


def test_every_reaper_reading_names_its_revision() -> None:
    from exitsim.policies.registry import DESIGNS

    readings = [n for n in DESIGNS if n.startswith("reaper")]
    assert readings == ["reaper", "reaper-locked", "reaper-fifo"]
    assert DESIGNS["reaper"].tuagg_at == TUAGG_AT_STEP4
    assert DESIGNS["reaper-locked"].tuagg_at == TUAGG_AT_STEP10
    # Each says, where `exitsim list` shows it, which revision it follows.
    for n in readings:
        assert "kern_exit.c 1." in DESIGNS[n].summary
