"""Teardown of an exiting process's memory, step by step (openbsd-exit-path.md sections 4,
5, 6, 10 and 11), driven through the vm layer with the VmKit harness.

A process here: ``uvmspace_alloc``, ``pmap_activate`` once per live thread, map and fault;
it exits in the committed order ``uvm_purge`` (``with_pmap_purge=True``; ``False`` is the
May 2025 diff without ``pmap_purge``), ``pmap_deactivate``, then ``uvmspace_free`` (the
reaper's ``uvm_exit``). The old reaper design deactivates first and leaves the whole
teardown to ``uvmspace_free`` on another CPU.

Steps are observed by wrapping the functions the kernel path calls through their module
attribute (``monkeypatch``), never by changing what they do, except in the mutant tests,
whose broken step is spelled out in the test.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import pytest

from exitsim.engine.errors import InvariantViolation
from exitsim.engine.ops import USER, Acquire, Release, Run, Sleep, Wakeup
from exitsim.engine.sched import Engine
from exitsim.engine.thread import Thread
from exitsim.vm import anon as anon_mod
from exitsim.vm import map as map_mod
from exitsim.vm import pmap as pmap_mod
from exitsim.vm import shm as shm_mod
from exitsim.vm import vmspace as vmspace_mod
from exitsim.vm.audit import audit_pages
from exitsim.vm.fault import user_tag, uvm_fault, uvm_touch
from exitsim.vm.map import (
    PROT_EXEC,
    PROT_READ,
    VmMapEntry,
    uvm_map,
    uvm_unmap,
    vm_map_lock_read,
    vm_map_unlock_read,
)
from exitsim.vm.object import uvn_attach
from exitsim.vm.page import ANON, OBJECT, PTP, VmPage, uvm_pagefree
from exitsim.vm.pmap import _drop_pte, pmap_activate
from exitsim.vm.shm import shmat, shmctl_rmid, shmget
from exitsim.vm.uvm import PTP_PAGES
from exitsim.vm.vmspace import (
    Vmspace,
    uvm_purge,
    uvmspace_addref,
    uvmspace_alloc,
    uvmspace_fork,
    uvmspace_free,
)
from tests.vmkit import Body, VmKit

ARCHES = ["amd64", "arm64"]

# Mapping addresses, in pages: each mapping sits in its own 2 MB block.
ANON_VA = 4 * PTP_PAGES
TEXT_VA = 8 * PTP_PAGES
SHM_VA = 12 * PTP_PAGES
EXTRA_VA = 16 * PTP_PAGES


# -- harness ---------------------------------------------------------------------------


def make_kit(arch: str = "amd64", ncpu: int = 2, record: bool = False) -> VmKit:
    """A VmKit; with ``record`` its engine logs every op (``Engine.log``)."""
    kit = VmKit(arch, ncpu, "exact")
    if record:
        eng = Engine(kit.machine.engine_config(record=True))
        eng.switch_hook = kit.engine.switch_hook
        eng.idle_hook = kit.engine.idle_hook
        kit.engine = eng
        kit.uvm.engine = eng
    return kit


#: How long a thread that sets a flag stays on its CPU afterwards (sys time), so that
#: the thread it wakes is dispatched on its own idle CPU instead of being taken over
#: by the setter's CPU going idle at the same nanosecond (no migration, so each thread
#: keeps the CPU it started on).
SETTLE_NS = 100


class Flags:
    """Named one-shot flags between simulated threads: ``set`` wakes the waiters and
    stays on the CPU for ``SETTLE_NS``; ``wait`` sleeps until the flag is set (no lost
    wakeup: the check and the sleep run between two yields, so they are atomic)."""

    def __init__(self) -> None:
        self.up: set[str] = set()
        self.at: dict[str, int] = {}

    @staticmethod
    def chan(name: str) -> Hashable:
        return ("test-flag", name)

    def set(self, kit: VmKit, name: str) -> Body:
        self.up.add(name)
        self.at[name] = kit.engine.now
        yield Wakeup(self.chan(name))
        yield Run(SETTLE_NS)

    def wait(self, name: str) -> Body:
        while name not in self.up:
            yield Sleep(self.chan(name), wmesg=name)


def start_process(kit: VmKit, me: Thread, name: str) -> Body:
    """A new process whose first thread is ``me``: its vmspace, active on this CPU."""
    vm = yield from uvmspace_alloc(kit.uvm, me, name)
    kit.vm_of[me.tid] = vm
    pmap_activate(kit.uvm, me, vm.pmap)
    return vm


def join_process(kit: VmKit, me: Thread, vm: Vmspace) -> None:
    """Another thread ``me`` of the process owning ``vm`` (thread_fork + cpu_fork)."""
    kit.vm_of[me.tid] = vm
    pmap_activate(kit.uvm, me, vm.pmap)


def exit_process(kit: VmKit, me: Thread, vm: Vmspace, with_pmap_purge: bool = True) -> Body:
    """The committed exit order: uvm_purge, pmap_deactivate, then uvmspace_free."""
    yield from uvm_purge(kit.uvm, me, vm, with_pmap_purge)
    kit.leave(me, vm.pmap)
    yield from uvmspace_free(kit.uvm, me, vm)


def map_anon(kit: VmKit, me: Thread, vm: Vmspace, va: int, npages: int) -> Body:
    """An anonymous private mapping, every page written (zero-fill faults)."""
    e = yield from uvm_map(kit.uvm, me, vm.vm_map, va, npages)
    ok = yield from uvm_fault(kit.uvm, me, vm, va, npages, write=True)
    assert ok, f"write fault on {vm} at {va:#x} refused"
    return e


def map_text(kit: VmKit, me: Thread, vm: Vmspace, va: int, npages: int, name: str) -> Body:
    """Program text: a private read/exec mapping of vnode ``name``, every page read."""
    vn = uvn_attach(kit.uvm, name, npages)
    e = yield from uvm_map(kit.uvm, me, vm.vm_map, va, npages, vn, 0, PROT_READ | PROT_EXEC)
    ok = yield from uvm_fault(kit.uvm, me, vm, va, npages)
    assert ok, f"read fault on {vm} at {va:#x} refused"
    return e


def page_at(vm: Vmspace, va: int) -> VmPage:
    """The page ``vm``'s pmap maps at ``va``."""
    hit = vm.pmap.lookup(va)
    assert hit is not None, f"{vm} maps nothing at {va:#x}"
    return hit[1].page


def cpu(me: Thread) -> int:
    assert me.cpu is not None, f"{me} is not on a CPU"
    return me.cpu


def spy_gen(
    monkeypatch: pytest.MonkeyPatch,
    module: Any,
    name: str,
    before: Callable[..., None] | None = None,
    after: Callable[..., None] | None = None,
) -> None:
    """Wrap the kernel path ``module.name`` so that ``before(*args)`` and
    ``after(*args)`` run around it, atomically with its first and last step."""
    orig = getattr(module, name)

    def wrapper(*args: Any, **kw: Any) -> Body:
        if before is not None:
            before(*args)
        result = yield from orig(*args, **kw)
        if after is not None:
            after(*args)
        return result

    monkeypatch.setattr(module, name, wrapper)


# -- uvm_purge and uvmspace_purge (4.1, 4.2) -------------------------------------------


def test_uvmspace_purge_runs_shmexit_under_kernel_lock_and_map_teardown_without_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """uvmspace_purge (openbsd-exit-path.md 4.2): ``KERNEL_LOCK(); shmexit(vm);
    KERNEL_UNLOCK()`` first, then ``uvm_map_teardown`` with the kernel lock free; the
    purge takes the kernel lock exactly once, for shmexit."""
    kit = make_kit()
    kl = kit.kernel_lock
    events: list[tuple[str, bool]] = []
    spy_gen(
        monkeypatch,
        shm_mod,
        "shmexit",
        before=lambda uvm, p, vm: events.append(("shmexit in", kl.holds(p))),
        after=lambda uvm, p, vm: events.append(("shmexit out", kl.holds(p))),
    )
    spy_gen(
        monkeypatch,
        vmspace_mod,
        "uvm_map_teardown",
        before=lambda uvm, p, m: events.append(("teardown in", kl.holds(p))),
        after=lambda uvm, p, m: events.append(("teardown out", kl.holds(p))),
    )
    seen: dict[str, Any] = {}

    def proc(me: Thread) -> Body:
        vm = yield from start_process(kit, me, "A")
        yield from map_anon(kit, me, vm, ANON_VA, 4)
        seg = shmget(kit.uvm, 4)
        yield from shmat(kit.uvm, me, vm, seg, SHM_VA)
        yield from uvm_fault(kit.uvm, me, vm, SHM_VA, 4, write=True)
        before = kl.stats.acquisitions
        yield from uvm_purge(kit.uvm, me, vm, True)
        seen["acquisitions"] = kl.stats.acquisitions - before
        seen["events"] = list(events)
        seen["held_after"] = kl.holds(me)
        seen["vm_shm"] = vm.vm_shm
        kit.leave(me, vm.pmap)
        yield from uvmspace_free(kit.uvm, me, vm)

    kit.spawn("A", proc)
    kit.run()
    assert seen.pop("events") == [
        ("shmexit in", True),
        ("shmexit out", True),
        ("teardown in", False),
        ("teardown out", False),
    ]
    assert seen == {"acquisitions": 1, "held_after": False, "vm_shm": None}
    # uvmspace_free's second purge finds no shm: teardown only, still unlocked.
    assert events[4:] == [("teardown in", False), ("teardown out", False)]


def test_uvm_purge_without_shm_never_takes_the_kernel_lock() -> None:
    """uvm_purge (4.1, 4.2): with ``vm_shm == NULL`` nothing on the purge path takes
    the kernel lock (design.md invariant 3: the purge runs unlocked)."""
    kit = make_kit()
    counted: list[int] = []

    def proc(me: Thread) -> Body:
        vm = yield from start_process(kit, me, "A")
        yield from map_anon(kit, me, vm, ANON_VA, 8)
        before = kit.kernel_lock.stats.acquisitions
        yield from exit_process(kit, me, vm)
        counted.append(kit.kernel_lock.stats.acquisitions - before)

    kit.spawn("A", proc)
    kit.run()
    assert counted == [0]


def test_uvm_purge_with_kernel_lock_held_violates_invariant_3() -> None:
    """uvm_purge (4.1) asserts the kernel lock is not held (KERNEL_ASSERT_UNLOCKED;
    11 E3; design.md invariant 3): calling it locked stops the run before any work."""
    kit = make_kit()
    state: dict[str, Any] = {}

    def proc(me: Thread) -> Body:
        vm = yield from start_process(kit, me, "A")
        yield from map_anon(kit, me, vm, ANON_VA, 4)
        state["vm"] = vm
        state["removed"] = kit.uvm.counters.ptes_removed
        yield Acquire(kit.kernel_lock)
        yield from uvm_purge(kit.uvm, me, vm, True)
        yield Release(kit.kernel_lock)

    kit.spawn("A", proc)
    with pytest.raises(InvariantViolation) as err:
        kit.run()
    assert err.value.invariant == 3
    assert "holds the kernel lock" in err.value.message
    assert len(state["vm"].vm_map.entries) == 1
    assert kit.uvm.counters.ptes_removed == state["removed"]


# -- uvm_map_teardown (4.3, 4.4, 4.5) --------------------------------------------------


@pytest.mark.parametrize("arch", ARCHES)
def test_uvm_map_teardown_empties_map_drops_selectors_and_kills_each_entry_once(
    arch: str,
) -> None:
    """uvm_map_teardown (4.3, 4.4; 11 V1, V2): afterwards the tree is empty, every
    address selector is NULL, each entry was killed exactly once (its translations
    removed), and the pmap has no user mapping left; the pmap itself is still there."""
    kit = make_kit(arch)
    out: dict[str, Any] = {}

    def proc(me: Thread) -> Body:
        vm = yield from start_process(kit, me, "A")
        entries = [
            (yield from map_anon(kit, me, vm, ANON_VA, 8)),
            (yield from map_text(kit, me, vm, TEXT_VA, 4, "bin")),
            (yield from map_anon(kit, me, vm, EXTRA_VA, 2)),
            (yield from uvm_map(kit.uvm, me, vm.vm_map, EXTRA_VA + 64, 16)),  # never faulted
        ]
        out["killed_before"] = kit.uvm.counters.entries_killed
        yield from uvm_purge(kit.uvm, me, vm, True)
        out["killed"] = kit.uvm.counters.entries_killed - out["killed_before"]
        out["entries"] = len(vm.vm_map.entries)
        out["uaddr"] = vm.vm_map.uaddr
        out["each_killed"] = [e.killed for e in entries]
        out["resident"] = vm.pmap.resident_count
        out["ptes"] = len(vm.pmap.ptes)
        out["pmap_alive"] = not vm.pmap.destroyed
        kit.leave(me, vm.pmap)
        yield from uvmspace_free(kit.uvm, me, vm)

    kit.spawn("A", proc)
    kit.run()
    assert out["killed_before"] == 0
    assert out["killed"] == 4
    assert out["entries"] == 0
    assert out["uaddr"] is None
    assert out["each_killed"] == [True, True, True, True]
    assert (out["resident"], out["ptes"]) == (0, 0)
    assert out["pmap_alive"]


def test_uvm_map_teardown_yields_once_per_entry() -> None:
    """uvm_map_teardown (4.3): the breadth-first walk calls ``sched_pause(yield)``
    before killing each entry, and nothing else on the purge path is a yield point."""
    kit = make_kit(record=True)
    window: dict[str, int] = {}

    def proc(me: Thread) -> Body:
        vm = yield from start_process(kit, me, "A")
        for i in range(7):
            yield from map_anon(kit, me, vm, ANON_VA + 16 * i, 2)
        window["tid"] = me.tid
        log = kit.engine.log
        assert log is not None
        window["from"] = len(log)
        yield from uvm_purge(kit.uvm, me, vm, True)
        window["to"] = len(log)
        kit.leave(me, vm.pmap)
        yield from uvmspace_free(kit.uvm, me, vm)

    kit.spawn("A", proc)
    kit.run()
    log = kit.engine.log
    assert log is not None
    during = [e for e in log[window["from"] : window["to"]] if e[2] == window["tid"]]
    elsewhere = log[: window["from"]] + log[window["to"] :]
    assert sum(1 for e in during if e[3] == "Yield") == 7
    assert sum(1 for e in elsewhere if e[3] == "Yield") == 0


def test_uvm_map_teardown_detaches_entries_only_after_unlocking_the_map(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """uvm_map_teardown (4.3, 4.5; 11 V3): every entry is killed under the map's write
    lock, then ``vm_map_unlock``, and only then ``uvm_unmap_detach`` drops the amap and
    object references. Shown two ways: the lock state at each detach, and another
    thread read-locking the map while the first detach is in progress (were the map
    still write-locked, that reader would sleep and the run would deadlock)."""
    kit = make_kit()
    flags = Flags()
    shared: dict[str, Any] = {}
    detach_seen: list[tuple[Any, int, int, int]] = []

    def note(what: str) -> Callable[..., None]:
        def f(uvm: Any, p: Thread, *rest: Any) -> None:
            vm_map = shared["vm"].vm_map
            detach_seen.append(
                (
                    what,
                    vm_map.lock.writer is None and not vm_map.lock.readers,
                    uvm.counters.entries_killed,
                    shared["vm"].pmap.resident_count,
                )
            )

        return f

    orig_unref = map_mod.amap_unref

    def amap_unref_meeting_reader(uvm: Any, p: Thread, *args: Any, **kw: Any) -> Body:
        note("amap_unref")(uvm, p)
        if "detaching" not in flags.up:
            yield from flags.set(kit, "detaching")
            yield from flags.wait("reader done")
        yield from orig_unref(uvm, p, *args, **kw)

    monkeypatch.setattr(map_mod, "amap_unref", amap_unref_meeting_reader)
    spy_gen(monkeypatch, map_mod, "pgo_detach", before=note("pgo_detach"))

    def proc(me: Thread) -> Body:
        vm = yield from start_process(kit, me, "A")
        shared["vm"] = vm
        yield from map_anon(kit, me, vm, ANON_VA, 8)
        yield from map_text(kit, me, vm, TEXT_VA, 4, "bin")
        yield from map_anon(kit, me, vm, EXTRA_VA, 4)
        yield from flags.set(kit, "mapped")
        yield from exit_process(kit, me, vm)

    def reader(me: Thread) -> Body:
        yield from flags.wait("mapped")
        vm_map = shared["vm"].vm_map
        yield from flags.wait("detaching")
        yield from vm_map_lock_read(vm_map)
        shared["read_locked_at"] = kit.engine.now
        shared["entries_seen"] = len(vm_map.entries)
        yield from vm_map_unlock_read(vm_map)
        yield from flags.set(kit, "reader done")

    kit.spawn("A", proc)
    kit.spawn("reader", reader)
    kit.run()
    # Breadth-first over three entries: the middle one (the text) first.
    assert [w for w, *_ in detach_seen] == ["pgo_detach", "amap_unref", "amap_unref"]
    assert all(unlocked for _, unlocked, _, _ in detach_seen)
    # All three entries were killed, and every translation removed, before any detach.
    assert all(killed == 3 and resident == 0 for _, _, killed, resident in detach_seen)
    assert shared["read_locked_at"] >= flags.at["detaching"]
    assert shared["entries_seen"] == 0


# -- uvmspace_free after the purge (4.6) ----------------------------------------------


def test_second_purge_in_uvmspace_free_does_no_page_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """uvmspace_free (4.6; 11 V5; design.md invariant 4): the last reference purges
    again as a sanity check; after uvm_purge it finds an empty map and no shm, so it
    removes no PTE, frees no page and kills no entry."""
    kit = make_kit()
    calls: list[tuple[tuple[int, int, int], int]] = []

    def snap(uvm: Any, p: Thread, vm: Vmspace) -> None:
        calls.append((uvm.counters.page_work(), uvm.counters.pmap_remove_calls))

    spy_gen(monkeypatch, vmspace_mod, "uvmspace_purge", before=snap, after=snap)

    def proc(me: Thread) -> Body:
        vm = yield from start_process(kit, me, "A")
        yield from map_anon(kit, me, vm, ANON_VA, 8)
        yield from map_text(kit, me, vm, TEXT_VA, 4, "bin")
        seg = shmget(kit.uvm, 2)
        yield from shmat(kit.uvm, me, vm, seg, SHM_VA)
        yield from shmctl_rmid(kit.uvm, me, seg)
        yield from exit_process(kit, me, vm)

    kit.spawn("A", proc)
    kit.run()
    assert len(calls) == 4  # two purges, before and after each
    (first_in, _), (first_out, _), (second_in, rm_in), (second_out, rm_out) = calls
    assert first_out != first_in  # uvm_purge did the work
    assert second_out == second_in
    assert rm_out == rm_in
    assert kit.uvm.counters.vmspaces_freed == 1


@pytest.mark.parametrize("arch", ARCHES)
def test_uvmspace_free_without_uvm_purge_tears_down_in_its_own_purge(
    arch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reaper design (4.6): with no uvm_purge, the purge inside uvmspace_free does
    all the page work, and that is no violation: invariant 4 only forbids work in the
    second purge of a map that was purged already."""
    kit = make_kit(arch)
    works: list[tuple[int, int, int]] = []
    spy_gen(
        monkeypatch,
        vmspace_mod,
        "uvmspace_purge",
        before=lambda uvm, p, vm: works.append(uvm.counters.page_work()),
        after=lambda uvm, p, vm: works.append(uvm.counters.page_work()),
    )

    def proc(me: Thread) -> Body:
        vm = yield from start_process(kit, me, "A")
        yield from map_anon(kit, me, vm, ANON_VA, 8)
        yield from map_text(kit, me, vm, TEXT_VA, 4, "bin")
        kit.leave(me, vm.pmap)
        yield from uvmspace_free(kit.uvm, me, vm)

    kit.spawn("A", proc)
    kit.run()
    assert len(works) == 2
    (removed0, freed0, killed0), (removed1, freed1, killed1) = works
    assert (removed1 - removed0, killed1 - killed0) == (12, 2)
    assert freed1 - freed0 >= 8  # the 8 anon pages at least (plus page-table pages)
    assert kit.uvm.physmem.in_use[ANON] == 0
    assert kit.uvm.counters.vmspaces_freed == 1


def test_first_purge_that_skips_shmexit_violates_invariant_4(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Mutant of uvmspace_purge (4.2) that forgets shmexit: after uvm_purge the map
    must have no entries and ``vm_shm == NULL`` (4.6; 11 V1; design.md invariant 4)."""
    kit = make_kit()

    def purge_without_shmexit(uvm: Any, p: Thread, vm: Vmspace) -> Body:
        yield from vmspace_mod.uvm_map_teardown(uvm, p, vm.vm_map)

    monkeypatch.setattr(vmspace_mod, "uvmspace_purge", purge_without_shmexit)

    def proc(me: Thread) -> Body:
        vm = yield from start_process(kit, me, "A")
        seg = shmget(kit.uvm, 2)
        yield from shmat(kit.uvm, me, vm, seg, SHM_VA)
        yield from exit_process(kit, me, vm)

    kit.spawn("A", proc)
    with pytest.raises(InvariantViolation) as err:
        kit.run()
    assert err.value.invariant == 4
    assert "shm" in err.value.message


@pytest.mark.parametrize("arch", ARCHES)
def test_uvmspace_free_of_purged_map_with_leftover_entry_violates_invariant_4(
    arch: str,
) -> None:
    """uvmspace_free (4.6; 11 V5; design.md invariant 4): once uvm_purge ran, the purge
    in uvmspace_free must do no page work. A mutant leaves an entry behind after the
    purge (here: one put back into the tree, as a stray mapping into a dying vmspace
    would); the second purge then kills it, which must stop the run with invariant 4."""
    kit = make_kit(arch)
    state: dict[str, Any] = {}

    def proc(me: Thread) -> Body:
        vm = yield from start_process(kit, me, "A")
        yield from map_anon(kit, me, vm, ANON_VA, 4)
        yield from uvm_purge(kit.uvm, me, vm, True)
        # The mutant's leftover: an entry the first purge did not take down.
        vm.vm_map.entries[EXTRA_VA] = VmMapEntry(EXTRA_VA, EXTRA_VA + 4)
        state["work"] = kit.uvm.counters.page_work()
        kit.leave(me, vm.pmap)
        yield from uvmspace_free(kit.uvm, me, vm)
        state["work_after"] = kit.uvm.counters.page_work()

    kit.spawn("A", proc)
    with pytest.raises(InvariantViolation) as err:
        kit.run()
    assert err.value.invariant == 4, state


@pytest.mark.parametrize("arch", ARCHES)
def test_pmap_destroy_runs_in_uvmspace_free_not_in_uvm_purge(arch: str) -> None:
    """4.6: after uvm_purge the pmap is still allocated (refcount 1, still the map's)
    and nothing was destroyed; uvmspace_free's pmap_destroy frees it and clears
    ``vm_map.pmap``."""
    kit = make_kit(arch)
    out: dict[str, Any] = {}

    def proc(me: Thread) -> Body:
        vm = yield from start_process(kit, me, "A")
        yield from map_anon(kit, me, vm, ANON_VA, 8)
        pm = vm.pmap
        yield from uvm_purge(kit.uvm, me, vm, True)
        out["after_purge"] = (
            pm.destroyed,
            pm.pm_refs,
            vm.vm_map.pmap is pm,
            kit.uvm.counters.pmaps_destroyed,
        )
        kit.leave(me, pm)
        yield from uvmspace_free(kit.uvm, me, vm)
        out["after_free"] = (
            pm.destroyed,
            pm.pm_refs,
            vm.vm_map.pmap,
            kit.uvm.counters.pmaps_destroyed,
        )

    kit.spawn("A", proc)
    kit.run()
    assert out["after_purge"] == (False, 1, True, 0)
    assert out["after_free"] == (True, 0, None, 1)


# -- sharing: vnode text, copy-on-write, SysV shm (10) --------------------------------


@pytest.mark.parametrize("arch", ARCHES)
def test_shared_text_pages_stay_resident_while_mapped_and_stay_cached_after_both_exit(
    arch: str,
) -> None:
    """Vnode pages belong to the vnode, not to an address space (4.5 ``uvn_detach``;
    10): when one of two processes mapping the same program text exits, the other still
    maps the very same pages, and after both exit they stay resident in the vnode."""
    kit = make_kit(arch)
    flags = Flags()
    out: dict[str, Any] = {}
    npages = 6

    def first(me: Thread) -> Body:
        vm = yield from start_process(kit, me, "A")
        yield from map_text(kit, me, vm, TEXT_VA, npages, "bin")
        yield from flags.set(kit, "A mapped")
        yield from flags.wait("B mapped")
        yield from exit_process(kit, me, vm)
        yield from flags.set(kit, "A gone")

    def second(me: Thread) -> Body:
        vm = yield from start_process(kit, me, "B")
        yield from flags.wait("A mapped")
        yield from map_text(kit, me, vm, TEXT_VA, npages, "bin")
        vn = kit.uvm.vnodes["bin"]
        pages = list(vn.pages.values())
        out["pages"] = pages
        out["before"] = [len(pg.pv) for pg in pages]
        yield from flags.set(kit, "B mapped")
        yield from flags.wait("A gone")
        out["after_A"] = (
            [pg.freed for pg in pages],
            [[(pm is vm.pmap, va) for pm, va in pg.pv] for pg in pages],
            [page_at(vm, TEXT_VA + i) is pages[i] for i in range(npages)],
            kit.uvm.physmem.in_use[OBJECT],
        )
        ok = yield from uvm_touch(kit.uvm, me, vm, TEXT_VA, npages)
        out["touch_ok"] = ok
        yield from exit_process(kit, me, vm)

    kit.spawn("A", first)
    kit.spawn("B", second)
    kit.run()
    pages = out["pages"]
    assert len(pages) == npages  # exact mode: one VmPage per page
    assert out["before"] == [2] * npages
    freed, pvs, same, in_use = out["after_A"]
    assert freed == [False] * npages
    assert pvs == [[(True, TEXT_VA + i)] for i in range(npages)]
    assert same == [True] * npages
    assert in_use == npages
    assert out["touch_ok"]
    vn = kit.uvm.vnodes["bin"]
    assert list(vn.pages.values()) == pages
    assert [pg.freed for pg in pages] == [False] * npages
    assert all(not pg.pv for pg in pages)
    assert vn.uo_refs == 0
    assert kit.uvm.physmem.in_use[OBJECT] == npages


@pytest.mark.parametrize("arch", ARCHES)
def test_concurrent_faults_on_the_same_vnode_pages_share_them_and_leak_nothing(
    arch: str,
) -> None:
    """A vnode page is one page however many processes fault it (10; 4.5): two
    processes faulting the same program text at the same moment on two CPUs map the
    same VmPages (in C the object lock and the busy page make the second faulter wait
    and find the first one's page), and after both exit the pages in use are exactly
    the vnode's cached ones (design.md invariant 2, ``audit_pages``)."""
    kit = make_kit(arch)
    npages = 6
    out: dict[str, Any] = {}

    def proc(me: Thread, name: str) -> Body:
        vm = yield from start_process(kit, me, name)
        yield from map_text(kit, me, vm, TEXT_VA, npages, "bin")
        out[name] = [page_at(vm, TEXT_VA + i).ppn for i in range(npages)]
        out[name + " cpu"] = me.cpu
        yield Run(10_000)  # both have mapped before either exits
        yield from exit_process(kit, me, vm)

    kit.spawn("A", proc, "A")
    kit.spawn("B", proc, "B")
    kit.run()
    assert (out["A cpu"], out["B cpu"]) == (0, 1)
    vn = kit.uvm.vnodes["bin"]
    assert out["A"] == out["B"] == [pg.ppn for pg in vn.pages.values()]
    assert kit.uvm.physmem.in_use[OBJECT] == vn.resident() == npages
    audit_pages(kit.uvm, [])


@pytest.mark.parametrize("arch", ARCHES)
def test_cow_page_shared_with_parent_is_not_freed_by_the_childs_exit(arch: str) -> None:
    """uvmspace_fork (10.2): a copied mapping shares its anons copy-on-write (``an_ref``
    2). The child's exit only drops its references (``amap_unref`` → ``--an_ref``), so
    the parent keeps mapping the same pages, which are freed with the parent's exit."""
    kit = make_kit(arch)
    flags = Flags()
    out: dict[str, Any] = {}
    npages = 4

    def parent(me: Thread) -> Body:
        vm = yield from start_process(kit, me, "P")
        e = yield from map_anon(kit, me, vm, ANON_VA, npages)
        pages = [page_at(vm, ANON_VA + i) for i in range(npages)]
        assert e.amap is not None
        anons = list(e.amap.anons.values())
        out["pages"], out["anons"] = pages, anons
        child_vm = yield from uvmspace_fork(kit.uvm, me, vm, "C")
        out["child_vm"] = child_vm
        yield from flags.set(kit, "forked")
        yield from flags.wait("child gone")
        out["after_child"] = (
            [pg.freed for pg in pages],
            [page_at(vm, ANON_VA + i) is pages[i] for i in range(npages)],
            [a.an_ref for a in anons],
            [[pm is vm.pmap for pm, _ in pg.pv] for pg in pages],
            kit.uvm.physmem.in_use[ANON],
        )
        ok = yield from uvm_touch(kit.uvm, me, vm, ANON_VA, npages)
        out["touch_ok"] = ok
        yield from exit_process(kit, me, vm)
        out["after_parent"] = [pg.freed for pg in pages]

    def child(me: Thread) -> Body:
        yield from flags.wait("forked")
        vm = out["child_vm"]
        join_process(kit, me, vm)
        ok = yield from uvm_fault(kit.uvm, me, vm, ANON_VA, npages)  # reads: shared pages
        out["child_read"] = ok
        out["child_maps"] = [page_at(vm, ANON_VA + i) for i in range(npages)]
        out["shared_an_refs"] = [a.an_ref for a in out["anons"]]
        yield from exit_process(kit, me, vm)
        yield from flags.set(kit, "child gone")

    kit.spawn("P", parent)
    kit.spawn("C", child)
    kit.run()
    assert out["child_read"]
    assert out["child_maps"] == out["pages"]  # the very same VmPages, read-only
    assert out["shared_an_refs"] == [2] * npages
    freed, same, an_refs, pv_owners, in_use = out["after_child"]
    assert freed == [False] * npages
    assert same == [True] * npages
    assert an_refs == [1] * npages
    assert pv_owners == [[True]] * npages
    assert in_use == npages
    assert out["touch_ok"]
    assert kit.uvm.counters.cow_copies == 0
    assert out["after_parent"] == [True] * npages
    assert kit.uvm.physmem.in_use[ANON] == 0


@pytest.mark.parametrize("arch", ARCHES)
def test_shm_segment_survives_first_exit_and_is_freed_at_the_last_after_rmid(
    arch: str,
) -> None:
    """SysV shm (10.3): shmexit drops one attachment (``shm_nattch--``); a segment marked
    removed is deallocated when the last attachment goes, and its anonymous object's
    pages are freed with the object's last reference."""
    kit = make_kit(arch)
    flags = Flags()
    out: dict[str, Any] = {}
    npages = 4

    def first(me: Thread) -> Body:
        vm = yield from start_process(kit, me, "A")
        seg = shmget(kit.uvm, npages)
        out["seg"] = seg
        yield from shmat(kit.uvm, me, vm, seg, SHM_VA)
        yield from uvm_fault(kit.uvm, me, vm, SHM_VA, npages, write=True)
        yield from flags.set(kit, "A attached")
        yield from flags.wait("B attached")
        yield from shmctl_rmid(kit.uvm, me, seg)
        yield from exit_process(kit, me, vm)
        yield from flags.set(kit, "A gone")

    def second(me: Thread) -> Body:
        vm = yield from start_process(kit, me, "B")
        yield from flags.wait("A attached")
        seg = out["seg"]
        yield from shmat(kit.uvm, me, vm, seg, SHM_VA + 64)
        yield from uvm_fault(kit.uvm, me, vm, SHM_VA + 64, npages)
        pages = list(seg.aobj.pages.values())
        out["pages"] = pages
        yield from flags.set(kit, "B attached")
        yield from flags.wait("A gone")
        out["after_A"] = (
            seg.shm_nattch,
            seg.removed,
            seg.deallocated,
            seg.aobj.freed,
            [pg.freed for pg in pages],
            [[pm is vm.pmap for pm, _ in pg.pv] for pg in pages],
            kit.uvm.physmem.in_use[OBJECT],
        )
        yield from exit_process(kit, me, vm)

    kit.spawn("A", first)
    kit.spawn("B", second)
    kit.run()
    seg = out["seg"]
    assert out["after_A"] == (1, True, False, False, [False] * npages, [[True]] * npages, npages)
    assert (seg.shm_nattch, seg.deallocated, seg.aobj.freed) == (0, True, True)
    assert [pg.freed for pg in out["pages"]] == [True] * npages
    assert seg.shmid not in kit.uvm.shm_segments
    assert kit.uvm.physmem.in_use[OBJECT] == 0


# -- arm64 pmap_purge and ttlb_flush (5) -----------------------------------------------


def _arm64_exit_broadcasts(with_pmap_purge: bool, npages: int) -> tuple[dict[str, int], int]:
    """One arm64 process with ``npages`` resident anon pages exits; the TLB stats of
    its exit (purge, deactivate, free), and its TLB entries left on its CPU after the
    purge."""
    kit = make_kit("arm64")
    out: dict[str, Any] = {}

    def proc(me: Thread) -> Body:
        vm = yield from start_process(kit, me, "A")
        yield from map_anon(kit, me, vm, ANON_VA, npages)
        tag = user_tag(kit.uvm, vm.pmap.tag)
        out["cached"] = kit.machine.tlb.count(cpu(me), tag)
        before = kit.machine.stats.as_dict()
        yield from uvm_purge(kit.uvm, me, vm, with_pmap_purge)
        out["left"] = kit.machine.tlb.count(cpu(me), tag)
        kit.leave(me, vm.pmap)
        yield from uvmspace_free(kit.uvm, me, vm)
        after = kit.machine.stats.as_dict()
        out["delta"] = {k: after[k] - before[k] for k in after}

    kit.spawn("A", proc)
    kit.run()
    assert out["cached"] == npages
    return out["delta"], out["left"]


def test_arm64_pmap_remove_after_pmap_purge_issues_no_per_page_tlbi() -> None:
    """arm64 (5.2 ``ttlb_flush`` returns at ``pm_active == 0``; 5.3; 5.5; 11 T2): with
    pmap_purge, the whole exit issues the ASID-pair flush of pmap_purge and the pair of
    pmap_destroy (pmap_free_asid), and no per-page TLBI at all."""
    delta, left = _arm64_exit_broadcasts(True, 12)
    assert delta == {
        "page_invalidations": 0,
        "asid_flushes": 4,
        "full_flushes": 0,
        "ipis": 0,
        "broadcasts": 4,
    }
    assert left == 0


def test_arm64_pmap_remove_without_pmap_purge_broadcasts_two_tlbis_per_resident_page() -> None:
    """arm64 (5.2, 5.4; 11 T2): without pmap_purge (the May 2025 diff) the exiting
    thread still counts in ``pm_active``, so removing each resident page costs two
    broadcast TLBIs (one per ASID of the pair); pmap_destroy adds its ASID pair."""
    npages = 12
    delta, left = _arm64_exit_broadcasts(False, npages)
    assert delta == {
        "page_invalidations": 2 * npages,
        "asid_flushes": 2,
        "full_flushes": 0,
        "ipis": 0,
        "broadcasts": 2 * npages + 2,
    }
    assert left == 0


def test_arm64_pmap_purge_spins_until_sibling_has_deactivated_and_only_then_flushes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """arm64 pmap_purge (5.3; 11 E2): the last thread spins while ``pm_active != 1``;
    a sibling still between exit1 step 12 and pmap_deactivate keeps it spinning. Only
    after the sibling's pmap_deactivate does it flush both ASIDs (reaching the sibling's
    CPU too) and set ``pm_active`` to 0."""
    kit = make_kit("arm64")
    flags = Flags()
    out: dict[str, Any] = {}
    flushes: list[tuple[int, int, tuple[int, ...]]] = []
    orig = pmap_mod.cpu_tlb_flush_asid_all

    def flush_spy(m: Any, asids: tuple[int, ...]) -> Body:
        flushes.append((kit.engine.now, out["vm"].pmap.pm_active, asids))
        yield from orig(m, asids)

    monkeypatch.setattr(pmap_mod, "cpu_tlb_flush_asid_all", flush_spy)
    sibling_exit_ns = 30_000

    def main(me: Thread) -> Body:
        vm = yield from start_process(kit, me, "A")
        out["vm"] = vm
        yield from map_anon(kit, me, vm, ANON_VA, 8)
        yield from flags.set(kit, "mapped")
        yield from flags.wait("sibling ready")
        out["purge_start"] = kit.engine.now
        spin0 = me.spin_ns
        yield from uvm_purge(kit.uvm, me, vm, True)
        out["spin"] = me.spin_ns - spin0
        out["pm_active"] = vm.pmap.pm_active
        out["sibling_tlb"] = kit.machine.tlb.count(1, user_tag(kit.uvm, vm.pmap.tag))
        kit.leave(me, vm.pmap)  # a no-op now (5.2, 11 T3)
        yield from uvmspace_free(kit.uvm, me, vm)

    def sibling(me: Thread) -> Body:
        yield from flags.wait("mapped")
        vm = out["vm"]
        join_process(kit, me, vm)
        out["sibling_cpu"] = me.cpu
        ok = yield from uvm_touch(kit.uvm, me, vm, ANON_VA, 8)
        out["sibling_cached"] = kit.machine.tlb.count(1, user_tag(kit.uvm, vm.pmap.tag))
        assert ok
        yield from flags.set(kit, "sibling ready")
        yield Run(sibling_exit_ns)  # the rest of its exit1 before pmap_deactivate
        out["deactivated_at"] = kit.engine.now
        kit.leave(me, vm.pmap)

    kit.spawn("A", main)
    kit.spawn("A.2", sibling)
    kit.run()
    assert out["sibling_cpu"] == 1
    assert out["sibling_cached"] == 8
    assert out["spin"] > 0
    assert out["spin"] == out["deactivated_at"] - out["purge_start"]
    purge_flush = flushes[0]
    assert purge_flush[0] >= out["deactivated_at"]
    assert purge_flush[1] == 1  # only the purging thread left
    assert out["pm_active"] == 0
    assert out["sibling_tlb"] == 0


def test_arm64_pmap_deactivate_after_pmap_purge_is_a_noop() -> None:
    """arm64 pmap_deactivate (5.2; 11 T3): ``pm_active`` is already 0 after pmap_purge,
    so the exiting thread's pmap_deactivate returns at once: no double decrement."""
    kit = make_kit("arm64")
    out: list[int] = []

    def proc(me: Thread) -> Body:
        vm = yield from start_process(kit, me, "A")
        yield from map_anon(kit, me, vm, ANON_VA, 2)
        yield from uvm_purge(kit.uvm, me, vm, True)
        out.append(vm.pmap.pm_active)
        kit.leave(me, vm.pmap)
        out.append(vm.pmap.pm_active)
        yield from uvmspace_free(kit.uvm, me, vm)

    kit.spawn("A", proc)
    kit.run()
    assert out == [0, 0]


@pytest.mark.parametrize("arch", ARCHES)
def test_arm64_keeps_page_table_pages_until_pmap_destroy_amd64_frees_them_in_purge(
    arch: str,
) -> None:
    """Page-table pages (4.6; 5.4 vp tables go in pmap_destroy; 6 pmap_do_remove frees
    empty PTPs): after uvm_purge amd64 has freed every empty PTP, arm64 still has one
    level-3 table per populated 2 MB block until uvmspace_free's pmap_destroy."""
    kit = make_kit(arch)
    out: dict[str, int] = {}

    def proc(me: Thread) -> Body:
        vm = yield from start_process(kit, me, "A")
        yield from map_anon(kit, me, vm, ANON_VA, 8)
        yield from map_anon(kit, me, vm, EXTRA_VA, 8)
        out["mapped"] = kit.uvm.physmem.in_use[PTP]
        yield from uvm_purge(kit.uvm, me, vm, True)
        out["purged"] = kit.uvm.physmem.in_use[PTP]
        kit.leave(me, vm.pmap)
        yield from uvmspace_free(kit.uvm, me, vm)
        out["freed"] = kit.uvm.physmem.in_use[PTP]

    kit.spawn("A", proc)
    kit.run()
    assert out["mapped"] == 2
    assert out["purged"] == (0 if arch == "amd64" else 2)
    assert out["freed"] == 0


# -- amd64 shootdowns (6) --------------------------------------------------------------


def test_amd64_shootdown_ipis_reach_the_cpu_where_a_sibling_runs_the_pmap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """amd64 pmap_do_remove (6; 11 T4, T5): the pmap is active on the CPU where a
    sibling thread runs, so an munmap there invalidates locally (shootself), sends that
    CPU one shootdown IPI that clears its translations, and frees the PTP that became
    empty only after the acknowledgement. Once the sibling has deactivated, the exit
    sends no IPI."""
    kit = make_kit("amd64")
    flags = Flags()
    out: dict[str, Any] = {}
    ptp_frees: list[tuple[int, int]] = []

    def at_free(uvm: Any, p: Thread, page: Any) -> None:
        if page.kind == PTP and "vm" in out:
            tag = out["vm"].pmap.tag
            ptp_frees.append((kit.machine.stats.ipis, kit.machine.tlb.count(1, tag)))

    # amd64 frees each empty page-table page with uvm_pagefree after the shootdown.
    spy_gen(monkeypatch, pmap_mod, "uvm_pagefree", before=at_free)

    def main(me: Thread) -> Body:
        vm = yield from start_process(kit, me, "A")
        out["vm"] = vm
        yield from map_anon(kit, me, vm, ANON_VA, 8)
        yield from map_anon(kit, me, vm, EXTRA_VA, 4)
        yield from flags.set(kit, "mapped")
        yield from flags.wait("sibling ready")
        tag = vm.pmap.tag
        before = kit.machine.stats.as_dict()
        yield from uvm_unmap(kit.uvm, me, vm.vm_map, ANON_VA, ANON_VA + 8)
        after = kit.machine.stats.as_dict()
        out["munmap"] = {k: after[k] - before[k] for k in after}
        out["tlb_after_munmap"] = (
            kit.machine.tlb.count(0, tag),
            kit.machine.tlb.count(1, tag),
        )
        out["ptp_after_munmap"] = kit.uvm.physmem.in_use[PTP]
        yield from flags.set(kit, "unmapped")
        yield from flags.wait("sibling gone")
        before = kit.machine.stats.ipis
        yield from exit_process(kit, me, vm)
        out["exit_ipis"] = kit.machine.stats.ipis - before

    def sibling(me: Thread) -> Body:
        yield from flags.wait("mapped")
        vm = out["vm"]
        join_process(kit, me, vm)
        out["sibling_cpu"] = me.cpu
        yield from uvm_touch(kit.uvm, me, vm, ANON_VA, 8)
        out["sibling_cached"] = kit.machine.tlb.count(1, vm.pmap.tag)
        yield from flags.set(kit, "sibling ready")
        yield Run(200_000, USER)  # running user code when the shootdown comes
        yield from flags.wait("unmapped")
        kit.leave(me, vm.pmap)
        yield from flags.set(kit, "sibling gone")

    kit.spawn("A", main)
    kit.spawn("A.2", sibling)
    kit.run()
    assert out["sibling_cpu"] == 1
    assert out["sibling_cached"] == 8
    assert out["munmap"] == {
        "page_invalidations": 8,
        "asid_flushes": 0,
        "full_flushes": 0,
        "ipis": 1,
        "broadcasts": 0,
    }
    # cpu0 keeps its 4 EXTRA_VA translations; cpu1 lost the 8 unmapped ones.
    assert out["tlb_after_munmap"] == (4, 0)
    assert out["ptp_after_munmap"] == 1
    assert ptp_frees[0] == (1, 0)  # the munmap's PTP went back after the IPI's ack
    assert out["exit_ipis"] == 0


def test_amd64_exit_after_sibling_deactivated_on_another_cpu_frees_pages_without_ipi() -> None:
    """amd64 (6; 11 T1, T4; design.md invariant 1): a sibling that ran on cpu1 exits
    first, and its pmap_deactivate clears cpu1's ``ci_proc_pmap`` without flushing. The
    last thread's uvm_purge sends cpu1 no IPI and frees the pages while cpu1 still
    holds translations to them. That is safe, and must not be reported: cpu1 can only
    use the pmap again after loading it, and loading another address space on amd64
    (``pmap_switch``: a cr3 reload) flushes that CPU's TLB first."""
    kit = make_kit("amd64")
    flags = Flags()
    out: dict[str, Any] = {}

    def main(me: Thread) -> Body:
        vm = yield from start_process(kit, me, "A")
        out["vm"] = vm
        yield from map_anon(kit, me, vm, ANON_VA, 8)
        yield from flags.set(kit, "mapped")
        yield from flags.wait("sibling gone")
        out["stale_on_cpu1"] = kit.machine.tlb.count(1, vm.pmap.tag)
        out["loaded"] = [pm is vm.pmap for pm in kit.machine.curpm]
        before = kit.machine.stats.ipis
        yield from exit_process(kit, me, vm)
        out["exit_ipis"] = kit.machine.stats.ipis - before

    def sibling(me: Thread) -> Body:
        yield from flags.wait("mapped")
        vm = out["vm"]
        join_process(kit, me, vm)
        out["sibling_cpu"] = me.cpu
        yield from uvm_touch(kit.uvm, me, vm, ANON_VA, 8)
        kit.leave(me, vm.pmap)
        yield from flags.set(kit, "sibling gone")

    kit.spawn("A", main)
    kit.spawn("A.2", sibling)
    kit.run()
    assert out["sibling_cpu"] == 1
    assert out["stale_on_cpu1"] == 8
    assert out["loaded"] == [True, False]
    assert out["exit_ipis"] == 0
    assert kit.uvm.physmem.in_use[ANON] == 0
    assert kit.uvm.counters.vmspaces_freed == 1


def test_amd64_exit_sends_no_ipi_to_a_cpu_running_another_process() -> None:
    """amd64 shootdown targets (6; 11 T4): only CPUs whose ``ci_proc_pmap`` is the
    exiting pmap. Another process running on cpu1 gets no IPI and keeps its own
    translations; the exiting CPU's translations of the dead pmap are gone."""
    kit = make_kit("amd64")
    flags = Flags()
    out: dict[str, Any] = {}

    def exiting(me: Thread) -> Body:
        vm = yield from start_process(kit, me, "A")
        yield from map_anon(kit, me, vm, ANON_VA, 8)
        yield from map_anon(kit, me, vm, EXTRA_VA, 40)  # > 32 pages: a full local flush
        out["A_cpu"] = me.cpu
        out["A_cached"] = kit.machine.tlb.count(0, vm.pmap.tag)
        yield from flags.wait("B running")
        before = kit.machine.stats.as_dict()
        out["B_before"] = kit.machine.tlb.count(1, out["B_tag"])
        tag = vm.pmap.tag
        yield from exit_process(kit, me, vm)
        after = kit.machine.stats.as_dict()
        out["exit"] = {k: after[k] - before[k] for k in after}
        out["A_left"] = (kit.machine.tlb.count(0, tag), kit.machine.tlb.count(1, tag))
        out["B_after"] = kit.machine.tlb.count(1, out["B_tag"])
        out["B_still_running"] = kit.machine.curpm[1] is out["B_pmap"]

    def other(me: Thread) -> Body:
        vm = yield from start_process(kit, me, "B")
        yield from map_anon(kit, me, vm, ANON_VA, 6)
        out["B_cpu"] = me.cpu
        out["B_tag"] = vm.pmap.tag
        out["B_pmap"] = vm.pmap
        yield from flags.set(kit, "B running")
        yield Run(2_000_000, USER)
        yield from exit_process(kit, me, vm)

    kit.spawn("A", exiting)
    kit.spawn("B", other)
    kit.run()
    assert (out["A_cpu"], out["B_cpu"]) == (0, 1)
    assert out["A_cached"] == 48
    assert out["exit"]["ipis"] == 0
    assert out["exit"]["page_invalidations"] == 8
    assert out["exit"]["full_flushes"] == 1
    assert out["A_left"] == (0, 0)
    assert out["B_before"] == out["B_after"] == 6
    assert out["B_still_running"]


# -- TLB safety (11 T1; design.md invariant 1) ------------------------------------------


@pytest.mark.parametrize("arch", ARCHES)
def test_page_freed_while_another_cpus_tlb_reaches_it_through_live_pmap_violates_invariant_1(
    arch: str,
) -> None:
    """design.md invariant 1 (11 T1): a broken sequence clears a PTE without any TLB
    invalidation (``_drop_pte``) and frees the page while a sibling on cpu1, whose TLB
    still translates to it, can run on the pmap: the free must stop the run."""
    kit = make_kit(arch)
    flags = Flags()
    out: dict[str, Any] = {}

    def main(me: Thread) -> Body:
        vm = yield from start_process(kit, me, "A")
        out["vm"] = vm
        yield from uvm_map(kit.uvm, me, vm.vm_map, ANON_VA, 2)
        yield from flags.set(kit, "mapped")
        yield from flags.wait("sibling faulted")
        pm = vm.pmap
        out["pm_active"] = pm.pm_active
        out["own_tlb"] = kit.machine.tlb.count(cpu(me), user_tag(kit.uvm, pm.tag))
        yield Acquire(pm.pm_mtx)
        pte = _drop_pte(pm, ANON_VA)  # the mutant: no ttlb_flush / shootdown
        yield Release(pm.pm_mtx)
        yield from uvm_pagefree(kit.uvm, me, pte.page)

    def sibling(me: Thread) -> Body:
        yield from flags.wait("mapped")
        vm = out["vm"]
        join_process(kit, me, vm)
        ok = yield from uvm_fault(kit.uvm, me, vm, ANON_VA, 2, write=True)
        assert ok
        yield from flags.set(kit, "sibling faulted")
        yield Run(1_000_000, USER)

    kit.spawn("A", main)
    kit.spawn("A.2", sibling)
    with pytest.raises(InvariantViolation) as err:
        kit.run()
    assert out["pm_active"] == 2
    assert out["own_tlb"] == 0
    assert err.value.invariant == 1
    assert "cpu1's TLB" in err.value.message


@pytest.mark.parametrize("arch", ARCHES)
def test_old_reaper_order_frees_pages_under_stale_tlb_entries_of_a_dead_pmap_safely(
    arch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """design.md invariant 1, the harmless case (5.2; 6): the old reaper design
    deactivates in exit1 and the reaper on another CPU runs uvmspace_free, whose purge
    removes PTEs with no TLB maintenance (arm64 ``pm_active == 0``; amd64 the pmap is
    active nowhere). The freed pages are still in the dead CPU's TLB, under a tag
    nothing will load again: no violation, and no per-page invalidation or IPI."""
    kit = make_kit(arch)
    flags = Flags()
    out: dict[str, Any] = {}
    frees: list[tuple[int | None, bool]] = []

    def at_free(uvm: Any, p: Thread, pg: Any) -> None:
        frees.append((p.cpu, uvm.tlb.reaches(pg.ppn, pg.npages)))

    # amap_wipeout frees each anon's page as it goes (uvm_anfree, uvm_amap.c 1.97).
    spy_gen(monkeypatch, anon_mod, "uvm_pagefree", before=at_free)

    def exiting(me: Thread) -> Body:
        vm = yield from start_process(kit, me, "A")
        out["vm"] = vm
        yield from map_anon(kit, me, vm, ANON_VA, 8)
        out["cpu"] = me.cpu
        out["cached"] = kit.machine.tlb.count(cpu(me), user_tag(kit.uvm, vm.pmap.tag))
        kit.leave(me, vm.pmap)
        yield from flags.set(kit, "dead")

    def reaper(me: Thread) -> Body:
        yield from flags.wait("dead")
        vm = out["vm"]
        out["reaper_cpu"] = me.cpu
        before = kit.machine.stats.as_dict()
        yield from uvmspace_free(kit.uvm, me, vm)
        after = kit.machine.stats.as_dict()
        out["reap"] = {k: after[k] - before[k] for k in after}

    kit.spawn("A", exiting)
    kit.spawn("reaper", reaper)
    kit.run()
    assert (out["cpu"], out["reaper_cpu"]) == (0, 1)
    assert out["cached"] == 8
    assert frees == [(1, True)] * 8  # every anon page freed under a stale entry
    assert kit.uvm.physmem.in_use[ANON] == 0
    assert out["reap"]["page_invalidations"] == 0
    assert out["reap"]["ipis"] == 0
    # arm64: only pmap_destroy's ASID pair; amd64: nothing at all.
    assert out["reap"]["broadcasts"] == (2 if arch == "arm64" else 0)
    assert kit.uvm.counters.vmspaces_freed == 1


# -- reference counts (4.6; 11 V4; design.md invariant 5) -----------------------------


def test_freeing_a_vmspace_twice_violates_invariant_5() -> None:
    """uvmspace_free (4.6; 11 V4): ``vm_refcnt`` never goes negative; a second free of
    the same vmspace stops the run with invariant 5."""
    kit = make_kit()

    def proc(me: Thread) -> Body:
        vm = yield from start_process(kit, me, "A")
        yield from map_anon(kit, me, vm, ANON_VA, 2)
        yield from exit_process(kit, me, vm)
        yield from uvmspace_free(kit.uvm, me, vm)

    kit.spawn("A", proc)
    with pytest.raises(InvariantViolation) as err:
        kit.run()
    assert err.value.invariant == 5
    assert kit.uvm.counters.vmspaces_freed == 1


def test_uvmspace_free_with_a_transient_reference_left_only_drops_the_count() -> None:
    """uvmspace_addref / uvmspace_free (4.6): a transient holder (ptrace, sysctl) keeps
    ``vm_refcnt`` above 0 after the reaper's free, so nothing is destroyed until the
    holder's own uvmspace_free, which then destroys the pmap."""
    kit = make_kit()
    out: dict[str, Any] = {}

    def proc(me: Thread) -> Body:
        vm = yield from start_process(kit, me, "A")
        yield from map_anon(kit, me, vm, ANON_VA, 2)
        uvmspace_addref(kit.uvm, vm)
        yield from exit_process(kit, me, vm)
        out["after_exit"] = (vm.vm_refcnt, vm.freed, vm.pmap.destroyed)
        yield from uvmspace_free(kit.uvm, me, vm)
        out["after_holder"] = (vm.vm_refcnt, vm.freed, kit.uvm.counters.pmaps_destroyed)

    kit.spawn("A", proc)
    kit.run()
    assert out["after_exit"] == (1, False, False)
    assert out["after_holder"] == (0, True, 1)
