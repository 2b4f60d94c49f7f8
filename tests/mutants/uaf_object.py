"""amd64: an object reference dropped twice per entry.

The exiting process drops the object reference of every object-backed entry itself,
and the purge drops it again. With two processes sharing a SysV segment the object's
last reference goes early and the object is freed while the segment (and the other
process's mapping) still hold it. Breaks design.md invariant 5 at the use: a later
``pgo_detach`` or fault uses the freed object.
"""

from exitsim.engine.sync import KERNEL_LOCK, mp_release_all
from exitsim.kern.exit import uvm_purge_checked
from exitsim.policies.base import Policy
from exitsim.vm.object import pgo_detach


class ObjectDetachedTwice(Policy):
    name = "mutant-uaf-object"
    summary = "each entry's object reference dropped in exit1 and again in the purge"

    def exit1_teardown(self, k, p):
        uvm = k.uvm
        vm = p.p_p.ps_vmspace
        yield from mp_release_all(k.kernel_lock, p)
        for e in list(vm.vm_map.entries.values()):
            if e.object is not None:
                yield from pgo_detach(uvm, p, e.object)
        yield from uvm_purge_checked(k, p, False)
        yield from KERNEL_LOCK(k)
