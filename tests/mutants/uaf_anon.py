"""amd64: anons freed while their amap still holds them.

The exiting process removes its mappings and frees every anon of its amaps (with its
page) without taking it out of the amap; the purge then wipes the amap out. Breaks
design.md invariant 5 at the use: the wipe drops a reference to a freed anon.
"""

from exitsim.engine.sync import KERNEL_LOCK, mp_release_all
from exitsim.kern.exit import uvm_purge_checked
from exitsim.policies.base import Policy
from exitsim.vm.anon import uvm_anfree
from exitsim.vm.pmap import pmap_remove


class AnonFreedEarly(Policy):
    name = "mutant-uaf-anon"
    summary = "anons freed before the purge, left in their amaps"

    def exit1_teardown(self, k, p):
        uvm = k.uvm
        vm = p.p_p.ps_vmspace
        yield from mp_release_all(k.kernel_lock, p)
        for e in list(vm.vm_map.entries.values()):
            yield from pmap_remove(uvm, p, vm.pmap, e.start, e.end)
            if e.amap is not None:
                for anon in list(e.amap.anons.values()):
                    if not anon.freed:
                        anon.an_ref = 0
                        yield from uvm_anfree(uvm, p, anon)
        yield from uvm_purge_checked(k, p, False)
        yield from KERNEL_LOCK(k)
