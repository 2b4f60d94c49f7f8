"""A teardown design is a small class of hooks over ``kern/`` (as desmod components
are): each hook does what OpenBSD did by default, and a design overrides only what it
changes, so a design reads as a diff.

Hooks and where ``kern/`` calls them:

- ``exit1_begin(k, p)``: exit1 step 3, once the process is marked exiting, before the
  thread leaves ``ps_threads``. Default: nothing. (No design uses it; a mutant that
  purges too early does.)
- ``exit1_teardown(k, p)``: exit1 step 6, in the exiting process's main thread, with
  the kernel lock held (at any depth), after every sibling thread has counted itself
  out. Default: nothing (the address space goes in the reaper).
- ``reaper_uvm_exit(k, p, pr)``: in the reaper, the process lets go of its vmspace.
  Default: ``uvm_exit``.
- ``exit2_without_reaper(k, p)`` and ``zap_leftovers(k, q, pr)``: for designs with no
  reaper thread, where a dead thread goes and what ``process_zap`` still frees.
- ``uses_reaper``, ``reaper_locked``: whether there is a reaper thread, and whether it
  holds the kernel lock from taking a thread off ``deadproc`` to the end of the
  notification (kern_exit.c 1.212-1.225) or only around the notification (1.227 on).
- ``deadproc_lifo``: the reaper takes the thread that died last (a LIST with
  ``LIST_INSERT_HEAD``/``LIST_FIRST``, kern_exit.c up to at least 1.242), or, when
  False, the one that died first (the TAILQ of 1.252).
- ``teardown_drops_kernel_lock``: ``uvm_map_teardown`` as uvm_map.c up to 1.329 has
  it (entered locked, page work unlocked, the lock back for ``pmap_destroy``); from
  1.330 it does no kernel-lock work.
- ``tuagg_at``: where exit1 folds a thread's times into its process before calcru
  makes the ps_ru that wait4 returns: ``TUAGG_AT_STEP4`` (kern_exit.c 1.252, the
  default) or ``TUAGG_AT_STEP10`` (1.212); see ``kern/proc.py``.
- ``known_violations``: design.md invariants the design breaks by construction; a timed
  run counts them, ``exitsim check`` stops on them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from exitsim.engine.thread import KPath
from exitsim.kern.proc import TUAGG_AT_STEP4
from exitsim.vm.vmspace import uvm_exit

if TYPE_CHECKING:
    from exitsim.kern.kernel import Kernel
    from exitsim.kern.proc import Proc, Process


class Policy:
    """The defaults: OpenBSD's exit path with the reaper doing all the VM work."""

    name: ClassVar[str] = "base"
    summary: ClassVar[str] = ""
    uses_reaper: ClassVar[bool] = True
    reaper_locked: ClassVar[bool] = False
    deadproc_lifo: ClassVar[bool] = True
    teardown_drops_kernel_lock: ClassVar[bool] = False
    tuagg_at: ClassVar[str] = TUAGG_AT_STEP4
    known_violations: ClassVar[frozenset[int]] = frozenset()

    def exit1_begin(self, k: Kernel, p: Proc) -> KPath:
        return
        yield

    def exit1_teardown(self, k: Kernel, p: Proc) -> KPath:
        return
        yield

    def reaper_uvm_exit(self, k: Kernel, p: Proc, pr: Process) -> KPath:
        yield from uvm_exit(k.uvm, p, pr)

    def exit2_without_reaper(self, k: Kernel, p: Proc) -> None:
        raise NotImplementedError(
            f"{self.name}: a design without a reaper must say where dead threads go"
        )

    def zap_leftovers(self, k: Kernel, q: Proc, pr: Process) -> KPath:
        return
        yield
