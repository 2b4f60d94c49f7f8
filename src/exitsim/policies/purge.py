"""The ``uvm_purge`` designs: the exiting process tears its own address space down in
exit1 step 6, charged to it, and the reaper's ``uvm_exit`` finds an empty map.

- ``purge``: the seed's diff (12 May 2025): drop every kernel-lock level
  (``__mp_release_all``), ``uvm_purge`` (no ``pmap_purge``), take one level back.
- ``purge+pmap_purge``: what OpenBSD committed: the same, and ``uvm_purge`` first calls
  the arch's ``pmap_purge`` (arm64), so no page removal needs a TLB flush.
- ``purge-locked``: the same teardown with the kernel lock still held, to show why the
  seed releases every level.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from exitsim.engine.sync import KERNEL_LOCK, mp_release_all
from exitsim.engine.thread import KPath
from exitsim.kern.exit import uvm_purge_checked
from exitsim.policies.base import Policy
from exitsim.vm.vmspace import uvmspace_purge

if TYPE_CHECKING:
    from exitsim.kern.kernel import Kernel
    from exitsim.kern.proc import Proc


class Purge(Policy):
    name = "purge"
    summary = "the seed's diff: uvm_purge in exit1 without the kernel lock, no pmap_purge"
    with_pmap_purge = False

    def exit1_teardown(self, k: Kernel, p: Proc) -> KPath:
        # exit1 may hold the kernel lock recursively; it never returns, so dropping
        # every level here and taking exactly one back is safe.
        yield from mp_release_all(k.kernel_lock, p)
        yield from uvm_purge_checked(k, p, self.with_pmap_purge)
        yield from KERNEL_LOCK(k)


class PurgePmapPurge(Purge):
    name = "purge+pmap_purge"
    summary = "what OpenBSD committed: purge, with arm64 pmap_purge first"
    with_pmap_purge = True


class PurgeLocked(Policy):
    name = "purge-locked"
    summary = "the purge in exit1 with the kernel lock still held"

    def exit1_teardown(self, k: Kernel, p: Proc) -> KPath:
        assert p.p_p is not None and p.p_p.ps_vmspace is not None
        yield from uvmspace_purge(k.uvm, p, p.p_p.ps_vmspace)
