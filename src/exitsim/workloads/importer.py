"""Join an strace capture (and, when there is one, a bpftrace capture of the same run)
into a workload file's process tree (docs/workloads.md, "Importing a real build").

A replay keeps a tree's dependency structure, not its timestamps (tree.py), so what
is taken from a capture is, per process: who forked it, what it exec'd, its own run
time (lifetime less the time it slept waiting for children), how far into that run
time it forked each child, which siblings it had reaped before each fork, its
threads, its resident sizes at exit and its exit status.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from heapq import heappop, heappush
from pathlib import Path
from typing import Any

from exitsim.workloads.bpftrace import BpfTask, TaskExit, process_tree, read_bpftrace
from exitsim.workloads.btrace import read_btrace
from exitsim.workloads.spec import (
    MAX_ANON_PAGES,
    MAX_FILE_PAGES,
    MAX_MS,
    MAX_SHM_PAGES,
    WorkloadFileError,
    WorkloadSpec,
    parse_workload,
)
from exitsim.workloads.strace import (
    EXECS,
    WAITS,
    Call,
    Exit,
    Signal,
    StraceCapture,
    child_of,
    clone_flags,
    exec_path,
    makes_thread,
    nohang,
    parent_waits,
    read_strace,
    reaped,
    strings,
)
from exitsim.workloads.tracelines import TraceError

#: Resident size of every process when there is no bpftrace capture (assumption:
#: about the median process of the Lua capture, whose X lines have file 841 and anon
#: 256 pages at the median; real programs differ a hundredfold, cc1 from touch).
DEFAULT_FILE_PAGES = 840
DEFAULT_ANON_PAGES = 256
MAX_THREADS = 1024

#: A point in one process's own history: (strace time, line). Within a task lines
#: are in order; across the threads of a process the time orders them.
Point = tuple[int, int]


@dataclass(slots=True)
class Traced:
    """One process as the captures show it; times in ns of strace's clock."""

    pid: int
    parent: int | None = None
    birth: int | None = None
    death: int | None = None
    exit_status: int = 0
    program: str | None = None
    argv: list[str] = field(default_factory=list)
    comm: str | None = None
    tids: set[int] = field(default_factory=set)
    fork_point: Point | None = None
    forks: list[tuple[Point, int]] = field(default_factory=list)
    reaps: list[tuple[Point, int]] = field(default_factory=list)
    blocked: list[tuple[int, int]] = field(default_factory=list)
    sizes: tuple[int, int, int] | None = None
    exec_done: int | None = None
    in_strace: bool = False
    in_bpf: bool = False


@dataclass(frozen=True, slots=True)
class ImportResult:
    """The validated workload, what the user should be told, and its numbers."""

    spec: WorkloadSpec
    warnings: list[str]
    span_ms: float

    @property
    def processes(self) -> int:
        return len(self.spec.process or ())

    @property
    def programs(self) -> int:
        return len({p.program for p in self.spec.process or () if p.program})

    @property
    def user_ms(self) -> float:
        return sum(p.user_ms for p in self.spec.process or ())

    def summary(self) -> str:
        return (
            f"{count_of(self.processes, 'process')}, {count_of(self.programs, 'program')}, "
            f"span {self.span_ms:.1f} ms, user time {self.user_ms:.1f} ms"
        )


def import_trace(
    strace_path: str | Path,
    bpftrace_path: str | Path | None = None,
    name: str | None = None,
    lenient: bool = False,
    recorded: bool = False,
    btrace_path: str | Path | None = None,
) -> ImportResult:
    """Read the captures and build the tree; TraceError on a bad line (strict) or an
    unusable capture. ``strace_path`` is strace's text, or OpenBSD kdump's (told apart
    by its first line, ``_is_kdump``); a bpftrace capture goes with strace, a btrace
    capture (btrace.py) with kdump. ``recorded``: the captures are exitsim record's
    temporary files, so the workload names the command rather than them."""
    warnings: list[str] = []
    side_name = None
    if _is_kdump(strace_path, lenient):
        # kdump builds this module's Traced rows, so it is imported here, not above.
        from exitsim.workloads.kdump import join_btrace, read_kdump

        if bpftrace_path is not None:
            raise TraceError(f"{bpftrace_path}: --bpftrace goes with strace; kdump takes --btrace")
        kcap = read_kdump(strace_path, lenient)
        path, tool, side = kcap.path, "kdump", "btrace"
        procs, first, start, end = kcap.processes, kcap.root, kcap.start, kcap.end
        _skipped(warnings, path, kcap.skipped)
        warnings += kcap.notes
        if btrace_path is not None:
            btcap = read_btrace(btrace_path, lenient)
            side_name = Path(btcap.path).name
            _skipped(warnings, btcap.path, btcap.skipped)
            join_btrace(kcap, btcap, warnings)
    else:
        if btrace_path is not None:
            raise TraceError(f"{btrace_path}: --btrace goes with kdump; strace takes --bpftrace")
        cap = read_strace(strace_path, lenient)
        path, tool, side = cap.path, "strace", "bpftrace"
        procs, first, start, end = _from_strace(cap), cap.first_tid, cap.start, cap.end
        _skipped(warnings, path, cap.skipped)
        if bpftrace_path is not None:
            bcap = read_bpftrace(bpftrace_path, lenient)
            side_name = Path(bcap.path).name
            _skipped(warnings, bcap.path, bcap.skipped)
            known = {t for p in procs.values() for t in p.tids} | set(procs)
            tasks = process_tree(bcap, first, known)
            end = max(end, _join_bpf(procs, tasks, warnings))
    side_path = bpftrace_path if bpftrace_path is not None else btrace_path
    unexited = _finish(procs, first, end, warnings)
    where = path + (f" and {side_path}" if side_path is not None else "")
    rows = _rows(procs, first, where)
    root = procs[first]
    programs = len({p.program for p in procs.values() if p.program})
    span_ms = _ms(end - (root.birth or start))
    st_name = Path(path).name
    if recorded:
        origin = "Recorded with exitsim record"
        source = "exitsim record: strace" + (" and bpftrace" if side_name else "")
    else:
        origin = f"Imported from {st_name}" + (f" and {side_name}" if side_name else "")
        source = f"{tool} {st_name}" + (f"; {side} {side_name}" if side_name else "")
    notes = _notes(tool, side, side_name is not None)
    desc = _description(origin, notes, root, len(rows), programs, span_ms, unexited)
    data: dict[str, Any] = {
        "format": 1,
        "name": name or st_name.removesuffix(".strace").removesuffix(".kdump"),
        "description": desc,
        "source": source,
        "process": rows,
    }
    try:
        spec = parse_workload(data, f"import of {path}")
    except WorkloadFileError as e:
        raise TraceError(f"the imported tree is not valid (a bug in the importer): {e}") from None
    return ImportResult(spec, warnings, span_ms)


#: The start of an strace line (``TID TIME`` or ``[pid TID] TIME``), to tell it from
#: kdump's; any time form, so that strace's reader can say what is wrong with it.
_STRACE_START = re.compile(r"(?:\[pid\s+\d+\]|\d+)\s+[\d:.]+\s")


def _skipped(warnings: list[str], path: str, skipped: int) -> None:
    if skipped:
        warnings.append(f"{path}: skipped {count_of(skipped, 'line')} that could not be parsed")


def _is_kdump(path: str | Path, lenient: bool) -> bool:
    """Whether the capture is kdump's text (else strace's), by its first line that is
    either; strict, that must be its first line. A file that cannot be read is left
    to the reader to report."""
    from exitsim.workloads.kdump import is_kdump_line

    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                text = line.rstrip()
                if not text.strip():
                    continue
                if _STRACE_START.match(text):
                    return False
                if is_kdump_line(text):
                    return True
                if not lenient:
                    raise TraceError(
                        f"{path}:{n}: neither strace output (`strace -f -ttt`) nor kdump "
                        f"output (`kdump -TH`): {text[:60]!r}"
                    )
    except (OSError, UnicodeDecodeError):
        pass
    return False


def _ms(ns: int) -> float:
    return round(ns / 1_000_000, 3)


def _from_strace(cap: StraceCapture) -> dict[int, Traced]:
    """Processes, their parents, programs, forks, reaps and sleeps from strace."""
    calls = [e for e in cap.events if isinstance(e, Call)]
    # Threads first, so that every task is counted to its thread group.
    made_by: dict[int, int] = {}
    for c in calls:
        child = child_of(c)
        if child is not None and makes_thread(c):
            made_by.setdefault(child, c.tid)

    def tgid(t: int) -> int:
        for _ in range(len(made_by) + 1):
            if t not in made_by:
                break
            t = made_by[t]
        return t

    procs: dict[int, Traced] = {}

    def proc(pid: int) -> Traced:
        return procs.setdefault(pid, Traced(pid, in_strace=True))

    by_tid: dict[int, list[Call | Exit | Signal]] = {}
    for ev in cap.events:
        p = proc(tgid(ev.tid))
        p.tids.add(ev.tid)
        by_tid.setdefault(ev.tid, []).append(ev)
        if p.birth is None:
            p.birth = ev.start if isinstance(ev, Call) else ev.ts
    for child in made_by:
        proc(tgid(child)).tids.add(child)
    for c in calls:
        child = child_of(c)
        if child is None or makes_thread(c) or proc(child).fork_point is not None:
            continue  # a thread, a failed fork, or a pid two forks returned (reused)
        forker = proc(tgid(c.tid))
        kid = procs[child]
        kid.parent = forker.pid
        if "CLONE_PARENT" in clone_flags(c) and forker.parent is not None:
            kid.parent = forker.parent
        kid.birth = c.start
        kid.fork_point = (c.start, c.line)
        procs[kid.parent].forks.append((kid.fork_point, child))
    vforks: list[tuple[Traced, Call, int]] = []
    for tid, evs in by_tid.items():
        vforks += _scan_task(procs[tgid(tid)], tid, evs, cap.end)
    for p, c, child in vforks:
        # vfork: the parent sleeps until the child execs or exits; the call's return
        # is when strace saw it wake.
        kid = procs[child]
        release = [t for t in (c.end, kid.exec_done, kid.death) if t is not None]
        p.blocked.append((c.start, min(release) if release else cap.end))
    return procs


def _scan_task(
    p: Traced, tid: int, evs: list[Call | Exit | Signal], end: int
) -> list[tuple[Traced, Call, int]]:
    """One task's events: exec, exit, reaps and the time it slept for children; the
    vfork calls are returned, to be settled once every child's exec is known."""
    vforks: list[tuple[Traced, Call, int]] = []
    for i, ev in enumerate(evs):
        if isinstance(ev, Exit):
            if tid == p.pid and ev.status is not None:
                p.death, p.exit_status = ev.ts, ev.status
            continue
        if not isinstance(ev, Call):
            continue
        if ev.name in EXECS and ev.ret == 0:
            # The last exec is the program the process ran to its exit (failed
            # probes along PATH return ENOENT and are passed over).
            p.program = exec_path(ev)
            p.argv = strings(ev.args)[1:]
            if p.exec_done is None:
                p.exec_done = ev.end
        if ev.name in WAITS:
            done = reaped(ev)
            if done is not None and ev.end is not None:
                p.reaps.append(((ev.end, ev.end_line or ev.line), done))
            if not nohang(ev):
                p.blocked.append((ev.start, ev.end if ev.end is not None else end))
            elif ev.ret == 0 and done is None and ev.end is not None:
                # A poll found children, none finished. When the task's next event
                # is a SIGCHLD it slept in between, in a call this trace does not
                # show (make's pselect on its jobserver pipe), until a child exited.
                nxt = evs[i + 1] if i + 1 < len(evs) else None
                if isinstance(nxt, Signal) and nxt.name == "SIGCHLD":
                    p.blocked.append((ev.end, nxt.ts))
        child = child_of(ev)
        if child is not None and parent_waits(ev) and not makes_thread(ev):
            vforks.append((p, ev, child))
    return vforks


def _join_bpf(procs: dict[int, Traced], tasks: dict[int, BpfTask], warnings: list[str]) -> int:
    """Fold the bpftrace tasks into ``procs``: F and X times for birth and exit,
    comm and resident sizes from X, threads. Returns the capture's last time in
    strace's clock."""
    strace_tgid = {t: p.pid for p in procs.values() for t in p.tids}
    tgid_of = {
        t: task.exit.tgid if task.exit else strace_tgid.get(t, t) for t, task in tasks.items()
    }
    off = _clock_offset(procs, tasks)
    no_mm = 0
    cut = 0
    leaders = sorted(t for t in tasks if tgid_of[t] == t)
    for pid in leaders:
        task = tasks[pid]
        p = procs.setdefault(pid, Traced(pid))
        p.in_bpf = True
        p.tids.add(pid)
        if task.fork is not None:
            p.birth = task.fork.ts + off
        elif p.birth is None:
            p.birth = min(r.ts for r in (*task.execs, task.exit) if r is not None) + off
        if task.fork is not None and not p.in_strace:
            parent = tgid_of.get(task.fork.parent)
            p.parent = parent if parent != pid else None
        if task.execs and p.program is None:
            p.program = task.execs[-1].path
        x = _group_exit(tasks, pid)
        if x is not None:
            p.death = x.ts + off
            p.comm = x.comm
            if x.has_mm:
                # A percpu counter's central value can be a little below zero; a
                # replay holds at most the MAX_ sizes of spec.py.
                sizes = (max(0, x.file_pages), max(0, x.anon_pages), max(0, x.shm_pages))
                p.sizes = (
                    min(sizes[0], MAX_FILE_PAGES),
                    min(sizes[1], MAX_ANON_PAGES),
                    min(sizes[2], MAX_SHM_PAGES),
                )
                cut += p.sizes != sizes
            else:
                no_mm += 1
    for t, pid in tgid_of.items():
        if pid != t and pid in procs:
            procs[pid].tids.add(t)
    only_st = sorted(p.pid for p in procs.values() if p.in_strace and not p.in_bpf)
    only_bt = sorted(p.pid for p in procs.values() if p.in_bpf and not p.in_strace)
    if only_st:
        warnings.append(
            f"{count_of(len(only_st), 'process')} only in the strace capture (default sizes): "
            + few(only_st)
        )
    if only_bt:
        warnings.append(
            f"{count_of(len(only_bt), 'process')} only in the bpftrace capture (no waits known): "
            + few(only_bt)
        )
    if no_mm:
        warnings.append(f"{no_mm} X lines without an mm (all zero): default sizes used")
    if cut:
        warnings.append(
            f"{count_of(cut, 'process')} larger than a replay holds: sizes cut to file "
            f"{MAX_FILE_PAGES}, anon {MAX_ANON_PAGES}, shm {MAX_SHM_PAGES} pages"
        )
    last = max(
        (r.ts for task in tasks.values() for r in (task.fork, *task.execs, task.exit) if r),
        default=None,
    )
    return last + off if last is not None else 0


def count_of(n: int, noun: str) -> str:
    """``3 processes``, ``1 line``: a count with its noun."""
    return f"{n} {noun}" + ("" if n == 1 else "es" if noun.endswith("s") else "s")


def few(pids: list[int]) -> str:
    """The first eight pids, and ``...`` if there are more."""
    return ", ".join(map(str, pids[:8])) + (" ..." if len(pids) > 8 else "")


def _group_exit(tasks: dict[int, BpfTask], pid: int) -> TaskExit | None:
    """The X line of the task that ended the thread group (else the last one)."""
    xs = [t.exit for t in tasks.values() if t.exit is not None and t.exit.tgid == pid]
    dead = [x for x in xs if x.group_dead]
    return max(dead or xs, key=lambda x: x.ts, default=None)


def _clock_offset(procs: dict[int, Traced], tasks: dict[int, BpfTask]) -> int:
    """strace time minus bpftrace time. Each F comes after its fork call's entry and
    each X before strace's ``+++ exited``, so every pid in both files bounds the
    offset from below and from above; the estimate is midway between the tightest
    bounds (on the Lua capture they are 0.28 ms apart)."""
    lows: list[int] = []
    highs: list[int] = []
    for p in procs.values():
        task = tasks.get(p.pid)
        if task is None:
            continue
        if p.fork_point is not None and task.fork is not None:
            lows.append(p.fork_point[0] - task.fork.ts)
        if p.death is not None and task.exit is not None:
            highs.append(p.death - task.exit.ts)
    if lows and highs:
        return (max(lows) + min(highs)) // 2
    return max(lows) if lows else min(highs) if highs else 0


def _finish(procs: dict[int, Traced], root: int, end: int, warnings: list[str]) -> int:
    """Fill what the captures left open: an exit at the end of the capture for a
    process still running, a root for a process whose creation is not in it.
    Returns how many had not exited."""
    unexited = 0
    orphans = 0
    for p in procs.values():
        if p.death is None:
            p.death = end
            unexited += 1
        if p.birth is None:
            p.birth = p.death
        if p.parent is not None and p.parent not in procs:
            p.parent = None
        if p.parent is None:
            orphans += p.pid != root
            if p.program is None:
                # A root must exec something; its name is all that is known.
                p.program = p.comm or f"pid{p.pid}"
    if unexited:
        warnings.append(
            f"{count_of(unexited, 'process')} had not exited when the capture ended: "
            "given an exit at its end"
        )
    if orphans:
        warnings.append(
            f"{count_of(orphans, 'process')} whose creation is not in the capture: made roots"
        )
    return unexited


def _measure(spans: list[tuple[int, int]], lo: int, hi: int) -> int:
    """The length of the union of ``spans`` within [lo, hi]."""
    total = 0
    reach = lo
    for a, b in sorted(spans):
        a, b = max(a, reach), min(b, hi)
        if b > a:
            total += b - a
            reach = b
    return total


def _order(procs: dict[int, Traced]) -> list[Traced]:
    """Parents before children, otherwise by birth: the earliest-born process whose
    parent is already listed comes next (with one clock this is birth order)."""
    kids: dict[int | None, list[Traced]] = {}
    for p in procs.values():
        kids.setdefault(p.parent, []).append(p)
    heap: list[tuple[int, int]] = []
    for p in kids.get(None, []):
        heappush(heap, (p.birth or 0, p.pid))
    out: list[Traced] = []
    while heap:
        _, pid = heappop(heap)
        out.append(procs[pid])
        for c in kids.get(pid, []):
            heappush(heap, (c.birth or 0, c.pid))
    return out


def _rows(procs: dict[int, Traced], root: int, where: str) -> list[dict[str, Any]]:
    """The ``[[process]]`` tables; errors name ``where``."""
    order = _order(procs)
    if len(order) != len(procs):
        raise TraceError(f"{where}: the process tree has a cycle (pids reused in the capture?)")
    user: dict[int, float] = {}
    rows: list[dict[str, Any]] = []
    root_birth = procs[root].birth or 0
    for p in order:
        assert p.birth is not None and p.death is not None
        life = max(0, p.death - p.birth)
        user[p.pid] = _ms(life - _measure(p.blocked, p.birth, p.death))
        parent = procs[p.parent] if p.parent is not None else None
        if p.comm is None:
            base = p.program.rsplit("/", 1)[-1] if p.program else None
            p.comm = base or (parent.comm if parent else None)
        row: dict[str, Any] = {"id": p.pid}
        if parent is not None:
            row["parent"] = parent.pid
        if p.comm:
            row["comm"] = p.comm
        if p.program:
            row["program"] = p.program
        if parent is None:
            row["start_ms"] = _ms(max(0, p.birth - root_birth)) if p.pid != root else 0.0
        else:
            row["start_ms"] = min(_start(parent, p), user[parent.pid])
            after = [a for a in _after(parent, p, procs) if a in user]
            if after:
                row["after"] = after
        row["user_ms"] = user[p.pid]
        for key in ("start_ms", "user_ms"):
            if row[key] > MAX_MS:
                raise TraceError(
                    f"{where}: process {p.pid}: {key} would be {row[key]:.4g} ms, more than "
                    f"a day ({MAX_MS:.0f} ms): a timestamp out of place?"
                )
        row["threads"] = min(max(1, len(p.tids)), MAX_THREADS)
        file_pages, anon_pages, shm_pages = p.sizes or (DEFAULT_FILE_PAGES, DEFAULT_ANON_PAGES, 0)
        row["file_pages"] = file_pages
        row["anon_pages"] = anon_pages
        row["shm_pages"] = shm_pages
        row["exit_status"] = p.exit_status
        rows.append(row)
    return rows


def _start(parent: Traced, kid: Traced) -> float:
    """How much of the parent's own run time had passed when it forked ``kid``."""
    assert parent.birth is not None and kid.birth is not None
    at = max(parent.birth, kid.birth)
    return _ms(max(0, at - parent.birth - _measure(parent.blocked, parent.birth, at)))


def _after(parent: Traced, kid: Traced, procs: dict[int, Traced]) -> list[int]:
    """The siblings the parent reaped after its previous fork and before this one."""
    if kid.fork_point is None:
        return []
    before = [pt for pt, _ in parent.forks if pt < kid.fork_point]
    prev = max(before) if before else (-1, -1)
    return [
        pid
        for pt, pid in sorted(parent.reaps)
        if prev < pt < kid.fork_point and pid in procs and procs[pid].parent == parent.pid
    ]


def _notes(tool: str, side: str, sizes: bool) -> list[str]:
    """What the description says of the sizes, and of the system calls."""
    if not sizes:
        size = (
            f"No {side} capture: every process is given the default resident size "
            f"(file {DEFAULT_FILE_PAGES}, anon {DEFAULT_ANON_PAGES} pages, an assumption)."
        )
    elif tool == "kdump":
        size = (
            "anon_pages and file_pages are the page faults btrace counted since each "
            "process's last exec (write; read and exec), not resident sizes."
        )
    else:
        size = "Resident sizes are the bpftrace X lines (resident at exit)."
    if tool == "kdump":
        return [size, "syscalls are empty: only the process-management calls are read."]
    return [size, "syscalls are empty: the trace holds only process-management calls."]


def _description(
    origin: str,
    notes: list[str],
    root: Traced,
    processes: int,
    programs: int,
    span_ms: float,
    unexited: int,
) -> str:
    command = shlex.join(root.argv[:8]) + (" ..." if len(root.argv) > 8 else "")
    parts = [
        origin
        + (f": `{command}`" if command else "")
        + f", {count_of(processes, 'process')}, {count_of(programs, 'program')}, {span_ms:.1f} ms.",
        "user_ms is each process's lifetime less the time it slept waiting for children.",
    ]
    parts.append(notes[0])
    if unexited:
        parts.append(
            f"{count_of(unexited, 'process')} had not exited when the capture ended; "
            "here they exit at its end."
        )
    parts += notes[1:]
    return " ".join(parts)
