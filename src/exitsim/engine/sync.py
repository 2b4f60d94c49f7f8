"""OpenBSD's locking and sleep calls, by their names, over the engine's lock objects.

They live in the engine rather than in ``kern/`` because ``vm/`` needs them too
(``uvmspace_purge`` takes the kernel lock around ``shmexit``) and ``vm/`` never imports
``kern/``.

A call that may spin or sleep is a generator (``yield from KERNEL_LOCK(sim)``); a call
that only looks is a plain function. The kernel lock is ``sim.kernel_lock``: there is no
global one, so two simulations can run side by side.

Facts modelled (openbsd-exit-path.md section 3, kern_lock.c 1.81): the kernel lock is a
recursive ticket lock; ``__mp_release_all`` drops every level at once and returns the
old depth; ``__mp_acquire_count`` takes that many levels back; sleeping drops the lock
and retakes it (the engine does that on every switch).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Protocol

from exitsim.engine.errors import kassert
from exitsim.engine.locks import Lock, RwLock, SpinMutex, TicketLock
from exitsim.engine.ops import EXCLUSIVE, SHARED, Acquire, Release, Sleep, Wakeup
from exitsim.engine.thread import KPath, Thread


class HasKernelLock(Protocol):
    kernel_lock: TicketLock


def mtx_enter(mtx: SpinMutex) -> KPath:
    """Take a spin mutex; a waiter burns its CPU."""
    yield Acquire(mtx)


def mtx_leave(mtx: SpinMutex) -> KPath:
    yield Release(mtx)


def KERNEL_LOCK(sim: HasKernelLock) -> KPath:
    """Take one level of the kernel lock (a ticket: FIFO among spinners)."""
    yield Acquire(sim.kernel_lock)


def KERNEL_UNLOCK(sim: HasKernelLock) -> KPath:
    yield Release(sim.kernel_lock)


def __mp_release_all(lock: TicketLock, p: Thread) -> KPath:
    """Drop every level ``p`` holds in one step; return how many there were."""
    depth = lock.depth(p)
    kassert(depth > 0, f"__mp_release_all: {lock.name} not held by {p.name}")
    yield Release(lock, all_levels=True)
    return depth


def __mp_acquire_count(lock: TicketLock, p: Thread, count: int) -> KPath:
    """Take ``count`` levels back, waiting for the ticket once."""
    kassert(count > 0, f"__mp_acquire_count: count {count}")
    yield Acquire(lock, count=count)


def KERNEL_ASSERT_LOCKED(sim: HasKernelLock, p: Thread) -> None:
    kassert(sim.kernel_lock.holds(p), f"KERNEL_ASSERT_LOCKED: {p.name} does not hold it")


def KERNEL_ASSERT_UNLOCKED(sim: HasKernelLock, p: Thread) -> None:
    kassert(not sim.kernel_lock.holds(p), f"KERNEL_ASSERT_UNLOCKED: {p.name} holds it")


def kernel_lock_depth(sim: HasKernelLock, p: Thread) -> int:
    return sim.kernel_lock.depth(p)


def rw_enter_write(rw: RwLock) -> KPath:
    yield Acquire(rw, EXCLUSIVE)


def rw_enter_read(rw: RwLock) -> KPath:
    yield Acquire(rw, SHARED)


def rw_exit(rw: RwLock) -> KPath:
    yield Release(rw)


def msleep(chan: Hashable, mtx: Lock | None, wmesg: str) -> KPath:
    """Sleep on ``chan``, dropping ``mtx`` while asleep and holding it again after."""
    yield Sleep(chan, mtx, wmesg)


def tsleep(chan: Hashable, wmesg: str) -> KPath:
    yield Sleep(chan, None, wmesg)


def wakeup(chan: Hashable) -> KPath:
    yield Wakeup(chan)


#: The same two calls under names Python does not mangle inside a class body (a name
#: starting with two underscores would become ``_Class__mp_release_all`` there), for
#: the policies' hooks.
mp_release_all = __mp_release_all
mp_acquire_count = __mp_acquire_count
