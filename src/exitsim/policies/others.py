"""How other kernels tear an exiting address space down, on the same machine model
(cost-anchors.md section 3).

- ``linux``: ``exit_mmap`` in the exiting task: unmap every VMA with the TLB
  invalidations gathered (``tlb_gather_mmu_fullmm``), one full flush of the address
  space, and only then free the pages. No global lock: as ``purge``, without the
  kernel lock.
- ``freebsd``: ``vmspace_exit`` in the last exiting thread: ``pmap_remove_pages``
  clears every PTE of the current pmap by walking its mappings instead of the address
  range, one flush, then ``vmspace_dofree`` removes the (now unmapped) entries and
  frees the pages.

Both run inside OpenBSD's exit1 here (the main thread after its siblings), so only the
teardown differs; the reaper keeps its u-area, struct proc and notification work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from exitsim.engine.sync import KERNEL_LOCK, KERNEL_UNLOCK, mp_release_all
from exitsim.engine.thread import KPath
from exitsim.policies.base import Policy
from exitsim.vm.map import uvm_map_teardown
from exitsim.vm.pmap import pmap_remove_pages, pmap_tlb_flush_all
from exitsim.vm.shm import shmexit

if TYPE_CHECKING:
    from exitsim.kern.kernel import Kernel
    from exitsim.kern.proc import Proc


def _shm_first(k: Kernel, p: Proc) -> KPath:
    vm = p.p_p.ps_vmspace  # type: ignore[union-attr]
    if vm is not None and vm.vm_shm is not None:
        yield from KERNEL_LOCK(k)
        yield from shmexit(k.uvm, p, vm)
        yield from KERNEL_UNLOCK(k)


class Linux(Policy):
    name = "linux"
    summary = "exit_mmap in the exiting task: gathered unmap, one full flush, then free"

    def exit1_teardown(self, k: Kernel, p: Proc) -> KPath:
        vm = p.p_p.ps_vmspace  # type: ignore[union-attr]
        yield from mp_release_all(k.kernel_lock, p)
        yield from _shm_first(k, p)
        yield from uvm_map_teardown(k.uvm, p, vm.vm_map, gather=True)
        yield from KERNEL_LOCK(k)


class FreeBSD(Policy):
    name = "freebsd"
    summary = "vmspace_exit: pmap_remove_pages fast path, one flush, then vm_map_remove"

    def exit1_teardown(self, k: Kernel, p: Proc) -> KPath:
        vm = p.p_p.ps_vmspace  # type: ignore[union-attr]
        yield from mp_release_all(k.kernel_lock, p)
        yield from pmap_remove_pages(k.uvm, p, vm.pmap)
        yield from pmap_tlb_flush_all(k.uvm, p, vm.pmap)
        yield from _shm_first(k, p)
        yield from uvm_map_teardown(k.uvm, p, vm.vm_map)
        yield from KERNEL_LOCK(k)
