"""Physical memory: pages (or runs of pages), their mappings, and the free lists.

A ``VmPage`` is one page in exact mode and a run of ``npages`` contiguous pages in range
mode. It knows what owns it (an anon, an object, or a pmap's page-table page) and every
mapping of it (the pv list: (pmap, vpn) pairs), as ``vm_page`` and ``mdpage`` do.

Allocation and freeing go through the free-page lock (``uvm.fpageqlock``, a spin mutex)
and cost time under it, so parallel teardowns contend there, as the seed thread says
they did on pmemrange. Physical page numbers are handed out in order and never reused:
which frame a page gets does not matter to any question asked here, and fresh numbers
make a stale TLB entry to a freed page impossible to confuse with a new page.

The invariant checks of design.md 1 and 2 run when a page goes back: no pmap maps it, no
TLB that may still be used reaches it, and it is freed once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from exitsim.engine.errors import SimError
from exitsim.engine.ops import Acquire, Release, Run
from exitsim.engine.thread import KPath

if TYPE_CHECKING:
    from exitsim.engine.thread import Thread
    from exitsim.vm.pmap import Pmap
    from exitsim.vm.uvm import Uvm

# What owns a page.
ANON = "anon"
OBJECT = "object"
PTP = "ptp"


@dataclass(slots=True, eq=False)
class VmPage:
    """One page, or one run of pages in range mode (``vm_page``)."""

    ppn: int
    npages: int
    kind: str
    owner: object = None
    pv: list[tuple[Pmap, int]] = field(default_factory=list)
    wire_count: int = 0
    freed: bool = False

    def __repr__(self) -> str:
        return f"<page {self.ppn}+{self.npages} {self.kind}>"


class PhysMem:
    """The free lists, as counts, and the pages in use by kind."""

    __slots__ = ("free", "in_use", "next_ppn", "total")

    def __init__(self, total: int) -> None:
        self.total = total
        self.free = total
        self.next_ppn = 1
        self.in_use: dict[str, int] = {ANON: 0, OBJECT: 0, PTP: 0}


def uvm_pagealloc(uvm: Uvm, p: Thread, kind: str, owner: object, npages: int = 1) -> KPath:
    """Allocate a page (a run of ``npages`` in range mode) for ``owner``."""
    pm = uvm.physmem
    yield Acquire(uvm.fpageqlock)
    yield Run(uvm.costs.page_alloc_ns * npages)
    if pm.free < npages:
        yield Release(uvm.fpageqlock)
        raise SimError(f"out of physical memory: {npages} pages wanted, {pm.free} free")
    pg = VmPage(pm.next_ppn, npages, kind, owner)
    pm.next_ppn += npages
    pm.free -= npages
    pm.in_use[kind] += npages
    uvm.counters.pages_allocated += npages
    yield Release(uvm.fpageqlock)
    return pg


def uvm_pglistfree(uvm: Uvm, p: Thread, pages: list[VmPage]) -> KPath:
    """Return a list of pages to the free lists in one hold of the free-page lock, as
    ``amap_wipeout`` does with the list ``uvm_anfree_list`` filled."""
    if not pages:
        return
    n = sum(pg.npages for pg in pages)
    yield Acquire(uvm.fpageqlock)
    yield Run(uvm.costs.page_free_ns * n)
    for pg in pages:
        _check_free(uvm, p, pg)
        pg.freed = True
        uvm.physmem.free += pg.npages
        uvm.physmem.in_use[pg.kind] -= pg.npages
    uvm.counters.pages_freed += n
    yield Release(uvm.fpageqlock)


def uvm_pagefree(uvm: Uvm, p: Thread, pg: VmPage) -> KPath:
    yield from uvm_pglistfree(uvm, p, [pg])


def _check_free(uvm: Uvm, p: Thread, pg: VmPage) -> None:
    """design.md 1 and 2, at the moment a page goes back to the free list."""
    uvm.check(not pg.freed, 2, f"{pg} freed twice", pg, p=p)
    if pg.pv:
        pm, vpn = pg.pv[0]
        raise uvm.violation(1, f"{pg} freed while {pm} still maps it at vpn {vpn:#x}", pg, pm, p=p)
    if pg.kind == PTP:
        return  # page-table pages are not in the TLB model (no walk caches)
    tlb = uvm.tlb
    if not tlb.reaches(pg.ppn, pg.npages):
        return
    for cpu, tag, vpn in tlb.holders(pg.ppn, pg.npages):
        owner = uvm.pmaps.get(tag & ~1)
        if owner is not None and not tlb_entry_is_dead(uvm, owner, cpu):
            raise uvm.violation(
                1,
                f"{pg} freed while cpu{cpu}'s TLB still translates vpn {vpn:#x} of "
                f"{owner} to it, and {owner} can still be used there",
                pg,
                owner,
                p=p,
            )


def tlb_entry_is_dead(uvm: Uvm, pm: Pmap, cpu: int) -> bool:
    """Whether a TLB entry of ``pm`` on ``cpu`` can never be used again (design.md 1).
    It can while ``pm`` is loaded on that CPU. Otherwise, on amd64, ``pm`` can only be
    loaded there again by ``pmap_switch``, whose cr3 load flushes that CPU's TLB first,
    so it never can; on arm64 entries are tagged by ASID and survive a reload, so it can
    as long as a thread may still run on ``pm``. Its tag is never handed to another
    address space (tags are not reused), so nothing else can use it.
    """
    if uvm.machine.curpm[cpu] is pm:
        return False
    if not uvm.arch.broadcast_tlbi:
        return True
    return pm.pm_active == 0
