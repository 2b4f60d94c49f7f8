"""The reaper designs: OpenBSD before the May 2025 change, where exit1 leaves the
address space alone and the single reaper thread runs ``uvm_exit`` ->
``uvmspace_free`` -> the whole teardown -> ``pmap_destroy``, then makes the zombie and
wakes the parent.

The revision the change was made against, kern_exit.c 1.245 (2025-05-02), is not in
any copy of the tree we could read; the readings below are the revisions on either
side, each named for what it follows (docs/designs.md, "The baseline").

- ``reaper``: the default, the last revisions read before the change: kern_exit.c
  1.240 and 1.242 (the reaper drops the kernel lock on entry and takes it only around
  the notification; ``deadproc`` is a LIST, newest first), uvm_map.c 1.330-1.338
  (``uvm_map_teardown`` does no kernel-lock work; ``uvmspace_free`` takes the lock
  only around ``shmexit``, as the seed diff against 1.341 still shows), and the
  exit1 time accounting of 1.224 on (``tuagg_add_process`` at step 4).
- ``reaper-locked``: kern_exit.c 1.212-1.225 with uvm_map.c up to 1.329, as they
  stood until July 2024: the reaper holds the kernel lock from ``uvm_uarea_free`` to
  the end of the notification, ``uvm_map_teardown`` lets go of it for the page work
  and takes it back around each object's detach and for ``pmap_destroy``; exit1
  folds its times at step 10 (1.212).
- ``reaper-fifo``: ``reaper`` with the ``deadproc`` TAILQ of kern_exit.c 1.252,
  oldest first (the revision that made it a TAILQ is between 1.243 and 1.252).
"""

from __future__ import annotations

from exitsim.kern.proc import TUAGG_AT_STEP10
from exitsim.policies.base import Policy


class Reaper(Policy):
    name = "reaper"
    summary = "before May 2025 (kern_exit.c 1.242, uvm_map.c 1.338): the reaper tears down"


class ReaperLocked(Reaper):
    name = "reaper-locked"
    summary = "as before July 2024 (kern_exit.c 1.212, uvm_map.c 1.329): reaper under KERNEL_LOCK"
    reaper_locked = True
    teardown_drops_kernel_lock = True
    tuagg_at = TUAGG_AT_STEP10


class ReaperFifo(Reaper):
    name = "reaper-fifo"
    summary = "as reaper, with the deadproc TAILQ of kern_exit.c 1.252 (oldest first)"
    deadproc_lifo = False
