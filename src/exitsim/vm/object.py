"""Memory objects: vnodes (files, program text, shared libraries) and anonymous objects
(``uao``, behind SysV shared memory).

A vnode's resident pages are shared by every process that maps the file and stay
resident when the last mapping goes (they belong to the vnode cache, not to any
address space). An anonymous object's pages are freed when its last reference goes.
``uo_refs`` counts references: one per map entry (``pgo_reference``/``pgo_detach``),
plus, for a shm segment's object, the segment's own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sortedcontainers import SortedDict

from exitsim.engine.locks import RwLock
from exitsim.engine.ops import Acquire, Release, Run
from exitsim.engine.thread import KPath
from exitsim.vm.page import OBJECT, VmPage, uvm_pagealloc, uvm_pagefree
from exitsim.vm.pmap import pmap_page_protect_none
from exitsim.vm.uvm import RangeAlignmentError

if TYPE_CHECKING:
    from exitsim.engine.thread import Thread
    from exitsim.vm.uvm import Freed, Uvm

VNODE = "vnode"
AOBJ = "aobj"


class UvmObject:
    """``struct uvm_object`` with its pager kind: a vnode or an anonymous object."""

    __slots__ = ("freed", "freed_by", "kind", "name", "npages", "pages", "uo_refs", "vmobjlock")

    def __init__(self, kind: str, name: str, npages: int, refs: int) -> None:
        self.kind = kind
        self.name = name
        self.npages = npages
        self.uo_refs = refs
        self.pages: SortedDict = SortedDict()  # first page offset -> VmPage
        self.freed = False
        self.freed_by: Freed | None = None
        #: ``vmobjlock``: held while a page is looked up and paged in, so two faults on
        #: the same page do not both page it in.
        self.vmobjlock = RwLock(f"vmobjlock.{name}")

    def __repr__(self) -> str:
        return f"<{self.kind} {self.name} refs={self.uo_refs}>"

    def resident(self) -> int:
        return sum(pg.npages for pg in self.pages.values())

    def lookup(self, off: int, n: int) -> VmPage | None:
        """The resident page run at [off, off+n), if there is one; a run that does not
        line up with the request can only happen in range mode and is refused."""
        pg = self.pages.get(off)
        if pg is not None:
            if pg.npages != n:
                raise RangeAlignmentError(f"{self}: page run at {off} is {pg.npages}, not {n}")
            return pg
        i = self.pages.bisect_right(off) - 1
        if i >= 0:
            s = self.pages.keys()[i]
            if off < s + self.pages[s].npages:
                raise RangeAlignmentError(f"{self}: offset {off} falls inside a run at {s}")
        nxt = next(iter(self.pages.irange(off, off + n - 1)), None)
        if nxt is not None:
            raise RangeAlignmentError(f"{self}: [{off}, {off + n}) overlaps the run at {nxt}")
        return None


def uvn_attach(uvm: Uvm, name: str, npages: int) -> UvmObject:
    """The vnode object of file ``name`` (one per name, kept in the vnode cache), with
    a new reference for the caller, which ``uvm_map`` hands to the map entry (as mmap
    does with the reference ``uvn_attach`` returns)."""
    vn = uvm.vnodes.get(name)
    if vn is None:
        vn = UvmObject(VNODE, name, npages, 0)
        uvm.vnodes[name] = vn
    vn.uo_refs += 1
    return vn


def uao_create(uvm: Uvm, name: str, npages: int) -> UvmObject:
    """A new anonymous object holding one reference, its creator's."""
    return UvmObject(AOBJ, name, npages, 1)


def pgo_reference(uvm: Uvm, p: Thread, obj: UvmObject) -> None:
    uvm.check_live(obj, "pgo_reference", p)
    obj.uo_refs += 1


def pgo_detach(uvm: Uvm, p: Thread, obj: UvmObject) -> KPath:
    """Drop a reference (``uvn_detach``/``uao_detach``). An anonymous object frees its
    pages with its last reference, one by one, each losing its mappings and going through
    the page-queue lock and this CPU's magazines (``uao_detach``, uvm_aobj.c 1.116); a
    vnode keeps them cached."""
    uvm.check_live(obj, "pgo_detach", p)
    obj.uo_refs -= 1
    uvm.check(obj.uo_refs >= 0, 5, f"{obj}: uo_refs went negative", obj, p=p)
    if obj.uo_refs > 0 or obj.kind == VNODE:
        return
    uvm.check(not obj.freed, 5, f"{obj} freed twice", obj, p=p)
    for off in list(obj.pages):
        pg = obj.pages.pop(off)
        yield from pmap_page_protect_none(uvm, p, pg)
        yield from uvm_pagefree(uvm, p, pg)
    uvm.mark_freed(obj, p)


def uvm_obj_getpage(uvm: Uvm, p: Thread, obj: UvmObject, off: int, n: int) -> KPath:
    """The object's page run at [off, off+n), paged in if not resident: a vnode page is
    read from the buffer cache (a copy), an anonymous object's is zero-filled."""
    uvm.check_live(obj, "uvm_obj_getpage: vmobjlock", p)
    yield Acquire(obj.vmobjlock)
    pg = obj.lookup(off, n)
    if pg is None:
        pg = yield from uvm_pagealloc(uvm, p, OBJECT, obj, n)
        c = uvm.costs
        yield Run((c.page_copy_ns if obj.kind == VNODE else c.page_zero_ns) * n)
        obj.pages[off] = pg
    yield Release(obj.vmobjlock)
    return pg
