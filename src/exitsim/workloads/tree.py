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

Replaying at another parallelism (``jobs``, docs/workloads.md). An imported ``make -jN``
keeps its slot limit in ``after``: each job waits for the one that finished before it
was forked. With ``jobs`` set, the children of every make process (program base name in
MAKE_PROGRAMS) are scheduled again as ``make -j<jobs>`` would: up to ``jobs`` of them
run at once, forked in the capture's order, the next as soon as one is reaped. The
capture has no makefile, so which waits were prerequisites and which were a full slot
table is read from the one piece of evidence it has, the set of make's children still
running at each fork (``after`` says which were reaped before it):
- a child forked while none of its earlier siblings ran is a *barrier* (make ran
  nothing else beside it, as it does for a target that needs all before it, a link
  after its objects): it waits for every earlier child;
- the children after a barrier, up to the next, are a group: they wait for every child
  before the barrier and for the barrier itself if the capture had reaped it before
  forking them (one forked while the barrier ran cannot have needed it), and not for
  each other (a -jN capture forks them in the order of its freed slots, which is no
  evidence of a dependency); the first group, before any barrier, waits for nothing.
Limits: a prerequisite forked while an unrelated job still ran is not a barrier (the
Lua capture's ``ar`` and ``ranlib`` ran beside the compile of ``lua.c``), so widened it
may start before the jobs it needed are done; a -j1 capture makes every child a barrier
and cannot be widened (``jobs_warnings`` says so); narrowing a -jN capture to fewer jobs
keeps its order exactly. Each make has its own ``jobs`` (GNU make's jobserver shares
them across a recursive make). ``start_ms`` stays the earliest fork point: make's own
time between spawns (reading, stat'ing, deciding) is serial in a real make too, and the
capture's offsets are the only measure of it (inflated by strace's stops, as every
``user_ms`` is). ``after`` of processes other than make's children is kept as it is.
Without ``jobs`` the replay is the capture's structure exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from exitsim.engine.ops import Run
from exitsim.engine.sync import KERNEL_LOCK, KERNEL_UNLOCK
from exitsim.engine.thread import KPath
from exitsim.kern.exec import sys_execve
from exitsim.kern.exit import sys_exit, sys_wait4
from exitsim.kern.fork import fork1, spawn_user_process, thread_fork
from exitsim.kern.sig import userret
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


#: The programs (base names) whose children a ``jobs`` replay schedules as jobs.
MAKE_PROGRAMS = frozenset({"make", "gmake", "bmake"})


def ns(ms: float) -> int:
    return round(ms * 1_000_000)


def is_make(ps: ProcessSpec) -> bool:
    return ps.program is not None and ps.program.rsplit("/", 1)[-1] in MAKE_PROGRAMS


def barriers(children: Sequence[ProcessSpec]) -> list[bool]:
    """Per child of a make, in fork order: was it forked with none of its earlier
    siblings running (all of them named in its or an earlier sibling's ``after``)? The
    first child has no earlier sibling to have waited for, so it is not one."""
    reaped: set[int] = set()
    out = []
    for i, c in enumerate(children):
        reaped.update(c.after)  # ids of earlier siblings only (check_tree)
        out.append(i > 0 and len(reaped) == i)
    return out


def job_prefixes(children: Sequence[ProcessSpec]) -> list[int]:
    """Per child of a make, how many of its first siblings (in fork order) must be
    reaped before it is forked under ``jobs``: a barrier, all before it; a child of a
    barrier's group, all before the barrier, and the barrier too if the capture had
    reaped it by then; a child of the first group, none (module docstring)."""
    out = []
    group = 0  # index of the latest barrier; 0: the first group, which has none
    reaped: set[int] = set()
    for i, (c, barrier) in enumerate(zip(children, barriers(children), strict=True)):
        reaped.update(c.after)
        if barrier:
            group = i
            out.append(i)
        elif group == 0:
            out.append(0)
        else:
            out.append(group + 1 if children[group].id in reaped else group)
    return out


def replay_jobs(params: dict[str, Any]) -> int | None:
    """The ``jobs`` of a tree's parameters: None when not given, else a whole number
    of at least 1 (ValueError otherwise; a bool is not a number here)."""
    if "jobs" not in params:
        return None
    jobs = params["jobs"]
    if type(jobs) is not int or jobs < 1:
        raise ValueError(f"jobs: must be a whole number, at least 1 (got {jobs!r})")
    return jobs


def check_jobs(procs: Sequence[ProcessSpec]) -> None:
    """``jobs`` needs a make whose children it schedules: refused (ValueError) for a
    tree without one, where it would silently change nothing."""
    if not any(is_make(ps) for ps in procs):
        names = ", ".join(sorted(MAKE_PROGRAMS))
        raise ValueError(f"jobs: the tree has no make process ({names}) to schedule")


def jobs_warnings(procs: Sequence[ProcessSpec], jobs: int) -> list[str]:
    """What ``jobs`` cannot do for this tree, one line each: a make whose children
    the capture ran one at a time (every one a barrier: a -j1 capture) is replayed one
    at a time whatever ``jobs`` is."""
    if jobs < 2:
        return []
    kids: dict[int, list[ProcessSpec]] = {}
    for ps in procs:
        if ps.parent is not None:
            kids.setdefault(ps.parent, []).append(ps)
    out = []
    for ps in procs:
        children = kids.get(ps.id, [])
        if is_make(ps) and len(children) > 1 and all(barriers(children)[1:]):
            out.append(
                f"{ps.name} (id {ps.id}) ran its {len(children)} children one at a time "
                f"in the capture (a -j1 build): each waits for the one before, so "
                f"jobs={jobs} cannot run them side by side"
            )
    return out


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

    def __init__(self, k: Kernel, procs: list[ProcessSpec], jobs: int | None = None) -> None:
        self.k = k
        self.jobs = jobs
        #: Per spec id, when its parent's fork returned and when its wait4 reaped it:
        #: what the replay did, for tests to read (no effect on the run).
        self.forked_ns: dict[int, int] = {}
        self.reaped_ns: dict[int, int] = {}
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
        #: Per make process under ``jobs``, its children's job_prefixes.
        self.prefixes: dict[int, list[int]] = {}
        if jobs is not None:
            for ps in procs:
                if is_make(ps):
                    self.prefixes[ps.id] = job_prefixes(self.children.get(ps.id, []))

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
            self.reaped_ns[spec_of[child.ps_pid]] = k.now

        children = self.children.get(ps.id, [])
        prefixes = self.prefixes.get(ps.id)
        done = 0  # children[:done] are all reaped (make under jobs)
        for i, c in enumerate(children):
            yield from run_until(min(ns(c.start_ms), own))
            if prefixes is None:
                for a in c.after:
                    while a not in reaped:
                        yield from wait_one()
            else:
                # make -j<jobs>: the capture's prerequisites, then a free slot.
                assert self.jobs is not None
                while done < prefixes[i]:
                    if children[done].id in reaped:
                        done += 1
                    else:
                        yield from wait_one()
                while len(spec_of) - len(reaped) >= self.jobs:
                    yield from wait_one()
            child = yield from fork1(k, p, c.name, self._body(c, heap))
            spec_of[child.ps_pid] = c.id
            self.forked_ns[c.id] = k.now
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


def start_tree(k: Kernel, params: dict[str, Any], seed: int) -> TreeReplay:
    """Put the tree's roots on the machine, its makes at ``params``' ``jobs`` if
    given; the seed is unused (a tree is explicit). Returns the replay."""
    del seed
    procs = tree_specs(params)
    jobs = replay_jobs(params)
    if jobs is not None:
        check_jobs(procs)
    replay = TreeReplay(k, procs, jobs)
    replay.start()
    return replay
