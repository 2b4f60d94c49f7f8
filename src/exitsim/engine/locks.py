"""Locks as the engine sees them: who holds, who waits, and in which order they get it.

The locks live in the engine, not in ``kern/``, because the engine has to know what a
waiter does while it waits: a spinner keeps its CPU and burns it (spin time, charged to
the spinner as sys time, as a real kernel does), a sleeper gives its CPU up. That decides
the timing and, for the interleaving explorer, which CPUs can move. ``engine/sync.py``
gives the same objects their OpenBSD names (``mtx_enter``, ``KERNEL_LOCK``,
``__mp_release_all``, ``rw_enter_write``, ...).

One base class owns the waiter queue and the statistics; the kinds differ only in their
grant rule (``_can_grant``) and in what a release hands on.

=> Every method here runs between two yields of some thread, so it is atomic.
=> Misuse raises ``LockError`` naming the lock, the thread and what was wrong.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from exitsim.engine.errors import LockError
from exitsim.engine.ops import EXCLUSIVE, SHARED

if TYPE_CHECKING:
    from exitsim.engine.thread import Thread


@dataclass(slots=True)
class LockStats:
    """Counters one lock keeps; times are integer nanoseconds of simulated time."""

    acquisitions: int = 0
    contended: int = 0
    wait_ns: int = 0
    max_wait_ns: int = 0
    hold_ns: int = 0
    max_hold_ns: int = 0
    #: The waits one by one, counted in log2 buckets: element i counts the waits of
    #: w ns with ``w.bit_length() == i`` (2**(i-1) <= w < 2**i; element 0, waits of
    #: 0 ns). Not in ``as_dict``; the Result reports it as ``wait_log2_hist``.
    wait_hist: list[int] = field(default_factory=list)

    def add_wait(self, waited: int) -> None:
        """One waiter granted the lock after ``waited`` ns."""
        self.wait_ns += waited
        if waited > self.max_wait_ns:
            self.max_wait_ns = waited
        self._count(waited, 1)

    def extend_wait(self, granted: int, by: int) -> None:
        """A wait counted at its grant as ``granted`` ns lasted ``by`` ns more (a
        spinner's cache-line hand-off): its total, its maximum and its bucket."""
        waited = granted + by
        self.wait_ns += by
        if waited > self.max_wait_ns:
            self.max_wait_ns = waited
        if waited.bit_length() != granted.bit_length():
            self._count(granted, -1)
            self._count(waited, 1)

    def _count(self, waited: int, n: int) -> None:
        b = waited.bit_length()
        hist = self.wait_hist
        if b >= len(hist):
            hist.extend([0] * (b + 1 - len(hist)))
        hist[b] += n

    def as_dict(self) -> dict[str, int]:
        return {
            "acquisitions": self.acquisitions,
            "contended": self.contended,
            "wait_ns": self.wait_ns,
            "max_wait_ns": self.max_wait_ns,
            "hold_ns": self.hold_ns,
            "max_hold_ns": self.max_hold_ns,
        }


class Lock:
    """Base: a FIFO queue of waiters and the statistics.

    Subclasses set ``spins`` (waiters keep their CPU) and ``release_on_switch`` (every
    hold is dropped when the holder leaves its CPU and taken back when it returns, as
    ``mi_switch`` does with the kernel lock), and implement the grant rule.
    """

    __slots__ = ("name", "stats", "waiters")

    spins: bool = True
    release_on_switch: bool = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.stats = LockStats()
        # (thread, mode, time it started waiting), in arrival order.
        self.waiters: deque[tuple[Thread, int, int]] = deque()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    # -- the engine's interface ----------------------------------------------------

    def acquire(self, t: Thread, mode: int, now: int) -> bool:
        """Take the lock for ``t`` now if the grant rule allows, else queue ``t``."""
        self._check_acquire(t, mode)
        if not self.waiters and self._can_grant(t, mode):
            self._grant(t, mode, now)
            self.stats.acquisitions += 1
            return True
        self.stats.contended += 1
        self.waiters.append((t, mode, now))
        return False

    def release(self, t: Thread, all_levels: bool, now: int) -> tuple[int, Sequence[Thread]]:
        """Drop ``t``'s hold (or all of them). Returns the number of levels dropped and
        the waiters that now hold the lock, in the order they got it."""
        levels = self._drop(t, all_levels, now)
        return levels, self._hand_on(now)

    def holds(self, t: Thread) -> bool:
        raise NotImplementedError

    def depth(self, t: Thread) -> int:
        """How many levels ``t`` holds (0 or 1 unless the lock is recursive)."""
        return 1 if self.holds(t) else 0

    # -- the grant rule, per kind --------------------------------------------------

    def _check_acquire(self, t: Thread, mode: int) -> None:
        pass

    def _can_grant(self, t: Thread, mode: int) -> bool:
        raise NotImplementedError

    def _grant(self, t: Thread, mode: int, now: int) -> None:
        raise NotImplementedError

    def _drop(self, t: Thread, all_levels: bool, now: int) -> int:
        raise NotImplementedError

    def _hand_on(self, now: int) -> list[Thread]:
        """Grant to queued waiters, in order, while the rule allows."""
        granted: list[Thread] = []
        while self.waiters:
            t, mode, since = self.waiters[0]
            if not self._can_grant(t, mode):
                break
            self.waiters.popleft()
            self._grant(t, mode, now)
            st = self.stats
            st.acquisitions += 1
            st.add_wait(now - since)
            granted.append(t)
        return granted

    def _account_hold(self, since: int, now: int) -> None:
        held = now - since
        st = self.stats
        st.hold_ns += held
        if held > st.max_hold_ns:
            st.max_hold_ns = held


class SpinMutex(Lock):
    """A spin mutex (``struct mutex``): not recursive; waiters burn their CPU.

    OpenBSD's mutex is not FIFO; here waiters get it in arrival order so that a run is
    repeatable and no waiter starves, which is the fair baseline to measure against.
    """

    __slots__ = ("owner", "since")

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.owner: Thread | None = None
        self.since = 0

    def holds(self, t: Thread) -> bool:
        return self.owner is t

    def _check_acquire(self, t: Thread, mode: int) -> None:
        if self.owner is t:
            raise LockError(f"mtx_enter: recursion on {self.name} by {t.name}")

    def _can_grant(self, t: Thread, mode: int) -> bool:
        return self.owner is None

    def _grant(self, t: Thread, mode: int, now: int) -> None:
        self.owner = t
        self.since = now
        t.held.append(self)

    def _drop(self, t: Thread, all_levels: bool, now: int) -> int:
        if self.owner is not t:
            holder = self.owner.name if self.owner else "nobody"
            raise LockError(f"mtx_leave: {self.name} not held by {t.name} (held by {holder})")
        self.owner = None
        t.held.remove(self)
        self._account_hold(self.since, now)
        return 1


class TicketLock(Lock):
    """OpenBSD's ``__mp_lock``: the kernel lock. A ticket lock, recursive for its
    holder; waiters spin and are served strictly in ticket (arrival) order.

    The real lock counts depth per CPU. Here the depth belongs to the holding thread;
    that is the same thing because every hold is dropped when the holder leaves its
    CPU and taken back when it runs again (``release_on_switch``), as ``mi_switch``
    does with ``__mp_release_all``/``__mp_acquire_count``.
    """

    __slots__ = ("owner", "since", "_depth")

    release_on_switch = True

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.owner: Thread | None = None
        self.since = 0
        self._depth = 0

    def holds(self, t: Thread) -> bool:
        return self.owner is t

    def depth(self, t: Thread) -> int:
        return self._depth if self.owner is t else 0

    # NOTE: acquire and release are written out for this lock, not built from the
    # base class's steps, for speed: the kernel lock is the hottest lock of a run.
    def acquire(self, t: Thread, mode: int, now: int) -> bool:
        owner = self.owner
        if owner is None:
            if not self.waiters:
                self.owner = t
                self.since = now
                self._depth = 1
                t.held.append(self)
                if t.pending_depth:
                    self._apply_pending(t)
                self.stats.acquisitions += 1
                return True
        elif owner is t:
            # Recursion only bumps the depth and never waits: no ticket is taken.
            self._depth += 1
            return True
        self.stats.contended += 1
        self.waiters.append((t, mode, now))
        return False

    def release(self, t: Thread, all_levels: bool, now: int) -> tuple[int, Sequence[Thread]]:
        if self.owner is not t:
            holder = self.owner.name if self.owner else "nobody"
            raise LockError(f"__mp_unlock: {self.name} not held by {t.name} (held by {holder})")
        if all_levels:
            levels = self._depth
        else:
            levels = 1
            if self._depth > 1:
                self._depth -= 1
                return levels, ()
        t.held.remove(self)
        st = self.stats
        held = now - self.since
        st.hold_ns += held
        if held > st.max_hold_ns:
            st.max_hold_ns = held
        if not self.waiters:
            self.owner = None
            self._depth = 0
            return levels, ()
        # The next ticket is served: exactly one waiter goes on.
        w, _, since = self.waiters.popleft()
        self.owner = w
        self.since = now
        self._depth = 1
        w.held.append(self)
        if w.pending_depth:
            self._apply_pending(w)
        st.acquisitions += 1
        st.add_wait(now - since)
        return levels, (w,)

    def acquire_count(self, t: Thread, count: int, now: int) -> bool:
        """Take ``count`` levels at once (``__mp_acquire_count``); the levels above the
        first are granted with the first."""
        if count < 1:
            raise LockError(f"__mp_acquire_count: count {count} on {self.name}")
        got = self.acquire(t, EXCLUSIVE, now)
        t.pending_depth = count - 1
        if got:
            self._apply_pending(t)
        return got

    def _apply_pending(self, t: Thread) -> None:
        if t.pending_depth:
            self._depth += t.pending_depth
            t.pending_depth = 0

    def _can_grant(self, t: Thread, mode: int) -> bool:
        return self.owner is None

    def _grant(self, t: Thread, mode: int, now: int) -> None:
        self.owner = t
        self.since = now
        self._depth = 1
        t.held.append(self)
        self._apply_pending(t)

    def _drop(self, t: Thread, all_levels: bool, now: int) -> int:
        raise NotImplementedError  # release() is written out above


class RwLock(Lock):
    """A sleeping read/write lock (``struct rwlock``, as ``vm_map_lock`` uses).

    Waiters sleep. Grants are FIFO: a queued writer blocks later readers, and on release
    the head of the queue is served, a run of readers together.
    """

    __slots__ = ("writer", "readers", "since")

    spins = False

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.writer: Thread | None = None
        self.readers: list[Thread] = []
        self.since = 0

    def holds(self, t: Thread) -> bool:
        return self.writer is t or t in self.readers

    def _check_acquire(self, t: Thread, mode: int) -> None:
        if self.holds(t):
            raise LockError(f"rw_enter: {self.name} already held by {t.name}")
        if mode not in (EXCLUSIVE, SHARED):
            raise LockError(f"rw_enter: bad mode {mode} on {self.name}")

    def _can_grant(self, t: Thread, mode: int) -> bool:
        if self.writer is not None:
            return False
        return mode == SHARED or not self.readers

    def _grant(self, t: Thread, mode: int, now: int) -> None:
        if self.writer is None and not self.readers:
            self.since = now
        if mode == EXCLUSIVE:
            self.writer = t
        else:
            self.readers.append(t)
        t.held.append(self)

    def _drop(self, t: Thread, all_levels: bool, now: int) -> int:
        if self.writer is t:
            self.writer = None
        elif t in self.readers:
            self.readers.remove(t)
        else:
            raise LockError(f"rw_exit: {self.name} not held by {t.name}")
        t.held.remove(self)
        if self.writer is None and not self.readers:
            self._account_hold(self.since, now)
        return 1
