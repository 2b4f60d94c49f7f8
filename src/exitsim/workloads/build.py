"""The built-in workload ``build``: ``make -jN`` running compile jobs.

Each job: make forks a child that execs ``sh``; the shell execs the compiler driver
``cc`` (``sh -c`` with one command execs it); the driver forks and execs ``cc1``, waits,
forks and execs ``as``, waits, and exits; make waits for any child and starts the next
job. Every process maps its program text and libc (shared vnodes), faults in its heap
and stack, computes in user mode with file-system calls in between (``open``/``stat``
take the kernel lock, ``read``/``close`` do not), and exits.

Defaults and their sources (the Lua ``make -j2`` capture in shared/data/traces, README
table "Per command", is "the trace"):

| parameter | default | source |
|---|---|---|
| jobs | 64 | assumption: a mid-sized library (the trace built 34 units) |
| parallel | the CPU count | ``make -jN`` with N = CPUs, as builds are run |
| cc1 user time | median 175 ms, log-sd 0.9 | the trace: cc1 lifetime p50 174.9 ms, max 2071 ms |
| as user time | median 6.3 ms, log-sd 0.5 | the trace: as lifetime p50 6.3 ms, max 21 ms |
| cc driver user time | 1 ms | assumption: the driver's own work besides its children |
| sh user time | 0.5 ms | assumption (make in the trace spawns gcc without a shell) |
| cc1 resident | file 6572, anon 4495 x logN(0.35) | the trace: cc1 X lines, maxrss 33.7-71 MiB |
| as resident | file 862, anon 416 pages | the trace: X line of as |
| cc resident | file 647, anon 32 pages | the trace: X line of gcc |
| sh resident | file 290, anon 40 pages | assumption: a small shell and libc |
| make resident | file 450, anon 130 pages | the trace: make maxrss 2.3 MiB |
| syscalls | cc1 120+240, as 20+60 (per median run), cc 30+30, sh 20+20 | assumption |
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from exitsim.engine.thread import KPath
from exitsim.kern.exit import sys_exit, sys_wait4
from exitsim.kern.fork import fork1, spawn_user_process
from exitsim.workloads.program import (
    LIBC_PAGES,
    MAX_MS,
    Program,
    check_count,
    check_number,
    check_pages,
    exec_and_run,
)

if TYPE_CHECKING:
    from exitsim.kern.kernel import Kernel
    from exitsim.kern.proc import Proc


@dataclass(frozen=True, slots=True)
class BuildParams:
    """The knobs of ``build``; see the module's table for where each default comes
    from. ``parallel`` 0 means one job per CPU."""

    jobs: int = 64
    parallel: int = 0
    cc1_user_ms: float = 175.0
    cc1_user_sigma: float = 0.9
    as_user_ms: float = 6.3
    as_user_sigma: float = 0.5
    cc1_anon_pages: int = 4495
    cc1_anon_sigma: float = 0.35
    cc1_text_pages: int = 6572 - LIBC_PAGES

    def __post_init__(self) -> None:
        check_count("jobs", self.jobs)
        check_count("parallel", self.parallel, 0)
        for name, top in (("cc1_user_ms", MAX_MS), ("as_user_ms", MAX_MS), *_SIGMAS):
            check_number(name, getattr(self, name), top)
        check_pages("cc1_text_pages", self.cc1_text_pages)
        check_pages("cc1_anon_pages", self.cc1_anon_pages, 0)


#: A log-normal spread of more than this (x20 at one standard deviation) is not a build.
MAX_SIGMA = 3.0
_SIGMAS = tuple((name, MAX_SIGMA) for name in ("cc1_user_sigma", "as_user_sigma", "cc1_anon_sigma"))


def lognormal_ns(rng: random.Random, median_ms: float, sigma: float) -> int:
    return max(1, int(median_ms * 1e6 * math.exp(rng.gauss(0.0, sigma))))


def job_programs(params: BuildParams, seed: int, job: int) -> dict[str, Program]:
    """The four programs of job ``job``; its own random stream, so a job is the same
    whatever the schedule."""
    rng = random.Random(f"{seed}:build:{job}")
    cc1_heap = max(64, int(params.cc1_anon_pages * math.exp(rng.gauss(0.0, params.cc1_anon_sigma))))
    cc1_ns = lognormal_ns(rng, params.cc1_user_ms, params.cc1_user_sigma)
    as_ns = lognormal_ns(rng, params.as_user_ms, params.as_user_sigma)
    return {
        "sh": Program("sh", 290 - LIBC_PAGES, 32, 500_000, 20, 20),
        "cc": Program("cc", 647 - LIBC_PAGES, 24, 1_000_000, 30, 30, 8),
        # System calls in proportion to the work: 120 + 240 per 175 ms of cc1, 20 + 60
        # per 6.3 ms of as, at least one of each.
        "cc1": Program(
            "cc1",
            params.cc1_text_pages,
            cc1_heap,
            cc1_ns,
            _calls(120, cc1_ns, 175e6),
            _calls(240, cc1_ns, 175e6),
        ),
        "as": Program(
            "as", 862 - LIBC_PAGES, 400, as_ns, _calls(20, as_ns, 6.3e6), _calls(60, as_ns, 6.3e6)
        ),
    }


def _calls(per_median: int, ns: int, median_ns: float) -> int:
    return max(1, round(per_median * ns / median_ns))


MAKE = Program("make", 450 - LIBC_PAGES, 114, 200_000, 10, 10)


def cc_driver(k: Kernel, p: Proc, progs: dict[str, Program]) -> KPath:
    """sh execs cc; cc runs cc1 then as, each forked, exec'd and waited for."""
    yield from exec_and_run(k, p, progs["sh"])
    yield from exec_and_run(k, p, progs["cc"])
    for stage in ("cc1", "as"):
        prog = progs[stage]
        yield from fork1(k, p, stage, lambda c, prog=prog: run_child(k, c, prog))
        yield from sys_wait4(k, p)
    yield from sys_exit(k, p, 0)


def run_child(k: Kernel, p: Proc, prog: Program) -> KPath:
    """A forked child that execs ``prog``, runs it and exits."""
    yield from exec_and_run(k, p, prog)
    yield from sys_exit(k, p, 0)


def make_main(k: Kernel, p: Proc, params: BuildParams, seed: int) -> KPath:
    """make -jN: keep N jobs running, wait for any, start the next."""
    yield from exec_and_run(k, p, MAKE)

    def start(job: int) -> KPath:
        progs = job_programs(params, seed, job)
        yield from fork1(k, p, "sh", lambda c: cc_driver(k, c, progs))

    yield from make_jobs(k, p, params.jobs, params.parallel or k.machine.ncpu, start)
    yield from sys_exit(k, p, 0)


def make_jobs(k: Kernel, p: Proc, jobs: int, parallel: int, start: Callable[[int], KPath]) -> KPath:
    """make -jN's loop: keep ``parallel`` jobs running (``start(i)`` forks job i),
    wait for any, start the next, until all ``jobs`` have been reaped."""
    running = 0
    started = 0
    while started < jobs or running:
        while running < parallel and started < jobs:
            yield from start(started)
            started += 1
            running += 1
        child = yield from sys_wait4(k, p)
        if child is None:
            break
        running -= 1


def start_build(k: Kernel, params: BuildParams, seed: int) -> None:
    """Put make on the simulated machine at time 0."""
    spawn_user_process(k, "make", lambda p: make_main(k, p, params, seed))
