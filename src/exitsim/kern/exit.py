"""Process and thread exit, the reaper and wait (kern_exit.c 1.252; openbsd-exit-path.md
section 2). Read beside the C: ``exit1`` goes step by step in the same order, with the
step numbers of openbsd-exit-path.md 2 in its comments.

Where the designs differ, ``exit1`` and ``reaper`` call the installed policy's hooks
(``policies/``): ``exit1_teardown`` at step 6, ``reaper_uvm_exit`` in the reaper, and
``uses_reaper``/``reaper_locked`` for the reaper itself.

The other ways into exit1 (signals, traps, single-threading) are in ``kern/sig.py``.

Simplified, and why: ``refcnt_finalize`` (allprocess walkers) is not modelled;
``exit2`` runs at the moment the dead thread leaves its CPU, where OpenBSD's idle
thread runs it, without the ``deadproc_mutex`` round trip
(an uncontended spin mutex in a path that must not sleep).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from exitsim.engine.ops import EXIT, Run
from exitsim.engine.sync import (
    KERNEL_ASSERT_LOCKED,
    KERNEL_LOCK,
    KERNEL_UNLOCK,
    __mp_release_all,
    msleep,
    mtx_enter,
    mtx_leave,
    wakeup,
)
from exitsim.engine.thread import DEAD, KPath
from exitsim.kern import sig as kern_sig
from exitsim.kern.proc import (
    EXIT_NORMAL,
    EXIT_THREAD,
    P_SYSTEM,
    P_THREAD,
    P_WEXIT,
    PS_EXITING,
    PS_NOZOMBIE,
    PS_WAITEVENT,
    PS_ZOMBIE,
    SAS_NOCLDWAIT,
    SDEAD,
    SINGLE_EXIT,
    TUAGG_AT_STEP4,
    TUAGG_AT_STEP10,
    Proc,
    Process,
)
from exitsim.vm.pmap import pmap_deactivate
from exitsim.vm.vmspace import uvm_purge

if TYPE_CHECKING:
    from exitsim.kern.kernel import Kernel


def parent_chan(pr: Process) -> tuple[str, int]:
    """The channel a process sleeps on in wait4 (``wakeup(pr->ps_pptr)``)."""
    return ("process", pr.ps_pid)


def threads_chan(pr: Process) -> tuple[str, int]:
    """``&pr->ps_threads``: where the main thread waits for its siblings."""
    return ("ps_threads", pr.ps_pid)


# -- exit1 -----------------------------------------------------------------------------


def sys_exit(k: Kernel, p: Proc, rval: int) -> KPath:
    """exit(2): a locked system call (init_sysent.c: no SY_NOLOCK), so exit1 starts
    with the kernel lock held."""
    yield Run(k.costs.syscall_ns)
    yield from KERNEL_LOCK(k)
    yield from exit1(k, p, rval, 0, EXIT_NORMAL)


def sys___threxit(k: Kernel, p: Proc) -> KPath:
    """__threxit(2): one thread leaves its process (a locked system call); the process
    goes on while other threads remain."""
    yield Run(k.costs.syscall_ns)
    yield from KERNEL_LOCK(k)
    yield from exit1(k, p, 0, 0, EXIT_THREAD)


def uvm_purge_checked(k: Kernel, p: Proc, with_pmap_purge: bool) -> KPath:
    """``uvm_purge`` with design.md invariant 3's process half: no sibling thread of
    the process can still run user code. A thread that has not entered exit1 (no
    P_WEXIT) can; one that has is in the kernel for good."""
    pr = p.p_p
    assert pr is not None and pr.ps_vmspace is not None
    live = [t for t in pr.ps_threads if t is not p and not t.p_flag & P_WEXIT]
    if live:
        k.violation(
            3,
            f"uvm_purge of {pr} while {len(live)} sibling thread(s) can still run user code",
            pr,
            *live,
            p=p,
        )
    yield from uvm_purge(k.uvm, p, pr.ps_vmspace, with_pmap_purge)


# -- exit1 step 6 for the process, one function per step of kern_exit.c ----------------
# Each runs once, for the main thread, under the kernel lock exit1 holds, and charges
# its cost-profile figure (docs/model.md "System call and exit1 costs" has the sources)
# for what the process holds: ``ps_nfiles``, ``ps_semundo``, ``ps_unveil_paths``
# (kern/proc.py says where their defaults come from).

#: Process accounting: GENERIC has ``option ACCOUNTING``, so exit1 always calls
#: ``acct_process``, but it writes a record only once accton(8) has turned accounting
#: on, which an installed system does not do (rc.conf ``accounting=NO``): off.
ACCOUNTING = False


def fdfree(k: Kernel, p: Proc, nfiles: int) -> KPath:
    """Close the process's open files (kern_descrip.c: a ``closef`` for each, then
    the table). => the kernel lock is held."""
    KERNEL_ASSERT_LOCKED(k, p)
    if ns := nfiles * k.costs.fdfree_file_ns:
        yield Run(ns)


def cancel_all_itimers(k: Kernel, p: Proc) -> KPath:
    """Disarm the three interval timers (kern_time.c), and ``timeout_del`` of the
    process's ``ps_rucheck_to``. => the kernel lock is held."""
    KERNEL_ASSERT_LOCKED(k, p)
    if ns := k.costs.itimer_ns:
        yield Run(ns)


def semexit(k: Kernel, p: Proc, undo: bool = False) -> KPath:
    """Apply the process's SysV semaphore undo entries (sysv_sem.c); nothing to do
    without ``SEM_UNDO``, the default (assumption: few programs use SysV semaphores).
    => the kernel lock is held."""
    KERNEL_ASSERT_LOCKED(k, p)
    if undo and (ns := k.costs.semexit_ns):
        yield Run(ns)


def killjobc(k: Kernel, p: Proc) -> KPath:
    """Job control: the process's group may become orphaned (kern_proc.c).
    => the kernel lock is held."""
    KERNEL_ASSERT_LOCKED(k, p)
    if ns := k.costs.killjobc_ns:
        yield Run(ns)


def acct_process(k: Kernel, p: Proc, accounting: bool = ACCOUNTING) -> KPath:
    """Write the accounting record (kern_acct.c), only with accounting on.
    => the kernel lock is held."""
    KERNEL_ASSERT_LOCKED(k, p)
    if accounting and (ns := k.costs.acct_ns):
        yield Run(ns)


def unveil_destroy(k: Kernel, p: Proc, npaths: int = 0) -> KPath:
    """Drop the process's unveiled paths (kern_unveil.c); none by default
    (assumption: the build tools the workloads run do not unveil). => the kernel lock
    is held."""
    KERNEL_ASSERT_LOCKED(k, p)
    if ns := npaths * k.costs.unveil_ns:
        yield Run(ns)


def exit_lists(k: Kernel, p: Proc) -> KPath:
    """Steps 8-9's list work, which the model does in no time: off the tid and pid
    hashes and allproc/allprocess, onto zombprocess, the children to init.
    => the kernel lock is held."""
    KERNEL_ASSERT_LOCKED(k, p)
    if ns := k.costs.exit_lists_ns:
        yield Run(ns)


def exit1(k: Kernel, p: Proc, xexit: int, xsig: int, flags: int) -> KPath:
    """A thread exits; the last one takes its process with it. Never returns.
    => the kernel lock is held, at any depth."""
    c = k.costs
    # 1. The thread is on its way out.
    p.p_flag |= P_WEXIT
    pr = p.p_p
    assert pr is not None
    # 2. Alone, this is a process exit; the first of several tells the others to go
    # and waits until each has left user space for good. One that finds another
    # thread already doing that goes back into exit1 from there, one level of the
    # kernel lock deeper (kern/sig.py), and never comes back here.
    if pr.ps_threadcnt <= 1:
        flags = EXIT_NORMAL
    elif flags == EXIT_NORMAL:
        yield from kern_sig.single_thread_set(k, p, SINGLE_EXIT)
    # 3. The process is exiting: remember how, and from when.
    if flags == EXIT_NORMAL and not pr.ps_flags & PS_EXITING:
        pr.ps_flags |= PS_EXITING
        pr.ps_xexit = xexit
        pr.ps_xsig = xsig
        pr.exit_ns = k.now
        if pr.ps_vmspace is not None:
            pr.resident_at_exit = pr.ps_vmspace.resident()
        k.meters.process_exiting(pr)
        yield from k.policy.exit1_begin(k, p)
    # 4. Off the active threads; the main thread waits here for every sibling.
    yield from mtx_enter(pr.ps_mtx)
    pr.ps_threads.remove(p)
    pr.ps_threadcnt -= 1
    pr.ps_exitcnt += 1
    # Someone single-threading the process counts on us to count ourselves out.
    if pr.ps_single is not None:
        yield from kern_sig.process_suspend_signal(k, pr)
    if k.policy.tuagg_at == TUAGG_AT_STEP4:
        tuagg_add_process(pr, p)
    if not p.p_flag & P_THREAD:
        while pr.ps_threadcnt + pr.ps_exitcnt > 1:
            yield from msleep(threads_chan(pr), pr.ps_mtx, "thrdeath")
    yield from mtx_leave(pr.ps_mtx)
    # 5-6. Per-thread leftovers (the rusage, the signals); for the process, in the C's
    # order and under the kernel lock exit1 holds: files, interval timers, SysV undo,
    # job control, accounting, unveil; then the address space, as the design does it.
    yield Run(c.proc_ns)
    if not p.p_flag & P_THREAD:
        yield from fdfree(k, p, pr.ps_nfiles)
        yield from cancel_all_itimers(k, p)
        yield from semexit(k, p, pr.ps_semundo)
        yield from killjobc(k, p)
        yield from acct_process(k, p)
        yield from unveil_destroy(k, p, pr.ps_unveil_paths)
        parent = pr.ps_pptr
        if parent is not None and parent.ps_sigflags & SAS_NOCLDWAIT:
            pr.ps_flags |= PS_NOZOMBIE
        if not p.p_flag & P_SYSTEM:
            start = k.now
            yield from k.policy.exit1_teardown(k, p)
            k.meters.add_teardown(pr, k.now - start)
    # 8. NOTE: WE ARE NO LONGER ALLOWED TO SLEEP!
    p.p_stat = SDEAD
    p.nosleep = True
    # 9. The process leaves the live lists; a zombie-to-be goes on zombprocess, and its
    # children go to init.
    if not p.p_flag & P_THREAD:
        yield from exit_lists(k, p)
        k.allprocess.pop(pr.ps_pid, None)
        # A design that hands the zombie over earlier (no-reaper) may already have
        # been waited for and zapped: it must not go on zombprocess again.
        if not pr.ps_flags & PS_NOZOMBIE and not pr.zapped:
            k.zombprocess.append(pr)
        init = k.initprocess
        if pr.ps_children:
            k.engine.wakeup(parent_chan(init))
        for child in list(pr.ps_children):
            process_reparent(child, init)
    # 10. The thread's times so far join the process's (1.212 folds them only here).
    if k.policy.tuagg_at == TUAGG_AT_STEP10:
        tuagg_add_process(pr, p)
    # 11. The last thread turns the process's times into the ps_ru that wait4 hands
    # the parent; a process nobody will wait for goes to init, and its parent
    # learns it.
    if not p.p_flag & P_THREAD:
        calcru(pr)
        yield from mtx_enter(pr.ps_mtx)
        if pr.ps_flags & PS_NOZOMBIE and pr.ps_pptr is not None:
            old = pr.ps_pptr
            process_reparent(pr, k.initprocess)
            old.ps_flags |= PS_WAITEVENT
            k.engine.wakeup(parent_chan(old))
        yield from mtx_leave(pr.ps_mtx)
    # 12. A sibling counts itself out; the last one wakes the main thread.
    if p.p_flag & P_THREAD:
        yield from mtx_enter(pr.ps_mtx)
        pr.ps_exitcnt -= 1
        if pr.ps_threadcnt + pr.ps_exitcnt == 1:
            yield from wakeup(threads_chan(pr))
        yield from mtx_leave(pr.ps_mtx)
    # 13. Machine state, the address space off this CPU, and off to idle for good.
    vm = p.p_vmspace
    if vm is not None and vm.vm_map.pmap is not None and p.pm_counted:
        pmap_deactivate(k.uvm, p, vm.vm_map.pmap)
        p.pm_counted = False
    yield from sched_exit(k, p)


def tuagg_add_process(pr: Process, p: Proc) -> None:
    """Fold what ``p`` ran since its last fold into the process's ps_tu, and start
    the thread's count again (kern_resource.c). => ps_mtx held, or p is dead."""
    pr.ps_tu_user_ns += p.user_ns - p.tu_user_ns
    pr.ps_tu_sys_ns += p.sys_ns - p.tu_sys_ns
    p.tu_user_ns = p.user_ns
    p.tu_sys_ns = p.sys_ns


def calcru(pr: Process) -> None:
    """exit1 step 11: ps_ru from ps_tu as it stands now. Later folds (exit2's) do not
    reach it. Simplified: OpenBSD splits tu_runtime into user and system time in the
    ratio of statclock ticks; the engine knows each exactly, so ps_ru takes them as
    they are."""
    pr.ru_user_ns = pr.ps_tu_user_ns
    pr.ru_sys_ns = pr.ps_tu_sys_ns


def process_reparent(child: Process, parent: Process) -> None:
    old = child.ps_pptr
    if old is parent:
        return
    if old is not None and child in old.ps_children:
        old.ps_children.remove(child)
    child.ps_pptr = parent
    parent.ps_children.append(child)


def sched_exit(k: Kernel, p: Proc) -> KPath:
    """``sched_exit`` + ``sched_toidle``: drop every kernel-lock level and switch away
    for the last time; the engine then runs ``exit2`` for us, off the CPU."""
    KERNEL_ASSERT_LOCKED(k, p)
    yield from __mp_release_all(k.kernel_lock, p)
    yield EXIT


def exit2(k: Kernel, p: Proc) -> None:
    """The dead thread is off its CPU: fold its last times into the process (1.252;
    after calcru for the last thread, so ps_ru does not see them) and hand it to the
    reaper (or, without one, keep it until the process is freed)."""
    pr = p.p_p
    assert pr is not None
    if k.policy.tuagg_at == TUAGG_AT_STEP4:
        tuagg_add_process(pr, p)
    if k.policy.uses_reaper:
        k.deadproc.append(p)
        k.meters.backlog.add(k.now, 1)
        k.engine.wakeup(k.deadproc_chan)
    else:
        k.policy.exit2_without_reaper(k, p)


# -- the reaper ------------------------------------------------------------------------


def uvm_uarea_free(k: Kernel, p: Proc) -> KPath:
    """Free the dead thread's kernel stack. => it is off every CPU (E6)."""
    if p.state != DEAD:
        k.fail(f"uvm_uarea_free: {p.name} is still on a CPU (openbsd-exit-path.md E6)")
    yield Run(k.costs.uarea_ns)
    p.p_addr = False


def proc_free(k: Kernel, p: Proc) -> KPath:
    yield Run(k.costs.proc_ns)


def reaper(k: Kernel, p: Proc) -> KPath:
    """The reaper kernel thread: free dead threads' u-areas and structs and, for a
    process, let go of its vmspace, then make it a zombie and tell the parent (or zap
    it). ``policy.reaper_locked`` takes the kernel lock around all of it, as
    kern_exit.c did up to at least 1.212 (2023); otherwise only around the
    notification, as in 1.252."""
    pol = k.policy
    while True:
        yield from mtx_enter(k.deadproc_mutex)
        while not k.deadproc:
            yield from msleep(k.deadproc_chan, k.deadproc_mutex, "reaper")
        # LIST_FIRST of a list filled at its head takes the thread that died last.
        q = k.deadproc.pop() if pol.deadproc_lifo else k.deadproc.popleft()
        k.meters.backlog.add(k.now, -1)
        yield from mtx_leave(k.deadproc_mutex)
        if pol.reaper_locked:
            yield from KERNEL_LOCK(k)
        yield from uvm_uarea_free(k, q)
        q.p_vmspace = None
        if q.p_flag & P_THREAD:
            yield from proc_free(k, q)
        else:
            pr = q.p_p
            assert pr is not None
            start = k.now
            yield from pol.reaper_uvm_exit(k, p, pr)
            k.meters.add_teardown(pr, k.now - start)
            if not pol.reaper_locked:
                yield from KERNEL_LOCK(k)
            make_zombie(k, p, pr)
            if not pr.zapped and not pr.ps_flags & PS_ZOMBIE:
                yield from process_zap(k, p, pr)
            if not pol.reaper_locked:
                yield from KERNEL_UNLOCK(k)
        if pol.reaper_locked:
            yield from KERNEL_UNLOCK(k)


def make_zombie(k: Kernel, p: Proc, pr: Process) -> None:
    """The notification part of the reaper: PS_ZOMBIE, then SIGCHLD, PS_WAITEVENT and
    the wakeup of the parent, in that order (E7). A PS_NOZOMBIE process is left for
    the caller to zap."""
    if pr.ps_flags & PS_NOZOMBIE:
        return
    pr.ps_flags |= PS_ZOMBIE
    pr.zombie_ns = k.now
    k.meters.zombies.add(k.now, 1)
    parent = pr.ps_pptr
    if parent is not None:
        parent.ps_flags |= PS_WAITEVENT
        k.engine.wakeup(parent_chan(parent))


# -- wait ------------------------------------------------------------------------------


def sys_wait4(k: Kernel, p: Proc) -> KPath:
    """wait4(-1, ...): a locked system call. Returns the reaped child's process, or
    None (ECHILD)."""
    yield Run(k.costs.syscall_ns)
    yield from KERNEL_LOCK(k)
    child = yield from dowait6(k, p)
    yield from KERNEL_UNLOCK(k)
    if child is not None:
        rec = k.meters.records.get(child.ps_pid)
        if rec is not None:
            rec.reaped_ns = k.now
    return child


def dowait6(k: Kernel, q: Proc, reap_nozombie: bool = False) -> KPath:
    """Sleep until a child is a zombie, then collect it (its rusage into the waiter's
    children's usage) and free it. ``reap_nozombie``: also collect PS_NOZOMBIE children
    (only init does, in the design without a reaper)."""
    me = q.p_p
    assert me is not None
    while True:
        me.ps_flags &= ~PS_WAITEVENT
        yield Run(k.costs.wait_ns)
        nfound = 0
        for pr in list(me.ps_children):
            nozombie = bool(pr.ps_flags & PS_NOZOMBIE)
            if nozombie and not reap_nozombie:
                continue
            nfound += 1
            # Without a reaper, init also collects PS_NOZOMBIE orphans once handed off.
            ready = bool(pr.ps_flags & PS_ZOMBIE) or (nozombie and pr.zombie_ns is not None)
            if ready:
                check_child_unmapped(k, q, pr)
                me.cru_user_ns += pr.ru_user_ns + pr.cru_user_ns
                me.cru_sys_ns += pr.ru_sys_ns + pr.cru_sys_ns
                yield from proc_finish_wait(k, q, pr)
                return pr
        if nfound == 0:
            return None
        yield from msleep(parent_chan(me), None, "wait")


def check_child_unmapped(k: Kernel, q: Proc, pr: Process) -> None:
    """design.md invariant 6: wait4 never returns a child whose address space still
    holds mappings."""
    vm = pr.ps_vmspace
    if vm is not None and not vm.freed and (vm.vm_map.entries or vm.resident()):
        k.violation(
            6,
            f"wait4 in {q.name} returns {pr} while its address space still "
            f"maps {vm.resident()} pages",
            pr,
            vm,
            p=q,
        )


def proc_finish_wait(k: Kernel, q: Proc, pr: Process) -> KPath:
    if pr in k.zombprocess:
        k.zombprocess.remove(pr)
    if pr.ps_flags & PS_ZOMBIE:
        k.meters.zombies.add(k.now, -1)
    yield from process_zap(k, q, pr)


def process_zap(k: Kernel, q: Proc, pr: Process) -> KPath:
    """Free what is left of a process: its list links and, last, its main thread's
    struct proc (whose u-area the reaper already freed). => ps_threadcnt == 0,
    ps_exitcnt == 1 (E8)."""
    if pr.ps_threadcnt != 0 or pr.ps_exitcnt != 1:
        k.fail(f"process_zap: {pr} has threadcnt {pr.ps_threadcnt}, exitcnt {pr.ps_exitcnt}")
    if pr.zapped:
        k.fail(f"process_zap: {pr} zapped twice")
    pr.zapped = True
    pr.reaped_ns = k.now
    rec = k.meters.record_exit(pr)
    rec.zombie_ns = pr.zombie_ns
    rec.user_ns = pr.ru_user_ns
    rec.sys_ns = pr.ru_sys_ns
    parent = pr.ps_pptr
    if parent is not None and pr in parent.ps_children:
        parent.ps_children.remove(pr)
    yield from k.policy.zap_leftovers(k, q, pr)
    yield Run(k.costs.proc_ns)


# -- init ------------------------------------------------------------------------------


def init_main(k: Kernel, p: Proc) -> KPath:
    """init(8) as the exit path sees it: it waits for the orphans it inherits."""
    while True:
        yield from KERNEL_LOCK(k)
        child = yield from dowait6(k, p, reap_nozombie=not k.policy.uses_reaper)
        if child is None:
            yield from msleep(parent_chan(p.p_p), None, "init")  # type: ignore[arg-type]
        yield from KERNEL_UNLOCK(k)
