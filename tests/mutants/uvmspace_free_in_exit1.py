"""amd64: the exiting thread frees its own vmspace in exit1, not the reaper.

After the purge the mutant lets go of the process's vmspace at once (what the reaper's
uvm_exit does), so the last reference goes and pmap_destroy runs while this CPU still
has the pmap in %cr3. Breaks design.md invariant 8: a pmap is destroyed while a CPU
has it loaded.
"""

from exitsim.engine.sync import KERNEL_LOCK, mp_release_all
from exitsim.policies.base import Policy
from exitsim.vm.vmspace import uvm_exit, uvmspace_purge


class UvmspaceFreeInExit1(Policy):
    name = "mutant-uvmspace_free-in-exit1"
    summary = "purge, then the vmspace freed by the exiting thread itself"

    def exit1_teardown(self, k, p):
        yield from mp_release_all(k.kernel_lock, p)
        yield from uvmspace_purge(k.uvm, p, p.p_p.ps_vmspace)
        yield from uvm_exit(k.uvm, p, p.p_p)
        yield from KERNEL_LOCK(k)

    def reaper_uvm_exit(self, k, p, pr):
        return
        yield
