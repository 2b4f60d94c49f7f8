"""The built-in workload ``shm``: groups of processes sharing SysV shared-memory
segments, exiting in different orders.

The question: where does a shared segment go away, and what does that cost there? An
exiting process only detaches (``shmexit``, under the kernel lock, before the map
teardown); the segment's pages are freed by whoever detaches last from a segment
marked removed. Under ``reaper`` every exit's ``shmexit`` runs in the reaper; under
the purge designs it runs in the exiting process's ``uvm_purge``, so the process that
happens to leave last pays for the whole segment. With ``detach = "shmdt"`` every
process detaches itself first, and the last detach is a system call of a live process.

Each group is a database-like family: a creator (``shmd``) execs, writes its heap,
makes a segment (``shmget``, ``shmat``, ``shmctl(IPC_RMID)`` at once, so the segment
goes with its last user), writes all of it, and forks ``sharers`` children that inherit
the attachment (``shmfork``) and write all of the segment too. Then they exit in the
group's order:

- ``creator-last``: the sharers exit one after another, the creator waits for each and
  exits last (the last detach is the creator's);
- ``creator-first``: the creator exits first, leaving the sharers to init, which waits
  for them; they exit one after another (the last detach is the last sharer's);
- ``random``: every member lives a time drawn from the seed; the creator does not wait
  (init takes whoever outlives it).

A group's creator is started by init at time 0, as a daemon is. Range granularity
wants a shared object's pages touched as one run, so every member writes the whole
segment.

Defaults and their sources:

| parameter | default | source |
|---|---|---|
| groups | 4 | assumption: a few independent families on one machine |
| sharers | 3 | assumption: a few backends per family |
| segment_pages | 32768 (128 MiB) | assumption: PostgreSQL's default shared_buffers, 128 MB |
| order | random | assumption: no order is typical; random mixes them across groups |
| detach | exit | assumption: the common case, processes leave their segments to exit |
| user_ms | 5 | assumption: the time between two members' exits |
| member syscalls | 1 locked + 2 unlocked | assumption: a little file work while running |
| shmd resident, startup | text 300, heap 256 pages; 1 ms | assumption: a small database daemon |
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from exitsim.engine.ops import Run
from exitsim.engine.sync import KERNEL_LOCK, KERNEL_UNLOCK
from exitsim.engine.thread import KPath
from exitsim.kern.exit import sys_exit, sys_wait4
from exitsim.kern.fork import fork1, spawn_user_process
from exitsim.vm.fault import uvm_touch
from exitsim.vm.shm import ShmSegment, shmat, shmctl_rmid, shmdt, shmget
from exitsim.workloads.program import (
    SHM_VPN,
    STACK_VPN,
    Program,
    check_count,
    check_pages,
    check_time,
    compute,
    exec_and_run,
)

if TYPE_CHECKING:
    from exitsim.kern.kernel import Kernel
    from exitsim.kern.proc import Proc

ORDERS = ("creator-last", "creator-first", "random")
DETACHES = ("exit", "shmdt")
SHMD = Program("shmd", 300, 256, 1_000_000, 10, 10)


@dataclass(frozen=True, slots=True)
class ShmParams:
    """The knobs of ``shm``; see the module's table for where each default comes
    from."""

    groups: int = 4
    sharers: int = 3
    segment_pages: int = 32768
    order: Literal["creator-last", "creator-first", "random"] = "random"
    detach: Literal["exit", "shmdt"] = "exit"
    user_ms: float = 5.0

    def __post_init__(self) -> None:
        check_count("groups", self.groups)
        check_count("sharers", self.sharers)
        check_pages("segment_pages", self.segment_pages)
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)} (got {self.order!r})")
        if self.detach not in DETACHES:
            raise ValueError(f"detach must be one of {', '.join(DETACHES)} (got {self.detach!r})")
        check_time("user_ms", self.user_ms)

    def processes(self) -> int:
        return self.groups * (1 + self.sharers)


def lifetimes(params: ShmParams, seed: int, group: int) -> list[int]:
    """User time in ns of the group's members once the segment is set up: the
    creator's first, then the sharers' in fork order. In the fixed orders the sharers
    leave ``user_ms`` apart; in creator-first the first of them leaves ``user_ms``
    after the creator (creator-last needs no gap: the creator waits for them)."""
    step = max(1, round(params.user_ms * 1e6))
    n = params.sharers
    if params.order == "creator-first":
        return [step] + [step * (i + 2) for i in range(n)]
    if params.order == "creator-last":
        return [step] + [step * (i + 1) for i in range(n)]
    rng = random.Random(f"{seed}:shm:{group}")
    return [max(1, round(step * rng.uniform(1, n + 1))) for _ in range(n + 1)]


class ShmGroup:
    """One family: its segment and its members' plans."""

    def __init__(self, k: Kernel, params: ShmParams, seed: int, group: int) -> None:
        self.k = k
        self.params = params
        self.group = group
        self.times = lifetimes(params, seed, group)
        self.seg: ShmSegment | None = None

    def creator(self, p: Proc) -> KPath:
        k = self.k
        yield from exec_and_run(k, p, SHMD)
        vm = p.p_vmspace
        assert vm is not None
        # shmget, shmat and shmctl(IPC_RMID): locked system calls.
        self.seg = shmget(k.uvm, self.params.segment_pages)
        yield Run(k.costs.syscall_ns)
        yield from KERNEL_LOCK(k)
        yield from shmat(k.uvm, p, vm, self.seg, SHM_VPN)
        yield from shmctl_rmid(k.uvm, p, self.seg)
        yield from KERNEL_UNLOCK(k)
        yield from uvm_touch(k.uvm, p, vm, SHM_VPN, self.seg.npages, write=True)
        for i in range(self.params.sharers):
            yield from fork1(k, p, "sharer", lambda c, i=i: self.sharer(c, i))
        yield from compute(k, p, self.times[0], 1, 2)
        if self.params.order == "creator-last":
            for _ in range(self.params.sharers):
                if (yield from sys_wait4(k, p)) is None:
                    raise RuntimeError("shm: wait4 found no child")
        yield from self.leave(p)

    def sharer(self, c: Proc, i: int) -> KPath:
        """A backend: returns from fork (its stack written, a copy on write), uses the
        inherited segment, computes and leaves."""
        k = self.k
        vm = c.p_vmspace
        assert vm is not None and self.seg is not None
        yield from uvm_touch(k.uvm, c, vm, STACK_VPN, SHMD.stack_pages, write=True)
        yield from uvm_touch(k.uvm, c, vm, SHM_VPN, self.seg.npages, write=True)
        yield from compute(k, c, self.times[1 + i], 1, 2)
        yield from self.leave(c)

    def leave(self, p: Proc) -> KPath:
        """shmdt(2) first if the run says so (a locked system call), then exit."""
        k = self.k
        if self.params.detach == "shmdt":
            vm = p.p_vmspace
            assert vm is not None
            yield Run(k.costs.syscall_ns)
            yield from KERNEL_LOCK(k)
            yield from shmdt(k.uvm, p, vm, SHM_VPN)
            yield from KERNEL_UNLOCK(k)
        yield from sys_exit(k, p, 0)


def start_shm(k: Kernel, params: ShmParams, seed: int) -> None:
    """Put every group's creator on the machine at time 0; init is their parent."""
    for g in range(params.groups):
        grp = ShmGroup(k, params, seed, g)
        spawn_user_process(k, "shmd", grp.creator)
