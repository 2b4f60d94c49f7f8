"""The ops a simulated thread yields to the engine.

A simulated thread is a generator. Between two yields its code changes model state
directly, and nothing else runs in between, so that stretch is atomic. Each yield hands
the engine exactly one op from this module; the engine sends the op's result (``None``
for all of them) back when the op completes.

The set is kept small on purpose:

========== ================================================================
``Run``      consume CPU time, as user or sys time
``Acquire``  take a lock (spinning or sleeping, by the lock's kind)
``Release``  drop one hold on a lock
``Sleep``    sleep on a channel until a ``Wakeup`` of it
``Wakeup``   make every sleeper on a channel runnable (and every spin-waiter go on)
``SpinWait`` spin on the CPU until a ``Wakeup`` of a channel (a busy-wait on memory)
``Ipi``      interrupt other CPUs, run a handler there, wait for every ack
``Broadcast`` issue hardware-broadcast TLB invalidations and wait for them
``Yield``    a preemption point (``sched_pause``/``yield``)
``Exit``     the thread is dead (returning from the generator does the same)
========== ================================================================

Ops are frozen and slotted: kernel code may build one once and yield it many times.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from exitsim.engine.locks import Lock

#: CPU time modes a thread can run in.
USER = 0
SYS = 1

#: Lock modes for ``Acquire``: spin mutexes and the kernel lock ignore it.
EXCLUSIVE = 0
SHARED = 1


@dataclass(frozen=True, slots=True)
class Run:
    """Consume ``ns`` nanoseconds of CPU as ``mode`` (USER or SYS).

    User runs can be preempted when the quantum ends and another thread waits;
    kernel (SYS) runs are not preemptible, as in OpenBSD, only at a ``Yield``.
    """

    ns: int
    mode: int = SYS


@dataclass(frozen=True, slots=True)
class Acquire:
    """Take ``lock``; ``mode`` is EXCLUSIVE or SHARED (read/write locks only).
    ``count`` > 1 takes that many levels at once (the kernel lock's
    ``__mp_acquire_count``)."""

    lock: Lock
    mode: int = EXCLUSIVE
    count: int = 1


@dataclass(frozen=True, slots=True)
class Release:
    """Drop one hold of ``lock`` (or every hold, with ``all_levels``)."""

    lock: Lock
    all_levels: bool = False


@dataclass(frozen=True, slots=True)
class Sleep:
    """Sleep on ``chan``. ``interlock``, a spin mutex held by the caller, is dropped
    atomically with going to sleep and taken back before the op completes (msleep)."""

    chan: Hashable
    interlock: Lock | None = None
    wmesg: str = "sleep"


@dataclass(frozen=True, slots=True)
class SpinWait:
    """Spin on this CPU until ``chan`` is woken: a busy-wait on a memory word, such as
    arm64 ``pmap_purge`` spinning while ``pm_active != 1``. The caller re-checks its
    condition after each wake (``while cond: yield SpinWait(chan)``); whoever changes
    the word does ``Wakeup(chan)``."""

    chan: Hashable
    wmesg: str = "spin"


@dataclass(frozen=True, slots=True)
class Wakeup:
    """Make every thread sleeping on ``chan`` runnable (wakeup(9))."""

    chan: Hashable


@dataclass(frozen=True, slots=True)
class Ipi:
    """Interrupt the CPUs in ``targets``; each runs ``handler_ns`` of interrupt work,
    calls ``action(cpu_index)`` and acknowledges. The sender spins until all acks."""

    targets: tuple[int, ...]
    handler_ns: int
    action: Callable[[int], Any] | None = None
    label: str = "ipi"


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Issue ``count`` hardware-broadcast invalidations (arm64 ``tlbi ...is``).

    Each costs ``base_ns + per_sender_ns * (n - 1)`` of the sender's sys time, where n
    is the number of CPUs broadcasting meanwhile; when n changes, what is left of every
    broadcast in flight is repriced (cost-anchors row 10: latency grows almost linearly
    with concurrent senders). Every other CPU that is running a thread (and is not
    broadcasting or spinning itself) is held up ``receiver_ns`` per invalidation, in
    whatever it was doing. ``action()`` runs when the last one completes, i.e. after
    the trailing ``dsb ish``.
    """

    count: int
    base_ns: int
    per_sender_ns: int = 0
    action: Callable[[], Any] | None = None
    label: str = "tlbi"
    receiver_ns: int = 0


@dataclass(frozen=True, slots=True)
class Yield:
    """A preemption point: switch away if the quantum is over and others wait."""


@dataclass(frozen=True, slots=True)
class Exit:
    """The thread is dead; its CPU picks another thread."""


Op = Run | Acquire | Release | Sleep | SpinWait | Wakeup | Ipi | Broadcast | Yield | Exit

#: Reusable instances of the ops that carry no data.
YIELD = Yield()
EXIT = Exit()
