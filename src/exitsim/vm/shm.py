"""SysV shared memory as the vm layer sees it (sysv_shm.c 1.81; openbsd-exit-path.md
10.3).

The C lives in sys/kern, but ``uvmspace_purge``, ``uvmspace_exec`` and
``uvmspace_fork`` call into it, and ``vm/`` must not import ``kern/``, so it is modelled
here. A segment is an anonymous object that outlives any one process: ``shm_nattch``
counts attachments; the segment's own reference goes when it is marked removed
(``IPC_RMID``) and nobody is attached. Each attachment is a shared, object-backed map
entry holding its own reference to the object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from exitsim.engine.thread import KPath
from exitsim.vm.map import MAP_INHERIT_SHARE, PROT_RW, uvm_map, uvm_unmap
from exitsim.vm.object import UvmObject, pgo_detach, pgo_reference, uao_create

if TYPE_CHECKING:
    from exitsim.engine.thread import Thread
    from exitsim.vm.uvm import Freed, Uvm
    from exitsim.vm.vmspace import Vmspace


@dataclass(slots=True, eq=False)
class ShmSegment:
    """``struct shmid_ds`` with its anonymous object. ``freed`` is ``deallocated``
    with who did it, for ``Uvm.check_live``."""

    shmid: int
    npages: int
    aobj: UvmObject
    shm_nattch: int = 0
    removed: bool = False
    deallocated: bool = False
    freed: bool = False
    freed_by: Freed | None = None

    def __repr__(self) -> str:
        return f"<shm segment {self.shmid} nattch={self.shm_nattch}>"


@dataclass(slots=True)
class ShmMap:
    """``struct shmmap_head``: the attachments of one vmspace, (vpn, shmid) each."""

    state: list[tuple[int, int]] = field(default_factory=list)


def shmget(uvm: Uvm, npages: int) -> ShmSegment:
    shmid = uvm.next_shmid
    uvm.next_shmid += 1
    seg = ShmSegment(shmid, npages, uao_create(uvm, f"shm{shmid}", npages))
    uvm.shm_segments[shmid] = seg
    return seg


def shmat(uvm: Uvm, p: Thread, vm: Vmspace, seg: ShmSegment, vpn: int) -> KPath:
    """Attach ``seg`` at ``vpn``: a shared, inherit-share entry on its object."""
    uvm.check_live(seg, "shmat", p)
    if vm.vm_shm is None:
        vm.vm_shm = ShmMap()
    seg.shm_nattch += 1
    pgo_reference(uvm, p, seg.aobj)
    yield from uvm_map(
        uvm,
        p,
        vm.vm_map,
        vpn,
        seg.npages,
        seg.aobj,
        0,
        PROT_RW,
        inherit=MAP_INHERIT_SHARE,
        copy_on_write=False,
    )
    vm.vm_shm.state.append((vpn, seg.shmid))


def shm_deallocate_segment(uvm: Uvm, p: Thread, seg: ShmSegment) -> KPath:
    """Drop the segment's own reference to its object."""
    uvm.check(not seg.deallocated, 5, f"shm segment {seg.shmid} deallocated twice", seg, p=p)
    seg.deallocated = True
    uvm.mark_freed(seg, p)
    del uvm.shm_segments[seg.shmid]
    uvm.shm_dead[seg.shmid] = seg
    yield from pgo_detach(uvm, p, seg.aobj)


def shm_lookup(uvm: Uvm, shmid: int, what: str, p: Thread | None) -> ShmSegment:
    """The segment ``shmid`` of an attachment, which must not be deallocated yet."""
    seg = uvm.shm_segments.get(shmid)
    if seg is None:
        seg = uvm.shm_dead[shmid]
        uvm.check_live(seg, what, p)
    return seg


def shm_delete_mapping(uvm: Uvm, p: Thread, vm: Vmspace, vpn: int, shmid: int) -> KPath:
    seg = shm_lookup(uvm, shmid, "shm_delete_mapping", p)
    seg.shm_nattch -= 1
    uvm.check(seg.shm_nattch >= 0, 5, f"shm segment {shmid}: shm_nattch went negative", seg, p=p)
    if seg.shm_nattch == 0 and seg.removed:
        yield from shm_deallocate_segment(uvm, p, seg)
    yield from uvm_unmap(uvm, p, vm.vm_map, vpn, vpn + seg.npages)


def shmdt(uvm: Uvm, p: Thread, vm: Vmspace, vpn: int) -> KPath:
    """Detach the segment attached at ``vpn``."""
    assert vm.vm_shm is not None
    for i, (v, shmid) in enumerate(vm.vm_shm.state):
        if v == vpn:
            del vm.vm_shm.state[i]
            yield from shm_delete_mapping(uvm, p, vm, v, shmid)
            return True
    return False


def shmctl_rmid(uvm: Uvm, p: Thread, seg: ShmSegment) -> KPath:
    """``IPC_RMID``: the segment goes once nobody is attached."""
    seg.removed = True
    if seg.shm_nattch == 0 and not seg.deallocated:
        yield from shm_deallocate_segment(uvm, p, seg)


def shmexit(uvm: Uvm, p: Thread, vm: Vmspace) -> KPath:
    """Detach every segment of an exiting (or exec'ing) vmspace and drop its table.
    => kernel lock held."""
    assert vm.vm_shm is not None
    for vpn, shmid in list(vm.vm_shm.state):
        yield from shm_delete_mapping(uvm, p, vm, vpn, shmid)
    vm.vm_shm = None


def shmfork(uvm: Uvm, vm1: Vmspace, vm2: Vmspace, p: Thread | None = None) -> None:
    """The child inherits the parent's attachments (the entries came with fork)."""
    if vm1.vm_shm is None:
        return
    vm2.vm_shm = ShmMap(list(vm1.vm_shm.state))
    for _, shmid in vm1.vm_shm.state:
        shm_lookup(uvm, shmid, "shmfork", p).shm_nattch += 1
