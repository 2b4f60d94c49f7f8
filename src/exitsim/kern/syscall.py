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

A call's body, the part after entry (``syscall_ns``) that the kernel lock covers when
the call takes it, is made of the cost profile's pieces: the path lookup (``namei_ns``)
for a call that takes a path, and the call's own work (docs/model.md, "System call and
exit1 costs", has the figures and where they come from):

| call | body |
|---|---|
| open | namei_ns + open_ns |
| stat, lstat, fstatat | namei_ns + stat_ns |
| fstat | stat_ns |
| access | namei_ns + access_ns |
| readlink | namei_ns + readlink_ns |
| getdents | getdents_ns |
| read | read_ns |
| write | write_ns |
| close | close_ns |
| getpid | nothing besides entry and return |

The other calls of the tables have paths of their own (``kern/fork.py``,
``kern/exec.py``, ``kern/exit.py``, ``vm/shm.py``) or none in the model (mmap, munmap,
mprotect): ``syscall`` refuses them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from exitsim.engine.ops import USER, Run
from exitsim.engine.sync import KERNEL_LOCK, KERNEL_UNLOCK
from exitsim.engine.thread import KPath

if TYPE_CHECKING:
    from exitsim.kern.kernel import Kernel
    from exitsim.kern.proc import Proc
    from exitsim.machine.costs import Costs

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

#: The cost keys each call ``syscall`` makes adds up to its body (the table above).
BODY: dict[str, tuple[str, ...]] = {
    "open": ("namei_ns", "open_ns"),
    "stat": ("namei_ns", "stat_ns"),
    "lstat": ("namei_ns", "stat_ns"),
    "fstatat": ("namei_ns", "stat_ns"),
    "fstat": ("stat_ns",),
    "access": ("namei_ns", "access_ns"),
    "readlink": ("namei_ns", "readlink_ns"),
    "getdents": ("getdents_ns",),
    "read": ("read_ns",),
    "write": ("write_ns",),
    "close": ("close_ns",),
    "getpid": (),
}


def body_ns(c: Costs, name: str) -> int:
    """The body of call ``name`` under cost profile ``c``, in nanoseconds."""
    return sum(getattr(c, key) for key in BODY[name])


def syscall(k: Kernel, p: Proc, name: str) -> KPath:
    """A system call whose body is generic file or I/O work: entry, the body under the
    kernel lock if the call takes it, return."""
    if name not in BODY:
        if name in LOCKED or name in NOLOCK:
            raise ValueError(f"syscall: {name!r} has a path of its own, not a generic body")
        raise ValueError(f"syscall: {name!r} is in neither table")
    c = k.costs
    yield Run(c.syscall_ns)
    ns = body_ns(c, name)
    if name in LOCKED:
        yield from KERNEL_LOCK(k)
        yield Run(ns)
        yield from KERNEL_UNLOCK(k)
    elif ns:
        yield Run(ns)


def user(ns: int) -> Run:
    """User-mode compute of ``ns`` nanoseconds."""
    return Run(ns, USER)
