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
  holds the kernel lock around ``uvm_exit`` (kern_exit.c 1.212) or only around the
  notification (1.252).
- ``known_violations``: design.md invariants the design breaks by construction; a timed
  run counts them, ``exitsim check`` stops on them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from exitsim.engine.thread import KPath
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
