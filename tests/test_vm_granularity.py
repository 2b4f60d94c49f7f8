"""``exact`` and ``range`` granularity give the same results (style.md "Determinism
tests"; uvm.py: in range mode "a step covers the run, with the same total costs").

Each scenario is a few processes run by ONE simulated thread (it switches between their
address spaces with ``pmap_switch``, as ``cpu_switchto`` would), so the schedule cannot
depend on how finely the work is cut: anonymous and file mappings, whole-mapping faults
(one ``uvm_fault`` call per mapping: one unit in range mode, page by page in exact mode),
fork with copy-on-write, a child writing a whole mapping, SysV shm, and exits in a fixed
order in the committed sequence (uvm_purge, pmap_deactivate, uvmspace_free;
openbsd-exit-path.md 4). The one exception, ``sibling_shootdowns``, adds a sibling
thread that only runs while the main thread sleeps (strictly serialized by flags), so
that amd64 has a CPU to send shootdown IPIs to and arm64 a second active thread.

At fixed checkpoints and at the end both granularities must agree on: pages allocated
and freed, PTEs removed, faults, copy-on-write copies and zero fills (all counted in
pages), ``physmem.in_use`` by kind and the free count, the TLB statistics
(page_invalidations, asid_flushes, full_flushes, ipis, broadcasts), the translations
cached per CPU, the vnode cache and the SysV segments left. Counts of objects and calls
(anons, ``pmap_remove`` calls, lock acquisitions) are per page in exact mode and per
run in range mode by design, and are not compared.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import pytest

from exitsim.engine.ops import Run, Sleep, Wakeup
from exitsim.engine.thread import Thread
from exitsim.vm.audit import audit_all_exited
from exitsim.vm.fault import uvm_fault, uvm_touch
from exitsim.vm.map import PROT_EXEC, PROT_READ, uvm_map, uvm_unmap
from exitsim.vm.object import uvn_attach
from exitsim.vm.pmap import pmap_activate, pmap_switch
from exitsim.vm.shm import shmat, shmctl_rmid, shmget
from exitsim.vm.uvm import PTP_PAGES
from exitsim.vm.vmspace import Vmspace, uvm_purge, uvmspace_alloc, uvmspace_fork, uvmspace_free
from tests.vmkit import Body, VmKit

ARCHES = ["amd64", "arm64"]

ANON_VA = 4 * PTP_PAGES
TEXT_VA = 8 * PTP_PAGES
DATA_VA = 10 * PTP_PAGES
SHM_VA = 12 * PTP_PAGES
EXTRA_VA = 16 * PTP_PAGES

#: Allowed difference in total sys time between the granularities, in ns. Every cost is
#: linear in pages and a range step charges ``n`` times the per-page cost in one Run;
#: with one thread (or strictly serialized ones) nothing contends, so no lock wait or
#: broadcast repricing can differ either. Lock acquisitions differ (per page in exact,
#: per run in range) but an uncontended acquisition costs no simulated time. Hence no
#: slack at all: the totals must be equal to the nanosecond.
SYS_TOLERANCE_NS = 0


# -- scenario helpers ------------------------------------------------------------------


class Run1:
    """One scenario run: the kit, its checkpoints, and the vmspaces still alive."""

    def __init__(self, kit: VmKit) -> None:
        self.kit = kit
        self.marks: list[tuple[str, dict[str, Any]]] = []
        self.flags: set[str] = set()
        self.vm_a: Vmspace | None = None  # for the sibling thread

    @property
    def uvm(self) -> Any:
        return self.kit.uvm

    def mark(self, label: str) -> None:
        self.marks.append((label, snapshot(self.kit)))

    def on(self, me: Thread, vm: Vmspace) -> None:
        """The thread now runs for the process owning ``vm`` (cpu_switchto)."""
        self.kit.vm_of[me.tid] = vm
        pmap_switch(self.uvm, self.uvm.cpu_of(me), vm.pmap)

    def new(self, me: Thread, name: str) -> Body:
        """A new process (execve's fresh vmspace) with one thread, running now."""
        vm = yield from uvmspace_alloc(self.uvm, me, name)
        self.kit.vm_of[me.tid] = vm
        pmap_activate(self.uvm, me, vm.pmap)
        return vm

    def fork(self, me: Thread, parent: Vmspace, name: str) -> Body:
        """fork1: the child's vmspace, and its thread counted as active, not running."""
        vm = yield from uvmspace_fork(self.uvm, me, parent, name)
        pmap_activate(self.uvm, me, vm.pmap, on_cpu=False)
        return vm

    def fault(self, me: Thread, vm: Vmspace, va: int, n: int, write: bool = False) -> Body:
        """Fault a whole mapping in one call."""
        ok = yield from uvm_fault(self.uvm, me, vm, va, n, write)
        assert ok, f"fault on {vm} at {va:#x}+{n} refused"

    def map_anon(self, me: Thread, vm: Vmspace, va: int, n: int) -> Body:
        yield from uvm_map(self.uvm, me, vm.vm_map, va, n)

    def map_file(
        self, me: Thread, vm: Vmspace, va: int, n: int, name: str, off: int, prot: int
    ) -> Body:
        vn = uvn_attach(self.uvm, name, 64)
        yield from uvm_map(self.uvm, me, vm.vm_map, va, n, vn, off, prot)

    def exit(self, me: Thread, vm: Vmspace) -> Body:
        """The committed exit of ``vm``'s process, run on this CPU."""
        self.on(me, vm)
        yield from uvm_purge(self.uvm, me, vm, True)
        self.kit.leave(me, vm.pmap)
        yield from uvmspace_free(self.uvm, me, vm)

    # Flags for the serialized sibling scenario (atomic check-and-sleep).
    def set(self, name: str) -> Body:
        self.flags.add(name)
        yield Wakeup(_chan(name))
        yield Run(100)  # stay on this CPU while the woken thread is dispatched on its own

    def wait(self, name: str) -> Body:
        while name not in self.flags:
            yield Sleep(_chan(name), wmesg=name)


def _chan(name: str) -> Hashable:
    return ("granularity-flag", name)


def snapshot(kit: VmKit) -> dict[str, Any]:
    """What both granularities must agree on, at one moment."""
    u = kit.uvm
    c = u.counters
    return {
        "pages_allocated": c.pages_allocated,
        "pages_freed": c.pages_freed,
        "ptes_removed": c.ptes_removed,
        "faults": c.faults,
        "cow_copies": c.cow_copies,
        "zero_fills": c.zero_fills,
        "entries_killed": c.entries_killed,
        "vmspaces_freed": c.vmspaces_freed,
        "pmaps_destroyed": c.pmaps_destroyed,
        "in_use": dict(u.physmem.in_use),
        "free": u.physmem.free,
        "tlb_stats": kit.machine.stats.as_dict(),
        "tlb_cached": [kit.machine.tlb.count(cpu) for cpu in range(kit.machine.ncpu)],
        "vnodes": {name: (vn.resident(), vn.uo_refs) for name, vn in sorted(u.vnodes.items())},
        "shm_segments": sorted(u.shm_segments),
    }


# -- scenarios -------------------------------------------------------------------------


def fork_child_writes(r: Run1, me: Thread) -> Body:
    """A parent with anon memory, program text and a written private file page run
    forks; the child writes the whole anon mapping (copy-on-write, nothing mapped in
    the child yet) and reads the text; the parent exits first."""
    a = yield from r.new(me, "A")
    yield from r.map_anon(me, a, ANON_VA, 16)
    yield from r.fault(me, a, ANON_VA, 16, write=True)
    yield from r.map_file(me, a, TEXT_VA, 8, "bin", 0, PROT_READ | PROT_EXEC)
    yield from r.fault(me, a, TEXT_VA, 8)
    yield from r.map_file(me, a, DATA_VA, 4, "bin", 8, PROT_READ | 0x2)
    yield from r.fault(me, a, DATA_VA, 4, write=True)
    r.mark("parent set up")
    b = yield from r.fork(me, a, "B")
    r.on(me, b)
    yield from r.fault(me, b, ANON_VA, 16, write=True)
    yield from r.fault(me, b, TEXT_VA, 8)
    r.mark("child written")
    yield from r.exit(me, a)
    r.mark("parent exited")
    yield from r.exit(me, b)


def fork_child_reads_then_writes(r: Run1, me: Thread) -> Body:
    """As ``fork_child_writes``, but the child first reads the anon mapping (sharing
    the parent's pages read-only), then writes it: each copy-on-write fault replaces a
    valid read-only mapping (pmap_enter over an existing PTE)."""
    a = yield from r.new(me, "A")
    yield from r.map_anon(me, a, ANON_VA, 16)
    yield from r.fault(me, a, ANON_VA, 16, write=True)
    yield from r.map_file(me, a, TEXT_VA, 8, "bin", 0, PROT_READ | PROT_EXEC)
    yield from r.fault(me, a, TEXT_VA, 8)
    b = yield from r.fork(me, a, "B")
    r.on(me, b)
    yield from r.fault(me, b, ANON_VA, 16)
    r.mark("child read")
    yield from r.fault(me, b, ANON_VA, 16, write=True)
    r.mark("child written")
    yield from r.exit(me, a)
    r.mark("parent exited")
    yield from r.exit(me, b)


def shm_and_shared_text(r: Run1, me: Thread) -> Body:
    """Two unrelated processes map the same library text and attach the same SysV
    segment; the segment is marked removed; they exit one after the other."""
    seg = shmget(r.uvm, 8)
    a = yield from r.new(me, "A")
    yield from r.map_file(me, a, TEXT_VA, 8, "lib", 0, PROT_READ | PROT_EXEC)
    yield from r.fault(me, a, TEXT_VA, 8)
    yield from shmat(r.uvm, me, a, seg, SHM_VA)
    yield from r.fault(me, a, SHM_VA, 8, write=True)
    b = yield from r.new(me, "B")
    yield from r.map_file(me, b, TEXT_VA, 8, "lib", 0, PROT_READ | PROT_EXEC)
    yield from r.fault(me, b, TEXT_VA, 8)
    yield from shmat(r.uvm, me, b, seg, SHM_VA + 64)
    yield from r.fault(me, b, SHM_VA + 64, 8)
    yield from r.map_anon(me, b, ANON_VA, 4)
    yield from r.fault(me, b, ANON_VA, 4, write=True)
    yield from shmctl_rmid(r.uvm, me, seg)
    r.mark("both attached")
    yield from r.exit(me, a)
    r.mark("first exited")
    yield from r.exit(me, b)


def large_parent_cow(r: Run1, me: Thread) -> Body:
    """A 40-page mapping (more than amd64's 32-page shootall limit): after fork the
    parent writes it all again (copy-on-write over its own read-only PTEs), the child
    writes it too; the child exits first."""
    a = yield from r.new(me, "A")
    yield from r.map_anon(me, a, ANON_VA, 40)
    yield from r.fault(me, a, ANON_VA, 40, write=True)
    b = yield from r.fork(me, a, "B")
    yield from r.fault(me, a, ANON_VA, 40, write=True)
    r.mark("parent rewritten")
    r.on(me, b)
    yield from r.fault(me, b, ANON_VA, 40, write=True)
    r.mark("child written")
    yield from r.exit(me, b)
    r.mark("child exited")
    yield from r.exit(me, a)


def sibling_shootdowns(r: Run1, me: Thread) -> Body:
    """A's second thread runs on cpu1 and touches A's memory while the main thread
    waits; then, with the sibling asleep and A still active on cpu1, the main thread
    munmaps a mapping (amd64: an IPI; arm64: per-page TLBIs, ``pm_active`` is 2) and
    forks (the parent's write-protection is shot down too). The sibling exits
    (pmap_deactivate) before A does."""
    a = yield from r.new(me, "A")
    yield from r.map_anon(me, a, ANON_VA, 16)
    yield from r.fault(me, a, ANON_VA, 16, write=True)
    yield from r.map_anon(me, a, EXTRA_VA, 8)
    yield from r.fault(me, a, EXTRA_VA, 8, write=True)
    r.vm_a = a
    r.kit.spawn("A.2", _sibling, r)
    yield from r.set("mapped")
    yield from r.wait("sibling ready")
    yield from uvm_unmap(r.uvm, me, a.vm_map, ANON_VA, ANON_VA + 16)
    b = yield from r.fork(me, a, "B")
    r.mark("unmapped and forked")
    yield from r.set("go")
    yield from r.wait("sibling gone")
    r.on(me, b)
    yield from r.fault(me, b, EXTRA_VA, 8, write=True)
    yield from r.exit(me, a)
    r.mark("parent exited")
    yield from r.exit(me, b)


def _sibling(me: Thread, r: Run1) -> Body:
    yield from r.wait("mapped")
    a = r.vm_a
    assert a is not None
    r.kit.vm_of[me.tid] = a
    pmap_activate(r.uvm, me, a.pmap)
    assert me.cpu == 1
    ok = yield from uvm_touch(r.uvm, me, a, ANON_VA, 16)
    assert ok
    ok = yield from uvm_touch(r.uvm, me, a, EXTRA_VA, 8)
    assert ok
    yield from r.set("sibling ready")
    yield from r.wait("go")
    r.kit.leave(me, a.pmap)
    yield from r.set("sibling gone")


SCENARIOS: dict[str, Callable[[Run1, Thread], Body]] = {
    "fork_child_writes": fork_child_writes,
    "fork_child_reads_then_writes": fork_child_reads_then_writes,
    "shm_and_shared_text": shm_and_shared_text,
    "large_parent_cow": large_parent_cow,
    "sibling_shootdowns": sibling_shootdowns,
}


def run_scenario(name: str, arch: str, granularity: str) -> dict[str, Any]:
    kit = VmKit(arch, 2, granularity)
    r = Run1(kit)
    body = SCENARIOS[name]
    main = kit.spawn("main", lambda me: body(r, me))
    kit.run()
    r.mark("end")
    audit_all_exited(kit.uvm)
    return {
        "marks": r.marks,
        "sys_ns": sum(t.sys_ns for t in kit.engine.threads),
        "spin_ns": sum(t.spin_ns for t in kit.engine.threads),
        "main_sys_ns": main.sys_ns,
        "makespan_ns": kit.engine.now,
    }


CASES = [pytest.param(s, a, id=f"{s}-{a}") for s in SCENARIOS for a in ARCHES]


@pytest.mark.parametrize(("scenario", "arch"), CASES)
def test_exact_and_range_granularity_give_the_same_state_and_totals(
    scenario: str, arch: str
) -> None:
    """Range mode must stand for the page-by-page run it abbreviates (uvm.py module
    doc; style.md "Determinism tests"): the same pages allocated and freed, the same
    memory in use, the same TLB work and cached translations, at every checkpoint of
    the scenario and at the end (where ``audit_all_exited`` holds in both)."""
    exact = run_scenario(scenario, arch, "exact")
    ranged = run_scenario(scenario, arch, "range")
    assert [label for label, _ in exact["marks"]] == [label for label, _ in ranged["marks"]]
    for (label, e), (_, r) in zip(exact["marks"], ranged["marks"], strict=True):
        diff = {k: (e[k], r[k]) for k in e if e[k] != r[k]}
        assert not diff, f"{label}: exact != range for {diff}"


@pytest.mark.parametrize(("scenario", "arch"), CASES)
def test_exact_and_range_granularity_give_the_same_sys_time(scenario: str, arch: str) -> None:
    """Costs are per page (costs.py) and range mode charges a run ``n`` times the page
    cost (uvm.py module doc), so with an identical schedule the total sys time, spin
    time and makespan agree within ``SYS_TOLERANCE_NS`` (0 ns: see its comment)."""
    exact = run_scenario(scenario, arch, "exact")
    ranged = run_scenario(scenario, arch, "range")
    for key in ("sys_ns", "main_sys_ns", "spin_ns", "makespan_ns"):
        assert abs(exact[key] - ranged[key]) <= SYS_TOLERANCE_NS, (
            f"{key}: exact {exact[key]} ns, range {ranged[key]} ns"
        )
