"""Signals and single-threading: the ways into exit1 that are not exit(2) itself
(kern_sig.c 1.365, 2025-05-31; sys/proc.h for the flags).

A thread reaches exit1 from here in four ways, each with its own kernel-lock depth:

- ``postsig`` of a fatal signal at ``userret``: ``KERNEL_LOCK`` then ``sigexit``
  (depth 1);
- ``trapsignal`` for a fatal trap with the signal blocked or ignored: ``KERNEL_LOCK``
  then ``sigexit``, inside whatever the trap handler holds (``trap_fatal``: depth 1
  on arm64, 2 on amd64);
- ``proc_suspend_check`` (called ``single_thread_check`` before 2024) for a thread
  that another thread's ``single_thread_set(SINGLE_EXIT)`` told to go: ``KERNEL_LOCK``
  then ``exit1(EXIT_THREAD_NOCHECK)``; from ``userret`` that is depth 1, but from
  exit1's own ``single_thread_set`` (two threads calling exit(2) at once, the loser
  goes here) it is depth 2, and exit1 is entered inside exit1;
- ``sigexit`` of a signal that dumps core first stops the siblings
  (``SINGLE_UNWIND``), then exit1 turns that into ``SINGLE_EXIT``.

Simplified, and why: only the default action of a few signals is modelled (every
signal here kills; none is caught, traced or a stop signal), as only those end in
exit1. Sleeps in the model's kernel paths are uninterruptible (no ``P_SINTR``), so
``process_stop`` wakes only stopped threads; a running one notices at its next
``userret``, which is where ``signotify``'s AST would take it. ``coredump`` writes
nothing and costs nothing (assumption: the dump's file I/O is outside what exitsim
measures); what matters to the exit path is that it runs between the two
single-threading calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from exitsim.engine.ops import Run
from exitsim.engine.sync import (
    KERNEL_LOCK,
    KERNEL_UNLOCK,
    msleep,
    mtx_enter,
    mtx_leave,
    wakeup,
)
from exitsim.engine.thread import KPath
from exitsim.kern import exit as kern_exit
from exitsim.kern.proc import (
    EXIT_NORMAL,
    EXIT_THREAD_NOCHECK,
    P_SUSPSINGLE,
    P_WEXIT,
    PS_EXITING,
    PS_SINGLEEXIT,
    PS_SINGLEUNWIND,
    SINGLE_EXIT,
    SINGLE_UNWIND,
    SONPROC,
    SSTOP,
    Proc,
    Process,
)

if TYPE_CHECKING:
    from exitsim.kern.kernel import Kernel

# Signal numbers (sys/signal.h) and the properties kern_sig.c's sigprop[] gives them.
SIGILL = 4
SIGABRT = 6
SIGKILL = 9
SIGBUS = 10
SIGSEGV = 11
SA_KILL = 0x01
SA_CORE = 0x02
SIGPROP = {
    SIGILL: SA_KILL | SA_CORE,
    SIGABRT: SA_KILL | SA_CORE,
    SIGKILL: SA_KILL,
    SIGBUS: SA_KILL | SA_CORE,
    SIGSEGV: SA_KILL | SA_CORE,
}

#: Whether the arch's trap handler holds the kernel lock around ``trapsignal`` for a
#: user fault: amd64 trap.c 1.65 (2018) takes it around every user trap's
#: ``trapsignal``; arm64 trap.c 1.42 (2022) faults and signals without it.
TRAP_HOLDS_KERNEL_LOCK = {"amd64": True, "arm64": False}


def sigmask(signum: int) -> int:
    return 1 << (signum - 1)


def stop_chan(p: Proc) -> tuple[str, int]:
    """Where a stopped thread sleeps until ``setrunnable`` (p_stat SSTOP)."""
    return ("stopped", p.tid)


def suspendcnt_chan(pr: Process) -> tuple[str, int]:
    """``&pr->ps_suspendcnt``: where single_thread_set waits for the others."""
    return ("ps_suspendcnt", pr.ps_pid)


# -- posting ---------------------------------------------------------------------------


def ptsignal(k: Kernel, p: Proc, signum: int) -> KPath:
    """Post ``signum`` to the thread ``p`` (STHREAD); it acts at its next userret."""
    pr = p.p_p
    assert pr is not None
    yield from mtx_enter(pr.ps_mtx)
    # An exiting process takes no more signals.
    if not pr.ps_flags & PS_EXITING:
        p.p_siglist |= sigmask(signum)
    yield from mtx_leave(pr.ps_mtx)


def prsignal(k: Kernel, pr: Process, signum: int) -> KPath:
    """Post ``signum`` to the process (SPROCESS): whichever thread gets to
    ``cursig`` first takes it, as ``cursig``'s compare-and-swap on ps_siglist does."""
    yield from mtx_enter(pr.ps_mtx)
    if not pr.ps_flags & PS_EXITING:
        pr.ps_siglist |= sigmask(signum)
    yield from mtx_leave(pr.ps_mtx)


# -- taking ----------------------------------------------------------------------------


def cursig(k: Kernel, p: Proc) -> int:
    """The lowest pending signal ``p`` may take, taken off the pending sets; 0 for
    none. A blocked signal stays pending."""
    pr = p.p_p
    assert pr is not None
    pending = (p.p_siglist | pr.ps_siglist) & ~p.p_sigmask
    if not pending:
        return 0
    signum = (pending & -pending).bit_length()
    mask = sigmask(signum)
    pr.ps_siglist &= ~mask
    p.p_siglist &= ~mask
    return signum


def postsig(k: Kernel, p: Proc, signum: int) -> KPath:
    """Take the default action of a killing signal: sigexit, under the kernel lock."""
    yield from KERNEL_LOCK(k)
    yield from sigexit(k, p, signum)


def sigexit(k: Kernel, p: Proc, signum: int) -> KPath:
    """Exit on ``signum``; a core-dumping signal stops the siblings first (they
    unwind to the kernel boundary), then dumps. Never returns. => kernel lock held."""
    p.p_flag |= P_WEXIT
    pr = p.p_p
    assert pr is not None
    if SIGPROP.get(signum, 0) & SA_CORE:
        if pr.ps_threadcnt > 1:
            yield from single_thread_set(k, p, SINGLE_UNWIND)
        coredump(k, p)
    yield from kern_exit.exit1(k, p, 0, signum, EXIT_NORMAL)


def coredump(k: Kernel, p: Proc) -> None:
    """Writes nothing here (module docstring)."""


def trapsignal(k: Kernel, p: Proc, signum: int) -> KPath:
    """A trap raised ``signum`` in ``p``: a blocked killing signal cannot wait, so
    the thread exits here, under its own kernel-lock hold; otherwise the signal is
    posted and taken at userret."""
    mask = sigmask(signum)
    if SIGPROP.get(signum, 0) & SA_KILL and p.p_sigmask & mask:
        yield from KERNEL_LOCK(k)
        yield from sigexit(k, p, signum)
    yield from ptsignal(k, p, signum)


def trap_fatal(k: Kernel, p: Proc, signum: int) -> KPath:
    """A user trap the fault handler cannot resolve (the arch's ``trap``/
    ``udata_abort``): the exception entry, then ``trapsignal`` with or without the
    kernel lock as the arch's trap.c has it (``TRAP_HOLDS_KERNEL_LOCK``), then
    ``userret``. A trap costs a system call's entry and exit (assumption: the same
    exception-level round trip)."""
    yield Run(k.costs.syscall_ns)
    locked = TRAP_HOLDS_KERNEL_LOCK[k.machine.arch.name]
    if locked:
        yield from KERNEL_LOCK(k)
    yield from trapsignal(k, p, signum)
    if locked:
        yield from KERNEL_UNLOCK(k)
    yield from userret(k, p)


def userret(k: Kernel, p: Proc) -> KPath:
    """The way back to user space: stop or exit if another thread single-threads
    the process, then act on pending signals. A thread that exits here never comes
    back."""
    if p.p_flag & P_SUSPSINGLE:
        yield from proc_suspend_check(k, p)
    while signum := cursig(k, p):
        yield from postsig(k, p, signum)


# -- single-threading ------------------------------------------------------------------


def proc_suspend_check(k: Kernel, p: Proc) -> KPath:
    pr = p.p_p
    assert pr is not None
    yield from mtx_enter(pr.ps_mtx)
    yield from proc_suspend_check_locked(k, p)
    yield from mtx_leave(pr.ps_mtx)


def proc_suspend_check_locked(k: Kernel, p: Proc) -> KPath:
    """If another thread single-threads the process, exit (SINGLE_EXIT) or stop
    until it lets go or tells us to exit. => ps_mtx held; held again on return."""
    pr = p.p_p
    assert pr is not None
    if pr.ps_single is None or pr.ps_single is p:
        return
    while True:
        if pr.ps_flags & PS_SINGLEEXIT:
            # Whatever the caller holds, the kernel lock is taken once more: from
            # exit1's own single_thread_set that makes depth 2.
            yield from mtx_leave(pr.ps_mtx)
            yield from KERNEL_LOCK(k)
            yield from kern_exit.exit1(k, p, 0, 0, EXIT_THREAD_NOCHECK)
        proc_stop_setup(p)
        yield from process_suspend_signal(k, pr)
        yield from proc_stop_finish(k, p)
        if pr.ps_single is None:
            return


def proc_stop_setup(p: Proc) -> None:
    p.p_stat = SSTOP


def proc_stop_finish(k: Kernel, p: Proc) -> KPath:
    """Sleep while stopped; ps_mtx is dropped meanwhile."""
    pr = p.p_p
    assert pr is not None
    while p.p_stat == SSTOP:
        yield from msleep(stop_chan(p), pr.ps_mtx, "stopped")


def setrunnable(k: Kernel, q: Proc) -> None:
    q.p_stat = SONPROC
    k.engine.wakeup(stop_chan(q))


def process_suspend_signal(k: Kernel, pr: Process) -> KPath:
    """Count the calling thread out of those single_thread_set waits for; the last
    one wakes it.
    => ps_mtx held."""
    pr.ps_suspendcnt -= 1
    if pr.ps_suspendcnt == 0 and pr.ps_single is not None:
        yield from wakeup(suspendcnt_chan(pr))


def process_stop(k: Kernel, pr: Process, p: Proc, flag: int, mode: int) -> None:
    """Tell every other thread to stop (``flag``) and count those single_thread_set
    must wait for. A stopped thread is already counted out, except for SINGLE_EXIT,
    which wakes it to exit. => ps_mtx held."""
    pr.ps_suspendcnt = pr.ps_threadcnt
    for q in pr.ps_threads:
        if q is p:
            continue
        q.p_flag |= flag
        if q.p_stat == SSTOP:
            if mode == SINGLE_EXIT:
                setrunnable(k, q)
            else:
                pr.ps_suspendcnt -= 1


def single_thread_set(k: Kernel, p: Proc, mode: int) -> KPath:
    """Make ``p`` the only thread that runs: the others unwind to the kernel
    boundary and stop (SINGLE_UNWIND) or exit (SINGLE_EXIT); wait until each has
    counted itself out. A thread that finds another already single-threading for
    exit goes to exit1 instead (``proc_suspend_check_locked``) and never returns."""
    pr = p.p_p
    assert pr is not None
    yield from mtx_enter(pr.ps_mtx)
    yield from proc_suspend_check_locked(k, p)
    if mode == SINGLE_UNWIND:
        pr.ps_flags |= PS_SINGLEUNWIND
    elif mode == SINGLE_EXIT:
        pr.ps_flags |= PS_SINGLEEXIT
        pr.ps_flags &= ~PS_SINGLEUNWIND
    pr.ps_single = p
    process_stop(k, pr, p, P_SUSPSINGLE, mode)
    # Count ourselves out, then wait for the rest.
    pr.ps_suspendcnt -= 1
    while pr.ps_suspendcnt > 0:
        yield from msleep(suspendcnt_chan(pr), pr.ps_mtx, "suspend")
    yield from mtx_leave(pr.ps_mtx)
