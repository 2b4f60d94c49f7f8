"""Amaps: the per-mapping arrays of anons behind anonymous and copy-on-write memory
(uvm_amap.c 1.97).

An amap has ``am_ref`` references, from map entries; ``AMAP_SHARED`` marks one shared
through fork's inherit-share. When references cover only part of it, per-page counts
(``am_ppref``) say which slots are still referenced; slots whose count reaches zero are
wiped. The last reference wipes the whole amap out: every anon loses a reference and
those that reach zero are freed with their page there and then (``uvm_anfree``, one page
at a time through the page-queue lock and this CPU's magazines; uvm_amap.c 1.82 of 2020
still gathered the pages for one ``uvm_pglistfree``).

Slots are keyed by the slot number they start at; an anon covers ``npages`` slots (one
in exact mode). Per-page counts are kept as ranges of equal count.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sortedcontainers import SortedDict

from exitsim.engine.locks import RwLock
from exitsim.engine.ops import Acquire, Release, Run
from exitsim.engine.thread import KPath
from exitsim.vm.anon import VmAnon, uvm_anfree
from exitsim.vm.uvm import RangeAlignmentError

if TYPE_CHECKING:
    from exitsim.engine.thread import Thread
    from exitsim.vm.uvm import Freed, Uvm

AMAP_SHARED = 0x1


class PpRef:
    """Per-page reference counts as ranges: ``starts[s] = count`` for slots from ``s``
    to the next key (``am_ppref``)."""

    __slots__ = ("starts", "nslot")

    def __init__(self, nslot: int, count: int) -> None:
        self.nslot = nslot
        self.starts: SortedDict = SortedDict({0: count, nslot: 0})

    def _split(self, at: int) -> None:
        if at in self.starts or at >= self.nslot:
            return
        i = self.starts.bisect_right(at) - 1
        self.starts[at] = self.starts.values()[i]

    def add(self, start: int, n: int, delta: int) -> list[tuple[int, int]]:
        """Add ``delta`` to slots [start, start+n); return the (start, end) ranges whose
        count fell to zero."""
        end = min(start + n, self.nslot)
        self._split(start)
        self._split(end)
        zero = []
        for s in list(self.starts.irange(start, end - 1)):
            self.starts[s] += delta
            if self.starts[s] < 0:
                raise ValueError(f"am_ppref of slot {s} went negative")
            if self.starts[s] == 0 and delta < 0:
                i = self.starts.index(s)
                zero.append((s, self.starts.keys()[i + 1]))
        return zero

    def count(self, slot: int) -> int:
        i = self.starts.bisect_right(slot) - 1
        return self.starts.values()[i]


class VmAmap:
    """``struct vm_amap``."""

    __slots__ = (
        "am_flags",
        "am_lock",
        "am_nslot",
        "am_ppref",
        "am_ref",
        "anons",
        "freed",
        "freed_by",
        "ident",
    )

    def __init__(self, ident: int, nslot: int) -> None:
        self.ident = ident
        self.am_ref = 1
        self.am_flags = 0
        self.am_nslot = nslot
        self.anons: SortedDict = SortedDict()  # first slot -> VmAnon
        self.am_ppref: PpRef | None = None
        self.am_lock = RwLock(f"amaplk.{ident}")
        self.freed = False
        self.freed_by: Freed | None = None

    def __repr__(self) -> str:
        return f"<amap {self.ident} ref={self.am_ref} slots={self.am_nslot}>"

    def lookup(self, slot: int) -> tuple[int, VmAnon] | None:
        """The anon covering ``slot``, with the slot it starts at."""
        i = self.anons.bisect_right(slot) - 1
        if i < 0:
            return None
        s = self.anons.keys()[i]
        a = self.anons[s]
        return (s, a) if slot < s + a.npages else None

    def anons_in(self, start: int, end: int) -> list[tuple[int, VmAnon]]:
        out = [(s, self.anons[s]) for s in self.anons.irange(start, end - 1)]
        head = self.lookup(start)
        if head is not None and head[0] < start:
            raise RangeAlignmentError(f"{self}: slots [{start}, {end}) split an anon run")
        if out and out[-1][0] + out[-1][1].npages > end:
            raise RangeAlignmentError(f"{self}: slots [{start}, {end}) split an anon run")
        return out


def amap_alloc(uvm: Uvm, nslot: int) -> VmAmap:
    ident = uvm.counters.extra.get("amaps_allocated", 0) + 1
    uvm.counters.extra["amaps_allocated"] = ident
    return VmAmap(ident, nslot)


def amap_ref(
    uvm: Uvm, p: Thread, amap: VmAmap, offset: int, length: int, refall: bool = False
) -> None:
    """Another entry references [offset, offset+length) of ``amap`` (fork, split)."""
    uvm.check_live(amap, "amap_ref", p)
    if amap.am_ppref is None and not refall and (offset != 0 or length != amap.am_nslot):
        amap.am_ppref = PpRef(amap.am_nslot, amap.am_ref)
    amap.am_ref += 1
    if amap.am_ppref is not None:
        amap.am_ppref.add(offset, length, 1)


def amap_unref(
    uvm: Uvm, p: Thread, amap: VmAmap, offset: int, length: int, refall: bool = False
) -> KPath:
    """Drop one entry's reference to [offset, offset+length). The last reference wipes
    the amap out; otherwise slots no longer referenced by anyone are wiped."""
    uvm.check_live(amap, "amap_unref: lock", p)
    yield Acquire(amap.am_lock)
    uvm.check(amap.am_ref > 0, 5, f"amap_unref: {amap} has no reference left", amap, p=p)
    if amap.am_ref == 1:
        amap.am_ref = 0
        yield from amap_wipeout(uvm, p, amap)
        yield Release(amap.am_lock)
        return
    if amap.am_ref == 2 and amap.am_flags & AMAP_SHARED:
        amap.am_flags &= ~AMAP_SHARED
    if amap.am_ppref is None and not refall and (offset != 0 or length != amap.am_nslot):
        amap.am_ppref = PpRef(amap.am_nslot, amap.am_ref)
    amap.am_ref -= 1
    if amap.am_ppref is not None:
        for s, e in amap.am_ppref.add(offset, length, -1):
            yield from amap_wiperange(uvm, p, amap, s, e)
    yield Release(amap.am_lock)


def amap_wiperange(uvm: Uvm, p: Thread, amap: VmAmap, start: int, end: int) -> KPath:
    """Drop the amap's hold on the anons in slots [start, end); an anon whose last
    reference this was is freed with its page (``amap_wiperange_chunk``)."""
    for s, anon in amap.anons_in(start, end):
        yield Run(uvm.costs.amap_slot_ns * anon.npages)
        del amap.anons[s]
        yield from _anon_drop(uvm, p, anon)


def _anon_drop(uvm: Uvm, p: Thread, anon: VmAnon) -> KPath:
    uvm.check_live(anon, "amap: anon reference drop", p)
    anon.an_ref -= 1
    uvm.check(anon.an_ref >= 0, 5, f"{anon}: an_ref went negative", anon, p=p)
    if anon.an_ref == 0:
        yield from uvm_anfree(uvm, p, anon)


def amap_wipeout(uvm: Uvm, p: Thread, amap: VmAmap) -> KPath:
    """The last reference is gone: release every anon, freeing each whose last
    reference this was with its page as it goes (``uvm_anfree``), and free the amap.
    => ``am_ref == 0``, ``am_lock`` held."""
    uvm.check(not amap.freed, 5, f"{amap} freed twice", amap, p=p)
    for s in list(amap.anons):
        anon = amap.anons.pop(s)
        yield Run(uvm.costs.amap_slot_ns * anon.npages)
        yield from _anon_drop(uvm, p, anon)
    uvm.mark_freed(amap, p)
    uvm.counters.amaps_freed += 1


def amap_add(amap: VmAmap, slot: int, anon: VmAnon, replace: bool) -> VmAnon | None:
    """Put ``anon`` at ``slot``; with ``replace``, return the anon it replaces."""
    old = amap.anons.get(slot)
    if old is not None and not replace:
        raise ValueError(f"amap_add: slot {slot} of {amap} is taken")
    amap.anons[slot] = anon
    return old


def amap_copy_anons(uvm: Uvm, p: Thread, src: VmAmap, offset: int, nslot: int) -> VmAmap:
    """A new amap holding, from slot 0, the anons of ``src`` in [offset, offset+nslot),
    each with one more reference (the copy half of ``amap_copy``)."""
    uvm.check_live(src, "amap_copy", p)
    new = amap_alloc(uvm, nslot)
    new.am_lock = src.am_lock  # the copy shares the lock of the anons it shares
    for s, anon in src.anons_in(offset, offset + nslot):
        uvm.check_live(anon, "amap_copy: anon reference", p)
        anon.an_ref += 1
        new.anons[s - offset] = anon
    return new
