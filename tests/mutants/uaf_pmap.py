"""amd64: the pmap destroyed before the map is torn down.

The exiting process drops its pmap reference (the last one) and only then purges the
map. Breaks design.md invariant 5 at the use: removing the mappings of the destroyed
pmap (``pmap_remove``) uses it after ``pmap_destroy``.
"""

from exitsim.engine.sync import KERNEL_LOCK, mp_release_all
from exitsim.kern.exit import uvm_purge_checked
from exitsim.policies.base import Policy
from exitsim.vm.pmap import pmap_destroy


class PmapDestroyedEarly(Policy):
    name = "mutant-uaf-pmap"
    summary = "pmap_destroy before the purge"

    def exit1_teardown(self, k, p):
        yield from mp_release_all(k.kernel_lock, p)
        yield from pmap_destroy(k.uvm, p, p.p_p.ps_vmspace.pmap)
        yield from uvm_purge_checked(k, p, False)
        yield from KERNEL_LOCK(k)
