"""amd64: anon pages freed at exit without looking at the anon's references.

The exiting process frees the page of every anon in its amaps (after removing its
mappings) but leaves the anon pointing at it, whether or not a child still shares the
anon copy-on-write. Breaks design.md invariant 5 at the use: the child's fault, or
the purge freeing the anon, uses a page that is already on the free list.
"""

from exitsim.engine.sync import KERNEL_LOCK, mp_release_all
from exitsim.kern.exit import uvm_purge_checked
from exitsim.policies.base import Policy
from exitsim.vm.page import uvm_pagefree
from exitsim.vm.pmap import pmap_page_protect_none


class PageFreedUnderAnon(Policy):
    name = "mutant-uaf-page"
    summary = "anon pages freed at exit, left on their anons"

    def exit1_teardown(self, k, p):
        uvm = k.uvm
        vm = p.p_p.ps_vmspace
        yield from mp_release_all(k.kernel_lock, p)
        for e in list(vm.vm_map.entries.values()):
            if e.amap is None:
                continue
            for anon in list(e.amap.anons.values()):
                pg = anon.an_page
                if pg is not None and not pg.freed:
                    yield from pmap_page_protect_none(uvm, p, pg)
                    yield from uvm_pagefree(uvm, p, pg)
        yield from uvm_purge_checked(k, p, False)
        yield from KERNEL_LOCK(k)
