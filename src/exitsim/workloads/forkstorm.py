"""The built-in workload ``forkstorm``: the classic process-creation microbenchmarks,
run on every CPU at once.

The question: what does each teardown design cost per process when almost all a
machine does is create and destroy processes? ``fork`` + ``exit`` tears down a child
that owns little besides copy-on-write references to its parent's memory; ``fork`` +
``exec`` + ``exit`` tears down a small but complete image (the ``lat_proc fork`` and
``lat_proc exec`` loops of lmbench; NetBSD measured its batched teardown flush with
the same two, cost-anchors row 18). Exits come back to back from every looper, so the
reaper's queue, the kernel lock and the TLB work of each exit are what the run shows.

Each looper execs a small benchmark program, faults it in, then loops: a little user
time, ``fork``, and ``wait4`` for the child. A ``fork`` child writes its stack (the
first return to user space after fork, a copy on write) and exits; an ``exec`` child
execs ``hello``, faults it in, runs briefly and exits. ``mode = "both"`` runs the fork
loop and then the exec loop in every looper.

Defaults and their sources (the Lua ``make -j2`` capture in shared/data/traces, README
table "Per command", is "the trace"):

| parameter | default | source |
|---|---|---|
| loopers | the CPU count | assumption: one benchmark per CPU, the storm a machine can make |
| iterations | 100 | assumption: enough exits for the reaper's queue to build; a quick run |
| mode | both | the two loops of cost-anchors.md row 18 (fork+exit, fork+exec+exit) |
| loop_user_us | 5 | assumption: the loop and libc's fork and wait4 wrappers |
| looper_heap_pages | 256 (1 MiB) | assumption: a small benchmark's buffers, shared copy-on-write |
| | | with every fork child |
| looper text, stack | 32, 4 pages | assumption: a small program; a few stack pages in use |
| looper startup | 50 us | assumption: setting up before the loops |
| hello resident | 410 pages: text 96, libc 250, | the trace: touch, the smallest program, 1.6 MiB |
| | data 8, heap 40, stack 16 | at exit; the split is an assumption |
| hello_user_us | 100 | assumption: the trace's touch lived 7.1 ms under strace, mostly |
| | | exec and ptrace stops; a hello's own run is far shorter |
| hello syscalls | 2 locked + 4 unlocked | assumption: a few opens and writes of a dynamic hello |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from exitsim.engine.thread import KPath
from exitsim.kern.exit import sys_exit, sys_wait4
from exitsim.kern.fork import fork1, spawn_user_process
from exitsim.kern.sig import userret
from exitsim.kern.syscall import user
from exitsim.vm.fault import uvm_touch
from exitsim.workloads.program import (
    STACK_VPN,
    Program,
    check_count,
    check_pages,
    check_time,
    exec_and_run,
)

if TYPE_CHECKING:
    from exitsim.kern.kernel import Kernel
    from exitsim.kern.proc import Proc

MODES = ("fork", "exec", "both")

#: hello: the trace's touch, 410 pages resident at exit (text 96 + libc 250 + data 8 +
#: heap 40 + stack 16).
HELLO_TEXT_PAGES = 96
HELLO_HEAP_PAGES = 40


@dataclass(frozen=True, slots=True)
class ForkstormParams:
    """The knobs of ``forkstorm``; see the module's table for where each default
    comes from. ``loopers`` 0 means one per CPU."""

    loopers: int = 0
    iterations: int = 100
    mode: Literal["fork", "exec", "both"] = "both"
    loop_user_us: float = 5.0
    looper_heap_pages: int = 256
    hello_user_us: float = 100.0

    def __post_init__(self) -> None:
        check_count("loopers", self.loopers, 0)
        check_count("iterations", self.iterations)
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)} (got {self.mode!r})")
        for name in ("loop_user_us", "hello_user_us"):
            check_time(name, getattr(self, name))
        check_pages("looper_heap_pages", self.looper_heap_pages)

    def modes(self) -> tuple[str, ...]:
        """The loops each looper runs, in order."""
        return ("fork", "exec") if self.mode == "both" else (self.mode,)

    def processes(self, ncpu: int) -> int:
        """How many processes a run makes: the loopers and one child per iteration
        of each loop."""
        n = self.loopers or ncpu
        return n * (1 + self.iterations * len(self.modes()))


def looper_program(params: ForkstormParams) -> Program:
    return Program("forkloop", 32, params.looper_heap_pages, 50_000, 2, 2, stack_pages=4)


def hello_program(params: ForkstormParams) -> Program:
    return Program(
        "hello", HELLO_TEXT_PAGES, HELLO_HEAP_PAGES, max(1, round(params.hello_user_us * 1e3)), 2, 4
    )


def fork_child(k: Kernel, c: Proc, looper: Program) -> KPath:
    """fork+exit: the child returns to user space (writing its stack: a copy on
    write of the parent's stack run) and exits at once."""
    assert c.p_vmspace is not None
    yield from uvm_touch(k.uvm, c, c.p_vmspace, STACK_VPN, looper.stack_pages, write=True)
    yield from userret(k, c)
    yield from sys_exit(k, c, 0)


def exec_child(k: Kernel, c: Proc, hello: Program) -> KPath:
    """fork+exec+exit: the child execs hello, which faults in, runs and exits."""
    yield from exec_and_run(k, c, hello)
    yield from sys_exit(k, c, 0)


def looper_main(k: Kernel, p: Proc, params: ForkstormParams) -> KPath:
    """One benchmark process: each loop of ``iterations`` fork, (exec,) exit, wait4."""
    looper = looper_program(params)
    hello = hello_program(params)
    yield from exec_and_run(k, p, looper)
    loop_ns = max(1, round(params.loop_user_us * 1e3))
    for mode in params.modes():
        for _ in range(params.iterations):
            yield user(loop_ns)
            if mode == "fork":
                yield from fork1(k, p, "forkloop", lambda c: fork_child(k, c, looper))
            else:
                yield from fork1(k, p, "forkloop", lambda c: exec_child(k, c, hello))
            child = yield from sys_wait4(k, p)
            if child is None:
                raise RuntimeError("forkstorm: wait4 found no child")
    yield from sys_exit(k, p, 0)


def start_forkstorm(k: Kernel, params: ForkstormParams, seed: int) -> None:
    """Put the loopers on the machine at time 0, as if a shell had started them all;
    init waits for them. The seed is unused: every iteration is the same."""
    del seed
    for i in range(params.loopers or k.machine.ncpu):
        spawn_user_process(k, f"forkloop{i}", lambda p: looper_main(k, p, params))
