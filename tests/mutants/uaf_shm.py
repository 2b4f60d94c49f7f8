"""amd64: IPC_RMID that deallocates a segment while processes are still attached.

At exit the process marks each attached segment removed and deallocates it at once,
without looking at ``shm_nattch``. Breaks design.md invariant 5 at the use: detaching
the process's own attachment (``shm_delete_mapping``) finds the segment freed.
"""

from exitsim.engine.sync import KERNEL_LOCK, mp_release_all
from exitsim.kern.exit import uvm_purge_checked
from exitsim.policies.base import Policy
from exitsim.vm.shm import shm_deallocate_segment


class ShmFreedAttached(Policy):
    name = "mutant-uaf-shm"
    summary = "shm segments deallocated at exit while still attached"

    def exit1_teardown(self, k, p):
        uvm = k.uvm
        vm = p.p_p.ps_vmspace
        yield from mp_release_all(k.kernel_lock, p)
        for _, shmid in list(vm.vm_shm.state if vm.vm_shm is not None else ()):
            seg = uvm.shm_segments.get(shmid)
            if seg is not None:
                seg.removed = True
                yield from shm_deallocate_segment(uvm, p, seg)
        yield from uvm_purge_checked(k, p, False)
        yield from KERNEL_LOCK(k)
