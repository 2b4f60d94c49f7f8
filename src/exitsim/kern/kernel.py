"""The simulated kernel of one run: engine, machine, vm, kernel lock, the process
table, init and the reaper, the installed design (policy) and the meters.

Everything the kernel paths in ``kern/`` touch hangs off one ``Kernel``, passed as
``k`` (there are no globals, so two kernels can run side by side in one process).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from exitsim.engine.chooser import Chooser
from exitsim.engine.errors import SimError
from exitsim.engine.locks import SpinMutex, TicketLock
from exitsim.engine.sched import Engine
from exitsim.engine.thread import KPath, Thread
from exitsim.kern.meter import Meters
from exitsim.kern.proc import PS_SYSTEM, SDEAD, SRUN, Proc, Process
from exitsim.machine.machine import Machine
from exitsim.vm.pmap import pmap_switch
from exitsim.vm.uvm import Tolerated, Uvm

if TYPE_CHECKING:
    from exitsim.policies.base import Policy


class Kernel:
    """One simulated OpenBSD kernel on one simulated machine."""

    def __init__(
        self,
        machine: Machine,
        policy: Policy,
        *,
        total_pages: int,
        debug: bool = False,
        chooser: Chooser | None = None,
        step_each_op: bool = False,
        record: bool = False,
        strict: bool = False,
    ) -> None:
        self.machine = machine
        self.engine = Engine(
            machine.engine_config(step_each_op=step_each_op, record=record), chooser
        )
        self.kernel_lock = TicketLock("kernel_lock")
        self.uvm = Uvm(self.engine, machine, self.kernel_lock, total_pages, debug=debug)
        self.policy = policy
        self.uvm.teardown_drops_kernel_lock = policy.teardown_drops_kernel_lock
        #: Raise on every invariant, even those the design is known to break (the
        #: checker's mode); otherwise those are counted (a timed run's mode).
        self.strict = strict
        self.costs = machine.costs
        self.deadproc: deque[Proc] = deque()
        self.deadproc_mutex = SpinMutex("deadproc_mutex")
        self.deadproc_chan = ("deadproc",)
        self.allprocess: dict[int, Process] = {}
        self.zombprocess: list[Process] = []
        self.next_pid = 1
        self.meters = Meters(self)
        self.known_violations: dict[int, int] = {}
        if not strict:
            # The exit window (design.md 8) is OpenBSD's own behaviour, not a design's:
            # a timed run counts it with the known violations and goes on.
            self.uvm.allowed = frozenset({8})
            self.uvm.tolerated = Tolerated(counts=self.known_violations)
        self.uvm.locks["kernel_lock"] = self.kernel_lock
        self.uvm.locks["deadproc_mutex"] = self.deadproc_mutex
        self.engine.switch_hook = self._switched
        self.engine.exit_hook = self._exited
        self.engine.idle_hook = self._idled
        self.initprocess = self._new_process("init", None)
        self.initprocess.ps_flags |= PS_SYSTEM
        self.reaper_proc: Proc | None = None
        self.config: Any = None  # the SimConfig a run was built from, when there is one
        #: Which costs the run uses, as the Result's ``costs`` (machine/costs.py).
        self.costs_used: dict[str, Any] = {}

    @property
    def now(self) -> int:
        return self.engine.now

    # -- processes ---------------------------------------------------------------------

    def _new_process(self, comm: str, parent: Process | None) -> Process:
        pr = Process(self.next_pid, comm, parent)
        self.next_pid += 1
        self.allprocess[pr.ps_pid] = pr
        if parent is not None:
            parent.ps_children.append(pr)
        return pr

    def new_thread(
        self,
        pr: Process,
        name: str,
        body: Callable[[Proc], KPath],
        p_flag: int = 0,
        at: int | None = None,
    ) -> Proc:
        """Create a thread of ``pr`` running ``body(p)``; runnable at ``at``."""
        t = self.engine.spawn(name, body, at=at, cls=Proc, p_p=pr, p_flag=p_flag)
        assert isinstance(t, Proc)
        t.p_stat = SRUN
        pr.ps_threads.append(t)
        pr.ps_threadcnt += 1
        if pr.ps_mainproc is None:
            pr.ps_mainproc = t
        t.p_vmspace = pr.ps_vmspace
        return t

    def start_kernel_threads(self) -> None:
        """init (pid 1, reaps orphans) and, where the design has one, the reaper."""
        from exitsim.kern.exit import init_main, reaper
        from exitsim.kern.proc import P_SYSTEM

        self.new_thread(self.initprocess, "init", lambda p: init_main(self, p), P_SYSTEM)
        if self.policy.uses_reaper:
            pr = self._new_process("reaper", None)
            pr.ps_flags |= PS_SYSTEM
            self.reaper_proc = self.new_thread(pr, "reaper", lambda p: reaper(self, p), P_SYSTEM)

    def all_processes(self) -> list[Process]:
        """Every user process the run created, alive or freed, by pid."""
        return sorted(
            {
                t.p_p.ps_pid: t.p_p
                for t in self.engine.threads
                if isinstance(t, Proc) and t.p_p is not None
            }.values(),
            key=lambda pr: pr.ps_pid,
        )

    # -- hooks the engine calls --------------------------------------------------------

    def _switched(self, cpu: int, t: Thread | None) -> None:
        """cpu_switchto: load the incoming thread's address space. A thread leaving
        changes nothing: the MMU keeps its address space until the CPU loads the next
        thread's, or idle's (``_idled``)."""
        if t is None:
            return
        pm = None
        if isinstance(t, Proc) and t.p_vmspace is not None:
            pm = t.p_vmspace.vm_map.pmap
        pmap_switch(self.uvm, cpu, pm)

    def _idled(self, cpu: int) -> None:
        """cpu_switchto to the idle thread: the kernel's address space is loaded."""
        pmap_switch(self.uvm, cpu, None)

    def _exited(self, cpu: int, t: Thread) -> None:
        """The dead thread is off its CPU: what ``sched_idle`` does with it."""
        from exitsim.kern.exit import exit2

        if isinstance(t, Proc) and t.p_stat == SDEAD:
            exit2(self, t)

    # -- invariants ----------------------------------------------------------------------

    def violation(
        self, invariant: int, message: str, *objects: object, p: Thread | None = None
    ) -> None:
        """A design.md invariant broke. A design may declare invariants it breaks by
        construction (``no-reaper`` and 6); a timed run counts those and goes on, the
        checker (``strict``) stops on every one."""
        if not self.strict and invariant in self.policy.known_violations:
            self.known_violations[invariant] = self.known_violations.get(invariant, 0) + 1
            return
        self.uvm.breach(invariant, message, *objects, p=p)

    def fail(self, message: str) -> None:
        raise SimError(message)
