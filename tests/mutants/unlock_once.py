"""Drops the kernel lock with one KERNEL_UNLOCK before the purge, as if exit1 always
held it once.

exit1 can be entered with the lock held twice: the thread that loses a race of two
exit(2) calls re-enters exit1 from its own single_thread_set, and amd64's trap
handler holds the lock around a fatal trapsignal. At depth 2 one release leaves the
lock held, so uvm_purge runs under it. Breaks design.md invariant 3 (uvm_purge runs
without the kernel lock). With depth 1 everywhere (a single-threaded process that
calls exit) the mutant is indistinguishable from the committed design.
"""

from exitsim.engine.sync import KERNEL_LOCK, KERNEL_UNLOCK
from exitsim.kern.exit import uvm_purge_checked
from exitsim.policies.base import Policy


class UnlockOnce(Policy):
    name = "mutant-unlock-once"
    summary = "purge after a single KERNEL_UNLOCK, assuming exit1 holds the lock once"

    def exit1_teardown(self, k, p):
        yield from KERNEL_UNLOCK(k)
        yield from uvm_purge_checked(k, p, True)
        yield from KERNEL_LOCK(k)
