"""The built-in workload ``configure``: a long chain of short processes, one at a
time, as a configure script runs them.

The question: what does each exit cost the one thing that is running? A configure
script is sequential: the shell forks, the child execs a small program (``test``,
``sed``, a probe just compiled...), the shell waits for it, and only then goes on. Every
exit is on the critical path, so the time from the child's exit1 to the shell's wait4
returning (exit latency) adds up directly into the wall time, and other CPUs cannot
hide it. Under ``reaper`` that latency includes a switch to the reaper and its whole
teardown; under the purge designs the child tears down in its own exit1 first.

The shell (``sh``) runs ``steps`` steps; each is a little shell work, then a fork and
a wait4. Most children exec ``probe`` (a tiny program: fault in, run, exit); every
``subshell_every``-th is a command substitution, a fork without exec: the child writes
its stack (a copy on write of the shell's), runs briefly and exits.

Defaults and their sources (the Lua ``make -j2`` capture in shared/data/traces, README
table "Per command", is "the trace"):

| parameter | default | source |
|---|---|---|
| steps | 300 | assumption: configure scripts run hundreds of programs; a quick run |
| subshell_every | 4 | assumption: one step in four is a ``$(...)`` without exec |
| sh_user_ms | 0.3 | assumption: the shell parses and expands a line or two between steps |
| probe_user_ms | 0.5 | assumption: the trace's touch lived 7.1 ms under strace, mostly exec |
| | | and ptrace stops; a probe's own run is shorter |
| subshell_user_ms | 0.1 | assumption: a builtin or two in the subshell |
| probe resident | 410 pages: text 96, libc 250, | the trace: touch, the smallest program, |
| | data 8, heap 40, stack 16 | 1.6 MiB at exit; the split is an assumption |
| probe syscalls | 3 locked + 6 unlocked | assumption: opens and reads of a small tool |
| sh resident, startup | file 290, anon 40 pages; 1 ms | assumption, as ``build``'s sh |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from exitsim.engine.thread import KPath
from exitsim.kern.exit import sys_exit, sys_wait4
from exitsim.kern.fork import fork1, spawn_user_process
from exitsim.kern.syscall import user
from exitsim.vm.fault import uvm_touch
from exitsim.workloads.forkstorm import HELLO_HEAP_PAGES, HELLO_TEXT_PAGES
from exitsim.workloads.program import (
    LIBC_PAGES,
    STACK_VPN,
    Program,
    check_count,
    check_time,
    compute,
    exec_and_run,
)

if TYPE_CHECKING:
    from exitsim.kern.kernel import Kernel
    from exitsim.kern.proc import Proc

SH = Program("sh", 290 - LIBC_PAGES, 16, 1_000_000, 10, 10)


@dataclass(frozen=True, slots=True)
class ConfigureParams:
    """The knobs of ``configure``; see the module's table for where each default
    comes from. ``subshell_every`` 0 means no subshells."""

    steps: int = 300
    subshell_every: int = 4
    sh_user_ms: float = 0.3
    probe_user_ms: float = 0.5
    subshell_user_ms: float = 0.1

    def __post_init__(self) -> None:
        check_count("steps", self.steps)
        check_count("subshell_every", self.subshell_every, 0)
        for name in ("sh_user_ms", "probe_user_ms", "subshell_user_ms"):
            check_time(name, getattr(self, name))

    def is_subshell(self, step: int) -> bool:
        """Steps are numbered from 1; every ``subshell_every``-th is a subshell."""
        return self.subshell_every > 0 and step % self.subshell_every == 0

    def subshells(self) -> int:
        return self.steps // self.subshell_every if self.subshell_every else 0


def ns(v: float) -> int:
    return max(1, round(v * 1e6))


def probe_program(params: ConfigureParams) -> Program:
    return Program("probe", HELLO_TEXT_PAGES, HELLO_HEAP_PAGES, ns(params.probe_user_ms), 3, 6)


def probe(k: Kernel, c: Proc, prog: Program) -> KPath:
    yield from exec_and_run(k, c, prog)
    yield from sys_exit(k, c, 0)


def subshell(k: Kernel, c: Proc, params: ConfigureParams) -> KPath:
    """``$(...)``: the forked shell writes its stack, runs a builtin and exits."""
    assert c.p_vmspace is not None
    yield from uvm_touch(k.uvm, c, c.p_vmspace, STACK_VPN, SH.stack_pages, write=True)
    yield from compute(k, c, ns(params.subshell_user_ms), 0, 1)
    yield from sys_exit(k, c, 0)


def configure_main(k: Kernel, p: Proc, params: ConfigureParams) -> KPath:
    """The script: each step, some shell work, one child, wait for it."""
    yield from exec_and_run(k, p, SH)
    prog = probe_program(params)
    for step in range(1, params.steps + 1):
        yield user(ns(params.sh_user_ms))
        if params.is_subshell(step):
            yield from fork1(k, p, "sh", lambda c: subshell(k, c, params))
        else:
            yield from fork1(k, p, "sh", lambda c: probe(k, c, prog))
        if (yield from sys_wait4(k, p)) is None:
            raise RuntimeError("configure: wait4 found no child")
    yield from sys_exit(k, p, 0)


def start_configure(k: Kernel, params: ConfigureParams, seed: int) -> None:
    """Put the script's shell on the machine at time 0. The seed is unused."""
    del seed
    spawn_user_process(k, "configure", lambda p: configure_main(k, p, params))
