"""uvm_purge before the main thread waits for its siblings (exit1 step 3 instead of 6).

Step 3 runs in whichever thread made the process exit, after single_thread_set has
waited for every other thread to leave user space, so no sibling runs user code during
the purge any more. What breaks is the wait itself: on arm64, pmap_purge waits for the
other threads to leave the pmap, and when a sibling thread is the one purging, the main
thread it waits for is itself waiting in thrdeath for that sibling. Breaks design.md
invariant 7: deadlock.
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
