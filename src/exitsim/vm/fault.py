"""Page faults and user accesses (uvm_fault.c, in outline).

``uvm_fault`` resolves a fault on [vpn, vpn+npages) of one entry: first the amap layer
(an anon already there: map it, or copy it if a write finds it shared), then the object
layer (page the object's page in; a write to a private mapping copies it into a new
anon), else a zero-filled anon. A needs-copy entry gets its own amap first
(``amap_copy``, under the map's write lock). The page mapped is then put on the active
queue under the page-queue lock, and an object page the fault found or read in once
before that too (uvm_fault.c 1.171: ``uvm_pageactivate`` after ``pmap_enter``, and in
``uvm_fault_lower``/``uvm_fault_lower_io`` for the object page; the model takes the
object page's turn after ``vmobjlock`` is released). The faulting CPU's TLB caches the
new translation.

In exact mode a call goes page by page; in range mode the whole range is one unit and
must line up with the runs already there. ``uvm_touch`` is a user access: it only fills
the TLB where a mapping with the right permission exists, and faults otherwise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from exitsim.engine.ops import Acquire, Release, Run
from exitsim.engine.thread import KPath
from exitsim.vm.amap import AMAP_SHARED, amap_add
from exitsim.vm.anon import VmAnon
from exitsim.vm.map import (
    PROT_WRITE,
    UVM_ET_COPYONWRITE,
    UVM_ET_HOLE,
    UVM_ET_NEEDSCOPY,
    vm_map_lock,
    vm_map_lock_read,
    vm_map_unlock,
    vm_map_unlock_read,
)
from exitsim.vm.object import uvm_obj_getpage
from exitsim.vm.page import ANON, uvm_pageactivate, uvm_pagealloc
from exitsim.vm.pmap import pmap_enter, pmap_page_protect_none
from exitsim.vm.vmspace import Vmspace, amap_copy

if TYPE_CHECKING:
    from exitsim.engine.thread import Thread
    from exitsim.vm.uvm import Uvm


def user_tag(uvm: Uvm, tag: int) -> int:
    """The TLB tag user accesses use: arm64 runs userland on the odd ASID of the pair."""
    return tag | 1 if uvm.arch.broadcast_tlbi else tag


def uvm_fault(
    uvm: Uvm, p: Thread, vm: Vmspace, vpn: int, npages: int = 1, write: bool = False
) -> KPath:
    """Fault in [vpn, vpn+npages). Returns False (the process would get SIGSEGV) if the
    range is not mapped by one entry or the access is not allowed."""
    uvm.check_live(vm, "uvm_fault", p)
    if uvm.exact:
        for v in range(vpn, vpn + npages):
            ok = yield from _fault_unit(uvm, p, vm, v, 1, write)
            if not ok:
                return False
        return True
    return (yield from _fault_unit(uvm, p, vm, vpn, npages, write))


def _fault_unit(uvm: Uvm, p: Thread, vm: Vmspace, vpn: int, n: int, write: bool) -> KPath:
    c = uvm.costs
    map = vm.vm_map
    uvm.counters.faults += n
    if uvm.fault_kernel_lock:
        # Before faults ran unlocked, the trap handler held the kernel lock around
        # uvm_fault: one hold per page fault. The hold covers the trap and lookups
        # (fault_ns), not the page work below, which a range-mode unit does at once.
        for _ in range(n):
            yield Acquire(uvm.kernel_lock)
            yield Run(c.fault_ns)
            yield Release(uvm.kernel_lock)
    else:
        yield Run(c.fault_ns * n)  # a range-mode unit stands for n page faults
    while True:
        yield from vm_map_lock_read(map)
        e = map.lookup(vpn)
        if e is None or vpn + n > e.end or e.etype & UVM_ET_HOLE:
            yield from vm_map_unlock_read(map)
            return False
        if write and not e.protection & PROT_WRITE:
            yield from vm_map_unlock_read(map)
            return False
        if e.etype & UVM_ET_NEEDSCOPY and (write or e.object is None):
            # amap_copy needs the write lock: drop the read lock, copy, look again.
            yield from vm_map_unlock_read(map)
            yield from vm_map_lock(uvm, p, map)
            e2 = map.lookup(vpn)
            if e2 is not None and e2.etype & UVM_ET_NEEDSCOPY:
                yield from amap_copy(uvm, p, map, e2)
            yield from vm_map_unlock(map)
            continue
        break
    pm = vm.pmap
    amap = e.amap
    slot = e.aref_pageoff + (vpn - e.start)
    if amap is not None:
        # The amap lock (shared with every amap copied from this one) keeps another
        # process's amap_unref from changing an_ref between our check and our copy.
        uvm.check_live(amap, "uvm_fault: amap lock", p)
        yield Acquire(amap.am_lock)
    found = amap.anons_in(slot, slot + n) if amap is not None else []
    if found:
        if len(found) != 1 or found[0][0] != slot or found[0][1].npages != n:
            from exitsim.vm.uvm import RangeAlignmentError

            raise RangeAlignmentError(f"fault on [{vpn:#x}, +{n}) does not line up with {amap}")
        anon = found[0][1]
        uvm.check_live(anon, "uvm_fault: anon", p)
        if anon.an_page is not None:
            uvm.check_live(anon.an_page, "uvm_fault: anon page", p)
        if write and anon.an_ref > 1:
            # Copy-on-write: this amap gets its own copy of the shared anon's page.
            pg = yield from uvm_pagealloc(uvm, p, ANON, None, n)
            yield Run(c.page_copy_ns * n)
            new = VmAnon(pg, n)
            pg.owner = new
            if amap.am_flags & AMAP_SHARED and anon.an_page is not None:  # type: ignore[union-attr]
                # amap_add(replace) in a shared amap: every process sharing it must
                # stop seeing the old page, not only this one.
                yield from pmap_page_protect_none(uvm, p, anon.an_page)
            anon.an_ref -= 1
            amap_add(amap, slot, new, replace=True)  # type: ignore[arg-type]
            uvm.counters.cow_copies += n
            anon = new
        writable = (
            bool(e.protection & PROT_WRITE)
            and anon.an_ref == 1
            and (write or not e.etype & UVM_ET_NEEDSCOPY)
        )
        page = anon.an_page
    elif e.object is not None:
        uvm.check_live(e.object, "uvm_fault: object", p)
        opg = yield from uvm_obj_getpage(uvm, p, e.object, e.offset + (vpn - e.start), n)
        yield from uvm_pageactivate(uvm, p, opg)
        if write and e.etype & UVM_ET_COPYONWRITE:
            # A write to a private file mapping: promote the page into a new anon.
            pg = yield from uvm_pagealloc(uvm, p, ANON, None, n)
            yield Run(c.page_copy_ns * n)
            anon = VmAnon(pg, n)
            pg.owner = anon
            if amap.am_flags & AMAP_SHARED:  # type: ignore[union-attr]
                # "promote to shared amap? make sure all sharing procs see it"
                # (uvm_fault_lower_promote): the object page loses every mapping.
                yield from pmap_page_protect_none(uvm, p, opg)
            amap_add(amap, slot, anon, replace=False)  # type: ignore[arg-type]
            uvm.counters.cow_copies += n
            page, writable = pg, True
        else:
            page = opg
            writable = bool(e.protection & PROT_WRITE) and not e.etype & UVM_ET_COPYONWRITE
    else:
        pg = yield from uvm_pagealloc(uvm, p, ANON, None, n)
        yield Run(c.page_zero_ns * n)
        anon = VmAnon(pg, n)
        pg.owner = anon
        amap_add(amap, slot, anon, replace=False)  # type: ignore[arg-type]
        uvm.counters.zero_fills += n
        page, writable = pg, bool(e.protection & PROT_WRITE)
    cur = pm.lookup(vpn)
    if cur is None or cur[1].page is not page or cur[1].writable != writable:
        yield from pmap_enter(uvm, p, pm, vpn, page, writable)  # type: ignore[arg-type]
    yield from uvm_pageactivate(uvm, p, page)  # type: ignore[arg-type]
    cpu = uvm.cpu_of(p)
    uvm.tlb.fill(cpu, user_tag(uvm, pm.tag), vpn, page.ppn, n)  # type: ignore[union-attr]
    if amap is not None:
        yield Release(amap.am_lock)
    yield from vm_map_unlock_read(map)
    return True


def uvm_touch(
    uvm: Uvm, p: Thread, vm: Vmspace, vpn: int, npages: int = 1, write: bool = False
) -> KPath:
    """User code accesses [vpn, vpn+npages): valid translations go into this CPU's TLB
    at no extra cost (the access is part of the user time); the rest fault."""
    uvm.check_live(vm, "uvm_touch", p)
    pm = vm.pmap
    cpu = uvm.cpu_of(p)
    step = 1 if uvm.exact else npages
    for v in range(vpn, vpn + npages, step):
        hit = pm.lookup(v)
        if (
            hit is not None
            and (hit[1].writable or not write)
            and (uvm.exact or (hit[0] == v and hit[1].npages == step))
        ):
            start, pte = hit
            uvm.tlb.fill(cpu, user_tag(uvm, pm.tag), start, pte.page.ppn, pte.npages)
            continue
        ok = yield from uvm_fault(uvm, p, vm, v, step, write)
        if not ok:
            return False
    return True
