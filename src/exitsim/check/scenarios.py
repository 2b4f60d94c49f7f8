"""Small, named scenarios for ``exitsim check``: a few processes of a few pages each, in
exact granularity, on 2 or 3 CPUs, each built afresh for every schedule.

Every user process starts with a fresh address space, maps a small anonymous region and
touches it (filling the TLB of the CPU it runs on), does a little user work between
returns to user space, and exits through ``sys_exit``. What differs is who else is
around: sibling threads, a waiting parent, a shared segment, a racing fork, a transient
reference to the address space, children nobody waits for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from exitsim.check.hooks import blame
from exitsim.check.statekey import state_key
from exitsim.engine.chooser import Chooser
from exitsim.engine.errors import SimError
from exitsim.engine.ops import USER, Run
from exitsim.engine.sync import tsleep, wakeup
from exitsim.engine.thread import KPath
from exitsim.kern.exit import sys___threxit, sys_exit, sys_wait4
from exitsim.kern.fork import fork1, spawn_user_process, thread_fork
from exitsim.kern.kernel import Kernel
from exitsim.kern.proc import SAS_NOCLDWAIT, Proc, Process
from exitsim.kern.sig import SIGKILL, SIGSEGV, prsignal, sigmask, trap_fatal, userret
from exitsim.machine.costs import CostProfile
from exitsim.machine.machine import Machine
from exitsim.vm.audit import audit_all_exited
from exitsim.vm.fault import uvm_touch
from exitsim.vm.map import uvm_map
from exitsim.vm.shm import shmat, shmctl_rmid, shmget
from exitsim.vm.uvm import Tolerated
from exitsim.vm.vmspace import uvmspace_addref, uvmspace_free

if TYPE_CHECKING:
    from exitsim.policies.base import Policy

BASE = 0x1000  # where each process maps its region
PAGES = 2  # pages per region
WORK = Run(1_000, USER)  # one slice of user work


class CheckRun:
    """One run of a scenario for the explorer: the kernel, an abstract state, and the
    checks for when nothing is left to run."""

    def __init__(self, k: Kernel) -> None:
        self.k = k
        self.engine = k.engine

    def state_key(self) -> bytes:
        """Everything the run's future depends on, as a digest (``check/statekey.py``)."""
        return state_key(self.k, self.engine.now)

    def at_end(self) -> None:
        k = self.k
        left = [
            pr for pr in k.allprocess.values() if pr is not k.initprocess and pr.comm != "reaper"
        ]
        if left:
            k.fail(f"run ended with processes never freed: {left}")
        audit_all_exited(k.uvm)

    def design_error(self, e: Exception) -> SimError | None:
        """An exception the design's own code raised, as a finding (``check/hooks.py``)."""
        return blame(e, self.k.policy)


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    summary: str
    cpus: int
    setup: Callable[[Kernel], None]


def region(k: Kernel, p: Proc) -> KPath:
    """Map and touch this process's small region."""
    vm = p.p_vmspace
    assert vm is not None
    yield from uvm_map(k.uvm, p, vm.vm_map, BASE, PAGES)
    yield from uvm_touch(k.uvm, p, vm, BASE, PAGES, write=True)


def worker(k: Kernel, p: Proc, rounds: int) -> KPath:
    """A sibling thread: user work touching the region, back to user space each time."""
    vm = p.p_vmspace
    assert vm is not None
    for _ in range(rounds):
        yield WORK
        yield from uvm_touch(k.uvm, p, vm, BASE, PAGES)
        yield from userret(k, p)
    yield from sys_exit(k, p, 0)


def _threaded(nthreads: int) -> Callable[[Kernel], None]:
    def setup(k: Kernel) -> None:
        def main(p: Proc) -> KPath:
            yield from region(k, p)
            for i in range(nthreads - 1):
                yield from thread_fork(k, p, f"t{i + 1}", lambda t: worker(k, t, 3))
            yield WORK
            yield from sys_exit(k, p, 0)

        spawn_user_process(k, "mt", main)

    return setup


def _wait_two(k: Kernel) -> None:
    def child(p: Proc) -> KPath:
        # The region came with fork; writing it breaks copy-on-write.
        yield from uvm_touch(k.uvm, p, p.p_vmspace, BASE, PAGES, write=True)  # type: ignore[arg-type]
        yield WORK
        yield from sys_exit(k, p, 0)

    def parent(p: Proc) -> KPath:
        yield from region(k, p)
        yield from fork1(k, p, "c1", child)
        yield from fork1(k, p, "c2", child)
        yield from sys_wait4(k, p)
        yield from sys_wait4(k, p)
        yield from sys_exit(k, p, 0)

    spawn_user_process(k, "parent", parent)


def _shm_two(k: Kernel) -> None:
    seg = shmget(k.uvm, PAGES)
    ready = {"n": 0}

    def user(p: Proc) -> KPath:
        vm = p.p_vmspace
        assert vm is not None
        yield from shmat(k.uvm, p, vm, seg, 0x8000)
        yield from uvm_touch(k.uvm, p, vm, 0x8000, PAGES, write=True)
        ready["n"] += 1
        if ready["n"] == 2:
            yield from shmctl_rmid(k.uvm, p, seg)
        yield WORK
        yield from sys_exit(k, p, 0)

    spawn_user_process(k, "shm1", user)
    spawn_user_process(k, "shm2", user)


def _fork_race(k: Kernel) -> None:
    def child(p: Proc) -> KPath:
        yield WORK
        yield from uvm_touch(k.uvm, p, p.p_vmspace, BASE, PAGES, write=True)  # type: ignore[arg-type]
        yield from sys_exit(k, p, 0)

    def parent(p: Proc) -> KPath:
        yield from region(k, p)
        yield from fork1(k, p, "child", child)
        yield from sys_exit(k, p, 0)

    spawn_user_process(k, "parent", parent)


def _transient_ref(k: Kernel) -> None:
    """A ptrace- or sysctl-style holder takes a vmspace reference before the victim
    starts exiting and drops it later, possibly last (then ``pmap_destroy`` runs in its
    thread, not the reaper's)."""
    box: dict[str, object] = {}
    chan = ("transient", 0)

    def victim(p: Proc) -> KPath:
        yield from region(k, p)
        box["vm"] = p.p_vmspace
        uvmspace_addref(k.uvm, p.p_vmspace, p)  # type: ignore[arg-type]
        yield from wakeup(chan)
        yield WORK
        yield from sys_exit(k, p, 0)

    def holder(p: Proc) -> KPath:
        while "vm" not in box:
            yield from tsleep(chan, "holder")
        vm = box["vm"]
        yield WORK  # uvm_io on the victim's map would go here
        yield from uvmspace_free(k.uvm, p, vm)  # type: ignore[arg-type]
        yield from sys_exit(k, p, 0)

    spawn_user_process(k, "victim", victim)
    spawn_user_process(k, "holder", holder)


def _nozombie(k: Kernel) -> None:
    def child(p: Proc) -> KPath:
        yield WORK
        yield from sys_exit(k, p, 0)

    def parent(p: Proc) -> KPath:
        assert p.p_p is not None
        p.p_p.ps_sigflags |= SAS_NOCLDWAIT
        yield from fork1(k, p, "c1", child)
        yield from fork1(k, p, "c2", child)
        yield WORK
        yield from sys_exit(k, p, 0)

    spawn_user_process(k, "parent", parent)


def _with_sibling(k: Kernel, comm: str, sibling: Callable[[Proc], KPath]) -> None:
    """A process that maps its region, starts one sibling thread running ``sibling``,
    works a little and calls exit(2)."""

    def main(p: Proc) -> KPath:
        yield from region(k, p)
        yield from thread_fork(k, p, "t1", sibling)
        yield WORK
        yield from sys_exit(k, p, 0)

    spawn_user_process(k, comm, main)


def _exit_race(k: Kernel) -> None:
    """Both threads of a process call exit(2) at once: the one that single-threads
    first wins; the other finds it doing so inside its own exit1 and goes back into
    exit1 from there, with the kernel lock held twice."""

    def sibling(t: Proc) -> KPath:
        yield WORK
        yield from sys_exit(k, t, 1)

    _with_sibling(k, "race", sibling)


def _killed(k: Kernel) -> None:
    """A parent SIGKILLs its 2-thread child and waits: whichever thread takes the
    signal at its userret exits through postsig and sigexit, and single-threads the
    other."""
    box: dict[str, Process] = {}
    chan = ("victim", 0)

    def child(p: Proc) -> KPath:
        yield from uvm_touch(k.uvm, p, p.p_vmspace, BASE, PAGES, write=True)  # type: ignore[arg-type]
        assert p.p_p is not None
        box["child"] = p.p_p
        yield from wakeup(chan)
        yield from thread_fork(k, p, "c.t1", lambda t: worker(k, t, 3))
        for _ in range(3):
            yield WORK
            yield from userret(k, p)
        yield from sys_exit(k, p, 0)

    def parent(p: Proc) -> KPath:
        yield from region(k, p)
        yield from fork1(k, p, "child", child)
        while "child" not in box:
            yield from tsleep(chan, "victim")
        yield from prsignal(k, box["child"], SIGKILL)
        yield from sys_wait4(k, p)
        yield from sys_exit(k, p, 0)

    spawn_user_process(k, "killer", parent)


def _segv(k: Kernel) -> None:
    """One thread of a 2-thread process takes a fatal fault with SIGSEGV blocked:
    trapsignal exits at once (under the kernel lock as the arch's trap handler holds
    it), stopping the sibling for the core dump (SINGLE_UNWIND) and then telling it to
    exit (SINGLE_EXIT)."""

    def main(p: Proc) -> KPath:
        yield from region(k, p)
        yield from thread_fork(k, p, "t1", lambda t: worker(k, t, 3))
        yield WORK
        p.p_sigmask |= sigmask(SIGSEGV)
        yield from trap_fatal(k, p, SIGSEGV)

    spawn_user_process(k, "segv", main)


def _threxit(k: Kernel) -> None:
    """A sibling leaves by __threxit while the main thread exits: the main thread's
    single_thread_set counts it out at its exit1 step 4, not at a userret."""

    def sibling(t: Proc) -> KPath:
        yield WORK
        yield from uvm_touch(k.uvm, t, t.p_vmspace, BASE, PAGES)  # type: ignore[arg-type]
        yield from sys___threxit(k, t)

    _with_sibling(k, "threxit", sibling)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("threads2", "a 2-thread process exits while its sibling runs", 2, _threaded(2)),
        Scenario("threads3", "a 3-thread process exits while its siblings run", 3, _threaded(3)),
        Scenario("wait2", "a parent waits for two exiting children", 2, _wait_two),
        Scenario("shm2", "two processes sharing a SysV segment exit together", 2, _shm_two),
        Scenario("forkrace", "a fork races the parent's exit", 2, _fork_race),
        Scenario(
            "transient", "a transient vmspace reference lives through the purge", 2, _transient_ref
        ),
        Scenario("nozombie", "children of a SAS_NOCLDWAIT parent (PS_NOZOMBIE)", 2, _nozombie),
        Scenario("exitrace", "both threads call exit(2): the loser nests exit1", 2, _exit_race),
        Scenario("killed", "a parent SIGKILLs a 2-thread child and waits", 2, _killed),
        Scenario("segv", "a thread dies of a fatal fault with the signal blocked", 2, _segv),
        Scenario("threxit", "a sibling __threxits while the main thread exits", 2, _threxit),
    )
}


def factory(
    scenario: Scenario,
    policy_maker: Callable[[], Policy],
    arch: str,
    record: bool = False,
    profile: CostProfile | None = None,
    allow: frozenset[int] = frozenset(),
    tolerated: Tolerated | None = None,
) -> Callable[[Chooser], CheckRun]:
    """What the explorer calls for every schedule: a fresh kernel running the
    scenario, driven by ``chooser``; ``profile``: its costs instead of the arch's
    built-in ones (they time the steps of a replayed trace, not which orders exist);
    ``allow``: invariants whose violations are counted in ``tolerated`` (one tally for
    every run) instead of ending the run."""

    def build(chooser: Chooser) -> CheckRun:
        k = Kernel(
            Machine(arch, scenario.cpus, "exact", profile),
            policy_maker(),
            total_pages=1 << 16,
            debug=True,
            chooser=chooser,
            step_each_op=True,
            strict=True,
            record=record,
        )
        k.uvm.allowed = allow
        if tolerated is not None:
            k.uvm.tolerated = tolerated
        k.start_kernel_threads()
        scenario.setup(k)
        return CheckRun(k)

    return build
