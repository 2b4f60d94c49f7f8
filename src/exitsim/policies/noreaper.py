"""``no-reaper``: our reading of mpi's first proposal ("Faster _exit(2) for a faster
userland: R.I.P the reaper", May 2025): no reaper thread.

The exiting process hands itself to its parent as a zombie in exit1, right after its
siblings are gone, then tears its address space down (unlocked, as ``purge``); the
parent's ``wait4`` frees what is left (``uvm_exit`` and the struct proc) in
``process_zap``. Dead threads cannot free their own u-area and struct proc, so they
wait on their process until it is freed. The two objections raised against it become
observable: a long-lived process's dead threads are not freed until it exits
(``unfreed_threads``), and a parent can reap a child whose memory is still mapped
(design.md invariant 6, which this design breaks by construction: counted in timed
runs, a counterexample for ``exitsim check``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from exitsim.engine.sync import KERNEL_LOCK, mp_release_all, tsleep
from exitsim.engine.thread import DEAD, KPath
from exitsim.kern.exit import (
    calcru,
    make_zombie,
    parent_chan,
    proc_free,
    uvm_purge_checked,
    uvm_uarea_free,
)
from exitsim.kern.proc import P_THREAD, PS_NOZOMBIE
from exitsim.policies.base import Policy
from exitsim.vm.vmspace import uvm_exit

if TYPE_CHECKING:
    from exitsim.kern.kernel import Kernel
    from exitsim.kern.proc import Proc, Process


class NoReaper(Policy):
    name = "no-reaper"
    summary = "no reaper: exit1 hands the zombie over, then purges; wait4 frees the rest"
    uses_reaper = False
    known_violations = frozenset({6})

    def exit1_teardown(self, k: Kernel, p: Proc) -> KPath:
        pr = p.p_p
        assert pr is not None
        # The handoff the reaper used to do, now before the teardown; the parent may
        # collect the zombie at once, so its ps_ru must be made now (calcru), from
        # the times folded at step 4: the purge that follows is not in it.
        calcru(pr)
        if pr.ps_flags & PS_NOZOMBIE:
            pr.zombie_ns = k.now
            k.engine.wakeup(parent_chan(k.initprocess))
        else:
            make_zombie(k, p, pr)
        yield from mp_release_all(k.kernel_lock, p)
        yield from uvm_purge_checked(k, p, True)
        yield from KERNEL_LOCK(k)

    def exit2_without_reaper(self, k: Kernel, p: Proc) -> None:
        pr = p.p_p
        assert pr is not None
        pr.dead_threads.append(p)
        k.meters.unfreed_threads.add(k.now, 1)
        k.engine.wakeup(("dead_threads", pr.ps_pid))

    def zap_leftovers(self, k: Kernel, q: Proc, pr: Process) -> KPath:
        # The child handed itself over before its purge (invariant 6, counted): its
        # main thread may still be tearing the address space down. Wait until it is
        # off its CPU (exit2) before freeing what it still uses.
        main = pr.ps_mainproc
        while main is not None and main.state != DEAD:
            yield from tsleep(("dead_threads", pr.ps_pid), "zapwait")
        # Free the dead threads' u-areas and structs, then the vmspace, in the waiter.
        # Each is off its CPU: exit2_without_reaper lists it from the exit hook.
        for t in list(pr.dead_threads):
            pr.dead_threads.remove(t)
            k.meters.unfreed_threads.add(k.now, -1)
            yield from uvm_uarea_free(k, t)
            if t.p_flag & P_THREAD:
                yield from proc_free(k, t)
        if pr.ps_vmspace is not None:
            yield from uvm_exit(k.uvm, q, pr)
