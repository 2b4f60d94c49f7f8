"""The engine: simulated CPUs running generator threads, in timed or untimed mode.

All scheduling hangs on one heap of ``(time_ns, seq, kind, a, b)``. ``seq`` grows by one
per push, so entries due at the same nanosecond pop in the order they were pushed and
two entries never compare past it: the same config and seed give the same run.

Timed mode pops the heap in order. Untimed mode (the interleaving explorer's) lets the
chooser pick any pending step, in any order; time still counts but means nothing.

A CPU is in one accounting mode at a time (user, sys, spin, idle, or interrupt);
``_set_mode`` closes the last stretch, so per-CPU user+sys+spin+idle always adds up to
the time that passed. Interrupt time is reported inside sys and on its own as ``intr``.
A thread is charged for what its CPU did while it was the CPU's thread, spinning
included (as sys), interrupts excluded.

=> Model code runs inside ``gen.send``; it must not call back into the engine except
   through ops and the few public helpers (``spawn``, ``make_runnable``, ``call_at``).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable
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
    Wakeup,
    Yield,
)
from exitsim.engine.thread import DEAD, ONPROC, RUNNABLE, SLEEPING, KPath, Thread

# CPU accounting modes; M_USER/M_SYS equal the ops' USER/SYS so a Run sets its mode.
M_USER = 0
M_SYS = 1
M_SPIN = 2
M_IDLE = 3
M_INTR = 4
MODE_NAMES = ("user", "sys", "spin", "idle", "intr")

# Heap entry kinds. When two entries fall on the same nanosecond, seq decides.
K_CONT = 0  # a CPU goes on with its thread (token must match)
K_DISPATCH = 1  # an idle CPU picks a thread
K_INTR = 2  # an IPI reaches a CPU
K_INTR_DONE = 3  # its handler finishes and acknowledges
K_CALL = 4  # a plain callback (timers, workload arrivals)
KIND_NAMES = ("cont", "dispatch", "intr", "intr_done", "call")


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """What the engine itself needs to know; costs come from the machine profile.

    ``quantum_ns`` default: OpenBSD's ``roundrobin`` runs every hz/10 ticks, i.e. 100 ms
    (sched_bsd.c); ``ctxsw_ns`` and ``ipi_latency_ns`` are set by the arch profile.
    """

    ncpu: int
    quantum_ns: int = 100_000_000
    ctxsw_ns: int = 0
    ipi_latency_ns: int = 0
    step_each_op: bool = False
    record: bool = False

    def __post_init__(self) -> None:
        if self.ncpu < 1:
            raise ValueError(f"ncpu must be at least 1 (got {self.ncpu})")
        for name in ("quantum_ns", "ctxsw_ns", "ipi_latency_ns"):
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
        "mode",
        "since",
        "acct",
        "token",
        "cont_at",
        "dispatch_pending",
        "quantum_end",
        "acks_pending",
        "bcast",
        "intr_until",
        "saved_mode",
        "spinning_on",
        "switches",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self.thread: Thread | None = None
        self.last_thread: Thread | None = None
        self.runq: deque[Thread] = deque()
        self.mode = M_IDLE
        self.since = 0
        self.acct = [0, 0, 0, 0, 0]
        self.token = 0
        self.cont_at: int | None = None
        self.dispatch_pending = False
        self.quantum_end = 0
        self.acks_pending = 0
        self.bcast: Broadcast | None = None
        self.intr_until = 0
        self.saved_mode = M_IDLE
        self.spinning_on: Lock | None = None
        self.switches = 0

    def __repr__(self) -> str:
        return f"<Cpu {self.index} {MODE_NAMES[self.mode]} {self.thread!r}>"


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
        self.broadcasting = 0
        self.events = 0
        self.ops = 0
        self.ipis = 0
        self.broadcasts = 0
        self.log: list[tuple[Any, ...]] | None = [] if config.record else None
        self.quantum = config.quantum_ns
        self.ctxsw = config.ctxsw_ns
        self.step_each_op = config.step_each_op
        self._handlers: dict[type, Callable[[Cpu, Thread, Any], bool]] = {
            Run: self._op_run,
            Acquire: self._op_acquire,
            Release: self._op_release,
            Sleep: self._op_sleep,
            Wakeup: self._op_wakeup,
            Ipi: self._op_ipi,
            Broadcast: self._op_broadcast,
            Yield: self._op_yield,
            Exit: self._op_exit,
        }

    # -- public helpers --------------------------------------------------------------

    def spawn(self, name: str, gen: KPath, at: int | None = None, cls: type = Thread,
              **fields: Any) -> Thread:
        """Create a thread running ``gen``; it becomes runnable at ``at`` (default now)."""
        t = cls(len(self.threads) + 1, name, gen, **fields)
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

    def make_runnable(self, t: Thread) -> None:
        """Put ``t`` on a run queue: an idle CPU's if there is one (its last CPU first)."""
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

    def wakeup(self, chan: object) -> int:
        """wakeup(9) from outside a thread (an interrupt, a timer). Returns how many."""
        sleepers = self.sleepq.pop(chan, None)
        if not sleepers:
            return 0
        for t in sleepers:
            t.wchan = None
            self.make_runnable(t)
        return len(sleepers)

    # -- the loops -------------------------------------------------------------------

    def run(self, until: int | None = None, max_events: int | None = None) -> None:
        """Timed mode: pop the heap in (time, seq) order until it is empty."""
        heap = self.heap
        pop = heapq.heappop
        step = self._step
        n = 0
        while heap:
            if until is not None and heap[0][0] > until:
                break
            entry = pop(heap)
            self.now = entry[0]
            step(entry)
            n += 1
            if max_events is not None and n >= max_events:
                break
        self.events += n
        if not heap:
            self._check_stuck()

    def pending(self) -> list[tuple[str, tuple[int, int, int, Any, Any]]]:
        """Untimed mode: the steps that could happen next, labelled, in a fixed order
        (by kind, then CPU). Stale heap entries are dropped on the way."""
        live = [e for e in self.heap if self._live(e)]
        if len(live) != len(self.heap):
            self.heap[:] = live
            heapq.heapify(self.heap)
        out = [(self._label(e), e) for e in live]
        # CPU steps first, by CPU; then interrupts by target CPU; then timers by seq.
        out.sort(key=lambda x: (x[1][2] > K_DISPATCH, x[1][2] if x[1][2] > K_DISPATCH else 0,
                                x[1][3] if x[1][2] != K_CALL else x[1][1]))
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
        """Close every CPU's accounting at ``now`` (the makespan)."""
        for c in self.cpus:
            self._set_mode(c, c.mode)

    # -- heap ------------------------------------------------------------------------

    def _push(self, at: int, kind: int, a: Any, b: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (at, self.seq, kind, a, b))

    def _push_cont(self, c: Cpu, at: int) -> None:
        if at < c.intr_until:
            at = c.intr_until
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
        if kind == K_INTR:
            return f"i{e[3]}"
        if kind == K_INTR_DONE:
            return f"a{e[3]}"
        return f"t{e[1]}"

    def _step(self, e: tuple[int, int, int, Any, Any]) -> None:
        kind = e[2]
        if kind == K_CONT:
            c = self.cpus[e[3]]
            if c.token != e[4]:
                return  # superseded: an interrupt moved it
            c.cont_at = None
            self._on_cont(c)
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

    # -- accounting ------------------------------------------------------------------

    def _set_mode(self, c: Cpu, mode: int) -> None:
        now = self.now
        dt = now - c.since
        if dt:
            old = c.mode
            c.acct[old] += dt
            t = c.thread
            if t is not None and old != M_IDLE and old != M_INTR:
                if old == M_USER:
                    t.user_ns += dt
                else:
                    t.sys_ns += dt
                    if old == M_SPIN:
                        t.spin_ns += dt
        c.since = now
        c.mode = mode

    # -- running a thread ------------------------------------------------------------

    def _on_cont(self, c: Cpu) -> None:
        t = c.thread
        if t is None:
            return
        if c.bcast is not None:
            op = c.bcast
            c.bcast = None
            self.broadcasting -= 1
            if op.action is not None:
                op.action()
        if t.saved_depths or t.interlock is not None:
            if not self._retake_locks(c, t):
                return
        if t.run_left:
            self._continue_user_run(c, t)
            return
        self._resume(c, t)

    def _resume(self, c: Cpu, t: Thread) -> None:
        """Send into ``t``'s generator and handle ops until one takes time or blocks."""
        send = t.gen.send
        handlers = self._handlers
        log = self.log
        while True:
            try:
                op = send(None)
            except StopIteration as stop:
                t.result = stop.value
                self._thread_exit(c, t)
                return
            self.ops += 1
            h = handlers.get(type(op))
            if h is None:
                raise BadYield(self._bad_yield_message(t, op))
            if log is not None:
                log.append((self.now, c.index, t.tid, type(op).__name__))
            if not h(c, t, op):
                return
            if self.step_each_op:
                self._push_cont(c, self.now)
                return

    def _bad_yield_message(self, t: Thread, op: object) -> str:
        frame = t.gen.gi_frame
        where = ""
        # Walk down the yield-from chain to the function that really yielded.
        g: Any = t.gen
        while g is not None and getattr(g, "gi_yieldfrom", None) is not None:
            g = g.gi_yieldfrom
        frame = getattr(g, "gi_frame", None) or frame
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
        mode = op.mode
        if c.mode != mode:
            self._set_mode(c, mode)
        now = self.now
        end = now + ns
        if mode == USER and end > c.quantum_end:
            # The quantum ends inside this user run: stop there and see who waits.
            qend = c.quantum_end if c.quantum_end > now else now
            t.run_left = end - qend
            t.run_mode = USER
            end = qend
        self._push_cont(c, end)
        return False

    def _continue_user_run(self, c: Cpu, t: Thread) -> None:
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

    def _op_acquire(self, c: Cpu, t: Thread, op: Acquire) -> bool:
        lock = op.lock
        if lock.acquire(t, op.mode, self.now):
            return True
        self._wait_for(c, t, lock)
        return False

    def _wait_for(self, c: Cpu, t: Thread, lock: Lock) -> None:
        if lock.spins:
            self._set_mode(c, M_SPIN)
            c.spinning_on = lock
        else:
            self._check_may_sleep(t, None, lock.name)
            t.wchan = lock
            t.wmesg = lock.name
            t.state = SLEEPING
            self._switch_out(c, t)
            self._dispatch(c)

    def _op_release(self, c: Cpu, t: Thread, op: Release) -> bool:
        _, granted = op.lock.release(t, op.all_levels, self.now)
        if granted:
            self._hand_to(op.lock, granted)
        return True

    def _hand_to(self, lock: Lock, granted: list[Thread]) -> None:
        """Waiters that were just given ``lock`` go on: a spinner on its CPU, a
        sleeper by becoming runnable."""
        for w in granted:
            if w.state == ONPROC:
                wc = self.cpus[w.cpu]  # type: ignore[index]
                wc.spinning_on = None
                self._push_cont(wc, self.now)
            else:
                w.wchan = None
                self.make_runnable(w)

    def _check_may_sleep(self, t: Thread, interlock: Lock | None, what: str) -> None:
        for lock in t.held:
            if isinstance(lock, SpinMutex) and lock is not interlock:
                raise LockError(
                    f"{t.name}: sleeping on {what} with spin mutex {lock.name} held"
                )

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
        self._set_mode(c, M_SPIN)
        c.acks_pending = len(op.targets)
        at = self.now + self.config.ipi_latency_ns
        for x in op.targets:
            self.ipis += 1
            self._push(at, K_INTR, x, (c.index, op))
        return False

    def _on_intr(self, c: Cpu, payload: tuple[int, Ipi]) -> None:
        op = payload[1]
        start = self.now if self.now > c.intr_until else c.intr_until
        end = start + op.handler_ns
        if c.mode != M_INTR:
            c.saved_mode = c.mode
            self._set_mode(c, M_INTR)
        c.intr_until = end
        if c.cont_at is not None:
            # Whatever this CPU was doing finishes later by the handler's time.
            self._push_cont(c, c.cont_at + op.handler_ns)
        self._push(end, K_INTR_DONE, c.index, payload)

    def _on_intr_done(self, c: Cpu, payload: tuple[int, Ipi]) -> None:
        sender, op = payload
        if op.action is not None:
            op.action(c.index)
        if self.now >= c.intr_until and c.mode == M_INTR:
            self._set_mode(c, c.saved_mode)
        s = self.cpus[sender]
        s.acks_pending -= 1
        if s.acks_pending == 0:
            self._push_cont(s, self.now)

    def _op_broadcast(self, c: Cpu, t: Thread, op: Broadcast) -> bool:
        if op.count <= 0:
            return True
        self.broadcasting += 1
        self.broadcasts += op.count
        per = op.base_ns + op.per_sender_ns * (self.broadcasting - 1)
        if c.mode != M_SYS:
            self._set_mode(c, M_SYS)
        c.bcast = op
        self._push_cont(c, self.now + per * op.count)
        return False

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
            self.log.append((self.now, c.index, t.tid, "exit"))
        self._set_mode(c, M_IDLE)
        t.state = DEAD
        t.exit_ns = self.now
        t.cpu = None
        c.thread = None
        self._dispatch(c)

    # -- switching -------------------------------------------------------------------

    def _switch_out(self, c: Cpu, t: Thread) -> None:
        """``t`` leaves ``c``. Locks that are dropped across a switch (the kernel lock)
        are released with every level and remembered, as ``mi_switch`` does."""
        self._set_mode(c, M_IDLE)
        for lock in list(t.held):
            if lock.release_on_switch:
                depth = lock.depth(t)
                _, granted = lock.release(t, True, self.now)
                t.saved_depths.append((lock, depth))
                if granted:
                    self._hand_to(lock, granted)
        t.last_cpu = c.index
        t.cpu = None
        c.thread = None

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
                if c.mode != M_IDLE:
                    self._set_mode(c, M_IDLE)
                return
            q = victim.runq
        if len(q) > 1:
            i = self.chooser.choose(RUNQ, [f"{x.tid}" for x in q])
            t = q[i]
            del q[i]
        else:
            t = q.popleft()
        c.dispatch_pending = False
        t.state = ONPROC
        t.cpu = c.index
        c.thread = t
        c.quantum_end = self.now + self.quantum
        self._set_mode(c, M_SYS)
        at = self.now
        if t is not c.last_thread:
            c.switches += 1
            c.last_thread = t
            at += self.ctxsw
        # Through the heap, not a direct call: a chain of threads that exit or sleep at
        # once must not nest on the Python stack.
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
                self._set_mode(c, M_SPIN)
                c.spinning_on = lock
                return False
            t.saved_depths.pop(0)
        il = t.interlock
        if il is not None:
            if il.holds(t):
                t.interlock = None
            elif il.acquire(t, EXCLUSIVE, now):
                t.interlock = None
            else:
                self._set_mode(c, M_SPIN)
                c.spinning_on = il
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
                what = c.spinning_on.name if c.spinning_on else "IPI acks"
                out.append((t, f"spinning on {what}"))
        return out

    def _check_stuck(self) -> None:
        """Nothing is pending. A thread still on a CPU, or asleep on a lock, will never
        move again: that is a deadlock (design.md invariant 7). Threads asleep on a
        channel may be waiting for work on purpose; the kernel layer judges those."""
        stuck = [
            (t, why)
            for t, why in self.blocked()
            if t.state == ONPROC or isinstance(t.wchan, Lock)
        ]
        if stuck:
            desc = "; ".join(f"{t.name} {why}" for t, why in stuck)
            raise Deadlock(f"deadlock at t={self.now}ns: {desc}")

    def live_threads(self) -> Iterable[Thread]:
        return (t for t in self.threads if t.state != DEAD)
