"""Whole-state checks of the vm layer (design.md invariants 2 and 5), for the end of a
run or any quiet moment: every page in use is accounted for by something still alive,
and nothing that is gone still holds a page."""

from __future__ import annotations

from typing import TYPE_CHECKING

from exitsim.vm.page import ANON, OBJECT, PTP

if TYPE_CHECKING:
    from exitsim.vm.amap import VmAmap
    from exitsim.vm.uvm import Uvm
    from exitsim.vm.vmspace import Vmspace


def expected_pages(uvm: Uvm, live: list[Vmspace]) -> dict[str, int]:
    """Pages in use by kind, as the live vmspaces, the vnode cache and the SysV
    segments account for them."""
    amaps: list[VmAmap] = []
    for vm in live:
        for e in vm.vm_map.entries.values():
            if e.amap is not None and all(e.amap is not a for a in amaps):
                amaps.append(e.amap)
    anons = []
    for amap in amaps:
        for anon in amap.anons.values():
            if all(anon is not a for a in anons):
                anons.append(anon)
    anon_pages = sum(a.an_page.npages for a in anons if a.an_page is not None)
    ptp = sum(
        t.page.npages
        for vm in live
        if vm.vm_map.pmap is not None
        for t in vm.vm_map.pmap.ptps.values()
    )
    objs = [*uvm.vnodes.values()]
    for seg in uvm.shm_segments.values():
        objs.append(seg.aobj)
    for vm in live:
        for e in vm.vm_map.entries.values():
            o = e.object
            if o is not None and all(o is not x for x in objs):
                objs.append(o)
    obj_pages = sum(o.resident() for o in objs)
    return {ANON: anon_pages, OBJECT: obj_pages, PTP: ptp}


def audit_pages(uvm: Uvm, live: list[Vmspace]) -> None:
    """Raise invariant 2 if the pages in use differ from what is alive to hold them
    (a leak, or a page counted free while still held)."""
    pm = uvm.physmem
    want = expected_pages(uvm, live)
    for kind in (ANON, OBJECT, PTP):
        if pm.in_use[kind] != want[kind]:
            raise uvm.violation(
                2,
                f"{pm.in_use[kind]} {kind} pages in use but the live address spaces, "
                f"vnode cache and shm segments hold {want[kind]}",
            )
    if pm.free + sum(pm.in_use.values()) != pm.total:
        raise uvm.violation(
            2, f"free {pm.free} + in use {sum(pm.in_use.values())} != total {pm.total}"
        )


def audit_all_exited(uvm: Uvm) -> None:
    """Everything has exited: no anon or page-table page is left, every pmap is
    destroyed, and every allocated amap was freed."""
    audit_pages(uvm, [])
    alive = [pm for pm in uvm.pmaps.values() if not pm.destroyed]
    if alive:
        raise uvm.violation(2, f"{len(alive)} pmaps never destroyed", *alive)
    made = uvm.counters.extra.get("amaps_allocated", 0)
    if made != uvm.counters.amaps_freed:
        raise uvm.violation(2, f"{made} amaps allocated, {uvm.counters.amaps_freed} freed")
