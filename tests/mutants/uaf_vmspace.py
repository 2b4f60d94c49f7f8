"""amd64: the exiting process frees its vmspace as soon as it is exiting.

The thread that makes the process exit drops the process's vmspace reference at exit1
step 3 (the last one, so the map is torn down, the pmap destroyed and the vmspace
freed). Breaks design.md invariant 5 at the use: the next reference drop
(``uvmspace_free``, from the purge or the reaper) finds the vmspace freed. Since
single_thread_set waits for the siblings to leave user space before step 3, none of
them touches it first.
"""

from exitsim.policies.base import Policy
from exitsim.vm.vmspace import uvmspace_free


class VmspaceFreedEarly(Policy):
    name = "mutant-uaf-vmspace"
    summary = "the vmspace freed as soon as the process is exiting"

    def exit1_begin(self, k, p):
        yield from uvmspace_free(k.uvm, p, p.p_p.ps_vmspace)
