"""Anons: anonymous memory, one page (or run) each, shared copy-on-write by reference
count (uvm_anon.c 1.64)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from exitsim.engine.thread import KPath
from exitsim.vm.page import VmPage
from exitsim.vm.pmap import pmap_page_protect_none

if TYPE_CHECKING:
    from exitsim.engine.thread import Thread
    from exitsim.vm.uvm import Uvm


class VmAnon:
    """``struct vm_anon``: ``an_ref`` counts the amap slots that hold it."""

    __slots__ = ("an_page", "an_ref", "freed", "npages")

    def __init__(self, page: VmPage | None, npages: int) -> None:
        self.an_ref = 1
        self.an_page = page
        self.npages = npages
        self.freed = False

    def __repr__(self) -> str:
        return f"<anon ref={self.an_ref} {self.an_page!r}>"


def uvm_anfree_list(uvm: Uvm, p: Thread, anon: VmAnon, pgl: list[VmPage]) -> KPath:
    """Free an anon whose last reference is gone. Its page loses every mapping first
    (``pmap_page_protect(PROT_NONE)``), then joins ``pgl`` for the caller to free in one
    go. => ``an_ref == 0``."""
    uvm.check(anon.an_ref == 0, 5, f"uvm_anfree: {anon} still referenced", anon, p=p)
    uvm.check(not anon.freed, 5, f"{anon} freed twice", anon, p=p)
    anon.freed = True
    pg = anon.an_page
    if pg is not None:
        yield from pmap_page_protect_none(uvm, p, pg)
        pgl.append(pg)
        anon.an_page = None
    uvm.counters.anons_freed += 1
