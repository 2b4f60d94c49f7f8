"""execve(2) as far as the address space goes (kern_exec.c, uvmspace_exec)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from exitsim.engine.ops import Run
from exitsim.engine.sync import KERNEL_LOCK, KERNEL_UNLOCK
from exitsim.engine.thread import KPath
from exitsim.vm.map import PROT_READ, PROT_RW, UVM_ET_STACK, uvm_map
from exitsim.vm.object import uvn_attach
from exitsim.vm.vmspace import uvmspace_exec

if TYPE_CHECKING:
    from exitsim.kern.kernel import Kernel
    from exitsim.kern.proc import Proc


@dataclass(frozen=True, slots=True)
class Segment:
    """One mapping a program image makes: ``file`` None is anonymous memory."""

    name: str
    vpn: int
    npages: int
    file: str | None = None
    writable: bool = True


@dataclass(frozen=True, slots=True)
class Image:
    """A program as exec maps it: its segments, in address order."""

    name: str
    segments: tuple[Segment, ...]


def sys_execve(k: Kernel, p: Proc, image: Image) -> KPath:
    """Replace the address space with ``image``'s mappings. A locked system call."""
    pr = p.p_p
    assert pr is not None and pr.ps_vmspace is not None
    yield Run(k.costs.syscall_ns)
    yield from KERNEL_LOCK(k)
    yield Run(k.costs.exec_ns)
    vm = yield from uvmspace_exec(k.uvm, p, pr.ps_vmspace)
    pr.ps_vmspace = vm
    p.p_vmspace = vm
    pr.comm = image.name
    for seg in image.segments:
        if seg.file is not None:
            obj = uvn_attach(k.uvm, seg.file, seg.npages)
            yield from uvm_map(
                k.uvm,
                p,
                vm.vm_map,
                seg.vpn,
                seg.npages,
                obj,
                0,
                PROT_RW if seg.writable else PROT_READ,
                copy_on_write=seg.writable,
            )
        else:
            yield from uvm_map(
                k.uvm,
                p,
                vm.vm_map,
                seg.vpn,
                seg.npages,
                etype=UVM_ET_STACK if seg.name == "stack" else 0,
            )
    yield from KERNEL_UNLOCK(k)
