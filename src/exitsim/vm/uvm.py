"""The vm layer's shared state: OpenBSD's global ``struct uvm`` and ``uvmexp``, for one
simulation, plus the invariant checks every vm operation runs.

Everything in ``vm/`` takes a ``Uvm`` as its first argument (there are no globals, so
two simulations can run side by side) and the current thread ``p`` where the C code
uses ``curproc``.

Units: addresses and sizes are in pages (virtual page numbers, ``vpn``), as are
physical page numbers (``ppn``); ``PAGE_SIZE`` converts to bytes for reports.

Granularity. In ``exact`` mode every page is its own object and every step goes page by
page. In ``range`` mode one object stands for a run of pages that were faulted,
mapped and freed together, and a step covers the run, with the same total costs.
Range mode asks that operations stay aligned to the runs they touch (a fault or unmap
covers whole runs); where one would not, it stops with an error saying so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from exitsim.engine.errors import InvariantViolation, SimError
from exitsim.engine.locks import SpinMutex, TicketLock

if TYPE_CHECKING:
    from exitsim.engine.sched import Engine
    from exitsim.engine.thread import Thread
    from exitsim.machine.machine import Machine
    from exitsim.vm.page import PhysMem
    from exitsim.vm.pmap import Pmap

PAGE_SIZE = 4096
#: Pages mapped by one page-table page (a 2 MB block of 4 KiB pages): amd64 PTP,
#: arm64 level-3 table.
PTP_PAGES = 512


class RangeAlignmentError(SimError):
    """An operation in range mode would split a run of pages."""


@dataclass(slots=True)
class UvmCounters:
    """Work done, as counts; a debug check compares them around a step."""

    pmap_remove_calls: int = 0
    ptes_removed: int = 0
    pages_allocated: int = 0
    pages_freed: int = 0
    faults: int = 0
    cow_copies: int = 0
    zero_fills: int = 0
    anons_freed: int = 0
    amaps_freed: int = 0
    entries_killed: int = 0
    vmspaces_freed: int = 0
    pmaps_destroyed: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    def page_work(self) -> tuple[int, int, int]:
        """What a second purge must not change: removals, frees, killed entries."""
        return (self.ptes_removed, self.pages_freed, self.entries_killed)

    def as_dict(self) -> dict[str, int]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "extra"}
        d.update(self.extra)
        return d


@dataclass(frozen=True, slots=True)
class Freed:
    """Who freed an object, and when: the thread, its CPU and the simulated time."""

    by: str
    cpu: int | None
    time_ns: int

    def __str__(self) -> str:
        on = f" on cpu{self.cpu}" if self.cpu is not None else ""
        return f"freed by {self.by}{on} at t={self.time_ns}ns"


@dataclass(slots=True)
class Tolerated:
    """Violations of allowed invariants: how many of each, and the first one's text.
    One tally may be shared by every run of a search."""

    counts: dict[int, int] = field(default_factory=dict)
    first: dict[int, str] = field(default_factory=dict)

    def add(self, err: InvariantViolation) -> None:
        self.counts[err.invariant] = self.counts.get(err.invariant, 0) + 1
        self.first.setdefault(err.invariant, str(err))

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {
            str(i): {"count": self.counts[i], "first": self.first[i]} for i in sorted(self.counts)
        }


class Uvm:
    """The vm state of one simulation (``struct uvm`` + ``uvmexp`` + the monitors)."""

    def __init__(
        self,
        engine: Engine,
        machine: Machine,
        kernel_lock: TicketLock,
        total_pages: int,
        debug: bool = False,
    ) -> None:
        from exitsim.vm.page import PMR_PUT_SKIPS_MAGAZINES, PhysMem, PmrCache
        from exitsim.vm.pmap import Pmap

        #: The pmap class, for ``check_live`` (``vm/pmap.py`` imports this module).
        self._pmap_type = Pmap

        self.engine = engine
        self.machine = machine
        self.costs = machine.costs
        self.arch = machine.arch
        self.tlb = machine.tlb
        self.exact = machine.granularity == "exact"
        self.debug = debug
        #: uvm_map.c 1.317-1.329: the teardown is entered with the kernel lock held,
        #: drops it for the kill and detach phases (taking it back around an object's
        #: detach) and takes it again for pmap_destroy. From 1.330 (2024-07-24) it
        #: does no kernel-lock work at all. Set from the design (``Policy``).
        self.teardown_drops_kernel_lock = False
        #: Page faults take the kernel lock, one hold per page (SimConfig's
        #: fault_kernel_lock: the kernels before faults were unlocked).
        self.fault_kernel_lock = False
        self.kernel_lock = kernel_lock
        #: The free-page lock (``uvm.fpageqlock``): held while pages go into or come out
        #: of the pmemrange trees (a magazine refill or drain, a page-list free).
        self.fpageqlock = SpinMutex("fpageqlock")
        #: The page-queue lock (``uvm.pageqlock``): held to put a page on the active
        #: queue (faults) or take it off (``uvm_pageclean``), page by page.
        self.pageqlock = SpinMutex("pageqlock")
        #: amd64 allows one TLB shootdown in flight (``tlb_shoot_wait``).
        self.tlb_shoot_lock = SpinMutex("tlb_shoot_wait")
        self.physmem: PhysMem = PhysMem(total_pages)
        #: ``curcpu()->ci_uvm`` of every CPU: the per-CPU page magazines.
        self.pmr_cache: list[PmrCache] = [PmrCache() for _ in range(machine.ncpu)]
        #: A freed page skips the magazines on this arch (vm/page.py), decided once.
        self.put_skips_magazines = machine.arch.name in PMR_PUT_SKIPS_MAGAZINES
        self.counters = UvmCounters()
        #: Every pmap by its TLB tag (arm64 even ASID, amd64 pmap id). Tags are never
        #: reused: ASID rollover is not modelled (the ASID space is 2^16 pairs).
        self.pmaps: dict[int, Pmap] = {}
        self.next_tag = 2
        #: Locks worth reporting, by name.
        self.locks: dict[str, Any] = {
            "fpageqlock": self.fpageqlock,
            "pageqlock": self.pageqlock,
            "tlb_shoot_wait": self.tlb_shoot_lock,
        }
        self.next_shmid = 1
        #: Invariants whose violations are tolerated (``exitsim check --allow``): they
        #: are counted in ``tolerated`` and the run goes on.
        self.allowed: frozenset[int] = frozenset()
        self.tolerated: Tolerated = Tolerated()
        self.vnodes: dict[str, Any] = {}  # name -> UvmObject, the vnode cache
        self.shm_segments: dict[int, Any] = {}  # shmid -> ShmSegment
        #: Deallocated segments by shmid, so that a later use of one is reported as a
        #: use after free (invariant 5) rather than as an unknown shmid.
        self.shm_dead: dict[int, Any] = {}
        #: Who destroyed each pmap, by tag (``Pmap`` keeps only a flag).
        self.pmaps_freed: dict[int, Freed] = {}

    @property
    def now(self) -> int:
        return self.engine.now

    def new_tag(self) -> int:
        tag = self.next_tag
        self.next_tag += 2  # arm64 ASIDs come in pairs: tag and tag|1
        return tag

    def violation(
        self, invariant: int, message: str, *objects: object, p: Thread | None = None
    ) -> InvariantViolation:
        """Build the error for a broken design.md invariant; the caller raises it."""
        cpu = p.cpu if p is not None else None
        return InvariantViolation(
            invariant, message, objects=objects, cpu=cpu, time_ns=self.engine.now
        )

    def check(
        self, cond: bool, invariant: int, message: str, *objects: object, p: Thread | None = None
    ) -> None:
        if not cond:
            self.breach(invariant, message, *objects, p=p)

    def breach(
        self, invariant: int, message: str, *objects: object, p: Thread | None = None
    ) -> None:
        """An invariant broke: raise, unless it is allowed; then count it and go on."""
        err = self.violation(invariant, message, *objects, p=p)
        if invariant not in self.allowed:
            raise err
        self.tolerated.add(err)

    def mark_freed(self, obj: Any, p: Thread | None) -> None:
        """``obj`` (a vmspace, amap, anon, object, shm segment or page) is freed now, by
        ``p``: set its ``freed`` flag and record who and when for ``check_live``."""
        obj.freed = True
        obj.freed_by = self._freed_now(p)

    def mark_pmap_freed(self, pm: Pmap, p: Thread | None) -> None:
        """``pmap_destroy`` freed ``pm`` (its ``destroyed`` flag is set): record who."""
        if pm.destroyed and pm.tag not in self.pmaps_freed:
            self.pmaps_freed[pm.tag] = self._freed_now(p)

    def _freed_now(self, p: Thread | None) -> Freed:
        if p is None:
            return Freed("?", None, self.engine.now)
        return Freed(p.name, p.cpu, self.engine.now)

    def check_live(self, obj: Any, what: str, p: Thread | None = None) -> None:
        """design.md invariant 5, at the use: ``obj`` must not have been freed before
        this ``what`` (a fault, a reference, a lock, a mapping, a queueing). Raises
        naming the object, the use, this CPU and who freed it.

        A page is one allocation: every ``uvm_pagealloc`` makes a new ``VmPage`` and
        physical page numbers are never handed out twice (``PhysMem.next_ppn``), so the
        object stands for its allocation generation; a page freed and allocated again is
        another ``VmPage``, and only a stale reference to the old one trips this."""
        if isinstance(obj, self._pmap_type):
            if not obj.destroyed:
                return
            rec = self.pmaps_freed.get(obj.tag)
            how = str(rec) if rec is not None else "destroyed by pmap_destroy"
        else:
            if not obj.freed:
                return
            how = str(obj.freed_by) if obj.freed_by is not None else "freed"
        raise self.violation(5, f"{what} on {obj} after it was {how}", obj, p=p)

    def cpu_of(self, p: Thread) -> int:
        if p.cpu is None:
            raise SimError(f"{p.name} is not on a CPU")
        return p.cpu
