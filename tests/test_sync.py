"""OpenBSD-named lock calls (engine/sync.py) and the SpinWait op."""

from __future__ import annotations

import pytest

from exitsim.engine.errors import SimError
from exitsim.engine.locks import TicketLock
from exitsim.engine.ops import Run, SpinWait, Wakeup
from exitsim.engine.sched import Engine, EngineConfig
from exitsim.engine.sync import (
    KERNEL_ASSERT_LOCKED,
    KERNEL_ASSERT_UNLOCKED,
    KERNEL_LOCK,
    KERNEL_UNLOCK,
    __mp_acquire_count,
    __mp_release_all,
    kernel_lock_depth,
)


class Kernel:
    def __init__(self) -> None:
        self.kernel_lock = TicketLock("kernel_lock")


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_mp_release_all_returns_the_depth_and_acquire_count_takes_it_back(depth: int) -> None:
    """kern_lock.c: __mp_release_all drops every level at once and returns how many;
    __mp_acquire_count(n) restores them with one wait for the ticket."""
    k = Kernel()
    eng = Engine(EngineConfig(ncpu=2))
    seen: dict[str, int] = {}

    def holder(t):
        for _ in range(depth):
            yield from KERNEL_LOCK(k)
        KERNEL_ASSERT_LOCKED(k, t)
        seen["released"] = yield from __mp_release_all(k.kernel_lock, t)
        KERNEL_ASSERT_UNLOCKED(k, t)
        seen["depth_after_release"] = kernel_lock_depth(k, t)
        yield Run(5_000)  # the other thread takes the lock meanwhile
        yield from __mp_acquire_count(k.kernel_lock, t, seen["released"])
        seen["depth_after_acquire"] = kernel_lock_depth(k, t)
        for _ in range(depth):
            yield from KERNEL_UNLOCK(k)

    def other(t):
        yield Run(1_000)
        yield from KERNEL_LOCK(k)
        seen["other_got_it_at"] = eng.now
        yield Run(1_000)
        yield from KERNEL_UNLOCK(k)

    eng.spawn("holder", holder)
    eng.spawn("other", other)
    eng.run()
    assert seen["released"] == depth
    assert seen["depth_after_release"] == 0
    assert seen["depth_after_acquire"] == depth
    assert seen["other_got_it_at"] == 1_000
    assert k.kernel_lock.owner is None


def test_kernel_assert_unlocked_fails_while_the_lock_is_held() -> None:
    """KERNEL_ASSERT_UNLOCKED is a KASSERT: it stops the run if the caller holds it."""
    k = Kernel()
    eng = Engine(EngineConfig(ncpu=1))

    def body(t):
        yield from KERNEL_LOCK(k)
        KERNEL_ASSERT_UNLOCKED(k, t)

    eng.spawn("p", body)
    with pytest.raises(SimError, match="KERNEL_ASSERT_UNLOCKED"):
        eng.run()


def test_mp_release_all_without_the_lock_is_an_error() -> None:
    k = Kernel()
    eng = Engine(EngineConfig(ncpu=1))

    def body(t):
        yield from __mp_release_all(k.kernel_lock, t)

    eng.spawn("p", body)
    with pytest.raises(SimError, match="__mp_release_all"):
        eng.run()


def test_spinwait_spins_until_woken_and_counts_as_spin_time() -> None:
    """A busy-wait (as arm64 pmap_purge waits for pm_active == 1) keeps its CPU and is
    charged as spin time until the word's writer wakes the channel."""
    eng = Engine(EngineConfig(ncpu=2))
    word = {"v": 0}

    def waiter(t):
        while word["v"] == 0:
            yield SpinWait("word")
        yield Run(10)

    def writer(t):
        yield Run(1_000)
        word["v"] = 1
        yield Wakeup("word")

    w = eng.spawn("waiter", waiter)
    eng.spawn("writer", writer)
    eng.run()
    eng.finish()
    assert w.spin_ns == 1_000
    assert w.sys_ns == 1_010
    assert eng.cpus[0].acct[2] == 1_000
    assert w.exit_ns == 1_010
