"""The built-in workload ``bigexit``: one process with gigabytes resident exits while
other processes keep working.

The question: when a big address space is torn down, who waits for it? Under
``reaper`` the one reaper thread spends the whole teardown on it, with the kernel lock
held (kern_exit.c 1.212), so every other exit queues behind it and every locked system
call spins; under the purge designs the exiting process pays in its own exit1, without
the kernel lock, and the rest of the machine goes on. Memory held after exit
(``memory.held_after_exit_*``) shows how long the big process's pages stay mapped.

A driver shell (``sh``) forks the big process, which execs ``big``, writes the whole of
its data set (one anonymous mapping, one run however large) and tells the driver
through a pipe that it is loaded. The driver then forks the workers, subshells that
run short jobs one after another (fork, exec ``job``, wait4), and waits for the big
process, which computes a little longer and exits. Once the driver has reaped it, it
tells the workers to stop (a flag standing for a signal or a closed pipe); each
finishes the job it is on and exits, and the driver waits for them. Workers start only
once the big process is loaded, so the run simulates jobs around the exit, not through
the long fault-in.

Defaults and their sources (the Lua ``make -j2`` capture in shared/data/traces, README
table "Per command", is "the trace"):

| parameter | default | source |
|---|---|---|
| big_gib | 4 | assumption: a large server or link; row 15 of cost-anchors.md (10.8 s to |
| | | free 320 GB) shows the teardown grows with the size. It must fit the machine |
| big_user_ms | 20 | assumption: every worker is on a job when the big process exits |
| big text, heap | 256, 64 pages | assumption: a mid-sized program; its data is one big mmap |
| workers | CPUs less one | assumption: the big process and the workers fill the machine |
| job_ms | 6.3 | the trace: as lifetime p50 6.3 ms (a short job, as a build runs many) |
| job resident | file 862, anon 416 pages | the trace: X line of as |
| job syscalls | 20 locked + 60 unlocked per 6.3 ms | assumption, as ``build``'s as |
| sh resident, startup | file 290, anon 40 pages; 0.5 ms | assumption (``program.SH``) |
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from exitsim.engine.ops import Run, Wakeup
from exitsim.engine.sync import tsleep
from exitsim.engine.thread import KPath
from exitsim.kern.exec import Image, Segment, sys_execve
from exitsim.kern.exit import sys_exit, sys_wait4
from exitsim.kern.fork import fork1, spawn_user_process
from exitsim.kern.syscall import body_ns, syscall
from exitsim.machine.machine import DEFAULT_TOTAL_PAGES
from exitsim.vm.fault import uvm_touch
from exitsim.workloads.program import (
    BIG_VPN,
    LIBC_PAGES,
    SH,
    Program,
    check_count,
    check_time,
    compute,
    exec_and_run,
    fault_in,
)

if TYPE_CHECKING:
    from exitsim.kern.kernel import Kernel
    from exitsim.kern.proc import Proc

#: 4 KiB pages in a GiB.
PAGES_PER_GIB = 1 << 18
BIG_TEXT_PAGES = 256


@dataclass(frozen=True, slots=True)
class BigexitParams:
    """The knobs of ``bigexit``; see the module's table for where each default comes
    from. ``workers`` 0 means one less than the CPU count (at least one)."""

    big_gib: float = 4.0
    big_user_ms: float = 20.0
    workers: int = 0
    job_ms: float = 6.3

    def __post_init__(self) -> None:
        if not math.isfinite(self.big_gib) or self.big_gib <= 0:
            raise ValueError(f"big_gib must be a finite number > 0 (got {self.big_gib})")
        if self.big_pages() > DEFAULT_TOTAL_PAGES:
            raise ValueError(
                f"big_gib must be at most {DEFAULT_TOTAL_PAGES // PAGES_PER_GIB}, the"
                f" simulated machine's memory (got {self.big_gib})"
            )
        for name in ("big_user_ms", "job_ms"):
            check_time(name, getattr(self, name))
        check_count("workers", self.workers, 0)

    def big_pages(self) -> int:
        """The big process's data set, in pages."""
        return max(1, round(self.big_gib * PAGES_PER_GIB))

    def nworkers(self, ncpu: int) -> int:
        return self.workers or max(1, ncpu - 1)


def big_program(params: BigexitParams) -> Program:
    return Program("big", BIG_TEXT_PAGES, 64, ms(params.big_user_ms), 4, 16)


def big_image(params: BigexitParams) -> Image:
    """big's image with its data set: an anonymous mapping far above the heap, so
    that any size fits the layout (the heap would run into libc)."""
    segs = big_program(params).image().segments
    data = Segment("bigmem", BIG_VPN, params.big_pages())
    return Image("big", tuple(sorted((*segs, data), key=lambda sg: sg.vpn)))


def job_program(params: BigexitParams) -> Program:
    # System calls in proportion to the work, as build's as (20 + 60 per 6.3 ms).
    n = ms(params.job_ms)
    locked = max(1, round(20 * n / 6.3e6))
    return Program("job", 862 - LIBC_PAGES, 392, n, locked, max(1, round(60 * n / 6.3e6)))


def ms(v: float) -> int:
    return max(1, round(v * 1e6))


class BigExit:
    """The state one run shares across its processes: the load pipe and the stop flag."""

    def __init__(self, k: Kernel, params: BigexitParams) -> None:
        self.k = k
        self.params = params
        self.loaded = False
        self.stop = False
        self.chan = ("pipe", "bigexit")  # one run per kernel: the name is unique

    def driver(self, p: Proc) -> KPath:
        k = self.k
        yield from exec_and_run(k, p, SH)
        yield from fork1(k, p, "big", self.big)
        # read(2) on the pipe the big process writes once loaded.
        yield Run(k.costs.syscall_ns)
        while not self.loaded:
            yield from tsleep(self.chan, "piperd")
        yield Run(body_ns(k.costs, "read"))  # a read's body, unlocked (SY_NOLOCK)
        for i in range(self.params.nworkers(k.machine.ncpu)):
            yield from fork1(k, p, f"worker{i}", self.worker)
        # Workers never exit before they are told to: the first child reaped is big.
        big = yield from sys_wait4(k, p)
        if big is None or big.comm != "big":
            raise RuntimeError(f"bigexit: wait4 returned {big} before the big process")
        self.stop = True
        while (yield from sys_wait4(k, p)) is not None:
            pass
        yield from sys_exit(k, p, 0)

    def big(self, p: Proc) -> KPath:
        k = self.k
        prog = big_program(self.params)
        yield from sys_execve(k, p, big_image(self.params))
        yield from fault_in(k, p, prog)
        assert p.p_vmspace is not None
        yield from uvm_touch(k.uvm, p, p.p_vmspace, BIG_VPN, self.params.big_pages(), write=True)
        # write(2) on the pipe: the driver wakes up and starts the workers.
        yield from syscall(k, p, "write")
        self.loaded = True
        yield Wakeup(self.chan)
        yield from compute(k, p, prog.user_ns, prog.locked_calls, prog.unlocked_calls)
        yield from sys_exit(k, p, 0)

    def worker(self, p: Proc) -> KPath:
        """A subshell running jobs one after another until told to stop."""
        k = self.k
        job = job_program(self.params)
        while not self.stop:
            yield from fork1(k, p, "job", lambda c: self.job(c, job))
            yield from sys_wait4(k, p)
        yield from sys_exit(k, p, 0)

    def job(self, c: Proc, job: Program) -> KPath:
        yield from exec_and_run(self.k, c, job)
        yield from sys_exit(self.k, c, 0)


def start_bigexit(k: Kernel, params: BigexitParams, seed: int) -> None:
    """Put the driver on the machine at time 0. The seed is unused: nothing is drawn."""
    del seed
    run = BigExit(k, params)
    spawn_user_process(k, "sh", run.driver)
