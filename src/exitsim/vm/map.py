"""``vm_map``: entries in address order, the map lock, mapping, unmapping and the
teardown of a whole map (uvm_map.c 1.346; openbsd-exit-path.md 4.3-4.5, 4.7, 9).

The real map keeps its entries in a red-black tree with free-space entries between
them. Here the entries sit in a ``SortedDict`` by start, free space is not an entry, and
the teardown visits the entries in the breadth-first order of the balanced tree over the
same keys, which is the order the RB tree's wave-front gives when it is balanced.

Two phases, by lock, as in C: entries are killed (their pmap mappings removed) under
the map's write lock; their amap and object references are dropped afterwards, with the
map unlocked (``uvm_unmap_detach``). Lock hold times come out right because of that.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sortedcontainers import SortedDict

from exitsim.engine.errors import SimError, kassert
from exitsim.engine.locks import RwLock
from exitsim.engine.ops import EXCLUSIVE, SHARED, YIELD, Acquire, Release, Run
from exitsim.engine.thread import KPath
from exitsim.vm.amap import PpRef, VmAmap, amap_unref
from exitsim.vm.object import UvmObject, pgo_detach
from exitsim.vm.pmap import Pmap, pmap_remove, pmap_tlb_flush_all

if TYPE_CHECKING:
    from exitsim.engine.thread import Thread
    from exitsim.vm.uvm import Uvm

# Protection bits (sys/mman.h).
PROT_READ = 0x1
PROT_WRITE = 0x2
PROT_EXEC = 0x4
PROT_RW = PROT_READ | PROT_WRITE

# Inheritance codes (sys/mman.h).
MAP_INHERIT_SHARE = 0
MAP_INHERIT_COPY = 1
MAP_INHERIT_NONE = 2
MAP_INHERIT_ZERO = 3

# Entry type bits (uvm.h).
UVM_ET_OBJ = 0x0001
UVM_ET_COPYONWRITE = 0x0004
UVM_ET_NEEDSCOPY = 0x0008
UVM_ET_HOLE = 0x0010
UVM_ET_STACK = 0x0040

# Map flags (uvm_map.h).
VM_MAP_PAGEABLE = 0x01
VM_MAP_INTRSAFE = 0x02
VM_MAP_ISVMSPACE = 0x40


@dataclass(slots=True, eq=False)
class VmMapEntry:
    """``struct vm_map_entry``; ``start``/``end`` in pages, ``aref_pageoff`` and
    ``offset`` in pages too."""

    start: int
    end: int
    protection: int = PROT_RW
    max_protection: int = PROT_RW | PROT_EXEC
    inheritance: int = MAP_INHERIT_COPY
    etype: int = 0
    wired_count: int = 0
    amap: VmAmap | None = None
    aref_pageoff: int = 0
    object: UvmObject | None = None
    offset: int = 0
    killed: bool = False

    @property
    def npages(self) -> int:
        return self.end - self.start

    def __repr__(self) -> str:
        return f"<entry {self.start:#x}-{self.end:#x} et={self.etype:#x}>"


class VmMap:
    """``struct vm_map`` of a vmspace."""

    __slots__ = (
        "entries",
        "flags",
        "lock",
        "max_offset",
        "min_offset",
        "name",
        "pmap",
        "ref_count",
        "size",
        "timestamp",
        "uaddr",
    )

    def __init__(self, pmap: Pmap, min_offset: int, max_offset: int, name: str) -> None:
        self.pmap: Pmap | None = pmap
        self.entries: SortedDict = SortedDict()  # start -> VmMapEntry
        self.min_offset = min_offset
        self.max_offset = max_offset
        self.size = 0
        self.flags = VM_MAP_PAGEABLE | VM_MAP_ISVMSPACE
        self.timestamp = 0
        self.lock = RwLock(f"vmmaplk.{name}")
        self.ref_count = 1
        self.name = name
        # The address selectors uvm_map_setup_md installs on LP64; teardown drops them.
        self.uaddr: list[str] | None = ["uaddr_any[0]", "uaddr_brk_stack"]

    def __repr__(self) -> str:
        return f"<map {self.name} entries={len(self.entries)}>"

    def lookup(self, vpn: int) -> VmMapEntry | None:
        """``uvm_map_lookup_entry``: the entry containing ``vpn``."""
        i = self.entries.bisect_right(vpn) - 1
        if i < 0:
            return None
        e = self.entries.values()[i]
        return e if vpn < e.end else None

    def overlapping(self, start: int, end: int) -> list[VmMapEntry]:
        out = [self.entries[s] for s in self.entries.irange(start, end - 1)]
        head = self.lookup(start)
        if head is not None and head.start < start:
            out.insert(0, head)
        return out


# -- locking (9.2) -----------------------------------------------------------------------


def vm_map_lock(uvm: Uvm, p: Thread, map: VmMap) -> KPath:
    """Write-lock the map (a sleeping lock) and bump its timestamp."""
    yield Acquire(map.lock, EXCLUSIVE)
    map.timestamp += 1


def vm_map_unlock(map: VmMap) -> KPath:
    yield Release(map.lock)


def vm_map_lock_read(map: VmMap) -> KPath:
    yield Acquire(map.lock, SHARED)


def vm_map_unlock_read(map: VmMap) -> KPath:
    yield Release(map.lock)


# -- mapping ---------------------------------------------------------------------------


def uvm_map(
    uvm: Uvm,
    p: Thread,
    map: VmMap,
    start: int,
    npages: int,
    obj: UvmObject | None = None,
    objoff: int = 0,
    prot: int = PROT_RW,
    maxprot: int = PROT_RW | PROT_EXEC,
    inherit: int = MAP_INHERIT_COPY,
    copy_on_write: bool = True,
    etype: int = 0,
) -> KPath:
    """Map ``npages`` at ``start``: anonymous memory when ``obj`` is None, else the
    object from ``objoff``; the caller's reference to ``obj`` passes to the entry. A
    private mapping is copy-on-write and needs-copy, as ``mmap(MAP_PRIVATE)`` makes it;
    a shared one (shm, ``MAP_SHARED``) is neither.
    => the range is free; the caller does not hold the map lock."""
    end = start + npages
    if npages <= 0 or start < map.min_offset or end > map.max_offset:
        raise SimError(f"uvm_map: [{start:#x}, {end:#x}) is outside {map}")
    if obj is not None:
        uvm.check_live(obj, "uvm_map: object reference", p)
    yield from vm_map_lock(uvm, p, map)
    if map.overlapping(start, end):
        yield from vm_map_unlock(map)
        raise SimError(f"uvm_map: [{start:#x}, {end:#x}) overlaps a mapping of {map}")
    if copy_on_write:
        etype |= UVM_ET_COPYONWRITE | UVM_ET_NEEDSCOPY
    if obj is not None:
        etype |= UVM_ET_OBJ
    e = VmMapEntry(start, end, prot, maxprot, inherit, etype, object=obj, offset=objoff)
    yield Run(uvm.costs.map_entry_ns)
    map.entries[start] = e
    map.size += npages
    yield from vm_map_unlock(map)
    return e


def uvm_map_clip(uvm: Uvm, p: Thread, map: VmMap, e: VmMapEntry, at: int) -> VmMapEntry:
    """Split ``e`` at ``at`` (``uvm_map_clip_start``/``_end``): the upper part becomes a
    new entry. Both parts keep the amap, which gains a reference (``amap_splitref``);
    its per-page counts do not change, as every slot is still referenced once."""
    kassert(e.start < at < e.end, f"uvm_map_clip: {at:#x} not inside {e}")
    upper = VmMapEntry(
        at,
        e.end,
        e.protection,
        e.max_protection,
        e.inheritance,
        e.etype,
        e.wired_count,
        e.amap,
        e.aref_pageoff + (at - e.start),
        e.object,
        e.offset + (at - e.start) if e.object is not None else 0,
    )
    if e.amap is not None:
        amap = e.amap
        uvm.check_live(amap, "uvm_map_clip: amap reference", p)
        if amap.am_ppref is None:
            amap.am_ppref = PpRef(amap.am_nslot, amap.am_ref)
        amap.am_ref += 1
    if e.object is not None:
        uvm.check_live(e.object, "uvm_map_clip: object reference", p)
        e.object.uo_refs += 1
    e.end = at
    map.entries[at] = upper
    return upper


def uvm_unmap_kill_entry(
    uvm: Uvm, p: Thread, map: VmMap, e: VmMapEntry, flush: bool = True
) -> KPath:
    """Remove the entry's translations; its pages are not freed here."""
    uvm.check(not e.killed, 4, f"{e} of {map} killed twice", e, map, p=p)
    if e.wired_count:
        e.wired_count = 0
    if not e.etype & UVM_ET_HOLE:
        yield from pmap_remove(uvm, p, map.pmap, e.start, e.end, flush)  # type: ignore[arg-type]
    e.killed = True
    uvm.counters.entries_killed += 1


def uvm_unmap_remove(uvm: Uvm, p: Thread, map: VmMap, start: int, end: int) -> KPath:
    """Remove [start, end) from the map (munmap, exec, shmdt): clip the edge entries,
    kill what is inside, and return the dead entries for ``uvm_unmap_detach``.
    => map write-locked."""
    dead: list[VmMapEntry] = []
    for e in map.overlapping(start, end):
        if e.start < start:
            e = uvm_map_clip(uvm, p, map, e, start)
        if e.end > end:
            uvm_map_clip(uvm, p, map, e, end)
        yield Run(uvm.costs.map_entry_ns)
        yield from uvm_unmap_kill_entry(uvm, p, map, e)
        del map.entries[e.start]
        map.size -= e.npages
        dead.append(e)
    return dead


def uvm_unmap(uvm: Uvm, p: Thread, map: VmMap, start: int, end: int) -> KPath:
    """munmap: lock, remove, unlock, then drop the references of what was removed."""
    yield from vm_map_lock(uvm, p, map)
    dead = yield from uvm_unmap_remove(uvm, p, map, start, end)
    yield from vm_map_unlock(map)
    yield from uvm_unmap_detach(uvm, p, dead)


def uvm_unmap_detach(uvm: Uvm, p: Thread, dead: list[VmMapEntry]) -> KPath:
    """Drop each dead entry's amap and object references, in queue order, and free the
    entry. => map not locked (this may sleep and free pages)."""
    for e in dead:
        if e.amap is not None:
            yield from amap_unref(uvm, p, e.amap, e.aref_pageoff, e.npages)
            e.amap = None
        if e.object is not None:
            if uvm.teardown_drops_kernel_lock:
                # Up to uvm_map.c 1.329 an object's detach (vnode release) took the
                # kernel lock.
                yield Acquire(uvm.kernel_lock)
                yield from pgo_detach(uvm, p, e.object)
                yield Release(uvm.kernel_lock)
            else:
                yield from pgo_detach(uvm, p, e.object)
            e.object = None
        yield Run(uvm.costs.map_entry_ns)


def _bfs_order(keys: list[int]) -> list[int]:
    """The keys in breadth-first order of the balanced binary tree over them."""
    out: list[int] = []
    q: deque[tuple[int, int]] = deque([(0, len(keys))])
    while q:
        lo, hi = q.popleft()
        if lo >= hi:
            continue
        mid = (lo + hi) // 2
        out.append(keys[mid])
        q.append((lo, mid))
        q.append((mid + 1, hi))
    return out


def uvm_map_teardown(uvm: Uvm, p: Thread, map: VmMap, gather: bool = False) -> KPath:
    """The inverse of ``uvm_map_setup``: kill every entry, breadth first, with a yield
    point per entry, then empty the tree, drop the address selectors, unlock, and only
    then detach the dead entries. ``gather`` (not OpenBSD: the ``linux`` design) kills
    without TLB maintenance and flushes the address space once, before the unlock and
    so before any page is freed."""
    kassert(not map.flags & VM_MAP_INTRSAFE, "uvm_map_teardown: intrsafe map")
    if uvm.teardown_drops_kernel_lock:
        # uvm_map.c up to 1.329: the caller (the reaper) holds the kernel lock; the
        # page work goes without it.
        yield Release(uvm.kernel_lock)
    yield from vm_map_lock(uvm, p, map)
    dead: list[VmMapEntry] = []
    for start in _bfs_order(list(map.entries)):
        yield YIELD  # sched_pause(yield)
        e = map.entries[start]
        yield Run(uvm.costs.map_entry_ns)
        yield from uvm_unmap_kill_entry(uvm, p, map, e, flush=not gather)
        dead.append(e)
    if gather and dead:
        yield from pmap_tlb_flush_all(uvm, p, map.pmap)  # type: ignore[arg-type]
    if uvm.debug:
        # VMMAP_DEBUG: every tree node was queued, once.
        numt = len(map.entries)
        uvm.check(
            numt == len(dead),
            4,
            f"uvm_map_teardown: {numt} entries in the tree, {len(dead)} queued",
            map,
            p=p,
        )
        map.size = 0
        map.min_offset = map.max_offset = 0
        map.flags &= ~VM_MAP_ISVMSPACE
    map.entries.clear()  # RBT_INIT: the tree was left corrupted by the walk
    yield from vm_map_unlock(map)
    map.uaddr = None
    yield from uvm_unmap_detach(uvm, p, dead)
    if uvm.teardown_drops_kernel_lock:
        # Up to 1.329 the lock comes back for pmap_destroy, which was the
        # teardown's last step then (the caller's now, the same order).
        yield Acquire(uvm.kernel_lock)
