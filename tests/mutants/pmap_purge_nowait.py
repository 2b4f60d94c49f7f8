"""arm64: pmap_purge run before the sibling threads have left the pmap.

The mutant purges the pmap (TTBR0 off on this CPU, both ASIDs flushed, pm_active = 0)
as soon as the process is marked exiting (exit1 step 3), before the siblings have left
the pmap; their pmap_deactivate then returns at once (pm_active is already 0) and
leaves TTBR0 on the user tables while the teardown removes PTEs without TLBI.

By step 3 single_thread_set has already waited for every sibling to leave user space,
so none touches the region again; what is left is a table walk through a sibling's
TTBR0 before it switches away, which the model does not make (docs/checking.md lists
it as a gap). On amd64 the same mutant zeroes pm_active under the siblings, whose
pmap_deactivate then takes it below zero: design.md invariant 5.
"""

from exitsim.engine.sync import KERNEL_LOCK, mp_release_all
from exitsim.machine.arch import cpu_tlb_flush_asid_all
from exitsim.policies.base import Policy
from exitsim.vm.vmspace import uvmspace_purge


def pmap_purge_early(uvm, p, pm):
    uvm.machine.ttbr0[uvm.cpu_of(p)] = None  # TTBR0 to the empty table; the ASID stays
    yield from cpu_tlb_flush_asid_all(uvm.machine, pm.asids)
    pm.pm_purged = True
    pm.pm_active = 0


class PmapPurgeEarly(Policy):
    name = "mutant-pmap_purge-early"
    summary = "pmap_purge as soon as the process is exiting, before the siblings leave"

    def exit1_begin(self, k, p):
        yield from pmap_purge_early(k.uvm, p, p.p_p.ps_vmspace.pmap)

    def exit1_teardown(self, k, p):
        yield from mp_release_all(k.kernel_lock, p)
        yield from uvmspace_purge(k.uvm, p, p.p_p.ps_vmspace)
        yield from KERNEL_LOCK(k)
