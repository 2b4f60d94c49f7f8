"""amd64: the amaps released before the map is torn down.

The exiting process removes its mappings and drops every entry's amap reference (the
last one, so the amap and its anons are freed) but leaves the amap on the entry; the
purge then drops it again. Breaks design.md invariant 5 at the use: ``amap_unref``
takes the lock of a freed amap.
"""

from exitsim.engine.sync import KERNEL_LOCK, mp_release_all
from exitsim.kern.exit import uvm_purge_checked
from exitsim.policies.base import Policy
from exitsim.vm.amap import amap_unref
from exitsim.vm.pmap import pmap_remove


class AmapFreedEarly(Policy):
    name = "mutant-uaf-amap"
    summary = "amaps released before the purge, left on their entries"

    def exit1_teardown(self, k, p):
        uvm = k.uvm
        vm = p.p_p.ps_vmspace
        yield from mp_release_all(k.kernel_lock, p)
        for e in list(vm.vm_map.entries.values()):
            yield from pmap_remove(uvm, p, vm.pmap, e.start, e.end)
            if e.amap is not None:
                yield from amap_unref(uvm, p, e.amap, e.aref_pageoff, e.npages)
        yield from uvm_purge_checked(k, p, False)
        yield from KERNEL_LOCK(k)
