"""``struct process`` and ``struct proc``: the fields the exit path reads and writes
(sys/proc.h; openbsd-exit-path.md 8.1, 8.2)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from exitsim.engine.locks import SpinMutex
from exitsim.engine.thread import Thread

if TYPE_CHECKING:
    from exitsim.vm.vmspace import Vmspace

# ps_flags (sys/proc.h)
PS_EXITING = 0x00000008
PS_PPWAIT = 0x00000040
PS_SINGLEEXIT = 0x00001000
PS_SINGLEUNWIND = 0x00002000
PS_NOZOMBIE = 0x00004000
PS_SYSTEM = 0x00010000
PS_ZOMBIE = 0x00040000
PS_WAITEVENT = 0x10000000

# p_flag (sys/proc.h)
P_SYSTEM = 0x00000200
P_WEXIT = 0x00002000
P_SUSPSINGLE = 0x00080000
P_THREAD = 0x04000000

# p_stat (sys/proc.h)
SIDL = 1
SRUN = 2
SSLEEP = 3
SSTOP = 4
SDEAD = 6
SONPROC = 7

# exit1 flags (sys/proc.h)
EXIT_NORMAL = 0x00000001
EXIT_THREAD = 0x00000002
EXIT_THREAD_NOCHECK = 0x00000003

# single_thread_set modes (sys/proc.h)
SINGLE_SUSPEND = 0x01
SINGLE_UNWIND = 0x02
SINGLE_EXIT = 0x03

# ps_sigacts->ps_sigflags
SAS_NOCLDWAIT = 0x02

# Where exit1 folds the exiting thread's times into its process before calcru turns
# them into the ps_ru that wait4 returns (see kern/exit.py ``tuagg_add_process``).
#: kern_exit.c 1.212: ``tuagg_locked`` at step 10, right before calcru at step 11, so
#: everything the last thread ran in exit1 (a purge at step 6 too) reaches ps_ru.
TUAGG_AT_STEP10 = "step10"
#: kern_exit.c 1.252: ``tuagg_add_process`` at step 4, before the main thread waits
#: for its siblings; what runs after (a purge at step 6) reaches ps_tu only in exit2,
#: after calcru has made ps_ru, so wait4 does not report it.
TUAGG_AT_STEP4 = "step4"


class Process:
    """``struct process``: what the threads of one process share."""

    __slots__ = (
        "ps_pid",
        "ps_flags",
        "ps_threads",
        "ps_threadcnt",
        "ps_exitcnt",
        "ps_mainproc",
        "ps_pptr",
        "ps_children",
        "ps_vmspace",
        "ps_xexit",
        "ps_xsig",
        "ps_mtx",
        "ps_sigflags",
        "ps_single",
        "ps_suspendcnt",
        "ps_siglist",
        "comm",
        "ps_tu_user_ns",
        "ps_tu_sys_ns",
        "ru_user_ns",
        "ru_sys_ns",
        "cru_user_ns",
        "cru_sys_ns",
        "exit_ns",
        "zombie_ns",
        "reaped_ns",
        "dead_threads",
        "zapped",
        "spec",
        "resident_at_exit",
        "ps_nfiles",
        "ps_semundo",
        "ps_unveil_paths",
    )

    def __init__(self, pid: int, comm: str, parent: Process | None) -> None:
        self.ps_pid = pid
        self.ps_flags = 0
        self.ps_threads: list[Proc] = []
        self.ps_threadcnt = 0
        self.ps_exitcnt = 0
        self.ps_mainproc: Proc | None = None
        self.ps_pptr = parent
        self.ps_children: list[Process] = []
        self.ps_vmspace: Vmspace | None = None
        self.ps_xexit = 0
        self.ps_xsig = 0
        self.ps_mtx = SpinMutex(f"ps_mtx.{pid}")
        self.ps_sigflags = 0  # of its sigacts: SAS_NOCLDWAIT
        self.ps_single: Proc | None = None
        # Threads single_thread_set still waits for; signals pending on the process.
        self.ps_suspendcnt = 0
        self.ps_siglist = 0
        self.comm = comm
        # ps_tu: the thread times folded into the process so far (tuagg_add_process);
        # ps_ru: what calcru made of ps_tu at exit1 step 11, the figure wait4 hands
        # the parent; ps_cru: the times of the children it has waited for.
        self.ps_tu_user_ns = 0
        self.ps_tu_sys_ns = 0
        self.ru_user_ns = 0
        self.ru_sys_ns = 0
        self.cru_user_ns = 0
        self.cru_sys_ns = 0
        self.exit_ns: int | None = None  # exit1 entry of the first exiting thread
        self.zombie_ns: int | None = None
        self.reaped_ns: int | None = None
        self.dead_threads: list[Proc] = []  # no-reaper: threads waiting to be freed
        self.zapped = False
        self.spec: Any = None
        self.resident_at_exit = 0
        # What exit1 step 6 releases besides the address space. Files open at exit:
        # the three standard descriptors (assumption: what a program opens itself
        # it closes before it exits; the workloads do not track descriptors). SysV
        # semaphore undo entries: none (assumption: build tools do not use SysV
        # semaphores). Unveiled paths: none (assumption: compilers and make do not
        # unveil).
        self.ps_nfiles = 3
        self.ps_semundo = False
        self.ps_unveil_paths = 0

    def __repr__(self) -> str:
        return f"<process {self.ps_pid} {self.comm}>"


class Proc(Thread):
    """``struct proc``: one thread, an engine thread with the kernel's fields."""

    __slots__ = (
        "p_addr",
        "p_flag",
        "p_p",
        "p_stat",
        "p_siglist",
        "p_sigmask",
        "p_vmspace",
        "pm_counted",
        "tu_user_ns",
        "tu_sys_ns",
    )

    def __init__(
        self, tid: int, name: str, gen: Any, p_p: Process | None = None, p_flag: int = 0
    ) -> None:
        super().__init__(tid, name, gen)
        self.p_p = p_p
        self.p_flag = p_flag
        self.p_stat = SIDL
        self.p_siglist = 0  # signals pending on this thread
        self.p_sigmask = 0  # signals it blocks
        self.p_vmspace: Vmspace | None = None
        self.p_addr = True  # the u-area (kernel stack and pcb) is allocated
        self.pm_counted = False  # this thread is counted in its pmap's pm_active
        # p_tu is what the thread ran since it was last folded into its process:
        # user_ns - tu_user_ns, sys_ns - tu_sys_ns (these are the totals at that fold).
        self.tu_user_ns = 0
        self.tu_sys_ns = 0
