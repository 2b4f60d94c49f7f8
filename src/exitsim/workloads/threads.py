"""The built-in workload ``threads``: multi-threaded processes, the two cases the
threads raise for the teardown designs.

The questions:
- ``server``: when a multi-threaded server exits while its worker threads run user
  code, what does the exit cost? exit1 single-threads the process (its siblings exit
  at their next return to user space) and the main thread sleeps until they are gone
  before ``uvm_purge``; on arm64 ``pmap_purge`` needs that wait, as no sibling may
  keep the pmap active when the TLB is flushed once for the address space.
- ``churn``: who frees the threads of a long-lived process whose threads come and go
  (``__tfork`` then ``__threxit``, again and again)? A dead thread cannot free its own
  kernel stack; the reaper does it at once, and without a reaper they pile up until
  the process exits (``threads.unfreed_peak``): the objection raised against removing
  the reaper.

A supervisor (``sh``) forks the servers and the churner and waits for them. A server
execs ``server``, faults it in, starts its worker threads, computes with system calls
in between and calls exit(2) with every worker still computing. The churner execs
``churn`` and keeps ``pool`` threads alive, each computing ``thread_ms`` and calling
``__threxit``; it joins each (pthread_join: sleeping until the thread says it is done,
just before its ``__threxit``) and starts the next, until it has made
``churn_threads``; then it joins the last and exits.

Defaults and their sources (the Lua ``make -j2`` capture in shared/data/traces, README
table "Per command", is "the trace"; all its processes were single-threaded):

| parameter | default | source |
|---|---|---|
| mode | both | this generator's two cases, side by side |
| servers | 2 | assumption: a few daemons going down at once, as at shutdown |
| threads | 8 | assumption: about a thread per CPU of the default 8-CPU machine |
| server_ms | 20 | assumption: long enough for every worker to be running when main exits |
| server syscalls | one per ms, a quarter locked | assumption: requests read and files opened |
| server resident | text 400, heap 2048 pages | assumption: a mid-sized daemon, 8 MiB of heap |
| worker slice | 1 ms between returns to user space | tree.py's WORKER_SLICE_NS (assumption) |
| churn_threads | 64 | assumption: enough thread exits to see them pile up without a reaper |
| pool | 4 | assumption: a small thread pool of a long-lived process |
| thread_ms | 0.5 | assumption: a short request served by a fresh thread |
| thread syscalls | 1 locked + 2 unlocked | assumption: open, read and close of one request |
| churn resident, startup | text 200, heap 512 pages; 1 ms | assumption: a small daemon |
| sh resident, startup | file 290, anon 40 pages; 0.5 ms | assumption (``program.SH``) |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from exitsim.engine.ops import Wakeup
from exitsim.engine.sync import tsleep
from exitsim.engine.thread import KPath
from exitsim.kern.exec import sys_execve
from exitsim.kern.exit import sys___threxit, sys_exit, sys_wait4
from exitsim.kern.fork import fork1, spawn_user_process, thread_fork
from exitsim.kern.sig import userret
from exitsim.kern.syscall import user
from exitsim.workloads.program import (
    SH,
    Program,
    check_count,
    check_time,
    compute,
    exec_and_run,
    fault_in,
)
from exitsim.workloads.tree import WORKER_SLICE_NS

if TYPE_CHECKING:
    from exitsim.kern.kernel import Kernel
    from exitsim.kern.proc import Proc

MODES = ("server", "churn", "both")


@dataclass(frozen=True, slots=True)
class ThreadsParams:
    """The knobs of ``threads``; see the module's table for where each default comes
    from. ``threads`` counts a server's main thread."""

    mode: Literal["server", "churn", "both"] = "both"
    servers: int = 2
    threads: int = 8
    server_ms: float = 20.0
    churn_threads: int = 64
    pool: int = 4
    thread_ms: float = 0.5

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)} (got {self.mode!r})")
        for name in ("servers", "threads", "churn_threads", "pool"):
            check_count(name, getattr(self, name))
        for name in ("server_ms", "thread_ms"):
            check_time(name, getattr(self, name))

    @property
    def with_servers(self) -> bool:
        return self.mode in ("server", "both")

    @property
    def with_churn(self) -> bool:
        return self.mode in ("churn", "both")

    def processes(self) -> int:
        """How many processes a run makes: the supervisor, the servers, the churner."""
        return 1 + (self.servers if self.with_servers else 0) + int(self.with_churn)


def ms(v: float) -> int:
    return max(1, round(v * 1e6))


def server_program(params: ThreadsParams) -> Program:
    # About one system call per millisecond, a quarter of them locked (assumption).
    calls = max(1, round(params.server_ms))
    return Program("server", 400, 2048, ms(params.server_ms), max(1, calls // 4), calls)


CHURN = Program("churn", 200, 512, 1_000_000, 4, 4)


class ThreadsRun:
    """The state one run shares across its processes: the churner's live threads."""

    def __init__(self, k: Kernel, params: ThreadsParams) -> None:
        self.k = k
        self.params = params
        self.live = 0
        self.join_chan = ("thrjoin", "churn")  # one churner per kernel

    def supervisor(self, p: Proc) -> KPath:
        k = self.k
        yield from exec_and_run(k, p, SH)
        n = 0
        if self.params.with_servers:
            for i in range(self.params.servers):
                yield from fork1(k, p, f"server{i}", self.server)
                n += 1
        if self.params.with_churn:
            yield from fork1(k, p, "churn", self.churner)
            n += 1
        for _ in range(n):
            if (yield from sys_wait4(k, p)) is None:
                raise RuntimeError("threads: wait4 found no child")
        yield from sys_exit(k, p, 0)

    def server(self, p: Proc) -> KPath:
        """Exits with every worker thread still computing: exit1 single-threads them."""
        k = self.k
        prog = server_program(self.params)
        yield from sys_execve(k, p, prog.image())
        yield from fault_in(k, p, prog)
        pr = p.p_p
        assert pr is not None
        for i in range(1, self.params.threads):
            yield from thread_fork(k, p, f"server.{pr.ps_pid}.{i}", self.server_worker)
        yield from compute(k, p, prog.user_ns, prog.locked_calls, prog.unlocked_calls)
        yield from sys_exit(k, p, 0)

    def server_worker(self, t: Proc) -> KPath:
        """Serves until its process exits and single-threading makes it exit1."""
        while True:
            yield user(WORKER_SLICE_NS)
            yield from userret(self.k, t)

    def churner(self, p: Proc) -> KPath:
        """Keeps ``pool`` short-lived threads going until it has made
        ``churn_threads``, joins the last ones and exits."""
        k = self.k
        yield from exec_and_run(k, p, CHURN)
        for i in range(self.params.churn_threads):
            yield from self.join(self.params.pool - 1)
            self.live += 1
            yield from thread_fork(k, p, f"churn.{i}", self.churn_thread)
        yield from self.join(0)
        yield from sys_exit(k, p, 0)

    def join(self, most: int) -> KPath:
        """pthread_join until at most ``most`` threads are still running."""
        while self.live > most:
            yield from tsleep(self.join_chan, "thrjoin")

    def churn_thread(self, t: Proc) -> KPath:
        k = self.k
        yield from compute(k, t, ms(self.params.thread_ms), 1, 2)
        # The joiner learns of the exit through __threxit's notdead word, cleared as
        # the thread leaves user space for good.
        self.live -= 1
        yield Wakeup(self.join_chan)
        yield from sys___threxit(k, t)


def start_threads(k: Kernel, params: ThreadsParams, seed: int) -> None:
    """Put the supervisor on the machine at time 0. The seed is unused."""
    del seed
    spawn_user_process(k, "sh", ThreadsRun(k, params).supervisor)
