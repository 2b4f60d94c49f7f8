"""Anons: anonymous memory, one page (or run) each, shared copy-on-write by reference
count (uvm_anon.c 1.64, uvm_anon.h 1.23: ``uvm_anfree`` is ``uvm_anfree_list`` without a
list, which frees the page there and then; that is what ``amap_wipeout`` uses)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from exitsim.engine.thread import KPath
from exitsim.vm.page import VmPage, uvm_pageclean, uvm_pagefree
from exitsim.vm.pmap import pmap_page_protect_none

if TYPE_CHECKING:
    from exitsim.engine.thread import Thread
    from exitsim.vm.uvm import Freed, Uvm


class VmAnon:
    """``struct vm_anon``: ``an_ref`` counts the amap slots that hold it."""

    __slots__ = ("an_page", "an_ref", "freed", "freed_by", "npages")

    def __init__(self, page: VmPage | None, npages: int) -> None:
        self.an_ref = 1
        self.an_page = page
        self.npages = npages
        self.freed = False
        self.freed_by: Freed | None = None

    def __repr__(self) -> str:
        return f"<anon ref={self.an_ref} {self.an_page!r}>"


def uvm_anfree_list(uvm: Uvm, p: Thread, anon: VmAnon, pgl: list[VmPage] | None = None) -> KPath:
    """Free an anon whose last reference is gone. Its page loses every mapping first
    (``pmap_page_protect(PROT_NONE)``); then, with a list, it is cleaned and joins
    ``pgl`` for the caller to free in one go, and without one (``uvm_anfree``) it is freed
    now (``uvm_pagefree``: page-queue lock, this CPU's magazines). => ``an_ref == 0``."""
    uvm.check(anon.an_ref == 0, 5, f"uvm_anfree: {anon} still referenced", anon, p=p)
    uvm.check(not anon.freed, 5, f"{anon} freed twice", anon, p=p)
    uvm.mark_freed(anon, p)
    pg = anon.an_page
    if pg is not None:
        # The anon's page must still be its own: a page freed behind its back (and
        # maybe allocated again) is a use after free here, not a double free later.
        uvm.check_live(pg, "uvm_anfree: page protect", p)
        yield from pmap_page_protect_none(uvm, p, pg)
        anon.an_page = None
        if pgl is not None:
            yield from uvm_pageclean(uvm, p, pg)
            pgl.append(pg)
        else:
            yield from uvm_pagefree(uvm, p, pg)
    uvm.counters.anons_freed += 1


def uvm_anfree(uvm: Uvm, p: Thread, anon: VmAnon) -> KPath:
    """``uvm_anfree``: free the anon and its page now."""
    yield from uvm_anfree_list(uvm, p, anon, None)
