"""The built-in workload ``cbuild``: a C build shaped like a captured one, and its
preset ``openbsd-kernel``.

The structure is the Lua build of shared/data/traces ("the trace"; 34 compile units,
``make -j2``): make runs each compile unit as a compiler driver (``gcc``) that forks and
execs ``cc1``, waits, forks and execs ``as``, waits and exits; once every unit is
built, make runs ``ar`` and ``ranlib`` on the library and links the program with the
driver, which runs ``collect2``, which runs ``ld``. Each process execs its program,
faults in its text (file-backed, shared by every process of the same program) and its
heap (anonymous, zero-filled), and computes with its system calls spread through its
user time: the calls each program makes per process, by name, measured on a real C
build on Linux (data/captures/lua-syscalls, derived into
``workloads/data/c-build-syscalls.toml`` by ``exitsim trace syscalls``), each with
OpenBSD's kernel-lock rule (kern/syscall.py): ``open``, ``stat``, ``readlink`` ...
under the kernel lock, ``read``, ``close`` ... without it.

Defaults and their sources ("the trace": its README's "Per command" table and X lines):

- units 34: the trace's compile units. parallel 0: ``make -jN`` with N = CPUs.
- cc1_user_ms 175, cc1_user_sigma 0.9: the trace's cc1 lifetime, p50 174.9 ms, max
  2071 ms, taken as log-normal user time; as_user_ms 6.3, sigma 0.5: as, p50 6.3 ms,
  max 21 ms.
- driver_user_ms 1: assumption, gcc's (and collect2's) own work besides its children.
- make_user_ms 200: assumption, make reading the makefile and checking prerequisites.
- ar_user_ms 59, ranlib_user_ms 40, ld_user_ms 56: the trace's lifetimes of ar,
  ranlib and ld, an upper bound on their user time.
- Resident pages at exit, file/anon, from the trace's X lines: cc1 6572 (text with
  libc) and 4495 x logN(0.35) anon (maxrss 33.7-71 MiB); as 862/416 (the largest);
  gcc 647/32; make 491/96; ar 12090/2432; ranlib 12139/2432; collect2 467/0 (given
  24: data and stack); ld 1036/2054.
- calls_scale 1.0: multiplies every per-process call count (1.0: as measured).

Simplifications: the memory calls (``mmap``, ``munmap``, ``mprotect``, ``brk``) the
capture counts are left out, as the model has no path for them; a process's heap is
faulted in once after exec, not grown as the program runs; ``vfork`` is a fork.
"""

from __future__ import annotations

import math
import random
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING

from exitsim.engine.thread import KPath
from exitsim.kern.exit import sys_exit, sys_wait4
from exitsim.kern.fork import fork1, spawn_user_process
from exitsim.kern.syscall import BODY
from exitsim.workloads.build import MAX_SIGMA, lognormal_ns, make_jobs
from exitsim.workloads.program import (
    LIBC_PAGES,
    Program,
    check_count,
    check_number,
    check_pages,
    check_time,
    exec_and_run,
)

if TYPE_CHECKING:
    from exitsim.kern.kernel import Kernel
    from exitsim.kern.proc import Proc

#: The per-program call counts shipped with the package.
SYSCALLS_DATA = "c-build-syscalls.toml"
MAX_SCALE = 100.0


@dataclass(frozen=True)
class CBuildParams:
    """The knobs of ``cbuild``; see the module's table for each default's source.
    ``parallel`` 0 means one job per CPU."""

    units: int = 34
    parallel: int = 0
    cc1_user_ms: float = 175.0
    cc1_user_sigma: float = 0.9
    as_user_ms: float = 6.3
    as_user_sigma: float = 0.5
    driver_user_ms: float = 1.0
    cc1_text_pages: int = 6572 - LIBC_PAGES
    cc1_anon_pages: int = 4495
    cc1_anon_sigma: float = 0.35
    archive: bool = True
    ar_user_ms: float = 59.0
    ranlib_user_ms: float = 40.0
    ld_user_ms: float = 56.0
    ld_anon_pages: int = 2054
    make_user_ms: float = 200.0
    calls_scale: float = 1.0

    def __post_init__(self) -> None:
        check_count("units", self.units)
        check_count("parallel", self.parallel, 0)
        for name in _TIMES:
            check_time(name, getattr(self, name))
        for name in ("cc1_user_sigma", "as_user_sigma", "cc1_anon_sigma"):
            check_number(name, getattr(self, name), MAX_SIGMA)
        check_number("calls_scale", self.calls_scale, MAX_SCALE)
        check_pages("cc1_text_pages", self.cc1_text_pages)
        check_pages("cc1_anon_pages", self.cc1_anon_pages, 0)
        check_pages("ld_anon_pages", self.ld_anon_pages, 0)


_TIMES = tuple(f"{p}_user_ms" for p in ("cc1", "as", "driver", "ar", "ranlib", "ld", "make"))


@dataclass(frozen=True)
class OpenBSDKernelParams(CBuildParams):
    """``openbsd-kernel``: a GENERIC.MP build (docs/calibration.md, "The presets").

    - units 1,000: assumption, the order of the object files a GENERIC.MP kernel links
      (config(8) writes one per selected ``file`` line; not counted here);
    - cc1_user_ms 560: fitted, so that the units' user time adds up to tedu's 14m01.75s
      of user time for a kernel build (flak.tedunangst.com, "compiling an openbsd kernel
      50% faster"): 841.75 s / 1,000 units is a mean of 0.84 s, a median of 0.56 s at
      the trace's spread (mean = median x exp(sigma^2 / 2));
    - no library: the kernel is linked from its objects (``ld -o bsd``); ld_user_ms
      2,000 and ld_anon_pages 25,000: assumption, linking a 22 MB kernel (tedu's
      ``21.9M bsd``) takes seconds and about 100 MB;
    - the compile's calls and resident sizes: the Lua capture's, as no OpenBSD kernel
      build has been captured (an assumption: clang on kernel sources differs).
    """

    units: int = 1000
    cc1_user_ms: float = 560.0
    archive: bool = False
    ld_user_ms: float = 2000.0
    ld_anon_pages: int = 25_000


@cache
def measured_calls() -> dict[str, dict[str, int]]:
    """Per program, the median count of each model call per process, as shipped."""
    text = resources.files("exitsim.workloads").joinpath("data", SYSCALLS_DATA).read_text()
    data = tomllib.loads(text)
    out: dict[str, dict[str, int]] = {}
    for prog, row in data["programs"].items():
        out[prog] = {name: round(n) for name, n in row["model"].items() if name in BODY}
    return out


def mix_of(program: str, scale: float) -> tuple[tuple[str, int], ...]:
    """The calls ``program`` makes per process, scaled; none for a program the capture
    did not run."""
    calls = measured_calls().get(program, {})
    scaled = ((name, round(n * scale)) for name, n in sorted(calls.items()))
    return tuple((name, n) for name, n in scaled if n > 0)


def _prog(name: str, file_pages: int, anon: int, user_ns: int, scale: float) -> Program:
    return Program(
        name,
        max(1, file_pages - LIBC_PAGES),
        max(1, anon - 24),
        user_ns,
        0,
        0,
        mix=mix_of(name, scale),
    )


def unit_programs(params: CBuildParams, seed: int, unit: int) -> dict[str, Program]:
    """The three programs of compile unit ``unit``, from its own random stream, so a
    unit is the same whatever the schedule."""
    rng = random.Random(f"{seed}:cbuild:{unit}")
    anon = max(64, int(params.cc1_anon_pages * math.exp(rng.gauss(0.0, params.cc1_anon_sigma))))
    cc1_ns = lognormal_ns(rng, params.cc1_user_ms, params.cc1_user_sigma)
    as_ns = lognormal_ns(rng, params.as_user_ms, params.as_user_sigma)
    s = params.calls_scale
    return {
        "gcc": _prog("gcc", 647, 32, _ms(params.driver_user_ms), s),
        "cc1": Program("cc1", params.cc1_text_pages, anon, cc1_ns, 0, 0, mix=mix_of("cc1", s)),
        "as": _prog("as", 862, 416, as_ns, s),
    }


def _ms(ms: float) -> int:
    return max(1, round(ms * 1e6))


def link_programs(params: CBuildParams) -> dict[str, Program]:
    """The programs of the final steps: archive, index, link."""
    s = params.calls_scale
    return {
        "ar": _prog("ar", 12_090, 2432, _ms(params.ar_user_ms), s),
        "ranlib": _prog("ranlib", 12_139, 2432, _ms(params.ranlib_user_ms), s),
        "gcc": _prog("gcc", 647, 32, _ms(params.driver_user_ms), s),
        "collect2": _prog("collect2", 467, 24, _ms(params.driver_user_ms), s),
        "ld": _prog("ld", 1036, params.ld_anon_pages, _ms(params.ld_user_ms), s),
    }


#: A step of the build: a program, and the steps it forks and waits for one after the
#: other (a compile unit: the driver with cc1 then as; the link: gcc -> collect2 -> ld).
Step = tuple[str, tuple["Step", ...]]
UNIT: Step = ("gcc", (("cc1", ()), ("as", ())))
LINK: Step = ("gcc", (("collect2", (("ld", ()),)),))


def run_step(k: Kernel, p: Proc, progs: dict[str, Program], step: Step) -> KPath:
    """Exec the step's program and run it, then fork each of its steps in turn and
    wait for it; exit."""
    name, children = step
    yield from exec_and_run(k, p, progs[name])
    for child in children:
        yield from fork1(k, p, child[0], lambda c, s=child: run_step(k, c, progs, s))
        yield from sys_wait4(k, p)
    yield from sys_exit(k, p, 0)


def make_main(k: Kernel, p: Proc, params: CBuildParams, seed: int) -> KPath:
    """make -jN: keep N units compiling, wait for any, start the next; then the
    archive and the link, one after the other (they depend on every object)."""
    yield from exec_and_run(
        k, p, _prog("make", 491, 96, _ms(params.make_user_ms), params.calls_scale)
    )

    def start(unit: int) -> KPath:
        progs = unit_programs(params, seed, unit)
        yield from fork1(k, p, UNIT[0], lambda c: run_step(k, c, progs, UNIT))

    yield from make_jobs(k, p, params.units, params.parallel or k.machine.ncpu, start)
    link = link_programs(params)
    for step in (("ar", ()), ("ranlib", ()), LINK) if params.archive else (LINK,):
        yield from fork1(k, p, step[0], lambda c, s=step: run_step(k, c, link, s))
        yield from sys_wait4(k, p)
    yield from sys_exit(k, p, 0)


def start_cbuild(k: Kernel, params: CBuildParams, seed: int) -> None:
    """Put make on the simulated machine at time 0."""
    spawn_user_process(k, "make", lambda p: make_main(k, p, params, seed))
