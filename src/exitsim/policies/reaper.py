"""``reaper``: OpenBSD before June 2025. exit1 leaves the address space alone; the
single reaper thread runs ``uvm_exit`` -> ``uvmspace_free`` -> ``uvmspace_purge`` (the
whole teardown) -> ``pmap_destroy``, then makes the zombie and wakes the parent.

Whether the reaper held the kernel lock around ``uvm_exit`` just before the change
(kern_exit.c 1.245) is not in the tree we could read: 1.212 (2023-08-29) takes
``KERNEL_LOCK()`` before ``uvm_uarea_free`` and holds it through ``uvm_exit`` and the
notification; 1.252 (2025-08-10) runs ``uvm_exit`` unlocked. The default follows the
last revision read before the change, 1.212: locked. ``reaper-unlocked`` is the other
reading.
"""

from __future__ import annotations

from exitsim.policies.base import Policy


class Reaper(Policy):
    name = "reaper"
    summary = "before June 2025: the reaper thread tears every address space down"
    reaper_locked = True


class ReaperUnlocked(Reaper):
    name = "reaper-unlocked"
    summary = "as reaper, with uvm_exit run without the kernel lock (kern_exit.c 1.252 style)"
    reaper_locked = False
