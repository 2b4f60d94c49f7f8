"""Use after free caught at the use (design.md invariant 5): every freeable vm object
(vmspace, pmap, amap, anon, object, shm segment, page) remembers who freed it, and a
fault, reference, lock, mapping or queueing of it afterwards is a violation there,
naming the use, the object, the CPU and who freed it; not a double free found later."""

from __future__ import annotations

from pathlib import Path

import pytest

from exitsim.check.run import replay, search
from exitsim.check.scenarios import SCENARIOS
from exitsim.engine.errors import InvariantViolation
from exitsim.engine.explore import parse_schedule
from exitsim.engine.thread import Thread
from exitsim.policies.registry import get_policy, load_policy_file
from exitsim.vm.fault import uvm_fault, uvm_touch
from exitsim.vm.map import uvm_unmap
from tests.test_vm_teardown import ANON_VA, exit_process, make_kit, map_anon, start_process
from tests.vmkit import Body

MUTANTS = Path(__file__).parent / "mutants"

# (mutant, arch, scenario, the use that must be named, the freed object it names)
CASES = [
    ("uaf_vmspace.py", "amd64", "threads2", "reference drop on <vmspace", "freed by mt"),
    ("uaf_pmap.py", "amd64", "threads2", "pmap_remove on <pmap", "destroyed by pmap_destroy"),
    ("uaf_amap.py", "amd64", "threads2", "amap_unref: lock on <amap", "freed by mt"),
    ("uaf_anon.py", "amd64", "threads2", "anon reference drop on <anon", "freed by mt"),
    ("uaf_object.py", "amd64", "shm2", "pgo_reference on <aobj", "freed by shm1"),
    ("uaf_shm.py", "amd64", "shm2", "shm_delete_mapping on <shm segment", "freed by shm1"),
    ("uaf_page.py", "amd64", "forkrace", "uvm_fault: anon page on <page", "freed by parent"),
    ("uaf_page.py", "amd64", "wait2", "uvm_anfree: page protect on <page", "freed by c1"),
]


@pytest.mark.parametrize(("mutant", "arch", "scenario", "use", "freed"), CASES)
def test_a_use_after_free_is_caught_at_the_use_and_replays(
    mutant: str, arch: str, scenario: str, use: str, freed: str
) -> None:
    """Each mutant (tests/mutants/uaf_*.py) frees an object that is still in use; the
    checker stops at the use with invariant 5 and says who freed it, and the schedule
    replays the same violation."""
    path = str(MUTANTS / mutant)
    allow = {8} if scenario.startswith("threads") else set()
    r = search(
        SCENARIOS[scenario],
        lambda: load_policy_file(path),
        arch,
        max_schedules=5000,
        allow=allow,
    )
    assert r.violation is not None, f"{mutant}: no violation in {r.schedules} schedules"
    assert r.invariant == 5, r.violation
    assert use in r.violation and f"after it was {freed}" in r.violation, r.violation
    out, _ = replay(
        SCENARIOS[scenario],
        lambda: load_policy_file(path),
        arch,
        parse_schedule(r.schedule or ""),
        allow=allow,
    )
    assert str(out.error) == r.violation


@pytest.mark.parametrize("design", ["reaper", "purge", "purge+pmap_purge"])
@pytest.mark.parametrize("arch", ["amd64", "arm64"])
@pytest.mark.parametrize("scenario", ["shm2", "forkrace", "transient"])
def test_committed_designs_use_nothing_after_it_is_freed(
    scenario: str, arch: str, design: str
) -> None:
    """No use-after-free check fires on the committed designs (a bounded search of one
    preemption; the whole matrix at the default bound is in docs/checking.md)."""
    r = search(SCENARIOS[scenario], lambda: get_policy(design), arch, preemptions=1)
    assert r.violation is None, r.violation
    assert r.complete


def test_a_fault_on_a_freed_vmspace_names_the_use_the_cpu_and_who_freed_it() -> None:
    """uvm_fault on a vmspace that uvmspace_free has freed: invariant 5 at the fault,
    with this CPU and the freeing thread, CPU and time in the message."""
    kit = make_kit("amd64")
    seen: dict[str, object] = {}

    def proc(me: Thread) -> Body:
        vm = yield from start_process(kit, me, "A")
        yield from map_anon(kit, me, vm, ANON_VA, 2)
        yield from exit_process(kit, me, vm)
        seen["vm"] = vm
        seen["cpu"] = me.cpu
        yield from uvm_fault(kit.uvm, me, vm, ANON_VA)

    kit.spawn("A", proc)
    with pytest.raises(InvariantViolation) as err:
        kit.run()
    e = err.value
    assert e.invariant == 5 and e.cpu == seen["cpu"]
    assert e.message.startswith("uvm_fault on <vmspace A")
    rec = seen["vm"].freed_by  # type: ignore[attr-defined]
    assert (rec.by, rec.cpu) == ("A", seen["cpu"]) and rec.time_ns < e.time_ns
    assert e.message.endswith(f"after it was freed by A on cpu{rec.cpu} at t={rec.time_ns}ns")


def test_a_page_freed_and_allocated_again_is_not_a_use_after_free() -> None:
    """munmap frees the pages; mapping and faulting the range again allocates new ones,
    which are used freely, while the old allocations keep their free record (one
    VmPage per allocation, physical page numbers never handed out twice)."""
    kit = make_kit("amd64")
    out: dict[str, list] = {}

    def proc(me: Thread) -> Body:
        vm = yield from start_process(kit, me, "A")
        yield from map_anon(kit, me, vm, ANON_VA, 2)
        out["old"] = [vm.pmap.lookup(ANON_VA + i)[1].page for i in range(2)]  # type: ignore[index]
        yield from uvm_unmap(kit.uvm, me, vm.vm_map, ANON_VA, ANON_VA + 2)
        yield from map_anon(kit, me, vm, ANON_VA, 2)
        ok = yield from uvm_touch(kit.uvm, me, vm, ANON_VA, 2, write=True)
        assert ok
        out["new"] = [vm.pmap.lookup(ANON_VA + i)[1].page for i in range(2)]  # type: ignore[index]
        yield from exit_process(kit, me, vm)

    kit.spawn("A", proc)
    kit.run()
    old, new = out["old"], out["new"]
    assert all(pg.freed and pg.freed_by is not None and pg.freed_by.by == "A" for pg in old)
    assert all(pg.freed for pg in new)  # freed at exit, after their use
    assert not {pg.ppn for pg in old} & {pg.ppn for pg in new}
    assert all(a is not b for a in old for b in new)
