"""Lock semantics, driven through the engine by generator threads that yield ops.

The locks model OpenBSD's spin mutex (``mtx_enter``), the kernel lock (``__mp_lock``, a
recursive ticket lock) and the sleeping ``rwlock`` (openbsd-exit-path.md sections 3 and 9).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from exitsim.engine.errors import LockError
from exitsim.engine.locks import RwLock, SpinMutex, TicketLock
from exitsim.engine.ops import (
    EXCLUSIVE,
    SHARED,
    USER,
    Acquire,
    Release,
    Run,
    Sleep,
    Wakeup,
)
from exitsim.engine.sched import M_SPIN, Engine, EngineConfig
from exitsim.engine.thread import Thread
from tests.enginekit import Body, run_to_end, spawn


def make_engine(ncpu: int = 2, **kw: Any) -> Engine:
    return Engine(EngineConfig(ncpu=ncpu, **kw))


def critical(
    eng: Engine, lock: Any, ns: int, grants: list[tuple[str, int]], mode: int = EXCLUSIVE
) -> Callable[[Thread], Body]:
    """A thread body: take ``lock``, note who got it when, hold it ``ns`` of sys, drop it."""

    def body(me: Thread) -> Body:
        yield Acquire(lock, mode)
        grants.append((me.name, eng.now))
        yield Run(ns)
        yield Release(lock)

    return body


# -- spin mutex ----------------------------------------------------------------------


def test_spin_mutex_recursion_raises_lock_error_naming_mutex_and_thread() -> None:
    """mtx_enter on a mutex the caller already owns panics (kern_lock.c mtx_enter)."""
    eng = make_engine()
    m = SpinMutex("uvm_mtx")

    def body(me: Thread) -> Body:
        yield Acquire(m)
        yield Acquire(m)

    spawn(eng, "p1", body)
    with pytest.raises(LockError, match=r"^mtx_enter: recursion on uvm_mtx by p1$"):
        eng.run()


@pytest.mark.parametrize(
    ("lock", "message"),
    [
        (SpinMutex("m"), r"^mtx_leave: m not held by p1 \(held by nobody\)$"),
        (
            TicketLock("kernel_lock"),
            r"^__mp_unlock: kernel_lock not held by p1 \(held by nobody\)$",
        ),
        (RwLock("vmmaplk"), r"^rw_exit: vmmaplk not held by p1$"),
    ],
    ids=["mutex", "kernel_lock", "rwlock"],
)
def test_releasing_a_lock_not_held_raises_lock_error(lock: Any, message: str) -> None:
    """Dropping a lock the caller does not hold is a lock-discipline error (design.md inv. 7)."""
    eng = make_engine()

    def body(me: Thread) -> Body:
        yield Release(lock)

    spawn(eng, "p1", body)
    with pytest.raises(LockError, match=message):
        eng.run()


def test_releasing_a_mutex_held_by_another_thread_names_the_holder() -> None:
    """mtx_leave by a non-owner names who really holds the mutex."""
    eng = make_engine()
    m = SpinMutex("m")

    def holder(me: Thread) -> Body:
        yield Acquire(m)
        yield Run(100)
        yield Release(m)

    def thief(me: Thread) -> Body:
        yield Run(10)
        yield Release(m)

    spawn(eng, "owner", holder)
    spawn(eng, "thief", thief)
    with pytest.raises(LockError, match=r"m not held by thief \(held by owner\)"):
        eng.run()


def test_thread_exiting_with_a_lock_held_raises_lock_error() -> None:
    """A thread may not die holding a lock (design.md invariant 7: counts balance)."""
    eng = make_engine()
    m = SpinMutex("m")

    def body(me: Thread) -> Body:
        yield Acquire(m)

    spawn(eng, "p1", body)
    with pytest.raises(LockError, match=r"^p1 exited holding m$"):
        eng.run()


# -- kernel lock (ticket lock) -------------------------------------------------------


def test_kernel_lock_recursion_bumps_depth_without_waiting() -> None:
    """__mp_lock by the holder only bumps the depth: no ticket, no spin (kern_lock.c)."""
    eng = make_engine(ncpu=1, ctxsw_ns=5)
    kl = TicketLock("kernel_lock")
    seen: list[tuple[int, int]] = []

    def body(me: Thread) -> Body:
        for _ in range(3):
            yield Acquire(kl)
            seen.append((kl.depth(me), eng.now))
        for _ in range(3):
            yield Release(kl)
            seen.append((kl.depth(me), eng.now))

    t = spawn(eng, "p1", body)
    run_to_end(eng)
    assert seen == [(1, 5), (2, 5), (3, 5), (2, 5), (1, 5), (0, 5)]
    assert kl.owner is None
    assert kl.stats.contended == 0
    assert t.spin_ns == 0
    assert eng.cpus[0].acct[M_SPIN] == 0


def test_kernel_lock_release_all_returns_depth_and_acquire_count_restores_it() -> None:
    """__mp_release_all returns the old depth; __mp_acquire_count takes it back at once."""
    eng = make_engine(ncpu=1)
    kl = TicketLock("kernel_lock")
    seen: dict[str, Any] = {}

    def body(me: Thread) -> Body:
        for _ in range(3):
            yield Acquire(kl)
        levels, granted = kl.release(me, True, eng.now)
        seen["levels"] = levels
        seen["granted"] = granted
        seen["after_release"] = (kl.depth(me), kl.owner, kl in me.held)
        seen["got"] = kl.acquire_count(me, levels, eng.now)
        seen["after_acquire"] = (kl.depth(me), kl.owner is me, me.pending_depth)
        yield Run(10)
        yield Release(kl, all_levels=True)
        seen["end"] = kl.depth(me)

    t = spawn(eng, "p1", body)
    run_to_end(eng)
    assert seen["levels"] == 3
    assert list(seen["granted"]) == []
    assert seen["after_release"] == (0, None, False)
    assert seen["got"] is True
    assert seen["after_acquire"] == (3, True, 0)
    assert seen["end"] == 0
    assert t.held == []


def test_kernel_lock_release_all_op_drops_every_level_at_once() -> None:
    """Release(all_levels=True) frees the kernel lock for a spinner in one step."""
    eng = make_engine(ncpu=2)
    kl = TicketLock("kernel_lock")
    grants: list[tuple[str, int]] = []

    def deep(me: Thread) -> Body:
        yield Acquire(kl)
        yield Acquire(kl)
        yield Run(100)
        yield Release(kl, all_levels=True)
        grants.append(("deep-dropped", eng.now))
        yield Run(50)

    spawn(eng, "deep", deep)
    waiter = spawn(eng, "waiter", critical(eng, kl, 10, grants), at=10)
    run_to_end(eng)
    assert grants == [("deep-dropped", 100), ("waiter", 100)]
    assert waiter.spin_ns == 90


def test_kernel_lock_spinners_are_served_in_ticket_order() -> None:
    """__mp_lock is a ticket lock: spinners get it strictly in arrival order."""
    eng = make_engine(ncpu=4)
    kl = TicketLock("kernel_lock")
    grants: list[tuple[str, int]] = []

    def holder(me: Thread) -> Body:
        yield Acquire(kl)
        yield Run(100)
        yield Release(kl)

    spawn(eng, "holder", holder)
    # Spawned in an order different from the order in which they reach the lock.
    threads = {
        name: spawn(eng, name, critical(eng, kl, 10, grants), at=at)
        for name, at in (("late", 30), ("early", 10), ("middle", 20))
    }
    run_to_end(eng)
    assert grants == [("early", 100), ("middle", 110), ("late", 120)]
    # Each spun from its arrival until its turn: 100-10, 110-20, 120-30.
    assert {n: t.spin_ns for n, t in threads.items()} == {"early": 90, "middle": 90, "late": 90}
    assert kl.stats.contended == 3


def test_kernel_lock_dropped_while_holder_sleeps_and_retaken_at_same_depth() -> None:
    """mi_switch releases every kernel-lock level and takes them all back after the
    sleep (openbsd-exit-path.md section 3)."""
    eng = make_engine(ncpu=2)
    kl = TicketLock("kernel_lock")
    seen: dict[str, Any] = {}

    def sleeper(me: Thread) -> Body:
        yield Acquire(kl)
        yield Acquire(kl)
        yield Sleep("chan")
        seen["sleeper_back"] = (eng.now, kl.depth(me), kl.owner is me)
        yield Release(kl)
        yield Release(kl)

    def other(me: Thread) -> Body:
        yield Run(10)
        yield Acquire(kl)
        seen["other_got"] = (eng.now, kl.depth(me), kl.depth(sl))
        yield Run(20)
        yield Release(kl)
        yield Wakeup("chan")

    sl = spawn(eng, "sleeper", sleeper)
    ot = spawn(eng, "other", other)
    run_to_end(eng)
    assert seen["other_got"] == (10, 1, 0)
    assert seen["sleeper_back"] == (30, 2, True)
    assert ot.spin_ns == 0
    assert kl.owner is None


def test_kernel_lock_sleeper_spins_to_retake_lock_held_by_waker() -> None:
    """A thread woken while another holds the kernel lock spins for it, then resumes
    with its old depth (__mp_acquire_count in mi_switch)."""
    eng = make_engine(ncpu=2)
    kl = TicketLock("kernel_lock")
    seen: dict[str, Any] = {}

    def sleeper(me: Thread) -> Body:
        yield Acquire(kl)
        yield Acquire(kl)
        yield Acquire(kl)
        yield Sleep("chan")
        seen["back"] = (eng.now, kl.depth(me))
        yield Release(kl, all_levels=True)

    def waker(me: Thread) -> Body:
        yield Run(10)
        yield Acquire(kl)
        yield Wakeup("chan")
        yield Run(40)
        yield Release(kl)

    sl = spawn(eng, "sleeper", sleeper)
    spawn(eng, "waker", waker)
    run_to_end(eng)
    assert seen["back"] == (50, 3)
    assert sl.spin_ns == 40


# -- read/write lock -----------------------------------------------------------------


def test_rwlock_readers_share_the_lock() -> None:
    """rw_enter_read: any number of readers hold the lock together."""
    eng = make_engine(ncpu=2)
    rw = RwLock("vmmaplk")
    grants: list[tuple[str, int]] = []
    readers = [spawn(eng, f"r{i}", critical(eng, rw, 100, grants, SHARED)) for i in (1, 2)]
    run_to_end(eng)
    assert grants == [("r1", 0), ("r2", 0)]
    assert [t.exit_ns for t in readers] == [100, 100]
    assert rw.stats.contended == 0
    assert rw.stats.acquisitions == 2


def test_rwlock_writer_excludes_readers_and_writers() -> None:
    """rw_enter_write: a writer holds the lock alone."""
    eng = make_engine(ncpu=3)
    rw = RwLock("vmmaplk")
    grants: list[tuple[str, int]] = []
    spawn(eng, "w1", critical(eng, rw, 100, grants))
    spawn(eng, "r1", critical(eng, rw, 30, grants, SHARED), at=10)
    spawn(eng, "w2", critical(eng, rw, 30, grants), at=20)
    run_to_end(eng)
    assert grants == [("w1", 0), ("r1", 100), ("w2", 130)]


def test_rwlock_queued_writer_blocks_later_readers() -> None:
    """Grants are FIFO: a reader arriving behind a queued writer waits even though only
    readers hold the lock; the readers behind the writer are then let in together."""
    eng = make_engine(ncpu=4)
    rw = RwLock("vmmaplk")
    grants: list[tuple[str, int]] = []
    spawn(eng, "r1", critical(eng, rw, 100, grants, SHARED))
    spawn(eng, "w", critical(eng, rw, 50, grants), at=10)
    spawn(eng, "r2", critical(eng, rw, 30, grants, SHARED), at=20)
    spawn(eng, "r3", critical(eng, rw, 30, grants, SHARED), at=30)
    run_to_end(eng)
    assert grants == [("r1", 0), ("w", 100), ("r2", 150), ("r3", 150)]


def test_rwlock_waiter_sleeps_and_its_cpu_runs_another_thread() -> None:
    """An rwlock waiter sleeps (rw_enter -> sleep_finish): it burns no spin time and
    its CPU runs other work meanwhile."""
    eng = make_engine(ncpu=2, record=True)
    rw = RwLock("vmmaplk")
    grants: list[tuple[str, int]] = []

    def other(me: Thread) -> Body:
        yield Run(100, USER)

    spawn(eng, "writer", critical(eng, rw, 1000, grants))
    reader = spawn(eng, "reader", critical(eng, rw, 10, grants, SHARED), at=10)
    third = spawn(eng, "third", other, at=50)
    run_to_end(eng)
    assert grants == [("writer", 0), ("reader", 1000)]
    assert reader.spin_ns == 0
    assert eng.cpus[1].acct[M_SPIN] == 0
    # The third thread ran on the reader's CPU while the reader slept.
    assert eng.log is not None
    third_ops = [(e[0], e[1]) for e in eng.log if e[2] == third.tid]
    assert third_ops == [(50, 1), (150, 1)]
    assert third.exit_ns == 150
    assert third.user_ns == 100


def test_rwlock_recursion_raises_lock_error() -> None:
    """rw_enter on an rwlock the caller already holds is an error (rw_enter panics)."""
    eng = make_engine()
    rw = RwLock("vmmaplk")

    def body(me: Thread) -> Body:
        yield Acquire(rw, SHARED)
        yield Acquire(rw, EXCLUSIVE)

    spawn(eng, "p1", body)
    with pytest.raises(LockError, match=r"^rw_enter: vmmaplk already held by p1$"):
        eng.run()


# -- sleeping and spin mutexes -------------------------------------------------------


def test_sleeping_with_a_spin_mutex_held_raises_lock_error_naming_the_mutex() -> None:
    """No sleeping while holding a spin mutex (design.md invariant 7; assertwaitok)."""
    eng = make_engine()
    m = SpinMutex("pmap_mtx")

    def body(me: Thread) -> Body:
        yield Acquire(m)
        yield Sleep("chan", wmesg="purge")

    spawn(eng, "p1", body)
    with pytest.raises(LockError, match=r"^p1: sleeping on purge with spin mutex pmap_mtx held$"):
        eng.run()


def test_waiting_for_an_rwlock_with_a_spin_mutex_held_raises_lock_error() -> None:
    """Blocking on a sleeping lock is sleeping, so a held spin mutex forbids it too."""
    eng = make_engine()
    m = SpinMutex("pmap_mtx")
    rw = RwLock("vmmaplk")

    def writer(me: Thread) -> Body:
        yield Acquire(rw)
        yield Run(100)
        yield Release(rw)

    def body(me: Thread) -> Body:
        yield Run(10)
        yield Acquire(m)
        yield Acquire(rw)

    spawn(eng, "writer", writer)
    spawn(eng, "p1", body)
    with pytest.raises(LockError, match=r"^p1: sleeping on vmmaplk with spin mutex pmap_mtx held$"):
        eng.run()


def test_sleep_with_interlock_releases_mutex_while_asleep_and_retakes_it() -> None:
    """msleep drops its interlock mutex atomically with going to sleep and holds it
    again when it returns."""
    eng = make_engine(ncpu=2)
    m = SpinMutex("ps_mtx")
    seen: dict[str, Any] = {}

    def sleeper(me: Thread) -> Body:
        yield Acquire(m)
        yield Sleep("chan", interlock=m)
        seen["back"] = (eng.now, m.owner is me, m in me.held)
        yield Release(m)

    def waker(me: Thread) -> Body:
        yield Run(10)
        yield Acquire(m)
        seen["waker_got"] = (eng.now, m.owner is me, me.spin_ns)
        yield Release(m)
        yield Wakeup("chan")

    sl = spawn(eng, "sleeper", sleeper)
    spawn(eng, "waker", waker)
    run_to_end(eng)
    assert seen["waker_got"] == (10, True, 0)
    assert seen["back"] == (10, True, True)
    assert sl.spin_ns == 0
    assert m.owner is None


def test_sleep_with_interlock_spins_until_the_waker_drops_the_mutex() -> None:
    """If the interlock is held when the sleeper wakes, msleep spins to retake it
    before returning."""
    eng = make_engine(ncpu=2)
    m = SpinMutex("ps_mtx")
    seen: dict[str, Any] = {}

    def sleeper(me: Thread) -> Body:
        yield Acquire(m)
        yield Sleep("chan", interlock=m)
        seen["back"] = (eng.now, m.owner is me)
        yield Release(m)

    def waker(me: Thread) -> Body:
        yield Run(10)
        yield Acquire(m)
        yield Wakeup("chan")
        yield Run(40)
        yield Release(m)

    sl = spawn(eng, "sleeper", sleeper)
    spawn(eng, "waker", waker)
    run_to_end(eng)
    assert seen["back"] == (50, True)
    assert sl.spin_ns == 40


def test_sleep_with_interlock_not_held_raises_lock_error() -> None:
    """msleep's interlock must be held by the caller."""
    eng = make_engine()
    m = SpinMutex("ps_mtx")

    def body(me: Thread) -> Body:
        yield Sleep("chan", interlock=m)

    spawn(eng, "p1", body)
    with pytest.raises(LockError, match=r"^msleep: interlock ps_mtx not held by p1$"):
        eng.run()


# -- statistics ----------------------------------------------------------------------


def test_spin_mutex_statistics_match_a_hand_computed_schedule() -> None:
    """Acquisitions, contention, wait and hold times are exact on a small schedule.

    ctxsw 5 ns. a takes m at 5 and holds it 100 ns; b arrives at 35 and waits 70 ns
    (35..105), holds 50; c arrives at 65 and waits 90 ns (65..155), holds 50.
    """
    eng = make_engine(ncpu=3, ctxsw_ns=5)
    m = SpinMutex("m")
    grants: list[tuple[str, int]] = []
    spawn(eng, "a", critical(eng, m, 100, grants))
    b = spawn(eng, "b", critical(eng, m, 50, grants), at=30)
    c = spawn(eng, "c", critical(eng, m, 50, grants), at=60)
    run_to_end(eng)
    assert grants == [("a", 5), ("b", 105), ("c", 155)]
    assert m.stats.as_dict() == {
        "acquisitions": 3,
        "contended": 2,
        "wait_ns": 70 + 90,
        "max_wait_ns": 90,
        "hold_ns": 100 + 50 + 50,
        "max_hold_ns": 100,
    }
    assert (b.spin_ns, c.spin_ns) == (70, 90)
    assert eng.now == 205


def test_kernel_lock_statistics_count_a_recursive_hold_once() -> None:
    """A recursive hold of the kernel lock is one acquisition, held from the first
    level taken to the last level dropped."""
    eng = make_engine(ncpu=2)
    kl = TicketLock("kernel_lock")

    def nested(me: Thread) -> Body:
        yield Acquire(kl)
        yield Run(20)
        yield Acquire(kl)
        yield Run(30)
        yield Release(kl)
        yield Run(10)
        yield Release(kl)

    def waiter(me: Thread) -> Body:
        yield Run(40)
        yield Acquire(kl)
        yield Run(5)
        yield Release(kl)

    spawn(eng, "nested", nested)
    spawn(eng, "waiter", waiter)
    run_to_end(eng)
    # nested holds 0..60; waiter queues at 40, waits 20, holds 60..65.
    assert kl.stats.as_dict() == {
        "acquisitions": 2,
        "contended": 1,
        "wait_ns": 20,
        "max_wait_ns": 20,
        "hold_ns": 65,
        "max_hold_ns": 60,
    }


# -- the hand-off of a spin lock between CPUs ------------------------------------------

HANDOFF = 37  # ns; odd so that it cannot be mistaken for any other cost in these tests


def handoff_pair(handoff: int) -> tuple[Engine, TicketLock, Thread, Thread, list[tuple[str, int]]]:
    """cpu0 holds the kernel lock 0..100; cpu1 asks for it at 10, spins, holds it 10."""
    eng = make_engine(ncpu=2, lock_handoff_ns=handoff)
    kl = TicketLock("kernel_lock")
    grants: list[tuple[str, int]] = []

    def late(me: Thread) -> Body:
        yield Run(10)
        yield from critical(eng, kl, 10, grants)(me)

    holder = spawn(eng, "holder", critical(eng, kl, 100, grants))
    waiter = spawn(eng, "waiter", late)
    run_to_end(eng)
    return eng, kl, holder, waiter, grants


def test_a_spinner_granted_a_lock_goes_on_lock_handoff_ns_after_the_release() -> None:
    """The next owner sees the release only once the lock's cache line reaches its CPU:
    it spins lock_handoff_ns longer, and the lock's wait counts the transfer."""
    eng0, kl0, _, waiter0, grants0 = handoff_pair(0)
    eng, kl, _, waiter, grants = handoff_pair(HANDOFF)
    assert grants0 == [("holder", 0), ("waiter", 100)]
    assert grants == [("holder", 0), ("waiter", 100 + HANDOFF)]
    assert waiter0.spin_ns == 90
    assert waiter.spin_ns == 90 + HANDOFF
    assert eng.cpus[1].acct[M_SPIN] == 90 + HANDOFF
    assert kl.stats.contended == kl0.stats.contended == 1
    assert kl.stats.wait_ns == kl0.stats.wait_ns + HANDOFF == 90 + HANDOFF
    assert kl.stats.max_wait_ns == 90 + HANDOFF
    # The hold starts when the new owner has the line: the transfer is not held time.
    assert kl.stats.hold_ns == kl0.stats.hold_ns == 100 + 10
    assert eng.now == eng0.now + HANDOFF


def test_the_releasing_cpu_is_charged_nothing_for_a_hand_off() -> None:
    """Only the spinner waits for the line; the releaser goes on at once."""
    eng0, _, holder0, _, _ = handoff_pair(0)
    eng, _, holder, _, _ = handoff_pair(HANDOFF)
    assert (holder.sys_ns, holder.spin_ns, holder.exit_ns) == (100, 0, 100)
    assert (holder0.sys_ns, holder0.spin_ns, holder0.exit_ns) == (100, 0, 100)
    assert eng.cpus[0].acct[:3] == eng0.cpus[0].acct[:3] == [0, 100, 0]
    for e in (eng0, eng):
        assert all(sum(c.acct) == e.now for c in e.cpus)


def ping_pong(handoff: int, rounds: int) -> tuple[Engine, TicketLock, list[Thread]]:
    """Two CPUs take turns: every acquisition but the first finds the lock held."""
    eng = make_engine(ncpu=2, lock_handoff_ns=handoff)
    kl = TicketLock("kernel_lock")

    def body(me: Thread) -> Body:
        for _ in range(rounds):
            yield Acquire(kl)
            yield Run(100)
            yield Release(kl)
            yield Run(5)

    threads = [spawn(eng, name, body) for name in ("a", "b")]
    run_to_end(eng)
    return eng, kl, threads


def test_each_contended_hand_off_adds_lock_handoff_ns_to_the_serial_path() -> None:
    """With the lock always wanted, the run gets longer by exactly one transfer per
    contended hand-off, and the lock's wait is still what its spinners spun."""
    eng0, kl0, threads0 = ping_pong(0, rounds=4)
    eng, kl, threads = ping_pong(HANDOFF, rounds=4)
    handoffs = kl.stats.contended
    assert handoffs == kl0.stats.contended == 2 * 4 - 1
    assert eng.now == eng0.now + handoffs * HANDOFF
    assert kl.stats.hold_ns == kl0.stats.hold_ns == 8 * 100
    for k, ts in ((kl0, threads0), (kl, threads)):
        assert k.stats.wait_ns == sum(t.spin_ns for t in ts)
    spin0 = sum(t.spin_ns for t in threads0)
    # Each waiter also waits out the transfer to the owner before it, except the first.
    assert sum(t.spin_ns for t in threads) == spin0 + HANDOFF + 2 * HANDOFF * (handoffs - 1)


def test_an_uncontended_acquire_costs_nothing_extra() -> None:
    """No waiter, no transfer to wait for: lock_handoff_ns changes nothing."""
    runs = []
    for handoff in (0, HANDOFF):
        eng = make_engine(ncpu=2, lock_handoff_ns=handoff)
        kl = TicketLock("kernel_lock")
        m = SpinMutex("m")
        grants: list[tuple[str, int]] = []
        t1 = spawn(eng, "t1", critical(eng, kl, 100, grants))
        t2 = spawn(eng, "t2", critical(eng, m, 50, grants))
        t3 = spawn(eng, "t3", critical(eng, kl, 10, grants), at=200)
        run_to_end(eng)
        assert kl.stats.contended == m.stats.contended == 0
        runs.append((grants, eng.now, [t.spin_ns for t in (t1, t2, t3)], kl.stats.as_dict()))
    assert runs[0] == runs[1]


def test_a_spinner_retaking_the_kernel_lock_after_a_sleep_waits_for_the_line() -> None:
    """The slow path (the kernel lock taken back after a switch) goes on lock_handoff_ns
    after the release too."""
    seen: dict[int, tuple[list[int], int, int | None]] = {}
    for handoff in (0, HANDOFF):
        eng = make_engine(ncpu=2, lock_handoff_ns=handoff)
        kl = TicketLock("kernel_lock")
        back: list[int] = []

        def sleeper(me: Thread, kl: TicketLock = kl, back: list[int] = back) -> Body:
            yield Acquire(kl)
            yield Acquire(kl)
            yield Sleep("chan")
            back.append(kl.depth(me))
            yield Release(kl, all_levels=True)

        def waker(me: Thread, kl: TicketLock = kl) -> Body:
            yield Run(10)
            yield Acquire(kl)
            yield Wakeup("chan")
            yield Run(40)
            yield Release(kl)

        sl = spawn(eng, "sleeper", sleeper)
        spawn(eng, "waker", waker)
        run_to_end(eng)
        seen[handoff] = (back, sl.spin_ns, sl.exit_ns)
    assert seen[0] == ([2], 40, 50)
    assert seen[HANDOFF] == ([2], 40 + HANDOFF, 50 + HANDOFF)


def test_a_sleeper_handed_a_lock_pays_no_hand_off() -> None:
    """A sleeping lock's waiter becomes runnable at the release; its switch dominates."""
    runs = []
    for handoff in (0, HANDOFF):
        eng = make_engine(ncpu=2, ctxsw_ns=5, lock_handoff_ns=handoff)
        rw = RwLock("vmmaplk")
        grants: list[tuple[str, int]] = []
        spawn(eng, "writer", critical(eng, rw, 100, grants))
        spawn(eng, "reader", critical(eng, rw, 10, grants, SHARED), at=10)
        run_to_end(eng)
        runs.append((grants, eng.now, rw.stats.as_dict()))
    assert runs[0] == runs[1]
    assert runs[0][0] == [("writer", 5), ("reader", 110)]


def test_untimed_mode_ignores_lock_handoff_ns() -> None:
    """The interleaving explorer keeps no time in its state: a hand-off there is
    instant, so the same schedule gives the same steps whatever the profile says."""
    runs = []
    for handoff in (0, HANDOFF):
        eng = make_engine(ncpu=2, step_each_op=True, lock_handoff_ns=handoff, record=True)
        assert eng.handoff == 0
        kl = TicketLock("kernel_lock")
        grants: list[tuple[str, int]] = []
        spawn(eng, "a", critical(eng, kl, 100, grants))
        spawn(eng, "b", critical(eng, kl, 10, grants))
        while eng.step_untimed():
            pass
        runs.append((grants, eng.now, eng.log))
    assert runs[0] == runs[1]


def test_engine_config_refuses_a_negative_lock_handoff() -> None:
    with pytest.raises(ValueError, match="lock_handoff_ns must not be negative"):
        EngineConfig(ncpu=2, lock_handoff_ns=-1)


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_the_machine_passes_its_profile_lock_handoff_to_the_engine(arch: str) -> None:
    from exitsim.machine.costs import builtin_profile
    from exitsim.machine.machine import Machine

    cfg = Machine(arch, 2).engine_config()
    assert cfg.lock_handoff_ns == builtin_profile(arch).costs.lock_handoff_ns > 0
