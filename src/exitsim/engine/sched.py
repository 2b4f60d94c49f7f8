"""The engine: simulated CPUs running generator threads, in timed or untimed mode.

All scheduling hangs on one heap of ``(time_ns, seq, kind, a, b)``. ``seq`` grows by one
per push, so entries due at the same nanosecond pop in the order they were pushed and
two entries never compare past it: the same config and seed give the same run.

Timed mode pops the heap in order. Untimed mode (the interleaving explorer's) lets the
chooser pick any pending step, in any order; time still counts but means nothing.

Accounting. Work whose length is known when it starts (a ``Run``, a context switch, a
broadcast, an interrupt handler) is charged to its CPU and thread at the start: an
interrupt that arrives meanwhile pushes the end later and is charged on its own.
Spinning and idling are open-ended, so they are charged as stretches when they end,
less any interrupt time inside them. So per CPU, user + sys + spin + idle + intr is
exactly the time that passed; reports fold interrupt time into sys. A thread is charged
its user and sys time, spinning included (as sys), interrupts excluded.

=> Model code runs inside ``gen.send``; it must not call back into the engine except
   through ops and the few public helpers (``spawn``, ``make_runnable``, ``call_at``).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from exitsim.engine.chooser import EVENT, PLACE, RUNQ, Chooser, FirstChooser
from exitsim.engine.errors import BadYield, Deadlock, LockError
from exitsim.engine.locks import Lock, SpinMutex, TicketLock
from exitsim.engine.ops import (
    EXCLUSIVE,
    USER,
    Acquire,
    Broadcast,
    Exit,
    Ipi,
    Release,
    Run,
    Sleep,
    SpinWait,
    Wakeup,
    Yield,
)
from exitsim.engine.thread import (
    DEAD,
    ONPROC,
    RUNNABLE,
    SLEEPING,
    KPath,
    Thread,
    innermost_frame,
)

# Accounting buckets of a CPU; M_USER/M_SYS equal the ops' USER/SYS.
M_USER = 0
M_SYS = 1
M_SPIN = 2
M_IDLE = 3
M_INTR = 4

_heappush = heapq.heappush
_heappop = heapq.heappop

# Heap entry kinds. When two entries fall on the same nanosecond, seq decides.
K_CONT = 0  # a CPU goes on with its thread (token must match)
K_DISPATCH = 1  # an idle CPU picks a thread
K_INTR = 2  # an IPI reaches a CPU
K_INTR_DONE = 3  # its handler finishes and acknowledges
K_CALL = 4  # a plain callback (timers, workload arrivals)


def op_detail(op: object) -> str:
    """A few words on what an op does, for the event log (only when recording)."""
    if isinstance(op, Run):
        return f"{op.ns}ns {'user' if op.mode == USER else 'sys'}"
    if isinstance(op, (Acquire, Release)):
        return op.lock.name
    if isinstance(op, (Sleep, SpinWait, Wakeup)):
        return str(op.chan)
    if isinstance(op, Ipi):
        return f"{op.label} to cpus {','.join(map(str, op.targets))}"
    if isinstance(op, Broadcast):
        return f"{op.count} x {op.label}"
    return ""


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """What the engine itself needs to know; costs come from the machine profile.

    ``quantum_ns`` default: OpenBSD's ``roundrobin`` runs every hz/10 ticks, i.e. 100 ms
    (sched_bsd.c); ``ctxsw_ns``, ``lock_handoff_ns`` and ``ipi_latency_ns`` are set by
    the arch profile. ``lock_handoff_ns`` is not applied in untimed mode.
    """

    ncpu: int
    quantum_ns: int = 100_000_000
    ctxsw_ns: int = 0
    lock_handoff_ns: int = 0
    ipi_latency_ns: int = 0
    step_each_op: bool = False
    record: bool = False

    def __post_init__(self) -> None:
        if self.ncpu < 1:
            raise ValueError(f"ncpu must be at least 1 (got {self.ncpu})")
        for name in ("quantum_ns", "ctxsw_ns", "lock_handoff_ns", "ipi_latency_ns"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.quantum_ns == 0:
            raise ValueError("quantum_ns must be positive")


class Cpu:
    """One simulated CPU."""

    __slots__ = (
        "index",
        "thread",
        "last_thread",
        "runq",
        "acct",
        "spin_since",
        "lock_wait_from",
        "idle_since",
        "slow",
        "token",
        "cont_at",
        "dispatch_pending",
        "quantum_end",
        "acks_pending",
        "bcast",
        "bcast_rate",
        "intr_until",
        "spinning_on",
        "switches",
        "in_user",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self.thread: Thread | None = None
        self.last_thread: Thread | None = None
        self.runq: deque[Thread] = deque()
        # user, sys (without interrupts), spin, idle, interrupt; see the module doc.
        self.acct = [0, 0, 0, 0, 0]
        self.spin_since = -1  # when the current spin began, or -1
        # When the current wait for a spin lock began (spin_since moves with interrupts).
        self.lock_wait_from = 0
        self.idle_since = 0  # when the current idle stretch began, or -1
        # Set while the next continuation needs more than resuming the generator
        # (end a spin or a broadcast, retake locks, go on with a cut user run).
        self.slow = False
        self.token = 0
        self.cont_at: int | None = None
        self.dispatch_pending = False
        self.quantum_end = 0
        self.acks_pending = 0
        self.bcast: Broadcast | None = None
        self.bcast_rate = 1  # how many senders the rest of the broadcast is priced for
        self.intr_until = 0
        self.spinning_on: Lock | None = None
        self.switches = 0
        # The pending continuation ends a user run (so need_resched can cut it).
        self.in_user = False

    def __repr__(self) -> str:
        return f"<Cpu {self.index} {self.thread!r}>"

    def times(self) -> dict[str, int]:
        """Accounted time: user + sys + spin + idle is all of it; ``sys_ns`` includes
        interrupt handling, which ``intr_ns`` shows on its own."""
        a = self.acct
        return {
            "user_ns": a[M_USER],
            "sys_ns": a[M_SYS] + a[M_INTR],
            "spin_ns": a[M_SPIN],
            "idle_ns": a[M_IDLE],
            "intr_ns": a[M_INTR],
        }


class Engine:
    """CPUs, threads, the heap and the loop that runs them."""

    def __init__(self, config: EngineConfig, chooser: Chooser | None = None) -> None:
        self.config = config
        self.chooser: Chooser = chooser if chooser is not None else FirstChooser()
        self.now = 0
        self.heap: list[tuple[int, int, int, Any, Any]] = []
        self.seq = 0
        self.cpus = [Cpu(i) for i in range(config.ncpu)]
        self.threads: list[Thread] = []
        self.sleepq: dict[object, list[Thread]] = {}
        self.spinq: dict[object, list[Thread]] = {}
        self.bcast_cpus: list[Cpu] = []  # CPUs with a broadcast in flight, in start order
        self.events = 0
        self.ops = 0
        self.ipis = 0
        self.broadcasts = 0
        self.log: list[tuple[Any, ...]] | None = [] if config.record else None
        #: With ``record``, also called as ``tracer(now, cpu, thread, op)`` for every op
        #: (the Perfetto exporter uses it).
        self.tracer: Callable[[int, int, Thread, Any], None] | None = None
        self.quantum = config.quantum_ns
        self.ctxsw = config.ctxsw_ns
        self.step_each_op = config.step_each_op
        # Untimed mode keeps no time in its state key, so a hand-off there is instant.
        self.handoff = 0 if config.step_each_op else config.lock_handoff_ns
        #: Called as ``switch_hook(cpu_index, thread)`` when a thread goes on a CPU, and
        #: with ``None`` when it leaves; the machine layer loads the incoming address space.
        self.switch_hook: Callable[[int, Thread | None], None] | None = None
        #: Called as ``exit_hook(cpu_index, thread)`` once a dead thread is off its CPU
        #: (where OpenBSD's idle thread calls ``exit2``).
        self.exit_hook: Callable[[int, Thread], None] | None = None
        #: Called as ``idle_hook(cpu_index)`` when a CPU finds nothing to run and goes
        #: to its idle thread (``cpu_switchto`` to idle: the machine layer loads the
        #: kernel's address space there).
        self.idle_hook: Callable[[int], None] | None = None
        self._handlers: dict[type, Callable[[Cpu, Thread, Any], bool]] = {
            Sleep: self._op_sleep,
            SpinWait: self._op_spinwait,
            Wakeup: self._op_wakeup,
            Ipi: self._op_ipi,
            Broadcast: self._op_broadcast,
            Yield: self._op_yield,
            Exit: self._op_exit,
        }

    # -- public helpers --------------------------------------------------------------

    def spawn(
        self,
        name: str,
        body: KPath | Callable[[Thread], KPath],
        at: int | None = None,
        cls: type = Thread,
        **fields: Any,
    ) -> Thread:
        """Create a thread; it becomes runnable at ``at`` (default now).

        ``body`` is its generator, or a function that takes the new thread and returns
        the generator (so kernel code can know its own ``curproc``)."""
        t = cls(len(self.threads) + 1, name, None, **fields)
        t.gen = body(t) if callable(body) else body
        self.threads.append(t)
        t.state = SLEEPING
        if at is None or at <= self.now:
            self.make_runnable(t)
        else:
            self.call_at(at, self.make_runnable, t)
        return t

    def call_at(self, at: int, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` at simulated time ``at`` (a timer, not a thread)."""
        self._push(max(at, self.now), K_CALL, fn, args)

    def make_runnable(self, t: Thread, resched: bool = False) -> None:
        """Put ``t`` on a run queue: an idle CPU's if there is one (its last CPU first).

        ``resched``: ``t`` wakes from a sleep in the kernel, so it runs at its sleep
        priority, better than any user priority; a CPU running user code is told to
        switch (``setrunqueue`` -> ``need_resched``, kern_sched.c)."""
        t.state = RUNNABLE
        cpus = self.cpus
        idle = [c for c in cpus if c.thread is None and not c.dispatch_pending]
        if idle:
            if t.last_cpu is not None and cpus[t.last_cpu] in idle:
                idle.remove(cpus[t.last_cpu])
                idle.insert(0, cpus[t.last_cpu])
            c = idle[0]
            if len(idle) > 1:
                c = idle[self.chooser.choose(PLACE, [f"cpu{x.index}" for x in idle])]
            c.runq.append(t)
            c.dispatch_pending = True
            self._push(max(self.now, c.intr_until), K_DISPATCH, c.index, None)
        else:
            c = cpus[t.last_cpu] if t.last_cpu is not None else cpus[0]
            # Send it where the queue is shortest, its last CPU winning ties.
            for x in cpus:
                if len(x.runq) < len(c.runq):
                    c = x
            c.runq.append(t)
            # Untimed mode has no quantum and no time in its state key: a wakeup
            # there must not make the next Yield switch.
            if resched and not self.step_each_op:
                self._need_resched(c)

    def _need_resched(self, c: Cpu) -> None:
        """``need_resched(ci)``: ``c`` switches at its next chance: a user run is cut
        when the AST IPI arrives; kernel code goes on to its next ``Yield`` or return
        to user space (OpenBSD's kernel is not preemptive)."""
        now = self.now
        if c.quantum_end > now:
            c.quantum_end = now
        t = c.thread
        if not c.in_user or c.cont_at is None or t is None:
            return
        at = now + self.config.ipi_latency_ns
        if at < c.intr_until:
            at = c.intr_until
        left = c.cont_at - at
        if left <= 0:
            return
        c.acct[M_USER] -= left
        t.user_ns -= left
        t.run_left += left
        c.slow = True
        self._push_cont(c, at)

    def wakeup(self, chan: object) -> int:
        """wakeup(9): sleepers on ``chan`` become runnable and spin-waiters on it go on.
        Also callable from outside a thread (a timer). Returns how many."""
        n = 0
        spinners = self.spinq.pop(chan, None)
        if spinners:
            for t in spinners:
                t.wchan = None
                self._push_cont(self.cpus[t.cpu], self.now)  # type: ignore[index]
            n += len(spinners)
        sleepers = self.sleepq.pop(chan, None)
        if sleepers:
            for t in sleepers:
                t.wchan = None
                self.make_runnable(t, resched=True)
            n += len(sleepers)
        return n

    # -- the loops -------------------------------------------------------------------

    def run(self, until: int | None = None, max_events: int | None = None) -> None:
        """Timed mode: pop the heap in (time, seq) order until it is empty."""
        heap = self.heap
        pop = _heappop
        cpus = self.cpus
        resume = self._resume
        on_cont = self._on_cont
        n = 0
        bounded = until is not None or max_events is not None
        if until is None:
            until = -1
        if max_events is None:
            max_events = -1
        try:
            while heap:
                if bounded and ((until >= 0 and heap[0][0] > until) or n == max_events):
                    break
                entry = pop(heap)
                self.now = entry[0]
                n += 1
                # NOTE: the common case (a CPU goes on with its thread) is handled here
                # rather than in _step, for speed; see bench/engine.py.
                if entry[2] == 0:  # K_CONT
                    c = cpus[entry[3]]
                    if c.token == entry[4]:
                        c.cont_at = None
                        if not c.slow:
                            resume(c, c.thread)  # type: ignore[arg-type]
                        elif (
                            c.spinning_on is not None
                            and not (t := c.thread).saved_depths  # type: ignore[union-attr]
                            and t.interlock is None  # type: ignore[union-attr]
                        ):
                            # NOTE: a spinner handed its lock, inlined for speed; the
                            # same steps as _on_cont when there is nothing to retake.
                            dt = entry[0] - c.spin_since
                            c.acct[2] += dt  # M_SPIN
                            t.sys_ns += dt  # type: ignore[union-attr]
                            t.spin_ns += dt  # type: ignore[union-attr]
                            c.spin_since = -1
                            c.spinning_on = None
                            c.slow = False
                            resume(c, t)  # type: ignore[arg-type]
                        else:
                            on_cont(c)
                else:
                    self._step(entry)
        finally:
            self.events += n
        if not heap:
            self._check_stuck()

    def pending(self) -> list[tuple[str, tuple[int, int, int, Any, Any]]]:
        """Untimed mode: the steps that could happen next, labelled, in a fixed order
        (CPU steps by CPU, then interrupts by target CPU, then timers). Stale heap
        entries are dropped on the way."""
        live = [e for e in self.heap if self._live(e)]
        if len(live) != len(self.heap):
            self.heap[:] = live
            heapq.heapify(self.heap)
        out = [(self._label(e), e) for e in live]
        out.sort(
            key=lambda x: (
                x[1][2] > K_DISPATCH,
                x[1][2] if x[1][2] > K_DISPATCH else 0,
                x[1][3] if x[1][2] != K_CALL else x[1][1],
            )
        )
        return out

    def step_untimed(self) -> bool:
        """Untimed mode: let the chooser pick one pending step and run it.
        Returns False when nothing is pending."""
        opts = self.pending()
        if not opts:
            self._check_stuck()
            return False
        i = self.chooser.choose(EVENT, [o[0] for o in opts]) if len(opts) > 1 else 0
        entry = opts[i][1]
        self.heap.remove(entry)
        heapq.heapify(self.heap)
        if entry[0] > self.now:
            self.now = entry[0]
        self.events += 1
        self._step(entry)
        return True

    def finish(self) -> None:
        """Close every CPU's open idle or spin stretch at ``now`` (the makespan).
        Calling it again adds nothing."""
        for c in self.cpus:
            if c.idle_since >= 0:
                self._idle_end(c)
                c.idle_since = self.now
            if c.spin_since >= 0 and c.thread is not None:
                self._spin_end(c, c.thread)
                c.spin_since = self.now

    # -- heap ------------------------------------------------------------------------

    def _push(self, at: int, kind: int, a: Any, b: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (at, self.seq, kind, a, b))

    def _push_cont(self, c: Cpu, at: int, in_user: bool = False) -> None:
        """``c`` goes on at ``at`` (after any interrupt handler); ``in_user``: that is
        the end of a user run, which a wakeup may cut short."""
        if at < c.intr_until:
            at = c.intr_until
        c.in_user = in_user
        c.token += 1
        c.cont_at = at
        self.seq += 1
        heapq.heappush(self.heap, (at, self.seq, K_CONT, c.index, c.token))

    def _live(self, e: tuple[int, int, int, Any, Any]) -> bool:
        kind = e[2]
        if kind == K_CONT:
            return self.cpus[e[3]].token == e[4]
        if kind == K_DISPATCH:
            return self.cpus[e[3]].dispatch_pending
        return True

    def _label(self, e: tuple[int, int, int, Any, Any]) -> str:
        kind = e[2]
        if kind in (K_CONT, K_DISPATCH):
            return str(e[3])
        # A sender has at most one IPI in flight, so (target, sender) names it.
        if kind == K_INTR:
            return f"i{e[3]}.{e[4][0]}"
        if kind == K_INTR_DONE:
            return f"a{e[3]}.{e[4][0]}"
        return f"t{e[1]}"

    def _step(self, e: tuple[int, int, int, Any, Any]) -> None:
        kind = e[2]
        if kind == K_CONT:
            c = self.cpus[e[3]]
            if c.token != e[4]:
                return  # superseded: an interrupt moved it
            c.cont_at = None
            if c.slow:
                self._on_cont(c)
            else:
                self._resume(c, c.thread)  # type: ignore[arg-type]
        elif kind == K_DISPATCH:
            c = self.cpus[e[3]]
            if c.dispatch_pending:
                if c.intr_until > self.now:
                    self._push(c.intr_until, K_DISPATCH, c.index, None)
                    return
                c.dispatch_pending = False
                if c.thread is None:
                    self._dispatch(c)
        elif kind == K_INTR:
            self._on_intr(self.cpus[e[3]], e[4])
        elif kind == K_INTR_DONE:
            self._on_intr_done(self.cpus[e[3]], e[4])
        else:
            e[3](*e[4])

    # -- accounting of open-ended stretches ------------------------------------------

    def _idle_end(self, c: Cpu) -> None:
        if c.idle_since >= 0:
            c.acct[M_IDLE] += self.now - c.idle_since
            c.idle_since = -1

    def _spin_begin(self, c: Cpu, lock: Lock | None) -> None:
        c.spin_since = self.now
        c.lock_wait_from = self.now
        c.spinning_on = lock
        c.slow = True

    def _spin_end(self, c: Cpu, t: Thread) -> None:
        dt = self.now - c.spin_since
        c.acct[M_SPIN] += dt
        t.sys_ns += dt
        t.spin_ns += dt
        c.spin_since = -1
        c.spinning_on = None

    # -- running a thread ------------------------------------------------------------

    def _on_cont(self, c: Cpu) -> None:
        """The slow continuation: finish what the CPU was in the middle of, then go
        on with the thread."""
        t = c.thread
        c.slow = False
        if t is None:
            return
        if c.spin_since >= 0:
            self._spin_end(c, t)
        if c.bcast is not None:
            op = c.bcast
            c.bcast = None
            self.bcast_cpus.remove(c)
            self._rescale_broadcasts()
            if op.receiver_ns and not self.step_each_op:
                self._stall_receivers(c, op.count * op.receiver_ns)
            if op.action is not None:
                op.action()
        if (t.saved_depths or t.interlock is not None) and not self._retake_locks(c, t):
            return
        if t.run_left:
            self._continue_user_run(c, t)
            return
        self._resume(c, t)

    def _resume(self, c: Cpu, t: Thread) -> None:
        """Send into ``t``'s generator and handle ops until one takes time or blocks."""
        send = t.gen.send
        log = self.log
        step_each_op = self.step_each_op
        now = self.now
        n = 0
        try:
            while True:
                try:
                    op = send(None)
                except StopIteration as stop:
                    t.result = stop.value
                    self._thread_exit(c, t)
                    return
                n += 1
                cls = type(op)
                if log is not None:
                    log.append((now, c.index, t.tid, cls.__name__, op_detail(op)))
                    if self.tracer is not None:
                        self.tracer(now, c.index, t, op)
                # NOTE: Run is inlined for speed; _op_run holds the same rule.
                if cls is Run:
                    ns = op.ns
                    if ns > 0:
                        end = now + ns
                        if op.mode == 0:  # USER
                            if end > c.quantum_end:
                                self._op_run(c, t, op)
                                return
                            c.acct[0] += ns  # M_USER
                            t.user_ns += ns
                            c.in_user = True
                        else:
                            c.acct[1] += ns  # M_SYS
                            t.sys_ns += ns
                            c.in_user = False
                        tok = c.token + 1
                        c.token = tok
                        c.cont_at = end
                        seq = self.seq + 1
                        self.seq = seq
                        _heappush(self.heap, (end, seq, 0, c.index, tok))  # K_CONT
                        return
                    if ns < 0:
                        raise ValueError(f"thread {t.name}: Run of negative time {ns}")
                elif cls is Acquire:
                    if op.count != 1 or not op.lock.acquire(t, op.mode, now):
                        if op.count == 1 and op.lock.spins:
                            # NOTE: the common wait, spinning, inlined for speed.
                            c.spin_since = now
                            c.lock_wait_from = now
                            c.spinning_on = op.lock
                            c.slow = True
                            return
                        if not self._op_acquire_waits(c, t, op):
                            return
                elif cls is Release:
                    granted = op.lock.release(t, op.all_levels, now)[1]
                    if granted:
                        self._hand_to(op.lock, granted)
                else:
                    h = self._handlers.get(cls)
                    if h is None:
                        raise BadYield(self._bad_yield_message(t, op))
                    if not h(c, t, op):
                        return
                if step_each_op:
                    self._push_cont(c, now)
                    return
        finally:
            self.ops += n
            t.nops += n

    def _bad_yield_message(self, t: Thread, op: object) -> str:
        frame = innermost_frame(t)
        where = ""
        if frame is not None:
            where = f" in {frame.f_code.co_name} ({frame.f_code.co_filename}:{frame.f_lineno})"
        return f"thread {t.name} yielded {op!r}, which is not an op{where}"

    # Each op handler returns True to go straight on with the thread, False when the
    # thread now waits for something (time, a lock, a wakeup, acknowledgements).

    def _op_run(self, c: Cpu, t: Thread, op: Run) -> bool:
        ns = op.ns
        if ns <= 0:
            if ns < 0:
                raise ValueError(f"thread {t.name}: Run of negative time {ns}")
            return True
        now = self.now
        end = now + ns
        if op.mode == USER:
            if end > c.quantum_end:
                # The quantum ends inside this user run: stop there and see who waits.
                qend = c.quantum_end if c.quantum_end > now else now
                t.run_left = end - qend
                end = qend
                c.slow = True
            c.acct[M_USER] += end - now
            t.user_ns += end - now
            self._push_cont(c, end, True)
            return False
        c.acct[M_SYS] += ns
        t.sys_ns += ns
        self._push_cont(c, end)
        return False

    def _continue_user_run(self, c: Cpu, t: Thread) -> None:
        # Only a quantum that is over ends the run: a thread just switched back in to
        # finish a cut run has a fresh quantum and must not be sent away at once.
        if self.now >= c.quantum_end:
            if c.runq:
                self._switch_out(c, t)
                t.state = RUNNABLE
                c.runq.append(t)
                self._dispatch(c)
                return
            c.quantum_end = self.now + self.quantum
        left = t.run_left
        t.run_left = 0
        self._op_run(c, t, Run(left, USER))

    def _op_acquire_waits(self, c: Cpu, t: Thread, op: Acquire) -> bool:
        """The rest of Acquire once the plain attempt failed (or was never made, for a
        multi-level take): wait, or take several levels."""
        lock = op.lock
        if op.count == 1:
            got = False
        elif isinstance(lock, TicketLock):
            got = lock.acquire_count(t, op.count, self.now)
        else:
            raise LockError(f"{t.name}: {lock.name} is not recursive, cannot take {op.count}")
        if got:
            return True
        self._wait_for(c, t, lock)
        return False

    def _wait_for(self, c: Cpu, t: Thread, lock: Lock) -> None:
        if lock.spins:
            self._spin_begin(c, lock)
        else:
            self._check_may_sleep(t, None, lock.name)
            t.wchan = lock
            t.wmesg = lock.name
            t.state = SLEEPING
            self._switch_out(c, t)
            self._dispatch(c)

    def _hand_to(self, lock: Lock, granted: Sequence[Thread]) -> None:
        """Waiters that were just given ``lock`` go on: a spinner on its CPU once the
        release reaches it, ``lock_handoff_ns`` later (the lock's cache line moves from
        the releasing CPU to the spinner's, which spins until then); a sleeper by
        becoming runnable (its switch costs far more than the line)."""
        h = self.handoff
        for w in granted:
            if w.state == ONPROC:
                c = self.cpus[w.cpu]  # type: ignore[index]
                if h:
                    self._account_handoff(c, lock, h)
                self._push_cont(c, self.now + h)
            else:
                w.wchan = None
                self.make_runnable(w, resched=True)

    def _account_handoff(self, c: Cpu, lock: Lock, h: int) -> None:
        """The lock granted the spinner on ``c`` at the release; it holds it only once
        the line arrives, ``h`` later. Its wait takes the transfer in and its hold
        starts then, as a waiter-side lock profiler (lockstat) would count them."""
        lock.stats.extend_wait(self.now - c.lock_wait_from, h)
        if isinstance(lock, (TicketLock, SpinMutex)):
            lock.since += h

    def _check_may_sleep(self, t: Thread, interlock: Lock | None, what: str) -> None:
        if t.nosleep:
            raise LockError(f"{t.name}: sleeping on {what} where it may not sleep")
        for lock in t.held:
            if isinstance(lock, SpinMutex) and lock is not interlock:
                raise LockError(f"{t.name}: sleeping on {what} with spin mutex {lock.name} held")

    def _op_sleep(self, c: Cpu, t: Thread, op: Sleep) -> bool:
        il = op.interlock
        self._check_may_sleep(t, il, op.wmesg)
        if il is not None:
            if not il.holds(t):
                raise LockError(f"msleep: interlock {il.name} not held by {t.name}")
            _, granted = il.release(t, False, self.now)
            if granted:
                self._hand_to(il, granted)
            t.interlock = il
        t.state = SLEEPING
        t.wchan = op.chan
        t.wmesg = op.wmesg
        self.sleepq.setdefault(op.chan, []).append(t)
        self._switch_out(c, t)
        self._dispatch(c)
        return False

    def _op_spinwait(self, c: Cpu, t: Thread, op: SpinWait) -> bool:
        self._spin_begin(c, None)
        t.wchan = op.chan
        t.wmesg = op.wmesg
        self.spinq.setdefault(op.chan, []).append(t)
        return False

    def _op_wakeup(self, c: Cpu, t: Thread, op: Wakeup) -> bool:
        self.wakeup(op.chan)
        return True

    def _op_ipi(self, c: Cpu, t: Thread, op: Ipi) -> bool:
        if not op.targets:
            return True
        ncpu = len(self.cpus)
        for x in op.targets:
            if x == c.index or not 0 <= x < ncpu:
                raise ValueError(f"{t.name}: IPI target cpu{x} is invalid from cpu{c.index}")
        self._spin_begin(c, None)
        c.acks_pending = len(op.targets)
        at = self.now + self.config.ipi_latency_ns
        for x in op.targets:
            self.ipis += 1
            self._push(at, K_INTR, x, (c.index, op))
        return False

    def _on_intr(self, c: Cpu, payload: tuple[int, Ipi]) -> None:
        """An IPI reaches ``c``: its handler runs after any handler already running,
        and whatever ``c`` was doing is pushed back by the handler's time."""
        h = payload[1].handler_ns
        start = self.now if self.now > c.intr_until else c.intr_until
        end = start + h
        c.intr_until = end
        c.acct[M_INTR] += h
        if c.spin_since >= 0:
            c.spin_since += h
        if c.idle_since >= 0:
            c.idle_since += h
        if c.cont_at is not None:
            self._push_cont(c, c.cont_at + h, c.in_user)
        self._push(end, K_INTR_DONE, c.index, payload)

    def _on_intr_done(self, c: Cpu, payload: tuple[int, Ipi]) -> None:
        sender, op = payload
        if op.action is not None:
            op.action(c.index)
        s = self.cpus[sender]
        s.acks_pending -= 1
        if s.acks_pending == 0:
            self._push_cont(s, self.now)

    def _op_broadcast(self, c: Cpu, t: Thread, op: Broadcast) -> bool:
        if op.count <= 0:
            return True
        self.broadcasts += op.count
        # Priced at one sender, then rescaled with everyone else for the real number.
        total = op.base_ns * op.count
        c.acct[M_SYS] += total
        t.sys_ns += total
        c.bcast = op
        c.slow = True
        self._push_cont(c, self.now + total)
        self.bcast_cpus.append(c)
        self._rescale_broadcasts()
        return False

    def _stall_receivers(self, sender: Cpu, stall: int) -> None:
        """A broadcast has completed on every other CPU's TLB: one running a thread
        then loses ``stall`` in what it was doing (user or kernel code), charged to
        that, as a core held up by the invalidations it had to process. Simplified:
        charged at the end of the broadcast to the CPUs running then. An idle CPU
        loses nothing anyone sees; a spinner's or another sender's time is already
        waiting (a concurrent sender's cost is the per-sender slope)."""
        for x in self.cpus:
            t = x.thread
            if x is sender or t is None or x.cont_at is None:
                continue
            if x.bcast is not None or x.spin_since >= 0 or x.acks_pending:
                continue
            if x.in_user:
                x.acct[M_USER] += stall
                t.user_ns += stall
            else:
                x.acct[M_SYS] += stall
                t.sys_ns += stall
            self._push_cont(x, x.cont_at + stall, x.in_user)

    def _rescale_broadcasts(self) -> None:
        """The number of CPUs broadcasting changed: what is left of each broadcast in
        flight now goes at the rate for the new number (cost-anchors row 10: latency
        grows almost linearly with concurrent senders). The change in cost is charged
        to the sender as sys time."""
        n = len(self.bcast_cpus)
        now = self.now
        for x in self.bcast_cpus:
            op = x.bcast
            left = x.cont_at - now  # type: ignore[operator]
            if left <= 0 or x.bcast_rate == n:
                x.bcast_rate = n
                continue
            old = op.base_ns + op.per_sender_ns * (x.bcast_rate - 1)  # type: ignore[union-attr]
            new = op.base_ns + op.per_sender_ns * (n - 1)  # type: ignore[union-attr]
            x.bcast_rate = n
            if old <= 0 or old == new:
                continue
            new_left = left * new // old
            x.acct[M_SYS] += new_left - left
            x.thread.sys_ns += new_left - left  # type: ignore[union-attr]
            self._push_cont(x, now + new_left)

    def _op_yield(self, c: Cpu, t: Thread, op: Yield) -> bool:
        if not c.runq or self.now < c.quantum_end:
            return True
        self._switch_out(c, t)
        t.state = RUNNABLE
        c.runq.append(t)
        self._dispatch(c)
        return False

    def _op_exit(self, c: Cpu, t: Thread, op: Exit) -> bool:
        t.gen.close()
        self._thread_exit(c, t)
        return False

    def _thread_exit(self, c: Cpu, t: Thread) -> None:
        if t.held:
            names = ", ".join(lock.name for lock in t.held)
            raise LockError(f"{t.name} exited holding {names}")
        if self.log is not None:
            self.log.append((self.now, c.index, t.tid, "exit", ""))
        t.state = DEAD
        t.exit_ns = self.now
        self._leave_cpu(c, t)
        if self.exit_hook is not None:
            self.exit_hook(c.index, t)
        self._dispatch(c)

    # -- switching -------------------------------------------------------------------

    def _leave_cpu(self, c: Cpu, t: Thread) -> None:
        t.last_cpu = c.index
        t.cpu = None
        c.thread = None
        c.slow = False
        c.idle_since = self.now
        if self.switch_hook is not None:
            self.switch_hook(c.index, None)

    def _switch_out(self, c: Cpu, t: Thread) -> None:
        """``t`` leaves ``c``. Locks that are dropped across a switch (the kernel lock)
        are released with every level and remembered, as ``mi_switch`` does."""
        for lock in list(t.held):
            if lock.release_on_switch:
                depth = lock.depth(t)
                _, granted = lock.release(t, True, self.now)
                t.saved_depths.append((lock, depth))
                if granted:
                    self._hand_to(lock, granted)
        self._leave_cpu(c, t)

    def _dispatch(self, c: Cpu) -> None:
        """``c`` has no thread: take one from its queue, or from the longest other
        queue, or idle."""
        q = c.runq
        if not q:
            victim = None
            for x in self.cpus:
                if x.runq and (victim is None or len(x.runq) > len(victim.runq)):
                    victim = x
            if victim is None:
                if self.idle_hook is not None:
                    self.idle_hook(c.index)
                return
            q = victim.runq
        if len(q) > 1:
            i = self.chooser.choose(RUNQ, [f"{x.tid}" for x in q])
            t = q[i]
            del q[i]
        else:
            t = q.popleft()
        self._idle_end(c)
        c.dispatch_pending = False
        t.state = ONPROC
        t.cpu = c.index
        c.thread = t
        if self.switch_hook is not None:
            self.switch_hook(c.index, t)
        at = self.now
        if t is not c.last_thread:
            c.switches += 1
            c.last_thread = t
            at += self.ctxsw
            c.acct[M_SYS] += self.ctxsw
            t.sys_ns += self.ctxsw
        # The quantum starts when the thread does, after the switch.
        c.quantum_end = at + self.quantum
        # Through the heap, not a direct call: a chain of threads that exit or sleep at
        # once must not nest on the Python stack. Locks to retake and cut user runs
        # are the slow path's business.
        c.slow = bool(t.saved_depths or t.interlock is not None or t.run_left)
        self._push_cont(c, at)

    def _retake_locks(self, c: Cpu, t: Thread) -> bool:
        """Take back what the switch dropped: the kernel lock at its old depth, then a
        msleep interlock. Spins if taken; True once all are held."""
        now = self.now
        while t.saved_depths:
            lock, depth = t.saved_depths[0]
            if lock.holds(t):
                t.saved_depths.pop(0)
                continue
            if isinstance(lock, TicketLock):
                got = lock.acquire_count(t, depth, now)
            else:
                got = lock.acquire(t, EXCLUSIVE, now)
            if not got:
                self._spin_begin(c, lock)
                return False
            t.saved_depths.pop(0)
        il = t.interlock
        if il is not None:
            if il.holds(t) or il.acquire(t, EXCLUSIVE, now):
                t.interlock = None
            else:
                self._spin_begin(c, il)
                return False
        return True

    # -- end of run ------------------------------------------------------------------

    def blocked(self) -> list[tuple[Thread, str]]:
        """Threads that are neither dead nor runnable, with what they wait for."""
        out = []
        for t in self.threads:
            if t.state == SLEEPING:
                out.append((t, f"sleeping on {t.wmesg}"))
            elif t.state == ONPROC:
                c = self.cpus[t.cpu]  # type: ignore[index]
                if c.spin_since >= 0:
                    if c.spinning_on is not None:
                        what = c.spinning_on.name
                    elif t.wchan is not None:
                        what = t.wmesg
                    else:
                        what = "IPI acks"
                    out.append((t, f"spinning on {what}"))
        return out

    def _check_stuck(self) -> None:
        """Nothing is pending. A thread spinning on a CPU, or asleep on a lock, will
        never move again: that is a deadlock (design.md invariant 7). Threads asleep on
        a channel may be waiting for work on purpose; the kernel layer judges those."""
        stuck = [
            (t, why) for t, why in self.blocked() if t.state == ONPROC or isinstance(t.wchan, Lock)
        ]
        if stuck:
            desc = "; ".join(f"{t.name} {why}" for t, why in stuck)
            raise Deadlock(f"deadlock at t={self.now}ns: {desc}")
