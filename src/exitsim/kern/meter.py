"""What a run measures about processes, besides what the engine and locks count:
exit latency, charged times, reaper backlog, zombies, and memory held by processes
that have exited but are not torn down yet."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from exitsim.kern.kernel import Kernel
    from exitsim.kern.proc import Process
    from exitsim.vm.pmap import Pmap


@dataclass(slots=True)
class ExitRecord:
    """One process that exited and was waited for (or zapped).

    ``user_ns``/``sys_ns`` are its ps_ru, what wait4 hands the parent;
    ``thread_user_ns``/``thread_sys_ns`` are everything its threads ran, filled in
    when the run ends."""

    pid: int
    comm: str
    user_ns: int
    sys_ns: int
    exit1_ns: int
    zombie_ns: int | None
    reaped_ns: int | None
    resident_pages_at_exit: int
    thread_user_ns: int = 0
    thread_sys_ns: int = 0

    @property
    def latency_ns(self) -> int | None:
        """exit1 entry to the parent's wait4 return."""
        if self.reaped_ns is None:
            return None
        return self.reaped_ns - self.exit1_ns


class Level:
    """A quantity over time: its current value, peak, time integral and samples."""

    __slots__ = ("integral", "last_t", "peak", "samples", "value")

    def __init__(self) -> None:
        self.value = 0
        self.peak = 0
        self.integral = 0
        self.last_t = 0
        self.samples: list[tuple[int, int]] = [(0, 0)]

    def add(self, now: int, delta: int) -> None:
        self.integral += self.value * (now - self.last_t)
        self.last_t = now
        self.value += delta
        if self.value > self.peak:
            self.peak = self.value
        if self.samples[-1][0] == now:
            self.samples[-1] = (now, self.value)
        else:
            self.samples.append((now, self.value))

    def close(self, now: int) -> None:
        self.add(now, 0)


class Meters:
    """The per-run meters the kernel feeds."""

    def __init__(self, k: Kernel) -> None:
        self.k = k
        self.records: dict[int, ExitRecord] = {}
        #: Per pid, the wall time its address space's teardown took, wherever the
        #: design runs it (exit1, the reaper, or both): what Linux's exit_mm is timed as.
        self.teardown_ns: dict[int, int] = {}
        self.backlog = Level()  # threads on deadproc waiting for the reaper
        self.zombies = Level()  # processes that are PS_ZOMBIE and not yet waited for
        self.held_pages = Level()  # pages mapped by processes that began exiting
        self.unfreed_threads = Level()  # dead threads whose struct proc is not freed

    def process_exiting(self, pr: Process) -> None:
        """exit1 began for ``pr``: its mapped pages now count as held after exit,
        until they are unmapped."""
        vm = pr.ps_vmspace
        if vm is None or vm.vm_map.pmap is None:
            return
        pm = vm.vm_map.pmap
        self.held_pages.add(self.k.now, pm.resident_count)
        pm.watch = self._unmapped

    def _unmapped(self, pm: Pmap, npages: int) -> None:
        self.held_pages.add(self.k.now, -npages)

    def add_teardown(self, pr: Process, ns: int) -> None:
        """``pr``'s teardown ran for ``ns`` more nanoseconds of wall time."""
        self.teardown_ns[pr.ps_pid] = self.teardown_ns.get(pr.ps_pid, 0) + ns

    def record_exit(self, pr: Process) -> ExitRecord:
        rec = ExitRecord(
            pr.ps_pid,
            pr.comm,
            0,
            0,
            pr.exit_ns if pr.exit_ns is not None else self.k.now,
            None,
            None,
            pr.resident_at_exit,
        )
        self.records[pr.ps_pid] = rec
        return rec

    def close(self) -> None:
        now = self.k.now
        for lv in (self.backlog, self.zombies, self.held_pages, self.unfreed_threads):
            lv.close(now)
        self._thread_totals()

    def _thread_totals(self) -> None:
        """Each freed process's threads' whole CPU time: what the system-wide counters
        saw of it, whether or not wait4 reports it."""
        from exitsim.kern.proc import Proc

        for t in self.k.engine.threads:
            if not isinstance(t, Proc) or t.p_p is None:
                continue
            rec = self.records.get(t.p_p.ps_pid)
            if rec is not None:
                rec.thread_user_ns += t.user_ns
                rec.thread_sys_ns += t.sys_ns
