"""arm64: pmap_purge that turns TTBR0 off but skips the ASID flush.

The mutant takes "no TTBR0 on the user tables" for "no usable translation": it points
TTBR0 at the empty table and marks the pmap inactive, but leaves the entries tagged with
the process's ASIDs in the TLBs. The ASID is still current on the exiting CPU (it lives
in TTBR1), so those entries still translate; the teardown then removes PTEs without
TLBI and frees the pages. Breaks design.md invariant 1 even with no sibling thread: a
page is freed while the exiting CPU can still translate to it.
"""

from exitsim.engine.ops import SpinWait
from exitsim.engine.sync import KERNEL_LOCK, mp_release_all
from exitsim.policies.base import Policy
from exitsim.vm.vmspace import uvmspace_purge


def pmap_purge_no_flush(uvm, p, pm):
    while pm.pm_active != 1:
        yield SpinWait(pm.active_chan, "pmap_purge")
    uvm.machine.ttbr0[uvm.cpu_of(p)] = None
    pm.pm_purged = True
    pm.pm_active = 0
    uvm.engine.wakeup(pm.active_chan)


class PmapPurgeNoAsidFlush(Policy):
    name = "mutant-pmap_purge-no-asid-flush"
    summary = "pmap_purge with TTBR0 off and no ASID flush"

    def exit1_teardown(self, k, p):
        yield from mp_release_all(k.kernel_lock, p)
        yield from pmap_purge_no_flush(k.uvm, p, p.p_p.ps_vmspace.pmap)
        yield from uvmspace_purge(k.uvm, p, p.p_p.ps_vmspace)
        yield from KERNEL_LOCK(k)
