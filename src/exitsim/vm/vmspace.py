"""``struct vmspace`` and its life: alloc, fork, exec, addref, purge, free
(uvm_map.c 1.346, uvm_glue.c 1.94; openbsd-exit-path.md 4.1, 4.2, 4.6, 10).

The teardown path is the committed one: ``uvm_purge`` (the exiting process's last
thread, no kernel lock) runs ``pmap_purge`` where the arch has it and the design calls
it, then ``uvmspace_purge``: ``shmexit`` under the kernel lock, then
``uvm_map_teardown``. ``uvmspace_free`` drops a reference; the last one purges again,
which for a purged map must do no page work (design.md invariant 4, checked here),
destroys the pmap and frees the vmspace. ``uvm_exit`` is the reaper's call.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

from exitsim.engine.ops import Acquire, Release, Run
from exitsim.engine.thread import KPath
from exitsim.vm.amap import AMAP_SHARED, amap_alloc, amap_copy_anons, amap_ref, amap_unref
from exitsim.vm.map import (
    MAP_INHERIT_COPY,
    MAP_INHERIT_NONE,
    MAP_INHERIT_SHARE,
    MAP_INHERIT_ZERO,
    PROT_WRITE,
    UVM_ET_COPYONWRITE,
    UVM_ET_NEEDSCOPY,
    UVM_ET_OBJ,
    VmMap,
    VmMapEntry,
    uvm_map_teardown,
    uvm_unmap_detach,
    uvm_unmap_remove,
    vm_map_lock,
    vm_map_unlock,
)
from exitsim.vm.object import pgo_reference
from exitsim.vm.pmap import (
    Pmap,
    pmap_activate,
    pmap_create,
    pmap_deactivate,
    pmap_destroy,
    pmap_protect_ro,
    pmap_purge,
)

if TYPE_CHECKING:
    from exitsim.engine.thread import Thread
    from exitsim.vm.shm import ShmMap
    from exitsim.vm.uvm import Freed, Uvm

#: The user address range of a new vmspace, in pages (a 47-bit space of 4 KiB pages).
VM_MIN_ADDRESS = 0x1
VM_MAXUSER_ADDRESS = 1 << 35


class Vmspace:
    """``struct vmspace``: the map (with its pmap), the reference count and the SysV
    shm attachments. ``vm_refcnt`` counts processes and transient holders, never
    threads (threads only copy the pointer)."""

    __slots__ = (
        "freed",
        "freed_by",
        "name",
        "purged",
        "vm_dused",
        "vm_map",
        "vm_refcnt",
        "vm_shm",
    )

    def __init__(self, vm_map: VmMap, name: str) -> None:
        self.vm_map = vm_map
        self.vm_refcnt = 1
        self.vm_shm: ShmMap | None = None
        self.vm_dused = 0
        self.name = name
        self.freed = False
        self.freed_by: Freed | None = None
        #: uvm_purge ran: the purge in uvmspace_free must then do no page work.
        self.purged = False

    def __repr__(self) -> str:
        return f"<vmspace {self.name} ref={self.vm_refcnt}>"

    @property
    def pmap(self) -> Pmap:
        pm = self.vm_map.pmap
        assert pm is not None
        return pm

    def resident(self) -> int:
        """``vm_resident_count``: the pmap's resident count, in pages."""
        pm = self.vm_map.pmap
        return pm.resident_count if pm is not None else 0


class HasVmspace(Protocol):
    ps_vmspace: Vmspace | None


def uvmspace_alloc(
    uvm: Uvm, p: Thread, name: str, lo: int = VM_MIN_ADDRESS, hi: int = VM_MAXUSER_ADDRESS
) -> KPath:
    pm = yield from pmap_create(uvm, p, name)
    vm = Vmspace(VmMap(pm, lo, hi, name), name)
    uvm.locks[vm.vm_map.lock.name] = vm.vm_map.lock
    yield Run(uvm.costs.vmspace_ns)
    return vm


def uvmspace_addref(uvm: Uvm, vm: Vmspace, p: Thread | None = None) -> None:
    """A transient holder (ptrace memory I/O, sysctl) takes a reference."""
    uvm.check_live(vm, "uvmspace_addref", p)
    uvm.check(vm.vm_refcnt > 0, 5, f"uvmspace_addref: {vm} is dead", vm, p=p)
    vm.vm_refcnt += 1


# -- fork (10.2) ------------------------------------------------------------------------


def amap_copy(uvm: Uvm, p: Thread, map: VmMap, e: VmMapEntry) -> KPath:
    """Clear the entry's needs-copy: give it a fresh amap if it has none, keep the amap
    if nobody else references it, else a private copy holding the same anons (each
    with one more reference). => map write-locked."""
    if e.amap is None:
        e.amap = amap_alloc(uvm, e.npages)
        e.aref_pageoff = 0
    elif e.amap.am_ref > 1:
        old, off = e.amap, e.aref_pageoff
        yield Run(uvm.costs.amap_slot_ns * e.npages)
        e.amap = amap_copy_anons(uvm, p, old, off, e.npages)
        e.aref_pageoff = 0
        yield from amap_unref(uvm, p, old, off, e.npages)
    e.etype &= ~UVM_ET_NEEDSCOPY


def _clone(uvm: Uvm, p: Thread, e: VmMapEntry, share_amap: bool) -> VmMapEntry:
    """``uvm_mapent_clone``: the same object and amap, each with one more reference."""
    c = replace(e, wired_count=0, killed=False)
    if c.amap is not None:
        amap_ref(uvm, p, c.amap, c.aref_pageoff, c.npages)
        if share_amap:
            c.amap.am_flags |= AMAP_SHARED
    if c.object is not None:
        pgo_reference(uvm, p, c.object)
    return c


def uvmspace_fork(uvm: Uvm, p: Thread, vm1: Vmspace, name: str) -> KPath:
    """The child's vmspace, entry by entry by inheritance: share, copy-on-write copy,
    zero, or none. The child faults its pages in; the parent's copied ranges become
    read-only and needs-copy."""
    from exitsim.vm.shm import shmfork

    uvm.check_live(vm1, "uvmspace_fork", p)
    old = vm1.vm_map
    yield from vm_map_lock(uvm, p, old)
    vm2 = yield from uvmspace_alloc(uvm, p, name, old.min_offset, old.max_offset)
    new = vm2.vm_map
    yield from vm_map_lock(uvm, p, new)
    for e in list(old.entries.values()):
        inh = e.inheritance
        if inh == MAP_INHERIT_NONE:
            continue
        yield Run(uvm.costs.map_entry_ns)
        if inh == MAP_INHERIT_SHARE:
            if e.etype & UVM_ET_NEEDSCOPY:
                yield from amap_copy(uvm, p, old, e)
            c = _clone(uvm, p, e, share_amap=True)
        elif inh == MAP_INHERIT_COPY:
            c = _clone(uvm, p, e, share_amap=False)
            c.etype |= UVM_ET_COPYONWRITE | UVM_ET_NEEDSCOPY
            # uvm_mapent_forkcopy: a shared (or wired) amap is copied for the child at
            # once; then, unless wired (amap_cow_now, not modelled), a parent with an
            # amap that is not needs-copy is write-protected and made needs-copy, so
            # its next write breaks copy-on-write instead of changing the child's page.
            if e.amap is not None and (e.amap.am_flags & AMAP_SHARED or e.wired_count):
                yield from amap_copy(uvm, p, new, c)
            if e.wired_count:
                pass
            elif e.amap is not None and not e.etype & UVM_ET_NEEDSCOPY:
                if e.max_protection & PROT_WRITE:
                    yield from pmap_protect_ro(uvm, p, old.pmap, e.start, e.end)  # type: ignore[arg-type]
                e.etype |= UVM_ET_COPYONWRITE | UVM_ET_NEEDSCOPY
        elif inh == MAP_INHERIT_ZERO:
            # uvm_mapent_forkzero: a clone that drops the amap and the object again,
            # so the child faults in fresh zero-filled memory.
            c = replace(
                e,
                etype=(e.etype | UVM_ET_COPYONWRITE | UVM_ET_NEEDSCOPY) & ~UVM_ET_OBJ,
                wired_count=0,
                amap=None,
                aref_pageoff=0,
                object=None,
                offset=0,
                killed=False,
            )
        else:
            raise ValueError(f"uvmspace_fork: bad inheritance {inh} in {e}")
        new.entries[c.start] = c
        new.size += c.npages
    vm2.vm_dused = vm1.vm_dused
    yield from vm_map_unlock(new)
    yield from vm_map_unlock(old)
    shmfork(uvm, vm1, vm2, p)
    return vm2


# -- exec (4.7) -------------------------------------------------------------------------


def uvmspace_exec(uvm: Uvm, p: Thread, vm: Vmspace) -> KPath:
    """Empty the address space for a new program. With one reference the vmspace is
    reused in place (everything unmapped); if it is shared, a new one is made, the
    thread switches to it, and the old one loses a reference. Returns the vmspace to
    use."""
    from exitsim.vm.shm import shmexit

    uvm.check_live(vm, "uvmspace_exec", p)
    if vm.vm_refcnt == 1:
        if vm.vm_shm is not None:
            yield Acquire(uvm.kernel_lock)
            yield from shmexit(uvm, p, vm)
            yield Release(uvm.kernel_lock)
        map = vm.vm_map
        yield from vm_map_lock(uvm, p, map)
        dead = yield from uvm_unmap_remove(uvm, p, map, map.min_offset, map.max_offset)
        yield from vm_map_unlock(map)
        yield from uvm_unmap_detach(uvm, p, dead)
        return vm
    nvm = yield from uvmspace_alloc(
        uvm, p, vm.name + "'", vm.vm_map.min_offset, vm.vm_map.max_offset
    )
    pmap_deactivate(uvm, p, vm.pmap)
    pmap_activate(uvm, p, nvm.pmap)
    yield from uvmspace_free(uvm, p, vm)
    return nvm


# -- teardown (4.1, 4.2, 4.6) ----------------------------------------------------------


def uvmspace_purge(uvm: Uvm, p: Thread, vm: Vmspace) -> KPath:
    """Drop the SysV shm attachments (under the kernel lock), then tear the map down."""
    from exitsim.vm.shm import shmexit

    if vm.vm_shm is not None:
        yield Acquire(uvm.kernel_lock)
        yield from shmexit(uvm, p, vm)
        yield Release(uvm.kernel_lock)
    yield from uvm_map_teardown(uvm, p, vm.vm_map)


def uvm_purge(uvm: Uvm, p: Thread, vm: Vmspace, with_pmap_purge: bool) -> KPath:
    """Tear down the exiting process's address space in its own last thread
    (uvm_glue.c). ``with_pmap_purge``: call the arch's ``pmap_purge`` first, as the
    committed code does on arches that have one.
    => no kernel-lock level held (design.md invariant 3); the caller is the last thread
       of its process (checked by the kernel layer, which knows the threads)."""
    uvm.check_live(vm, "uvm_purge", p)
    uvm.check(
        not uvm.kernel_lock.holds(p), 3, f"uvm_purge: {p.name} holds the kernel lock", vm, p=p
    )
    if with_pmap_purge and uvm.arch.has_pmap_purge:
        yield from pmap_purge(uvm, p, vm.pmap)
    yield from uvmspace_purge(uvm, p, vm)
    uvm.check(not vm.vm_map.entries, 4, f"uvm_purge: {vm} still has entries", vm, p=p)
    uvm.check(vm.vm_shm is None, 4, f"uvm_purge: {vm} still has shm attached", vm, p=p)
    vm.purged = True


def uvmspace_free(uvm: Uvm, p: Thread, vm: Vmspace) -> KPath:
    """Drop a reference. The last one purges (a no-op if the map was purged already:
    checked), destroys the pmap and frees the vmspace."""
    uvm.check_live(vm, "uvmspace_free: reference drop", p)
    vm.vm_refcnt -= 1
    uvm.check(vm.vm_refcnt >= 0, 5, f"{vm}: vm_refcnt went negative", vm, p=p)
    if vm.vm_refcnt > 0:
        return
    if vm.purged:
        # The second purge may only lock and unlock the map: no entry to kill, no
        # segment to detach, hence no page work. (Checked on the map rather than on
        # global counters, which other CPUs move meanwhile.)
        uvm.check(
            not vm.vm_map.entries and vm.vm_shm is None,
            4,
            f"uvmspace_free: the second purge of {vm} would do page work "
            f"({len(vm.vm_map.entries)} entries left)",
            vm,
            p=p,
        )
    yield from uvmspace_purge(uvm, p, vm)
    pm = vm.vm_map.pmap
    yield from pmap_destroy(uvm, p, pm)  # type: ignore[arg-type]
    uvm.mark_pmap_freed(pm, p)  # type: ignore[arg-type]
    vm.vm_map.pmap = None
    uvm.check(not vm.freed, 5, f"{vm} freed twice", vm, p=p)
    uvm.mark_freed(vm, p)
    uvm.counters.vmspaces_freed += 1
    yield Run(uvm.costs.vmspace_ns)


def uvm_exit(uvm: Uvm, p: Thread, pr: HasVmspace) -> KPath:
    """The reaper's call: the process lets go of its vmspace."""
    vm = pr.ps_vmspace
    assert vm is not None
    pr.ps_vmspace = None
    yield from uvmspace_free(uvm, p, vm)
