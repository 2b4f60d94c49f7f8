"""The machine-independent pmap interface and its amd64 and arm64 behaviour.

One ``Pmap`` class serves both arches; where they differ, a function branches on
``uvm.arch``. What each arch does is in openbsd-exit-path.md sections 5 (arm64,
pmap.c 1.113) and 6 (amd64, pmap.c 1.182):

- arm64: ``pm_active`` counts the live threads that use the pmap; ``ttlb_flush`` issues
  two broadcast TLBIs per page (the ASID pair) while ``pm_active > 0`` and none after;
  ``pmap_purge`` waits until only the caller is left, points TTBR0 at the kernel's empty
  table, flushes both ASIDs once and sets ``pm_active`` to 0; ``pmap_destroy`` flushes
  both ASIDs again when it frees them.
- amd64: a CPU has the pmap active when it is its ``ci_proc_pmap`` (``machine.curpm``);
  ``pmap_remove`` invalidates locally if the pmap is loaded here, sends shootdown IPIs
  to the other CPUs where it is active and waits for their acks, does one full flush
  for more than 32 pages, and frees page-table pages that became empty, after the wait.
  The real amd64 pmap has no ``pm_active``; the model keeps the same count of live
  threads there too, because design.md invariant 1 needs to know whether a thread may
  still use the pmap's translations.

Page-table pages (amd64 PTPs, arm64 level-3 tables) are real pages from the free lists:
one per 2 MB block that has a mapping. Upper levels are left out.

A mapping covers a whole ``VmPage`` (one page, or one run in range mode) at ``vpn``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sortedcontainers import SortedDict

from exitsim.engine.errors import kassert
from exitsim.engine.locks import SpinMutex
from exitsim.engine.ops import Acquire, Release, Run, SpinWait
from exitsim.engine.thread import KPath
from exitsim.machine.arch import (
    cpu_tlb_flush_asid_all,
    pmap_tlb_shootrange,
    pmap_tlb_shoottlb,
    ttlb_flush_range,
)
from exitsim.vm.page import PTP, VmPage, uvm_pagealloc, uvm_pagefree, uvm_pglistfree
from exitsim.vm.uvm import PTP_PAGES, RangeAlignmentError

if TYPE_CHECKING:
    from exitsim.engine.thread import Thread
    from exitsim.vm.uvm import Uvm


@dataclass(slots=True, eq=False)
class Ptp:
    """Page-table pages for ``nblocks`` consecutive 2 MB blocks, allocated together
    (one block, one page, in exact mode; a run in range mode), and how many valid
    PTEs they hold. amd64 frees them when that count reaches zero."""

    page: VmPage
    nblocks: int
    valid: int = 0


@dataclass(slots=True, eq=False)
class Pte:
    """A valid mapping of ``page`` (all of its ``npages``) at the key's vpn."""

    page: VmPage
    writable: bool
    wired: bool

    @property
    def npages(self) -> int:
        return self.page.npages


class Pmap:
    """``struct pmap`` of either arch, with what the model needs of it."""

    __slots__ = (
        "tag",
        "asids",
        "pm_refs",
        "pm_active",
        "pm_purged",
        "resident_count",
        "wired_count",
        "ptes",
        "ptps",
        "pm_mtx",
        "active_chan",
        "destroyed",
        "name",
        "watch",
    )

    def __init__(self, tag: int, name: str) -> None:
        self.tag = tag
        self.asids = (tag, tag | 1)  # arm64: kernel-mode ASID and the user one
        self.pm_refs = 1
        self.pm_active = 0
        self.pm_purged = False  # arm64: pm_pt0pa is the kernel's empty table
        self.resident_count = 0
        self.wired_count = 0
        self.ptes: SortedDict = SortedDict()  # vpn -> Pte
        self.ptps: SortedDict = SortedDict()  # first 2 MB block -> Ptp
        self.pm_mtx = SpinMutex(f"pm_mtx.{tag}")
        self.active_chan = ("pm_active", tag)
        self.destroyed = False
        self.name = name
        #: Called as ``watch(pmap, npages)`` when mappings go (a meter of the kernel).
        self.watch: Callable[[Pmap, int], None] | None = None

    def __repr__(self) -> str:
        return f"<pmap {self.tag} of {self.name}>"

    def lookup(self, vpn: int) -> tuple[int, Pte] | None:
        """The mapping that covers ``vpn``, with the vpn it starts at."""
        i = self.ptes.bisect_right(vpn) - 1
        if i < 0:
            return None
        start = self.ptes.keys()[i]
        pte = self.ptes[start]
        if vpn < start + pte.npages:
            return start, pte
        return None

    def runs_in(self, sva: int, eva: int) -> list[tuple[int, Pte]]:
        """The mappings inside [sva, eva), in address order. A mapping that sticks out
        of the range can only be a range-mode run, and is refused."""
        out = [(v, self.ptes[v]) for v in self.ptes.irange(sva, eva - 1)]
        head = self.lookup(sva)
        if head is not None and head[0] < sva:
            raise RangeAlignmentError(
                f"{self}: [{sva:#x}, {eva:#x}) splits the run at {head[0]:#x}"
            )
        if out and out[-1][0] + out[-1][1].npages > eva:
            raise RangeAlignmentError(
                f"{self}: [{sva:#x}, {eva:#x}) splits the run at {out[-1][0]:#x}"
            )
        return out


# -- create, reference, destroy --------------------------------------------------------


def pmap_create(uvm: Uvm, p: Thread, name: str) -> KPath:
    pm = Pmap(uvm.new_tag(), name)
    uvm.pmaps[pm.tag] = pm
    uvm.locks[pm.pm_mtx.name] = pm.pm_mtx
    yield Run(uvm.costs.pmap_create_ns)
    return pm


def pmap_reference(pm: Pmap) -> None:
    kassert(pm.pm_refs > 0, f"pmap_reference: {pm} is dead")
    pm.pm_refs += 1


def pmap_destroy(uvm: Uvm, p: Thread, pm: Pmap) -> KPath:
    """Drop a reference; the last one frees the page-table pages, the ASIDs and the
    pmap. => no CPU may have it loaded (openbsd-exit-path.md 11, V6): design.md
    invariant 8, checked on every CPU as the hardware has it (``Machine.loaded_on``).
    Nothing here unloads it from another CPU: OpenBSD does not (amd64 pmap.c prints
    under DIAGNOSTIC and goes on; arm64 pmap_free_asid asserts only for curcpu)."""
    uvm.check_live(pm, "pmap_destroy", p)
    pm.pm_refs -= 1
    uvm.check(pm.pm_refs >= 0, 5, f"{pm} reference count went negative", pm, p=p)
    if pm.pm_refs > 0:
        return
    me = uvm.cpu_of(p)
    m = uvm.machine
    if uvm.arch.broadcast_tlbi:
        # arm64 pmap_free_asid: KASSERT(pm != curcpu()->ci_curpm).
        uvm.check(m.curpm[me] is not pm, 5, f"pmap_destroy: {pm} is loaded on this CPU", pm, p=p)
    loaded = m.loaded_on(pm)
    uvm.check(
        not loaded,
        8,
        f"pmap_destroy of {pm} while {_describe_loaded(uvm, pm, loaded)}",
        pm,
        p=p,
    )
    uvm.check(not pm.destroyed, 5, f"{pm} destroyed twice", pm, p=p)
    # A pmap with mappings left is torn down here (pmap_release); after a purge it has
    # none, and this does no page work. It is marked destroyed after: this removal is
    # its own teardown, not a use after free.
    if pm.ptes:
        yield from pmap_remove(uvm, p, pm, pm.ptes.keys()[0], _end_of(pm))
    pm.destroyed = True
    yield from uvm_pglistfree(uvm, p, [ptp.page for ptp in pm.ptps.values()])
    pm.ptps.clear()
    if uvm.arch.broadcast_tlbi:
        # pmap_free_asid: both ASIDs are flushed again before they can be reused.
        yield from cpu_tlb_flush_asid_all(m, pm.asids)
    else:
        # amd64 leaves the pmap's entries in the TLBs of CPUs that ran it: with PCIDs
        # they stay, tagged, until the next user %cr3 load there flushes them. The
        # model's tags are never reused, so on a CPU without it in %cr3 they can never
        # be used again and are dropped here, without cost, to keep the model small;
        # where it is still in %cr3 (invariant 8 tolerated) they stay.
        for cpu in range(m.ncpu):
            if m.ttbr0[cpu] is not pm:
                uvm.tlb.invalidate_asid(cpu, pm.tag)
    yield Run(uvm.costs.pmap_destroy_ns)
    uvm.counters.pmaps_destroyed += 1


def _describe_loaded(uvm: Uvm, pm: Pmap, cpus: list[int]) -> str:
    """Where ``pm`` is still loaded, in the hardware's terms."""
    m = uvm.machine
    parts = []
    for c in cpus:
        if uvm.arch.broadcast_tlbi:
            what = [
                name
                for name, on in (
                    ("TTBR0 on its tables", m.ttbr0[c]),
                    ("its ASID current", m.asid[c]),
                )
                if on is pm
            ]
        else:
            what = [
                name
                for name, on in (("%cr3", m.ttbr0[c]), ("ci_proc_pmap", m.curpm[c]))
                if on is pm
            ]
        parts.append(f"cpu{c} has {' and '.join(what) or 'it as ci_curpm'}")
    return "; ".join(parts)


def _end_of(pm: Pmap) -> int:
    last = pm.ptes.keys()[-1]
    return last + pm.ptes[last].npages


# -- activation -------------------------------------------------------------------------


def pmap_activate(uvm: Uvm, p: Thread, pm: Pmap, on_cpu: bool = True) -> None:
    """A thread starts using ``pm`` (fork, thread creation, exec). ``on_cpu``: the
    thread is curproc, so the pmap is loaded here now."""
    pm.pm_active += 1
    if on_cpu and p.cpu is not None:
        pmap_switch(uvm, p.cpu, pm)


def pmap_deactivate(uvm: Uvm, p: Thread, pm: Pmap) -> None:
    """The thread stops using ``pm`` for good (exit1). arm64 returns at once if
    ``pm_active`` is already 0 (after ``pmap_purge``); else TTBR0 goes to the kernel's
    empty table, while the ASID in TTBR1 (and ``ci_curpm``) stay until the next
    ``cpu_switchto``. amd64 clears ``ci_proc_pmap``, so shootdowns stop coming here,
    but keeps %cr3 until the next switch loads another."""
    cpu = uvm.cpu_of(p)
    m = uvm.machine
    if uvm.arch.broadcast_tlbi and pm.pm_active == 0:
        return
    uvm.check(pm.pm_active > 0, 5, f"{pm}: pm_active would go negative", pm, p=p)
    if uvm.arch.broadcast_tlbi:
        if m.ttbr0[cpu] is pm:
            m.ttbr0[cpu] = None
    elif m.curpm[cpu] is pm:
        m.curpm[cpu] = None
    m.left[cpu] = pm
    pm.pm_active -= 1
    uvm.engine.wakeup(pm.active_chan)


def pmap_switch(uvm: Uvm, cpu: int, pm: Pmap | None) -> None:
    """``cpu_switchto`` loads the next thread's address space on ``cpu``; ``pm`` None
    for a kernel thread or idle, whose address space is the kernel's.

    arm64 (``pmap_setttb``, every switch): TTBR0 gets the pmap's tables, or the kernel's
    empty one after ``pmap_purge`` or for a kernel thread; ``cpu_setttb`` puts the
    pmap's ASID in TTBR1 (the kernel's, 0, for a kernel thread) and ``ci_curpm``
    follows. TLB entries are tagged by ASID and stay. amd64 (locore.S ``cpu_switchto``):
    the new pcb's %cr3 is loaded unless it is the one already loaded, the kernel's for
    a kernel thread, so nothing is lazy; loading a user %cr3 (its PCID without the
    no-flush bit) drops this CPU's user translations. ``ci_proc_pmap`` follows %cr3."""
    m = uvm.machine
    m.left[cpu] = None
    if uvm.arch.broadcast_tlbi:
        m.ttbr0[cpu] = None if pm is None or pm.pm_purged else pm
        m.asid[cpu] = pm
        m.curpm[cpu] = pm
        return
    if pm is not None and m.ttbr0[cpu] is not pm:
        uvm.tlb.invalidate_all(cpu)
    m.ttbr0[cpu] = pm
    m.asid[cpu] = pm
    m.curpm[cpu] = pm


def pmap_active_cpus(uvm: Uvm, pm: Pmap, me: int) -> tuple[int, ...]:
    """amd64 shootdown targets: the other CPUs where ``pm`` is ``ci_proc_pmap``."""
    return tuple(c for c, loaded in enumerate(uvm.machine.curpm) if loaded is pm and c != me)


# -- entering mappings ------------------------------------------------------------------


def pmap_enter(
    uvm: Uvm,
    p: Thread,
    pm: Pmap,
    vpn: int,
    page: VmPage,
    writable: bool,
    wired: bool = False,
) -> KPath:
    """Map all of ``page`` at ``vpn``, replacing what was there (a copy-on-write break
    replaces the read-only mapping of the old page, with its TLB maintenance)."""
    uvm.check_live(pm, "pmap_enter", p)
    uvm.check_live(page, "pmap_enter: page", p)
    kassert(not pm.destroyed, f"pmap_enter: {pm} destroyed")
    end = vpn + page.npages
    yield from _ptp_alloc(uvm, p, pm, vpn, end)
    runs = pm.runs_in(vpn, end)
    if runs:
        yield from _pmap_replace(uvm, p, pm, runs)
    yield Acquire(pm.pm_mtx)
    yield Run(uvm.costs.pte_ns * page.npages)
    pm.ptes[vpn] = Pte(page, writable, wired)
    _ptp_count(pm, vpn, end, +1)
    page.pv.append((pm, vpn))
    pm.resident_count += page.npages
    if wired:
        pm.wired_count += page.npages
    yield Release(pm.pm_mtx)


def _pmap_replace(uvm: Uvm, p: Thread, pm: Pmap, runs: list[tuple[int, Pte]]) -> KPath:
    """The old mappings (``runs``, as ``runs_in`` lists them) that ``pmap_enter``
    overwrites. In C each fault
    overwrites one PTE in place: the page-table page stays (it is never empty), and the
    page is invalidated alone, arm64 ``ttlb_flush`` (two TLBIs while ``pm_active > 0``),
    amd64 ``pmap_tlb_shootpage`` (invlpg here if loaded here, one IPI to each other CPU
    where the pmap is active). A range-mode run costs what its pages cost one by one:
    never a full flush, and one shootdown per page when there are targets."""
    m = uvm.machine
    yield Acquire(pm.pm_mtx)
    for v, pte in runs:
        n = pte.npages
        yield Run(uvm.costs.pte_ns * n)
        _drop_pte(pm, v)
        uvm.counters.ptes_removed += n
        if uvm.arch.broadcast_tlbi and pm.pm_active > 0:
            yield from ttlb_flush_range(m, pm.asids, v, v + n)
    yield Release(pm.pm_mtx)
    if uvm.arch.broadcast_tlbi:
        return
    me = uvm.cpu_of(p)
    targets = pmap_active_cpus(uvm, pm, me)
    shootself = m.ttbr0[me] is pm
    limit = m.arch.shootall_pages
    for v, pte in runs:
        if not targets:
            # Local invlpgs only: in pieces the arch never turns into a full flush.
            for s in range(v, v + pte.npages, limit):
                e = min(s + limit, v + pte.npages)
                yield from pmap_tlb_shootrange(m, me, pm.tag, s, e, (), shootself)
            continue
        for va in range(v, v + pte.npages):
            yield Acquire(uvm.tlb_shoot_lock)
            yield from pmap_tlb_shootrange(m, me, pm.tag, va, va + 1, targets, shootself)
            yield Release(uvm.tlb_shoot_lock)


def _ptps_over(pm: Pmap, b0: int, b1: int) -> list[tuple[int, Ptp]]:
    """The page-table page runs covering any of blocks [b0, b1], in order."""
    out = [(b, pm.ptps[b]) for b in pm.ptps.irange(b0, b1)]
    i = pm.ptps.bisect_left(b0) - 1
    if i >= 0:
        b = pm.ptps.keys()[i]
        ptp = pm.ptps[b]
        if b + ptp.nblocks > b0:
            out.insert(0, (b, ptp))
    return out


def _ptp_alloc(uvm: Uvm, p: Thread, pm: Pmap, vpn: int, end: int) -> KPath:
    """Give every 2 MB block of [vpn, end) a page-table page: one per block in exact
    mode, one run per gap in range mode."""
    b0, b1 = vpn // PTP_PAGES, (end - 1) // PTP_PAGES
    gaps = []
    at = b0
    for b, ptp in _ptps_over(pm, b0, b1):
        if b > at:
            gaps.append((at, b))
        at = max(at, b + ptp.nblocks)
    if at <= b1:
        gaps.append((at, b1 + 1))
    for g0, g1 in gaps:
        sizes = [(b, 1) for b in range(g0, g1)] if uvm.exact else [(g0, g1 - g0)]
        for b, n in sizes:
            page = yield from uvm_pagealloc(uvm, p, PTP, pm, n)
            pm.ptps[b] = Ptp(page, n)


def _ptp_count(pm: Pmap, vpn: int, end: int, sign: int) -> None:
    """Add (or take) the pages of [vpn, end) to the valid counts of their PTP runs."""
    for b, ptp in _ptps_over(pm, vpn // PTP_PAGES, (end - 1) // PTP_PAGES):
        lo = max(vpn, b * PTP_PAGES)
        hi = min(end, (b + ptp.nblocks) * PTP_PAGES)
        ptp.valid += sign * (hi - lo)


def _speculative_fill(uvm: Uvm, pm: Pmap, vpn: int, pte: Pte) -> None:
    """A PTE is going without a TLB invalidation. Any CPU whose MMU still has ``pm``'s
    user page tables loaded (``Machine.ttbr0``) may have walked them (speculatively,
    with no user code running) and cached this translation, so the model says it has.
    This is the hazard ``pmap_purge`` waits out: siblings between exit1 steps 12 and 13
    still have TTBR0 on the user tables."""
    tag = pm.tag | 1 if uvm.arch.broadcast_tlbi else pm.tag
    for cpu, loaded in enumerate(uvm.machine.ttbr0):
        if loaded is pm:
            uvm.tlb.fill(cpu, tag, vpn, pte.page.ppn, pte.npages)


def _drop_pte(pm: Pmap, vpn: int) -> Pte:
    """Clear one mapping's PTE, pv entry and counters (no TLB work, no cost)."""
    pte = pm.ptes.pop(vpn)
    n = pte.npages
    pte.page.pv.remove((pm, vpn))
    if pm.watch is not None:
        pm.watch(pm, n)
    pm.resident_count -= n
    if pte.wired:
        pm.wired_count -= n
    _ptp_count(pm, vpn, vpn + n, -1)
    return pte


# -- removing mappings ------------------------------------------------------------------


def pmap_remove(uvm: Uvm, p: Thread, pm: Pmap, sva: int, eva: int, flush: bool = True) -> KPath:
    """Remove every mapping in [sva, eva) of ``pm``; pages are not freed here.
    ``flush=False`` gathers: no TLB maintenance, the caller flushes the whole address
    space once before any page is freed (Linux's ``tlb_gather_mmu_fullmm``)."""
    uvm.check_live(pm, "pmap_remove", p)
    if eva <= sva:
        return
    uvm.counters.pmap_remove_calls += 1
    if uvm.arch.broadcast_tlbi:
        yield from _pmap_remove_arm64(uvm, p, pm, sva, eva, flush)
    else:
        yield from _pmap_remove_amd64(uvm, p, pm, sva, eva, flush)


def _pmap_remove_arm64(uvm: Uvm, p: Thread, pm: Pmap, sva: int, eva: int, flush: bool) -> KPath:
    """arm64 ``pmap_remove``: under ``pm_mtx``, look up every page of the range (even
    where nothing is mapped) and remove each valid one with ``ttlb_flush``: two
    broadcast TLBIs while ``pm_active > 0``, none after ``pmap_purge``."""
    c = uvm.costs
    m = uvm.machine
    runs = pm.runs_in(sva, eva)
    yield Acquire(pm.pm_mtx)
    if uvm.exact:
        # Page by page, as the C loop goes.
        mapped = dict(runs)
        for vpn in range(sva, eva):
            yield Run(c.pmap_lookup_ns)
            if vpn in mapped:
                yield Run(c.pte_ns)
                pte = _drop_pte(pm, vpn)
                uvm.counters.ptes_removed += 1
                if pm.pm_active > 0 and flush:
                    yield from ttlb_flush_range(m, pm.asids, vpn, vpn + 1)
                else:
                    _speculative_fill(uvm, pm, vpn, pte)
    else:
        yield Run(c.pmap_lookup_ns * (eva - sva))
        for vpn, pte in runs:
            n = pte.npages
            yield Run(c.pte_ns * n)
            _drop_pte(pm, vpn)
            uvm.counters.ptes_removed += n
            if pm.pm_active > 0 and flush:
                yield from ttlb_flush_range(m, pm.asids, vpn, vpn + n)
            else:
                _speculative_fill(uvm, pm, vpn, pte)
    yield Release(pm.pm_mtx)


def _pmap_remove_amd64(uvm: Uvm, p: Thread, pm: Pmap, sva: int, eva: int, flush: bool) -> KPath:
    """amd64 ``pmap_do_remove``: under ``pm_mtx`` walk the populated 2 MB blocks, clear
    the valid PTEs and note page-table pages that became empty; then invalidate here if
    loaded here, shoot the other CPUs where the pmap is active, wait for their acks, and
    only then free the empty page-table pages."""
    c = uvm.costs
    m = uvm.machine
    me = uvm.cpu_of(p)
    runs = pm.runs_in(sva, eva)
    b0, b1 = sva // PTP_PAGES, (eva - 1) // PTP_PAGES
    ptps = _ptps_over(pm, b0, b1)
    populated = sum(min(b1 + 1, b + t.nblocks) - max(b0, b) for b, t in ptps)
    yield Acquire(pm.pm_mtx)
    shootself = m.ttbr0[me] is pm
    yield Run(c.ptp_scan_ns * populated)
    for vpn, pte in runs:
        n = pte.npages
        yield Run(c.pte_ns * n)
        _drop_pte(pm, vpn)
        uvm.counters.ptes_removed += n
        if not flush:
            _speculative_fill(uvm, pm, vpn, pte)
    empty = [pm.ptps.pop(b).page for b, t in ptps if t.valid == 0]
    targets = pmap_active_cpus(uvm, pm, me)
    yield Release(pm.pm_mtx)
    if flush:
        if targets:
            yield Acquire(uvm.tlb_shoot_lock)
        yield from pmap_tlb_shootrange(m, me, pm.tag, sva, eva, targets, shootself)
        if targets:
            yield Release(uvm.tlb_shoot_lock)
    # After the shootdown wait, the empty page-table pages go back one by one
    # (amd64 pmap.c: a uvm_pagefree for each on empty_ptps).
    for pg in empty:
        yield from uvm_pagefree(uvm, p, pg)


def pmap_page_protect_none(uvm: Uvm, p: Thread, page: VmPage) -> KPath:
    """``pmap_page_protect(pg, PROT_NONE)``: remove every mapping of ``page`` in every
    pmap, through its pv list, with each pmap's TLB maintenance."""
    while page.pv:
        pm, vpn = page.pv[0]
        yield from pmap_remove(uvm, p, pm, vpn, vpn + page.npages)


def pmap_protect_ro(uvm: Uvm, p: Thread, pm: Pmap, sva: int, eva: int) -> KPath:
    """Write-protect [sva, eva) (fork's copy-on-write setup): each PTE loses write
    permission and its stale writable translations are invalidated."""
    runs = [(v, t) for v, t in pm.runs_in(sva, eva) if t.writable]
    if not runs:
        return
    m = uvm.machine
    yield Acquire(pm.pm_mtx)
    for vpn, pte in runs:
        yield Run(uvm.costs.pte_ns * pte.npages)
        pte.writable = False
        if uvm.arch.broadcast_tlbi and pm.pm_active > 0:
            yield from ttlb_flush_range(m, pm.asids, vpn, vpn + pte.npages)
    yield Release(pm.pm_mtx)
    if not uvm.arch.broadcast_tlbi:
        me = uvm.cpu_of(p)
        targets = pmap_active_cpus(uvm, pm, me)
        if targets:
            yield Acquire(uvm.tlb_shoot_lock)
        yield from pmap_tlb_shootrange(m, me, pm.tag, sva, eva, targets, m.ttbr0[me] is pm)
        if targets:
            yield Release(uvm.tlb_shoot_lock)


def pmap_purge(uvm: Uvm, p: Thread, pm: Pmap) -> KPath:
    """arm64 ``pmap_purge``: wait (spinning) until the caller is the pmap's last active
    thread, point TTBR0 at the kernel's empty table, flush both ASIDs once, and mark
    the pmap inactive, so that every later ``pmap_remove`` skips TLB maintenance.
    => called by the last thread of the process, before ``uvmspace_purge``."""
    kassert(uvm.arch.has_pmap_purge, f"pmap_purge on {uvm.arch.name}")
    while pm.pm_active != 1:
        yield SpinWait(pm.active_chan, "pmap_purge")
    cpu = uvm.cpu_of(p)
    # TTBR0 to the kernel's empty table; the ASID stays current here.
    uvm.machine.ttbr0[cpu] = None
    yield from cpu_tlb_flush_asid_all(uvm.machine, pm.asids)
    pm.pm_purged = True
    pm.pm_active = 0
    uvm.engine.wakeup(pm.active_chan)


def pmap_tlb_flush_all(uvm: Uvm, p: Thread, pm: Pmap) -> KPath:
    """Flush every translation of ``pm`` everywhere it may be cached, once: an amd64
    shoot-all to the CPUs where it is active, or an arm64 ASID-pair flush. Used by
    designs that gather a whole address space's invalidations (``linux``)."""
    m = uvm.machine
    if uvm.arch.broadcast_tlbi:
        yield from cpu_tlb_flush_asid_all(m, pm.asids)
        return
    me = uvm.cpu_of(p)
    targets = pmap_active_cpus(uvm, pm, me)
    if targets:
        yield Acquire(uvm.tlb_shoot_lock)
    yield from pmap_tlb_shoottlb(m, me, pm.tag, targets, m.ttbr0[me] is pm)
    if targets:
        yield Release(uvm.tlb_shoot_lock)


def pmap_remove_pages(uvm: Uvm, p: Thread, pm: Pmap) -> KPath:
    """FreeBSD's exit fast path (``pmap_remove_pages``): clear every user PTE of the
    pmap by walking its mappings, not the address range, with no TLB maintenance; the
    caller flushes the address space once afterwards. Page-table pages stay until the
    pmap is released."""
    uvm.counters.pmap_remove_calls += 1
    yield Acquire(pm.pm_mtx)
    for vpn in list(pm.ptes):
        n = pm.ptes[vpn].npages
        yield Run(uvm.costs.pte_ns * n)
        pte = _drop_pte(pm, vpn)
        uvm.counters.ptes_removed += n
        _speculative_fill(uvm, pm, vpn, pte)
    yield Release(pm.pm_mtx)
