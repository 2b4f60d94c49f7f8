"""Process and thread creation (kern_fork.c 1.278; openbsd-exit-path.md 10.1)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from exitsim.engine.ops import Run
from exitsim.engine.sync import KERNEL_LOCK, KERNEL_UNLOCK
from exitsim.engine.thread import KPath
from exitsim.kern import sig as kern_sig
from exitsim.kern.proc import P_SUSPSINGLE, P_THREAD, Proc, Process
from exitsim.vm.pmap import pmap_activate
from exitsim.vm.vmspace import uvmspace_fork

if TYPE_CHECKING:
    from exitsim.kern.kernel import Kernel


def fork1(k: Kernel, p: Proc, comm: str, body: Callable[[Proc], KPath]) -> KPath:
    """fork(2): a new process with a copy-on-write copy of the address space and one
    thread running ``body``. A locked system call. Every new thread activates its pmap
    (``cpu_fork`` -> ``pmap_activate``), so ``pm_active`` counts it from now on.
    Returns the child process."""
    c = k.costs
    parent = p.p_p
    assert parent is not None and parent.ps_vmspace is not None
    yield Run(c.syscall_ns)
    yield from KERNEL_LOCK(k)
    yield Run(c.fork_ns + c.proc_ns + c.uarea_ns)
    pr = k._new_process(comm, parent)
    pr.ps_vmspace = yield from uvmspace_fork(k.uvm, p, parent.ps_vmspace, f"{comm}.{pr.ps_pid}")
    child = k.new_thread(pr, comm, body)
    child.pm_counted = True
    pmap_activate(k.uvm, child, pr.ps_vmspace.pmap, on_cpu=False)
    yield from KERNEL_UNLOCK(k)
    return pr


def thread_fork(k: Kernel, p: Proc, name: str, body: Callable[[Proc], KPath]) -> KPath:
    """__tfork(2): another thread of the same process, sharing its vmspace (threads
    only copy the pointer: ``vm_refcnt`` does not change). The new thread starts at
    ``child_return``; the caller goes back to user space through ``userret``, as from
    any system call. Returns the thread."""
    c = k.costs
    pr = p.p_p
    assert pr is not None and pr.ps_vmspace is not None
    yield Run(c.syscall_ns)
    yield from KERNEL_LOCK(k)
    yield Run(c.proc_ns + c.uarea_ns)
    t = k.new_thread(pr, name, lambda t: child_return(k, t, body), P_THREAD)
    # A thread single-threading the process waits for this one too, and the new
    # thread inherits the order to stop (under ps_mtx in the C; nothing else runs
    # between these steps here).
    if pr.ps_single is not None:
        pr.ps_suspendcnt += 1
        t.p_flag |= p.p_flag & P_SUSPSINGLE
    t.pm_counted = True
    pmap_activate(k.uvm, t, pr.ps_vmspace.pmap, on_cpu=False)
    yield from KERNEL_UNLOCK(k)
    yield from kern_sig.userret(k, p)
    return t


def child_return(k: Kernel, t: Proc, body: Callable[[Proc], KPath]) -> KPath:
    """A new thread's first way to user space: through ``userret``, where it may
    learn at once that its process is exiting."""
    yield from kern_sig.userret(k, t)
    yield from body(t)


def spawn_user_process(
    k: Kernel,
    comm: str,
    body: Callable[[Proc], KPath],
    parent: Process | None = None,
    at: int | None = None,
) -> Process:
    """A process that is simply there at ``at`` (the root of a workload, as if init had
    forked it): a fresh vmspace is made by its first thread before ``body`` runs."""
    from exitsim.vm.vmspace import uvmspace_alloc

    pr = k._new_process(comm, parent or k.initprocess)

    def boot(t: Proc) -> KPath:
        vm = yield from uvmspace_alloc(k.uvm, t, f"{comm}.{pr.ps_pid}")
        pr.ps_vmspace = vm
        t.p_vmspace = vm
        t.pm_counted = True
        pmap_activate(k.uvm, t, vm.pmap)
        yield from body(t)

    k.new_thread(pr, comm, boot, at=at)
    return pr
