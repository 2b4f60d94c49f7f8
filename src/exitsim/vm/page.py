"""Physical memory: pages (or runs of pages), their mappings, the page queues, the
per-CPU page magazines and the free ranges of pmemrange.

A ``VmPage`` is one page in exact mode and a run of ``npages`` contiguous pages in range
mode. It knows what owns it (an anon, an object, or a pmap's page-table page), every
mapping of it (the pv list: (pmap, vpn) pairs), as ``vm_page`` and ``mdpage`` do, and
whether it is on the active page queue (``PQ_ACTIVE``).

What the C does, read in uvm_page.c 1.183 (2025/04/27), uvm_pmemrange.c 1.77
(2025/02/19), uvm_percpu.h 1.1, uvm_fault.c 1.171, uvm_amap.c 1.97, uvm_anon.c 1.64 with
uvm_anon.h 1.23 and uvm_aobj.c 1.116 (uvm_page.c 1.188 and uvm_pmemrange.c 1.82 of
2026/02/11 do the same in the functions named here):

- The page queues. After a fault has entered its mapping it takes the page-queue lock
  (``uvm.pageqlock``) around ``uvm_pageactivate`` of the page it mapped, and once more for
  an object page it found or read in. ``uvm_pageclean`` takes that lock for each page that
  is on the active or inactive queue, to unlink it (``uvm_pagedequeue``): one lock round
  trip per page, never per batch. Page-table pages are wired, on no queue, and skip it.
- Allocation. ``uvm_pagealloc`` takes its page from this CPU's two magazines of
  ``UVM_PMR_CACHEMAGSZ`` (8) pages (``uvm_pmr_cache_get``), without a lock. Only when
  both are empty is one refilled with 8 pages from the trees (``uvm_pmr_cache_alloc``,
  ``uvm_pmr_getpages``), under the free-page lock (``uvm.fpageqlock``).
- Freeing. ``uvm_pagefree`` is ``uvm_pageclean`` then ``uvm_pmr_cache_put``: the page goes
  into this CPU's active magazine; when that is full, the other one is emptied into the
  trees (``uvm_pmr_cache_free``, ``uvm_pmr_freepageq``) and the two swap. A page of a
  pmemrange with a use count (memory some DMA constraint covers) skips the magazines and
  goes into the trees alone, ``uvm_pmr_freepages(pg, 1)``, under the free-page lock. On
  arm64 the one constraint covers all memory (machdep.c 1.96 lists ``dma_constraint``,
  [0, -1], in ``uvm_md_constraints``), so every page takes that path; amd64's
  constraints end at 16 MB and 4 GB (machdep.c) and allocation prefers ranges of the
  lowest use, so user pages come from above 4 GB and the model sends every amd64 page
  through the magazines. ``uvm_pglistfree`` hands a whole list to ``uvm_pmr_freepageq``.
- The trees. ``uvm_pmr_freepageq`` holds the free-page lock for the whole list: it cuts
  the list into runs of contiguous pages and inserts each as a range into the address tree
  and the size tree, joining it with a free neighbour. Each insert walks trees whose size
  is the number of free ranges (the pmemrange slides, f2k9, give the free path as
  n log(s) log(r)).

In the 2025 tree the teardown therefore frees anon pages one by one: ``amap_wipeout``
calls ``uvm_anfree`` per anon (uvm_amap.c 1.97; 1.82 of 2020 still gathered the pages for
one ``uvm_pglistfree``), and ``uao_detach`` calls ``uvm_pagefree`` per page.

Simplified, and why:

- Free ranges are a count, not an address tree. Physical page numbers are handed out in
  order and never reused (a stale TLB entry to a freed page can never be confused with a
  new page), so they say nothing about which free pages are neighbours. ``PhysMem`` keeps
  a fragmentation model instead: the trees hold ``ranges_base`` ranges of their own (the
  memory of the rest of the system, cut up by the buffer cache, wired kernel memory and
  long-lived processes), every ``range_pages`` pages put into the trees make one more
  range (freed pages come back in short runs that meet no free neighbour), and every
  ``range_pages`` pages taken out of those ranges remove one (``uvm_pmr_get1page`` takes
  single-page ranges and the smallest range first), up to one range per
  ``MIN_PAGES_PER_RANGE`` pages of memory. An insert costs ``pmr_insert_ns *
  ceil(log2(ranges + 1))``. A large process's teardown is over-counted: its pages came
  from adjacent refills and would mostly join up again; the bound limits that. Inserts
  of a page list come at one per new range, so a list shorter than ``range_pages`` may
  pay for none; summed over a run they come right. The model depends on page counts
  alone, so exact and range granularity agree.
- A magazine is a count of pages; which page sits in which does not matter here.
- Range mode takes each lock once per run, or once per ``RANGE_LOCK_PAGES`` pages of a
  longer one, and charges the pages inside it: the refills or drains of a run share its
  holds of the free-page lock. The C releases these locks after every page or magazine;
  one hold for a run of a million pages would keep every other CPU waiting for
  milliseconds where the C lets it in within a microsecond.
- The pagedaemon (which empties the magazines when memory is short, uvm_pdaemon.c
  1.137), the page-zeroing thread, the inactive queue, and ``uvm_pmr_getone`` after a
  failed refill are not modelled; running out of memory is an error.

The invariant checks of design.md 1 and 2 run when a page goes back (into a magazine or
the trees: from then on an allocation may hand it out again): no pmap maps it, no TLB
that may still be used reaches it, and it is freed once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from exitsim.engine.errors import SimError, kassert
from exitsim.engine.ops import Acquire, Release, Run
from exitsim.engine.thread import KPath

if TYPE_CHECKING:
    from exitsim.engine.thread import Thread
    from exitsim.vm.pmap import Pmap
    from exitsim.vm.uvm import Freed, Uvm

# What owns a page.
ANON = "anon"
OBJECT = "object"
PTP = "ptp"

#: Pages per magazine; every CPU has two (``UVM_PMR_CACHEMAGSZ``, uvm_percpu.h 1.1).
UVM_PMR_CACHEMAGSZ = 8

#: Arches whose ``uvm_md_constraints`` cover all of memory, so that every pmemrange has a
#: use count and ``uvm_pmr_cache_put`` puts every page straight into the trees: arm64
#: (machdep.c 1.96). Not amd64: its constraints end at 16 MB and 4 GB.
PMR_PUT_SKIPS_MAGAZINES = frozenset({"arm64"})

#: Free ranges of the trees' own when a run starts. Assumption: a machine some time after
#: boot; a few pmemranges (the ISA and DMA constraints and the rest) cut into tens of
#: ranges by the buffer cache, wired kernel memory and long-lived processes.
FREE_RANGES_AT_START = 64

#: Pages put into the trees per new free range, and pages taken out per range used up.
#: Assumption: a refill cuts its 8 pages off one free range; the fault hands them out
#: last first and the teardown frees them in address order, so a drained magazine of 8
#: spans about two such runs: about 4 contiguous pages per inserted range that meets no
#: free neighbour.
FREE_RANGE_PAGES = 4

#: Memory pages per free range at most: the trees never hold more than ``total //
#: MIN_PAGES_PER_RANGE`` ranges. Assumption: one free range per MiB is as fragmented as
#: memory gets here; past it, freed runs are taken to meet free neighbours. It also
#: bounds the over-count of a large process's teardown, whose pages came from adjacent
#: refills and would mostly join up.
MIN_PAGES_PER_RANGE = 256

#: In range mode a lock of this module is taken once per this many pages of a run (one
#: 2 MB block), so a long run does not hold it for the whole run (module doc).
RANGE_LOCK_PAGES = 512


@dataclass(slots=True, eq=False)
class VmPage:
    """One page, or one run of pages in range mode (``vm_page``). ``pqueue`` is
    ``PQ_ACTIVE``: the page is on the active page queue."""

    ppn: int
    npages: int
    kind: str
    owner: object = None
    pv: list[tuple[Pmap, int]] = field(default_factory=list)
    wire_count: int = 0
    freed: bool = False
    pqueue: bool = False
    #: Who freed this allocation, and when (``Uvm.check_live``).
    freed_by: Freed | None = None

    def __repr__(self) -> str:
        return f"<page {self.ppn}+{self.npages} {self.kind}>"


class PmrCache:
    """``struct uvm_pmr_cache`` of one CPU, as counts: the pages in its active magazine
    and in the other one, and how often a magazine was refilled from the trees or emptied
    into them."""

    __slots__ = ("actv", "drains", "prev", "refills")

    def __init__(self) -> None:
        self.actv = 0
        self.prev = 0
        self.refills = 0
        self.drains = 0

    @property
    def pages(self) -> int:
        return self.actv + self.prev

    def get(self, n: int) -> int:
        """Take ``n`` pages as ``n`` calls of ``uvm_pmr_cache_get`` do: from the active
        magazine, swapping to the other when it is empty, and when both are, refilling
        one with a whole magazine from the trees. Returns the pages the refills want."""
        if n <= self.actv:
            self.actv -= n
            return 0
        if n <= self.actv + self.prev:
            self.actv, self.prev = self.prev - (n - self.actv), 0
            return 0
        need = n - self.actv - self.prev
        fills = -(-need // UVM_PMR_CACHEMAGSZ)
        self.actv, self.prev = fills * UVM_PMR_CACHEMAGSZ - need, 0
        self.refills += fills
        return fills * UVM_PMR_CACHEMAGSZ

    def put(self, n: int) -> int:
        """Give ``n`` pages back as ``n`` calls of ``uvm_pmr_cache_put`` do: into the
        active magazine; a page that finds it full first empties the other magazine into
        the trees and swaps the two. Returns the pages that went to the trees."""
        room = UVM_PMR_CACHEMAGSZ - self.actv
        if n <= room:
            self.actv += n
            return 0
        over = n - room
        swaps = -(-over // UVM_PMR_CACHEMAGSZ)
        drained = self.prev + (swaps - 1) * UVM_PMR_CACHEMAGSZ
        self.drains += swaps - 1 + (1 if self.prev else 0)
        self.actv = over - (swaps - 1) * UVM_PMR_CACHEMAGSZ
        self.prev = UVM_PMR_CACHEMAGSZ
        return drained


class PhysMem:
    """Memory as counts: pages in use by kind, pages free (in the trees or in a CPU's
    magazines), and the free-range model of the pmemrange trees (module doc)."""

    __slots__ = (
        "cached",
        "free",
        "in_use",
        "inserted",
        "next_ppn",
        "range_pages",
        "ranges_base",
        "ranges_max",
        "taken",
        "total",
    )

    def __init__(
        self, total: int, ranges: int = FREE_RANGES_AT_START, range_pages: int = FREE_RANGE_PAGES
    ) -> None:
        if ranges < 0 or range_pages < 1:
            raise ValueError(f"PhysMem: ranges {ranges} and range_pages {range_pages}")
        self.total = total
        #: Pages nobody uses, in the trees or in a magazine (``uvmexp.free`` plus
        #: ``uvmexp.percpucaches``); ``cached`` of them in magazines.
        self.free = total
        self.cached = 0
        self.next_ppn = 1
        self.in_use: dict[str, int] = {ANON: 0, OBJECT: 0, PTP: 0}
        self.ranges_base = ranges
        self.range_pages = range_pages
        self.ranges_max = max(ranges, total // MIN_PAGES_PER_RANGE)
        #: Pages ever put into the trees, and pages taken back out of the ranges they made.
        self.inserted = 0
        self.taken = 0

    @property
    def in_trees(self) -> int:
        """Free pages in the pmemrange trees (``uvmexp.free``)."""
        return self.free - self.cached

    @property
    def ranges(self) -> int:
        """Free ranges in the trees now (``nsegs`` over the pmemranges)."""
        c = self.range_pages
        return min(self.ranges_base + self.inserted // c - self.taken // c, self.ranges_max)

    def insert_list(self, n: int) -> int:
        """A list of ``n`` pages goes into the trees (``uvm_pmr_freepageq``): one range
        insert per new range. Returns the tree levels those inserts walk, each
        ``ceil(log2(ranges + 1))`` for the ranges there before it."""
        c = self.range_pages
        base = self.ranges_base - self.taken // c
        first = self.inserted // c
        self.inserted += n
        return _levels(base + first, base + self.inserted // c, self.ranges_max)

    def insert_pages(self, n: int) -> int:
        """``n`` pages go into the trees one insert each (``uvm_pmr_freepages(pg, 1)``).
        Returns the tree levels those inserts walk."""
        c = self.range_pages
        base = self.ranges_base - self.taken // c
        start = self.inserted
        self.inserted += n
        top = self.ranges_max
        # Pages numbered from ``cut`` on find the trees at their most ranges.
        cut = max(start, min(self.inserted, (top - base) * c))
        return _levels_per_page(base, start, cut, c) + (self.inserted - cut) * top.bit_length()

    def take(self, n: int) -> None:
        """``n`` pages come out of the trees, from the ranges freed pages made first."""
        self.taken += min(n, self.inserted - self.taken)


def _bits_below(n: int) -> int:
    """The sum of ``x.bit_length()`` (= ``ceil(log2(x + 1))``) for x in [0, n)."""
    total = 0
    b = 1
    while (1 << (b - 1)) < n:
        total += b * (min(n, 1 << b) - (1 << (b - 1)))
        b += 1
    return total


def _levels(lo: int, hi: int, top: int | None = None) -> int:
    """Tree levels of one insert each into trees of lo, lo+1, ..., hi-1 ranges, none
    holding more than ``top``."""
    if hi <= lo:
        return 0
    if top is None or hi <= top:
        return _bits_below(hi) - _bits_below(lo)
    below = _bits_below(top) - _bits_below(lo) if lo < top else 0
    return below + (hi - max(lo, top)) * top.bit_length()


def _levels_per_page(base: int, t0: int, t1: int, c: int) -> int:
    """Tree levels of one insert per page for the pages numbered [t0, t1) of all pages
    ever inserted, the one numbered t finding ``base + t // c`` ranges."""
    if t1 <= t0:
        return 0
    v0, v1 = t0 // c, (t1 - 1) // c
    if v0 == v1:
        return (t1 - t0) * (base + v0).bit_length()
    head = (c * (v0 + 1) - t0) * (base + v0).bit_length()
    tail = (t1 - c * v1) * (base + v1).bit_length()
    return head + tail + c * _levels(base + v0 + 1, base + v1)


# -- allocation ---------------------------------------------------------------------------


def uvm_pagealloc(uvm: Uvm, p: Thread, kind: str, owner: object, npages: int = 1) -> KPath:
    """Allocate a page (a run of ``npages`` in range mode) for ``owner`` from this CPU's
    magazines (``uvm_pmr_cache_get``); the caller puts it on a page queue if it maps it."""
    pm = uvm.physmem
    cpu = uvm.cpu_of(p)
    cache = uvm.pmr_cache[cpu]
    if cache.pages + pm.in_trees < npages:
        raise SimError(
            f"out of physical memory: {npages} pages wanted, "
            f"{cache.pages + pm.in_trees} free to cpu{cpu}"
        )
    want = cache.get(npages)
    if want:
        yield from uvm_pmr_cache_alloc(uvm, p, cache, want)
    yield Run(uvm.costs.pcpu_cache_ns * npages)
    pg = VmPage(pm.next_ppn, npages, kind, owner)
    pm.next_ppn += npages
    pm.free -= npages
    pm.cached -= npages
    pm.in_use[kind] += npages
    uvm.counters.pages_allocated += npages
    return pg


def uvm_pmr_cache_alloc(uvm: Uvm, p: Thread, cache: PmrCache, want: int) -> KPath:
    """Refill magazines with ``want`` pages (whole magazines) from the trees, under the
    free-page lock (``uvm_pmr_getpages``). Near the end of memory the last one is short."""
    pm = uvm.physmem
    got = min(want, pm.in_trees)
    cache.actv -= want - got  # a short last magazine
    if cache.actv < 0:
        raise SimError(f"out of physical memory: a magazine refill found {pm.in_trees} pages")
    for m in _lock_chunks(uvm, got):
        yield Acquire(uvm.fpageqlock)
        yield Run(uvm.costs.page_alloc_ns * m)
        pm.take(m)
        pm.cached += m
        yield Release(uvm.fpageqlock)


# -- the page queues ----------------------------------------------------------------------


def uvm_pageactivate(uvm: Uvm, p: Thread, pg: VmPage) -> KPath:
    """Put ``pg`` on the tail of the active queue (taking it off the queue it was on),
    under the page-queue lock, as a fault does once it has mapped the page."""
    kassert(pg.kind != PTP, f"uvm_pageactivate: {pg} is a wired page-table page")
    uvm.check_live(pg, "uvm_pageactivate: queue", p)
    for m in _lock_chunks(uvm, pg.npages):
        yield Acquire(uvm.pageqlock)
        yield Run(uvm.costs.pageq_ns * m)
        pg.pqueue = True
        yield Release(uvm.pageqlock)


def uvm_pageclean(uvm: Uvm, p: Thread, pg: VmPage) -> KPath:
    """Take ``pg`` off its page queue, under the page-queue lock, if it is on one
    (``uvm_pagedequeue``). => every mapping of ``pg`` is gone."""
    if not pg.pqueue:
        return
    for m in _lock_chunks(uvm, pg.npages):
        yield Acquire(uvm.pageqlock)
        yield Run(uvm.costs.pageq_ns * m)
        yield Release(uvm.pageqlock)
    pg.pqueue = False


# -- freeing ------------------------------------------------------------------------------


def uvm_pagefree(uvm: Uvm, p: Thread, pg: VmPage) -> KPath:
    """Free one page (a run in range mode): clean it, then give it to this CPU's
    magazines (``uvm_pmr_cache_put``)."""
    yield from uvm_pageclean(uvm, p, pg)
    _gone(uvm, p, pg)
    yield from uvm_pmr_cache_put(uvm, p, pg.npages)


def uvm_pglistfree(uvm: Uvm, p: Thread, pages: list[VmPage]) -> KPath:
    """Free a list of pages into the trees in one hold of the free-page lock
    (``uvm_pmr_freepageq``), cleaning each first as the callers of the C do."""
    if not pages:
        return
    for pg in pages:
        yield from uvm_pageclean(uvm, p, pg)
    for pg in pages:
        _gone(uvm, p, pg)
    yield from uvm_pmr_freepageq(uvm, p, sum(pg.npages for pg in pages))


def uvm_pmr_cache_put(uvm: Uvm, p: Thread, npages: int) -> KPath:
    """``npages`` freed pages go into this CPU's active magazine; a full one makes the
    other go to the trees first. On an arch whose constraints cover all memory they go
    to the trees directly, one by one (module doc)."""
    if uvm.put_skips_magazines:
        yield Run(uvm.costs.pcpu_cache_ns * npages)
        yield from uvm_pmr_freepages(uvm, p, npages)
        return
    pm = uvm.physmem
    drained = uvm.pmr_cache[uvm.cpu_of(p)].put(npages)
    pm.cached += npages
    if drained:
        yield from uvm_pmr_freepageq(uvm, p, drained, cached=True)
    yield Run(uvm.costs.pcpu_cache_ns * npages)


def uvm_pmr_freepageq(uvm: Uvm, p: Thread, npages: int, cached: bool = False) -> KPath:
    """A list of ``npages`` pages goes into the trees, the free-page lock held for all of
    it: the per-page list walk and one tree insert per range (``PhysMem.insert_list``).
    ``cached``: the pages come out of a magazine."""
    pm = uvm.physmem
    c = uvm.costs
    for m in _lock_chunks(uvm, npages):
        yield Acquire(uvm.fpageqlock)
        levels = pm.insert_list(m)
        if cached:
            pm.cached -= m
        yield Run(c.page_free_ns * m + c.pmr_insert_ns * levels)
        yield Release(uvm.fpageqlock)


def uvm_pmr_freepages(uvm: Uvm, p: Thread, npages: int) -> KPath:
    """``uvm_pmr_freepages(pg, 1)`` for each of ``npages`` pages: one tree insert each,
    the free-page lock taken per page (once per run in range mode)."""
    pm = uvm.physmem
    c = uvm.costs
    for m in _lock_chunks(uvm, npages):
        yield Acquire(uvm.fpageqlock)
        levels = pm.insert_pages(m)
        yield Run(c.page_free_ns * m + c.pmr_insert_ns * levels)
        yield Release(uvm.fpageqlock)


def _lock_chunks(uvm: Uvm, n: int) -> Iterator[int]:
    """The page counts of the lock holds for ``n`` pages: all of them at once in exact
    mode, ``RANGE_LOCK_PAGES`` at a time in range mode."""
    step = n if uvm.exact else RANGE_LOCK_PAGES
    while n > 0:
        m = min(n, step)
        yield m
        n -= m


def _gone(uvm: Uvm, p: Thread, pg: VmPage) -> None:
    """``pg`` is free from now on: the checks, and the counts."""
    _check_free(uvm, p, pg)
    uvm.mark_freed(pg, p)
    uvm.physmem.free += pg.npages
    uvm.physmem.in_use[pg.kind] -= pg.npages
    uvm.counters.pages_freed += pg.npages


def _check_free(uvm: Uvm, p: Thread, pg: VmPage) -> None:
    """design.md 1 and 2, at the moment a page goes back to the free list."""
    uvm.check(not pg.freed, 2, f"{pg} freed twice", pg, p=p)
    if pg.pv:
        pm, vpn = pg.pv[0]
        uvm.breach(1, f"{pg} freed while {pm} still maps it at vpn {vpn:#x}", pg, pm, p=p)
        return
    if pg.kind == PTP:
        return  # page-table pages are not in the TLB model (no walk caches)
    tlb = uvm.tlb
    if not tlb.reaches(pg.ppn, pg.npages):
        return
    for cpu, tag, vpn in tlb.holders(pg.ppn, pg.npages):
        owner = uvm.pmaps.get(tag & ~1)
        if owner is None or tlb_entry_is_dead(uvm, owner, cpu):
            continue
        if uvm.machine.left[cpu] is owner:
            # The exit window (design.md 8): that CPU's thread gave the pmap up in
            # exit1 and has not switched away yet; no shootdown or TLBI reaches it.
            uvm.breach(
                8,
                f"{pg} freed while cpu{cpu}'s TLB still translates vpn {vpn:#x} of "
                f"{owner} to it, and cpu{cpu} still has {owner} loaded after its "
                "pmap_deactivate (it has not switched away yet)",
                pg,
                owner,
                p=p,
            )
        else:
            uvm.breach(
                1,
                f"{pg} freed while cpu{cpu}'s TLB still translates vpn {vpn:#x} of "
                f"{owner} to it, and {owner} can still be used there",
                pg,
                owner,
                p=p,
            )
        return  # one finding per page


def tlb_entry_is_dead(uvm: Uvm, pm: Pmap, cpu: int) -> bool:
    """Whether a TLB entry of ``pm`` on ``cpu`` can never be used again (design.md 1),
    as the hardware has it (``Machine``'s per-CPU MMU state).

    arm64: an entry is usable while its ASID is current on that CPU (in TTBR1, as
    ``cpu_setttb`` leaves it, even after TTBR0 went to the empty table), and, while a
    thread may still run on ``pm`` (``pm_active > 0``), because ``pmap_setttb`` can
    make the ASID current there again with the entry still cached. Only a flush by
    ASID or by address ends it.

    amd64: an entry is usable while ``pm`` is in that CPU's %cr3, whether or not
    ``ci_proc_pmap`` still names it (after ``pmap_deactivate`` shootdowns no longer
    come here, but the entry stays until a local invalidation). Once another %cr3 is
    loaded, ``pm`` can only come back through a user %cr3 load, which flushes that
    CPU's user translations first, so it never can.

    A tag is never handed to another address space (tags are not reused), so nothing
    else can use it.
    """
    m = uvm.machine
    if not uvm.arch.broadcast_tlbi:
        return m.ttbr0[cpu] is not pm
    if m.asid[cpu] is pm:
        return False
    return pm.pm_active == 0
