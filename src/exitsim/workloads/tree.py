"""Replay an explicit process tree (a workload file's ``[[process]]`` list).

What is replayed is the dependency structure, not the timestamps of a capture: each
process runs its own user time, forks each child once it has run the child's
``start_ms`` of it and has waited for the child's ``after`` siblings, then runs the rest
of its time, waits for its remaining children and exits. On more or fewer CPUs the
same tree keeps who waits for whom; when things happen follows from the simulation.

Simplifications, each for a reason:
- ``vfork`` and ``posix_spawn`` are replayed as ``fork``: the child's address space is
  replaced by exec at once either way, and what is studied is the exit path.
- A process's resident set is rebuilt from its sizes: ``file_pages`` as libc (all of
  it, LIBC_PAGES, in every process) plus program text rounded up to 256 KiB runs (the
  same program's text is one shared vnode, as large as the most any process of the
  tree touches), ``anon_pages`` as data, heap and stack written after exec,
  ``shm_pages`` as one SysV segment. So a process smaller than libc is given libc.
- System calls other than fork/exec/wait/exit are spread evenly through the user time,
  locked ones among unlocked ones, as the generators do.
- Extra ``threads`` are workers that compute until the process exits and kills them
  (a server's threads): the case pmap_purge's wait for siblings is about.
- A parent waits for every child before it exits, so nothing is orphaned.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from exitsim.engine.ops import Run
from exitsim.engine.sync import KERNEL_LOCK, KERNEL_UNLOCK
from exitsim.engine.thread import KPath
from exitsim.kern.exec import sys_execve
from exitsim.kern.exit import sys_exit, sys_wait4, userret
from exitsim.kern.fork import fork1, spawn_user_process, thread_fork
from exitsim.kern.syscall import LOCKED, user
from exitsim.vm.fault import uvm_touch
from exitsim.vm.shm import ShmSegment, shmat, shmctl_rmid, shmget
from exitsim.workloads.program import (
    DATA_PAGES,
    HEAP_VPN,
    LIBC_PAGES,
    SHM_VPN,
    STACK_PAGES,
    TEXT_CHUNK,
    Program,
    compute,
    fault_in,
)
from exitsim.workloads.spec import ProcessSpec, check_tree

if TYPE_CHECKING:
    from exitsim.kern.kernel import Kernel
    from exitsim.kern.proc import Proc

#: A worker thread's user-time slice between returns to user space (assumption: a
#: server thread makes a system call or takes an interrupt about once a millisecond).
WORKER_SLICE_NS = 1_000_000


def ns(ms: float) -> int:
    return round(ms * 1_000_000)


def text_resident(ps: ProcessSpec) -> int:
    """The text pages ``ps`` touches: its file pages less libc's (every process maps
    and touches all of libc), rounded up to whole TEXT_CHUNK runs."""
    text = max(1, ps.file_pages - LIBC_PAGES)
    return -(-text // TEXT_CHUNK) * TEXT_CHUNK


def program_of(ps: ProcessSpec, text_size: int) -> Program:
    """The image ``ps`` execs: one text object of ``text_size`` pages per program (the
    largest any process of the tree has resident), a heap sized to its anon pages."""
    return Program(
        ps.program.rsplit("/", 1)[-1] if ps.program else ps.name,
        text_pages=text_size,
        heap_pages=max(1, ps.anon_pages - DATA_PAGES - STACK_PAGES),
        user_ns=0,
        locked_calls=0,
        unlocked_calls=0,
        stack_pages=STACK_PAGES,
    )


class TreeReplay:
    """The state one replay shares across its processes."""

    def __init__(self, k: Kernel, procs: list[ProcessSpec]) -> None:
        self.k = k
        self.children: dict[int, list[ProcessSpec]] = {}
        self.roots: list[ProcessSpec] = []
        self.text_size: dict[str, int] = {}
        for ps in procs:
            if ps.program is not None:
                text = text_resident(ps)
                self.text_size[ps.program] = max(self.text_size.get(ps.program, 0), text)
            if ps.parent is None:
                self.roots.append(ps)
            else:
                self.children.setdefault(ps.parent, []).append(ps)
        self.shm: dict[str, ShmSegment] = {}

    def start(self) -> None:
        for ps in self.roots:
            spawn_user_process(self.k, ps.name, self._body(ps, 0), at=ns(ps.start_ms))

    def _body(self, ps: ProcessSpec, heap: int) -> Callable[[Proc], KPath]:
        return lambda p: self.run_process(p, ps, heap)

    def run_process(self, p: Proc, ps: ProcessSpec, heap: int) -> KPath:
        """One process from birth (fork or spawn) to exit; ``heap`` is the size of the
        heap it inherited (a root, which always execs, inherits none)."""
        k = self.k
        if ps.program is not None:
            prog = program_of(ps, self.text_size[ps.program])
            yield from sys_execve(k, p, prog.image())
            heap = prog.heap_pages
            yield from fault_in(k, p, prog, text_resident(ps))
        elif ps.anon_pages:
            # No exec: with anon pages of its own, the child writes the heap it
            # inherited, all of it (copy on write; range granularity keeps a heap's
            # pages one run, so it is all or nothing).
            yield from uvm_touch(k.uvm, p, p.p_vmspace, HEAP_VPN, heap, write=True)
        if ps.shm_pages:
            yield from self.attach_shm(p, ps)
        for i in range(1, ps.threads):
            yield from thread_fork(k, p, f"{ps.name}.{i}", self.worker)
        yield from self.run_plan(p, ps, heap)

    def attach_shm(self, p: Proc, ps: ProcessSpec) -> KPath:
        """shmget + shmat (+ IPC_RMID at once, so the segment goes with its last
        user); a segment already inherited from the parent is used as it is. The
        process writes the whole segment it is attached to: range granularity keeps a
        segment's pages one run, so it is all or nothing (``shm_pages`` sizes a new
        segment)."""
        k = self.k
        vm = p.p_vmspace
        assert vm is not None
        attached = [i for v, i in (vm.vm_shm.state if vm.vm_shm else ()) if v == SHM_VPN]
        if attached:
            seg = k.uvm.shm_segments[attached[0]]
        else:
            seg = self.shm.get(ps.shm_key) if ps.shm_key else None
            fresh = seg is None or seg.deallocated  # removed with nobody attached: gone
            if fresh:
                seg = shmget(k.uvm, ps.shm_pages)
                if ps.shm_key:
                    self.shm[ps.shm_key] = seg
            assert seg is not None
            yield Run(k.costs.syscall_ns)
            yield from KERNEL_LOCK(k)
            yield from shmat(k.uvm, p, vm, seg, SHM_VPN)
            if fresh:
                yield from shmctl_rmid(k.uvm, p, seg)
            yield from KERNEL_UNLOCK(k)
        yield from uvm_touch(k.uvm, p, vm, SHM_VPN, seg.npages, write=True)

    def worker(self, t: Proc) -> KPath:
        """An extra thread: computes until its process exits and kills it."""
        while True:
            yield user(WORKER_SLICE_NS)
            yield from userret(self.k, t)

    def run_plan(self, p: Proc, ps: ProcessSpec, heap: int) -> KPath:
        """User time cut at the fork points; waits where the tree says; exit."""
        k = self.k
        own = ns(ps.user_ms)
        locked = sum(n for name, n in ps.syscalls.items() if name in LOCKED)
        unlocked = sum(ps.syscalls.values()) - locked
        spent = 0
        calls_done = [0, 0]
        reaped: set[int] = set()
        spec_of: dict[int, int] = {}  # child ps_pid -> spec id

        def run_until(t: int) -> KPath:
            nonlocal spent
            if t <= spent:
                return
            # Calls in proportion to the share of user time this stretch is.
            want = [locked * t // max(own, 1), unlocked * t // max(own, 1)]
            lk, ul = want[0] - calls_done[0], want[1] - calls_done[1]
            calls_done[0], calls_done[1] = want
            yield from compute(k, p, t - spent, lk, ul)
            spent = t

        def wait_one() -> KPath:
            child = yield from sys_wait4(k, p)
            if child is None:
                raise RuntimeError(f"{ps.name}: wait4 found no child")
            reaped.add(spec_of[child.ps_pid])

        for c in self.children.get(ps.id, ()):
            yield from run_until(min(ns(c.start_ms), own))
            for a in c.after:
                while a not in reaped:
                    yield from wait_one()
            child = yield from fork1(k, p, c.name, self._body(c, heap))
            spec_of[child.ps_pid] = c.id
        yield from run_until(own)
        if calls_done != [locked, unlocked]:
            lk, ul = locked - calls_done[0], unlocked - calls_done[1]
            yield from compute(k, p, 1, lk, ul)
        while len(reaped) < len(spec_of):
            yield from wait_one()
        yield from sys_exit(k, p, ps.exit_status)


def tree_specs(params: dict[str, Any]) -> list[ProcessSpec]:
    """The processes of a SimConfig's tree parameters, validated again (a config can
    come from anywhere: a Result, a pool worker, a test)."""
    procs = [ProcessSpec.model_validate(d) for d in params.get("process", [])]
    check_tree(procs)
    return procs


def start_tree(k: Kernel, params: dict[str, Any], seed: int) -> None:
    """Put the tree's roots on the machine; the seed is unused (a tree is explicit)."""
    del seed
    TreeReplay(k, tree_specs(params)).start()
