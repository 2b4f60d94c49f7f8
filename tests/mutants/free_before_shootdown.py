"""amd64: pages freed before the TLB shootdown has completed.

The teardown removes every PTE without invalidating, drops the amaps (freeing the
pages), and only then flushes the address space. Breaks design.md invariant 1: a page
goes back to the free list while a CPU with the pmap loaded can still translate to it.
"""

from exitsim.engine.sync import KERNEL_LOCK, mp_release_all
from exitsim.policies.base import Policy
from exitsim.vm.map import uvm_unmap_detach, uvm_unmap_kill_entry, vm_map_lock, vm_map_unlock
from exitsim.vm.pmap import pmap_tlb_flush_all


class FreeBeforeShootdown(Policy):
    name = "mutant-free-before-shootdown"
    summary = "purge that frees the pages before the shootdown"

    def exit1_teardown(self, k, p):
        uvm = k.uvm
        vm = p.p_p.ps_vmspace
        map = vm.vm_map
        yield from mp_release_all(k.kernel_lock, p)
        yield from vm_map_lock(uvm, p, map)
        dead = list(map.entries.values())
        for e in dead:
            yield from uvm_unmap_kill_entry(uvm, p, map, e, flush=False)
        map.entries.clear()
        yield from vm_map_unlock(map)
        yield from uvm_unmap_detach(uvm, p, dead)
        yield from pmap_tlb_flush_all(uvm, p, vm.pmap)
        yield from KERNEL_LOCK(k)
