"""The btrace(8) side of an OpenBSD capture: the script exitsim ships
(``btrace_script``) and the reader of what it prints (``read_btrace``). Per process:
when its exit began, how long its address space took to tear down, and how many pages
it faulted in.

What dt(4) and btrace can see (usr.sbin/btrace/bt.5 and btrace.c, sys/dev/dt/
dt_prov_kprobe.c 1.10 and dt_prov_static.c, read for this module):

- ``kprobe:FUNC:entry`` and ``kprobe:FUNC:return`` exist only on amd64 and i386 kernels
  built with ``option DDBPROF``. The entry probe's ``argN`` are not the function's
  arguments (on amd64 the provider copies bytes from where the first argument points),
  so the script uses only each event's own ``pid``, ``tid``, ``comm`` and ``nsecs``.
  A return probe sits on the function's last ``ret`` only.
- ``tracepoint:uvm:fault`` (vaddr, fault type, access type) and ``syscall:NAME:entry`` /
  ``:return`` exist on every arch.
- ``nsecs`` is the event's nanotime(9): CLOCK_REALTIME ns, the clock of ktrace's
  timestamps, so the two captures need no offset.
- No probe gives a vmspace's size, and ``uvm_map_teardown`` takes the map apart
  without ``uvm_mapent_addr_remove``, so ``uvm:map_remove`` does not fire at exit. The
  size recorded is therefore the process's **page faults** since its last execve, by
  access type (see ``Teardown``).

The script's lines (``nsecs`` and pids in decimal; ``comm`` last, it may hold spaces):

- ``# exitsim-btrace 1 VARIANT [faults]``: printed at BEGIN; VARIANT is ``purge``,
  ``reaper`` or ``static``
- ``E nsecs pid tid read_faults write_faults exec_faults comm``: a thread entered
  ``exit1()`` (``static``: called exit(2)); the counts are its process's faults not yet
  printed (0 0 0 without ``faults``)
- ``P``/``Q nsecs pid tid comm``: ``uvm_purge()`` entered / returned in the exiting
  main thread (kernels from mid-2025 on)
- ``U``/``V nsecs pid tid comm``: ``uvm_exit()`` entered / returned in the reaper; the
  pid, tid and comm are the reaper's own
- ``@flt[PID, ACCESS]: N``: faults still counted when btrace stopped (it prints its
  maps on exit)
- ``N events read`` / ``dropped`` / ``filtered``: ``btrace -v``'s statistics
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from exitsim.workloads.tracelines import LineError, Lines

#: OpenBSD's largest pid (sys/proc.h PID_MAX); thread ids are 100000 (THREAD_PID_OFFSET)
#: plus a number up to it.
PID_MAX = 99999
#: Two E lines of one pid more than this apart are two processes (the pid was reused):
#: the threads of one process enter exit1 together (single_thread_set), and a freed pid
#: is not handed out again before 128 others (kern_fork.c oldpids). Assumption: no exit
#: of a thread is delayed by a second.
SAME_EXIT_NS = 1_000_000_000
#: uvm fault access types (sys/mman.h PROT_READ, PROT_WRITE, PROT_EXEC).
READ, WRITE, EXEC = 1, 2, 4

#: Every probe the script can name, for ``exitsim trace btrace-script`` users to check
#: against ``btrace -l``.
PROBES = (
    "tracepoint:uvm:fault",
    "syscall:execve:return",
    "kprobe:exit1:entry",
    "kprobe:uvm_purge:entry",
    "kprobe:uvm_purge:return",
    "kprobe:uvm_exit:entry",
    "kprobe:uvm_exit:return",
    "syscall:exit:entry",
)

_HEAD = """\
/*
 * exitsim: process exit and address-space teardown on OpenBSD ({variant}).
 * Run as root, with sysctl kern.allowdt=1 set at boot:
 *     btrace exit.bt > teardown.txt      (stop it with ^C after the build)
 * then: exitsim trace import build.kdump --btrace teardown.txt -o build.toml
 * Lines: E nsecs pid tid read_faults write_faults exec_faults comm
 *        P|Q|U|V nsecs pid tid comm
 */
BEGIN
{{
    printf("# exitsim-btrace 1 {variant}{faults}\\n");
}}
"""

_FAULTS = """
tracepoint:uvm:fault
{
    @flt[pid, arg2] = count();
}

syscall:execve:return
{
    delete(@flt[pid, 1]);
    delete(@flt[pid, 2]);
    delete(@flt[pid, 4]);
}
"""

_EXIT_COUNTED = """
{probe}
{{
    printf("E %u %d %d %d %d %d %s\\n", nsecs, pid, tid,
        @flt[pid, 1], @flt[pid, 2], @flt[pid, 4], comm);
    delete(@flt[pid, 1]);
    delete(@flt[pid, 2]);
    delete(@flt[pid, 4]);
}}
"""

_EXIT_PLAIN = """
{probe}
{{
    printf("E %u %d %d 0 0 0 %s\\n", nsecs, pid, tid, comm);
}}
"""

_MARK = """
kprobe:{func}:{end}
{{
    printf("{tag} %u %d %d %s\\n", nsecs, pid, tid, comm);
}}
"""


def btrace_script(purge: bool = True, kprobe: bool = True, faults: bool = True) -> str:
    """The bt(5) program. ``purge``: the kernel has ``uvm_purge`` (mid-2025 on);
    ``kprobe``: the kernel has the kprobe provider (amd64, i386 with DDBPROF); without
    it only the faults and exit(2) calls are recorded; ``faults``: count page faults
    (one dt event per fault: a busy build may make btrace drop events)."""
    if not kprobe and not faults:
        raise ValueError("without kprobes and without faults the script records nothing")
    variant = "static" if not kprobe else "purge" if purge else "reaper"
    parts = [_HEAD.format(variant=variant, faults=" faults" if faults else "")]
    if faults:
        parts.append(_FAULTS)
    probe = "kprobe:exit1:entry" if kprobe else "syscall:exit:entry"
    parts.append((_EXIT_COUNTED if faults else _EXIT_PLAIN).format(probe=probe))
    marks = ([("uvm_purge", "P", "Q")] if purge else []) + [("uvm_exit", "U", "V")]
    if kprobe:
        for func, enter, leave in marks:
            parts.append(_MARK.format(func=func, end="entry", tag=enter))
            parts.append(_MARK.format(func=func, end="return", tag=leave))
    return "".join(parts)


#: The script for kernels with uvm_purge and kprobes, counting faults.
SCRIPT = btrace_script()


@dataclass(frozen=True, slots=True)
class ExitLine:
    ts: int
    pid: int
    tid: int
    faults: tuple[int, int, int]
    comm: str


@dataclass(frozen=True, slots=True)
class Mark:
    """A P, Q, U or V line."""

    kind: str
    ts: int
    pid: int
    tid: int
    comm: str


@dataclass(frozen=True, slots=True)
class Leftover:
    """``@flt[pid, access]: count`` printed when btrace stopped."""

    pid: int
    access: int
    count: int


@dataclass(frozen=True, slots=True)
class Teardown:
    """One process's exit as btrace saw it; times in CLOCK_REALTIME ns.

    ``faults`` are (read, write, exec) page faults of the process since its last
    execve (None when the capture did not count them). They stand in for its resident
    size, which btrace cannot read: ``anon_pages`` are its write faults (a write fault
    makes an anon, or copies a file page into one) and ``file_pages`` its read and exec
    faults (each maps a page of a file, or a zero-filled anon the first touch is a read
    of). Pages faulted in and unmapped before exit still count; pages mapped by fault
    ahead (neighbours of a faulting file page) and pages inherited from the parent do
    not; faults btrace dropped are missing.

    ``purge`` is (entry, return) of ``uvm_purge`` in the exiting thread; ``reaper``
    (entry, return) of ``uvm_exit`` in the reaper, which runs for processes in the
    order they finish exit1: the n-th uvm_exit is given to the n-th process to finish,
    in the order of their last E lines, so two processes finishing within the same
    few microseconds may be swapped.
    """

    pid: int
    comm: str
    exit_ns: int
    last_exit_ns: int
    threads: int
    faults: tuple[int, int, int] | None
    purge: tuple[int, int] | None
    reaper: tuple[int, int] | None

    @property
    def purge_ns(self) -> int | None:
        return self.purge[1] - self.purge[0] if self.purge else None

    @property
    def exit_to_purge_end_ns(self) -> int | None:
        """From exit1's entry (the first thread's) to uvm_purge's return."""
        return self.purge[1] - self.exit_ns if self.purge else None

    @property
    def reaper_ns(self) -> int | None:
        return self.reaper[1] - self.reaper[0] if self.reaper else None

    @property
    def teardown_ns(self) -> int | None:
        """The address space's teardown: uvm_purge where the kernel has it, else
        uvm_exit in the reaper."""
        return self.purge_ns if self.purge is not None else self.reaper_ns

    @property
    def file_pages(self) -> int | None:
        return self.faults[0] + self.faults[2] if self.faults else None

    @property
    def anon_pages(self) -> int | None:
        return self.faults[1] if self.faults else None


@dataclass(frozen=True, slots=True)
class BtraceCapture:
    path: str
    variant: str | None
    counts_faults: bool
    processes: list[Teardown]
    skipped: int
    dropped: int | None
    unmatched: int

    def by_pid(self) -> dict[int, list[Teardown]]:
        """Each pid's processes, in order of exit."""
        out: dict[int, list[Teardown]] = {}
        for t in self.processes:
            out.setdefault(t.pid, []).append(t)
        return out


_HEADER = re.compile(r"# exitsim-btrace (\d+) (purge|reaper|static)( faults)?")
_LEFTOVER = re.compile(r"@flt\[(\d+), (\d+)\]: (\d+)")
_STATS = re.compile(r"(\d+) events (read|dropped|filtered)")


def _int(text: str, what: str) -> int:
    if not re.fullmatch(r"\d+", text):
        raise LineError(f"{what}: not a whole number: {text!r}")
    return int(text)


def _pid(text: str, what: str = "pid") -> int:
    pid = _int(text, what)
    if pid > PID_MAX:
        raise LineError(f"{what}: OpenBSD pids are 0 to {PID_MAX} (got {pid})")
    return pid


def parse_line(text: str) -> ExitLine | Mark | Leftover | None:
    """One line of the script's output; None for a comment, a header or statistics."""
    if text.startswith("#") or _STATS.fullmatch(text):
        return None
    if (m := _LEFTOVER.fullmatch(text)) is not None:
        return Leftover(_pid(m.group(1)), int(m.group(2)), int(m.group(3)))
    kind, _, rest = text.partition(" ")
    f = rest.split(maxsplit=6 if kind == "E" else 3)
    if kind == "E":
        if len(f) < 6:
            raise LineError(f"E line with {len(f)} fields (expected nsecs pid tid 3 counts comm)")
        counts = (_int(f[3], "read_faults"), _int(f[4], "write_faults"), _int(f[5], "exec_faults"))
        comm = f[6] if len(f) > 6 else ""
        return ExitLine(_int(f[0], "nsecs"), _pid(f[1]), _int(f[2], "tid"), counts, comm)
    if kind in ("P", "Q", "U", "V"):
        if len(f) < 3:
            raise LineError(f"{kind} line with {len(f)} fields (expected nsecs pid tid comm)")
        comm = f[3] if len(f) > 3 else ""
        return Mark(kind, _int(f[0], "nsecs"), _pid(f[1]), _int(f[2], "tid"), comm)
    raise LineError("not a line of exitsim's btrace script (expected E, P, Q, U or V and nsecs)")


@dataclass(slots=True)
class _Exit:
    """A process being put together from its lines."""

    pid: int
    comm: str
    first: int
    last: int
    tids: set[int] = field(default_factory=set)
    faults: list[int] = field(default_factory=lambda: [0, 0, 0])
    purge_start: int | None = None
    purge: tuple[int, int] | None = None
    reaper: tuple[int, int] | None = None
    done: bool = False  # its purge returned: a later E line of the pid is another process


def read_btrace(path: str | Path, lenient: bool = False) -> BtraceCapture:
    """Read a capture of ``btrace_script``; a line that cannot be parsed follows
    ``Lines``' rule. Events come out of dt's per-CPU rings in batches, not in time
    order, so they are sorted by their nsecs first."""
    lines = Lines(path, lenient)
    variant: str | None = None
    counts = True
    dropped: int | None = None
    events: list[tuple[int, int, ExitLine | Mark]] = []
    leftovers: list[Leftover] = []
    for n, text in lines:
        if (h := _HEADER.fullmatch(text)) is not None:
            variant, counts = h.group(2), h.group(3) is not None
        if (s := _STATS.fullmatch(text)) is not None and s.group(2) == "dropped":
            dropped = int(s.group(1))
        try:
            rec = parse_line(text)
        except LineError as e:
            lines.bad(n, str(e))
            continue
        if isinstance(rec, Leftover):
            leftovers.append(rec)
        elif rec is not None:
            events.append((rec.ts, n, rec))
    if not events:
        raise lines.fail(
            "no E, P, Q, U or V lines (expected the output of exitsim's btrace script)"
        )
    events.sort(key=lambda e: (e[0], e[1]))
    procs, spans, unmatched = _group(events)
    unmatched += _match_reaper(procs, spans)
    last: dict[int, _Exit] = {}
    for p in procs:
        last[p.pid] = p  # procs are in order of exit
    for lo in leftovers:
        if lo.pid in last:
            kind = 1 if lo.access & WRITE else 2 if lo.access & EXEC else 0
            last[lo.pid].faults[kind] += lo.count
    teardowns = [
        Teardown(
            p.pid,
            p.comm,
            p.first,
            p.last,
            len(p.tids),
            (p.faults[0], p.faults[1], p.faults[2]) if counts else None,
            p.purge,
            p.reaper,
        )
        for p in procs
    ]
    return BtraceCapture(lines.path, variant, counts, teardowns, lines.skipped, dropped, unmatched)


def _group(
    events: list[tuple[int, int, ExitLine | Mark]],
) -> tuple[list[_Exit], list[tuple[int, int]], int]:
    """Processes from the E lines (with their P and Q), the reaper's uvm_exit spans,
    and how many P/Q/V lines had nothing to go with."""
    procs: list[_Exit] = []
    open_: dict[int, _Exit] = {}
    entered: dict[int, int] = {}  # reaper tid -> uvm_exit entry
    spans: list[tuple[int, int]] = []
    unmatched = 0
    for ts, _, ev in events:
        p = open_.get(ev.pid)
        if isinstance(ev, ExitLine):
            if p is None or p.done or ts - p.last > SAME_EXIT_NS:
                p = _Exit(ev.pid, ev.comm, ts, ts)
                open_[ev.pid] = p
                procs.append(p)
            p.last = ts
            p.comm = ev.comm or p.comm
            p.tids.add(ev.tid)
            for i in range(3):
                p.faults[i] += ev.faults[i]
        elif ev.kind == "P":
            if p is None or p.done:
                unmatched += 1
            else:
                p.purge_start = ts
        elif ev.kind == "Q":
            if p is None or p.done or p.purge_start is None:
                unmatched += 1
            else:
                p.purge = (p.purge_start, ts)
                p.done = True
        elif ev.kind == "U":
            entered[ev.tid] = ts
        elif ev.tid in entered:
            spans.append((entered.pop(ev.tid), ts))
        else:
            unmatched += 1
    return procs, spans, unmatched


def _match_reaper(procs: list[_Exit], spans: list[tuple[int, int]]) -> int:
    """Give the reaper's uvm_exit spans to the processes in the order they finished
    exit1 (their last E line); returns the spans with no process before them."""
    queue = sorted(procs, key=lambda p: (p.last, p.first))
    i = 0
    unmatched = 0
    for start, end in sorted(spans):
        if i < len(queue) and queue[i].last < start:
            queue[i].reaper = (start, end)
            i += 1
        else:
            unmatched += 1
    return unmatched
