"""System calls as the workloads make them, with OpenBSD's kernel-lock rule: a call
runs under the kernel lock unless the system call table marks it ``SY_NOLOCK``
(init_sysent.c 1.271, generated from syscalls.master 1.253, 2023-12-10).

| call | kernel lock | source |
|---|---|---|
| exit, fork, vfork, __tfork, execve, wait4 | held | init_sysent.c 1.271: flags 0 |
| open, stat, lstat, fstat, fstatat, access, readlink, getdents | held | as above |
| read, write, close, mmap, munmap, mprotect, getpid | not held | init_sysent.c 1.271: SY_NOLOCK |
| shmat, shmdt | held | syscalls.master 1.176: STD without NOLOCK |
| page faults | not held | assumption: uvm_fault runs without the kernel lock on amd64 and arm64 |
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from exitsim.engine.ops import USER, Run
from exitsim.engine.sync import KERNEL_LOCK, KERNEL_UNLOCK
from exitsim.engine.thread import KPath

if TYPE_CHECKING:
    from exitsim.kern.kernel import Kernel
    from exitsim.kern.proc import Proc

#: Calls that take the kernel lock (no SY_NOLOCK in init_sysent.c 1.271).
LOCKED = frozenset(
    {
        "exit",
        "fork",
        "vfork",
        "__tfork",
        "execve",
        "wait4",
        "open",
        "stat",
        "lstat",
        "fstat",
        "fstatat",
        "access",
        "readlink",
        "getdents",
        "shmat",
        "shmdt",
    }
)
#: Calls that run without it (SY_NOLOCK).
NOLOCK = frozenset({"read", "write", "close", "mmap", "munmap", "mprotect", "getpid"})


def syscall(k: Kernel, p: Proc, name: str) -> KPath:
    """A system call whose body is generic file or I/O work: entry, the body under the
    kernel lock if the call takes it, return."""
    c = k.costs
    yield Run(c.syscall_ns)
    if name in LOCKED:
        yield from KERNEL_LOCK(k)
        yield Run(c.fs_syscall_ns)
        yield from KERNEL_UNLOCK(k)
    elif name in NOLOCK:
        yield Run(c.io_syscall_ns)
    else:
        raise ValueError(f"syscall: {name!r} is in neither table")


def user(ns: int) -> Run:
    """User-mode compute of ``ns`` nanoseconds."""
    return Run(ns, USER)
