"""amd64: the exiting process frees its vmspace as soon as it is exiting.

The first thread to exit drops the process's vmspace reference at once (the last one,
so the map is torn down, the pmap destroyed and the vmspace freed) while a sibling may
still be in user space. Breaks design.md invariant 5 at the use: the sibling's next
access (``uvm_touch``/``uvm_fault``), or the reaper's ``uvmspace_free``, finds the
vmspace freed.
"""

from exitsim.policies.base import Policy
from exitsim.vm.vmspace import uvmspace_free


class VmspaceFreedEarly(Policy):
    name = "mutant-uaf-vmspace"
    summary = "the vmspace freed as soon as the process is exiting"

    def exit1_begin(self, k, p):
        yield from uvmspace_free(k.uvm, p, p.p_p.ps_vmspace)
