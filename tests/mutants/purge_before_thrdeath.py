"""uvm_purge before the main thread waits for its siblings (exit1 step 3 instead of 6).

Breaks design.md invariant 3: the purge runs while a sibling thread can still run user
code.
"""

from exitsim.engine.sync import KERNEL_LOCK, mp_release_all
from exitsim.kern.exit import uvm_purge_checked
from exitsim.policies.base import Policy


class PurgeBeforeThrdeath(Policy):
    name = "mutant-purge-before-thrdeath"
    summary = "purge+pmap_purge with the purge moved before the thrdeath wait"

    def exit1_begin(self, k, p):
        yield from mp_release_all(k.kernel_lock, p)
        yield from uvm_purge_checked(k, p, True)
        yield from KERNEL_LOCK(k)
