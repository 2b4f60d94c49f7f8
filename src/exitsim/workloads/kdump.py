"""OpenBSD's kdump(1) text of a ``ktrace -i`` capture of a build, read into the
importer's per-process rows (``importer.Traced``), so that the rest of an import
(order, start_ms, after, user time, default sizes) is the strace import's own.

The line formats (usr.bin/kdump/kdump.c 1.156, sys/kern/kern_ktrace.c 1.115 and
sys/sys/ktrace.h 1.50, read for this module; docs/workloads.md, "OpenBSD: ktrace and
btrace"). Every record starts with a header line ``PID[/TID] COMM TIME TYPE  TEXT``:

- PID (``%6ld``): the process; TID (``/%-7ld``, with ``-H``): the thread, 100000 plus a
  number; COMM: the process's name, which exec changes;
- TIME: with ``-T`` seconds since the epoch (CLOCK_REALTIME, microseconds shown); with
  ``-R`` the time since the record before (the first one absolute); with both, since
  the first record. Without either there is no time and the file cannot be imported.
- TYPE and TEXT:

  - ``CALL  NAME(ARGS)``: arguments as kdump shows them (pointers in hex, wait4's pid
    as ``WAIT_ANY``, its options as ``0x1<WNOHANG>``), after ``(via syscall) `` when made
    through syscall(2);
  - ``RET   NAME VALUE``: ``N``, ``N/0xHEX``, ``-1 errno N TEXT``, ``RESTART`` or
    ``JUSTRETURN`` (a successful execve). A fork returns twice: the child's first
    record is ``RET fork 0`` (``vfork 0``; ``__tfork 0`` in a new thread);
  - ``NAMI  "PATH"``: a path looked up; the first in an execve is the program. vis(3)
    C-style escapes; a path wider than the screen goes on after ``\\`` on the next line;
  - ``ARGS`` then lines ``[N] = "ARG"``: an execve's argv (trace point ``x``);
  - ``PSIG  SIGNAME SIG_DFL ...`` or ``PSIG  SIGNAME caught handler=...``, with for
    SIGCHLD ``code=CLD_EXITED status=N pid=P``: a signal taken;
  - anything else (GIO and the data lines under it, STRU, USER, PLDG ...) is passed
    over. A line that is not a header and starts with white space belongs to the
    record above it.

A file comes from ktrace in the order its records were written (under the kernel
lock), so one task's records are in order; the child's first records may come before
its parent's ``RET fork``. OpenBSD hands out pids at random, so a long build reuses
some: a process that ended (exit, a killing signal, or reaped) and whose pid a fork
returns again is a new process, with id ``pid + REUSE_STRIDE * n`` for the n-th reuse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from exitsim.workloads.btrace import PID_MAX, SAME_EXIT_NS, BtraceCapture, Teardown
from exitsim.workloads.importer import (
    MAX_ANON_PAGES,
    MAX_FILE_PAGES,
    Traced,
    count_of,
    few,
)
from exitsim.workloads.tracelines import LineError, Lines

#: The id of a pid's n-th reuse within a capture is pid + n * REUSE_STRIDE (more than
#: any OpenBSD pid, so ids stay unique and show the pid).
REUSE_STRIDE = 1_000_000
#: OpenBSD signal numbers (sys/signal.h).
SIGNALS: dict[str, int] = {
    "SIGHUP": 1,
    "SIGINT": 2,
    "SIGQUIT": 3,
    "SIGILL": 4,
    "SIGTRAP": 5,
    "SIGABRT": 6,
    "SIGEMT": 7,
    "SIGFPE": 8,
    "SIGKILL": 9,
    "SIGBUS": 10,
    "SIGSEGV": 11,
    "SIGSYS": 12,
    "SIGPIPE": 13,
    "SIGALRM": 14,
    "SIGTERM": 15,
    "SIGURG": 16,
    "SIGSTOP": 17,
    "SIGTSTP": 18,
    "SIGCONT": 19,
    "SIGCHLD": 20,
    "SIGTTIN": 21,
    "SIGTTOU": 22,
    "SIGIO": 23,
    "SIGXCPU": 24,
    "SIGXFSZ": 25,
    "SIGVTALRM": 26,
    "SIGPROF": 27,
    "SIGWINCH": 28,
    "SIGINFO": 29,
    "SIGUSR1": 30,
    "SIGUSR2": 31,
    "SIGTHR": 32,
}
#: Signals whose default action does not end the process (ignore, stop, continue).
_HARMLESS = frozenset(
    {"SIGURG", "SIGSTOP", "SIGTSTP", "SIGCONT", "SIGCHLD", "SIGTTIN", "SIGTTOU", "SIGIO"}
    | {"SIGWINCH", "SIGINFO", "SIGTHR"}
)
FORKS = frozenset(("fork", "vfork"))
WAITS = frozenset(("wait4", "waitid"))
#: errno EINTR (sys/errno.h): the call slept and a signal woke it.
EINTR = 4
#: WNOHANG (sys/wait.h), for ``kdump -n``'s plain numbers.
WNOHANG = 1
#: A header line: pid[/tid], comm, time, type, text. The time is required; ``_BARE``
#: recognises a header without one, to say what is missing.
_HEAD = re.compile(
    r"\s*(-?\d+)(?:/(-?\d+))?\s+(.*?)\s+(-?\d+)\.(\d{1,9})\s+([A-Z]{3,4}|UNKNOWN\(\d+\))(?:\s+(.*))?"
)
_BARE = re.compile(
    r"\s*-?\d+(?:/-?\d+)?\s+\S.*?\s+(?:CALL|RET|NAMI|PSIG|GIO|STRU|ARGS|USER|PLDG)(?:\s.*)?"
)
_CALL = re.compile(r"(?:\(via syscall\) )?([\w\[\]]+)\((.*)\)")
_RET = re.compile(r"(?:\(via syscall\) )?([\w\[\]]+) (.+)")
_VALUE = re.compile(r"(-?\d+)(?:/0x[0-9a-fA-F]+)?|(0x[0-9a-fA-F]+)")
_ERRNO = re.compile(r"-1 errno (\d+)(?: .*)?")
_PSIG = re.compile(r"(SIG\w+|SIG -?\d+) (SIG_DFL|caught handler=\S+ mask=\S+)(.*)")
_ARG = re.compile(r'\s*\[(\d+)\] = "(.*)"')
_STATUS = re.compile(r"code=(CLD_\w+) status=(\w+)(?:/0x[0-9a-f]+)? pid=(\d+)")


def is_kdump_line(text: str) -> bool:
    """Whether ``text`` is a kdump header line (with or without a time)."""
    return _HEAD.fullmatch(text) is not None or _BARE.fullmatch(text) is not None


def unvis(text: str) -> str:
    """A string as kdump quotes it with vis(3) (``VIS_CSTYLE``: ``\\n``, ``\\"``,
    ``\\ooo``, ``\\^C``, ``\\M-c``), decoded."""
    out = bytearray()
    i = 0
    cstyle = {"n": 10, "t": 9, "r": 13, "b": 8, "a": 7, "v": 11, "f": 12, "s": 32, "E": 27}
    while i < len(text):
        ch = text[i]
        if ch != "\\" or i + 1 == len(text):
            out += ch.encode()
            i += 1
            continue
        nxt = text[i + 1]
        if nxt in "01234567":
            j = i + 1
            while j < min(i + 4, len(text)) and text[j] in "01234567":
                j += 1
            out.append(int(text[i + 1 : j], 8) & 0xFF)
            i = j
        elif nxt == "^" and i + 2 < len(text):
            out.append(127 if text[i + 2] == "?" else ord(text[i + 2]) & 0x1F)
            i += 3
        elif nxt == "M" and text[i + 2 : i + 3] in ("-", "^") and i + 3 < len(text):
            c = ord(text[i + 3])
            out.append(0x80 | (c & 0x1F if text[i + 2] == "^" else c) & 0xFF)
            i += 4
        else:
            out.append(cstyle.get(nxt, ord(nxt) if nxt.isascii() else 63))
            i += 2
    return out.decode("utf-8", errors="backslashreplace")


@dataclass(frozen=True, slots=True)
class Sig:
    """A PSIG record: signal ``name`` taken by ``tid``; ``kills`` when its default
    action ends the process; for SIGCHLD, the child and its status."""

    tid: int
    ts: int
    line: int
    name: str
    kills: bool
    child: int | None
    child_status: int | None


@dataclass(slots=True)
class Call:
    """One system call of a task; times in ns. ``end`` is None when its RET is not
    in the file (the task exited in it, or the capture ended)."""

    tid: int
    name: str
    args: str
    start: int
    line: int
    end: int | None = None
    end_line: int | None = None
    ret: int | None = None
    errno: int | None = None
    special: str | None = None  # RESTART or JUSTRETURN
    paths: list[str] = field(default_factory=list)
    argv: list[str] | None = None
    signals: list[Sig] = field(default_factory=list)
    child: int | None = None  # the process id a fork made, or the one a wait reaped

    @property
    def interrupted(self) -> bool:
        return self.errno == EINTR or self.special == "RESTART"


@dataclass(slots=True)
class _Proc:
    """One process (one life of a pid) as its records show it."""

    id: int
    pid: int
    first: int
    last: int
    comm: str = ""
    own: bool = False  # it has records of its own
    ended: bool = False
    parent: int | None = None
    fork_call: Call | None = None
    tids: set[int] = field(default_factory=set)
    events: list[Call | Sig] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class KdumpCapture:
    """The processes of a kdump file as importer rows, by id. ``clock`` is
    ``realtime`` (``-T`` or ``-R``: times since the epoch) or ``elapsed`` (``-TR``:
    since the first record); ``pids`` gives each id's pid."""

    path: str
    processes: dict[int, Traced]
    root: int
    start: int
    end: int
    skipped: int
    clock: str
    pids: dict[int, int]
    notes: list[str]


@dataclass(frozen=True, slots=True)
class _Record:
    line: int
    pid: int
    tid: int | None
    comm: str
    ts: int
    kind: str
    text: str
    more: tuple[str, ...]


def _records(lines: Lines) -> list[_Record]:
    """The header lines with the lines that go on under them; times as printed."""
    out: list[_Record] = []
    head: tuple[int, re.Match[str]] | None = None
    more: list[str] = []

    def close() -> None:
        if head is None:
            return
        n, m = head
        sec, frac = int(m.group(4)), int(m.group(5).ljust(9, "0"))
        tid = int(m.group(2)) if m.group(2) is not None else None
        text = m.group(7) or ""
        out.append(
            _Record(
                n,
                int(m.group(1)),
                tid,
                m.group(3),
                sec * 10**9 + frac,
                m.group(6),
                text,
                tuple(more),
            )
        )

    for n, text in lines:
        m = _HEAD.fullmatch(text)
        if m is not None:
            close()
            head, more = (n, m), []
        elif text[:1].isspace() and head is not None and not _BARE.fullmatch(text):
            more.append(text)
        elif _BARE.fullmatch(text):
            lines.bad(n, "a kdump line without a time: print the capture with `kdump -TH`")
        else:
            lines.bad(n, "not a kdump line (expected `PID/TID COMM TIME TYPE ...`, kdump -TH)")
    close()
    return out


def _clock(records: list[_Record]) -> tuple[str, list[int]]:
    """Each record's time in ns: -T as printed, -R summed up (its first time is
    absolute), -TR as printed (since the first record)."""
    times = [r.ts for r in records]
    epoch = 10**8 * 10**9  # 1973: a printed time past it is a date
    if not times or times[0] < epoch:
        return "elapsed", times
    if all(t >= epoch for t in times):
        return "realtime", times
    total = 0
    summed = []
    for t in times:
        total += t
        summed.append(total)
    return "realtime", summed


def _unwrap(lines: tuple[str, ...]) -> list[str]:
    """Join the pieces of strings kdump wrapped: a line that ends in an odd number of
    backslashes goes on after the tab that starts the next."""
    out: list[str] = []
    for line in lines:
        if out and (len(out[-1]) - len(out[-1].rstrip("\\"))) % 2 == 1:
            out[-1] = out[-1][:-1] + line.removeprefix("\t")
        else:
            out.append(line)
    return out


def _quoted(rec: _Record) -> str:
    """The string of a NAMI record."""
    text = _unwrap((rec.text, *rec.more))
    if len(text) != 1 or len(text[0]) < 2 or text[0][0] != '"' or text[0][-1] != '"':
        raise LineError(f"not a quoted path: {rec.text[:60]!r}")
    return unvis(text[0][1:-1])


def _argv(rec: _Record) -> list[str]:
    """The arguments of an ARGS record, from its ``[N] = "ARG"`` lines."""
    args: list[str] = []
    for piece in _unwrap(rec.more):
        m = _ARG.fullmatch(piece)
        if m is None:
            raise LineError(f"not an argument line under ARGS: {piece.strip()[:60]!r}")
        args.append(unvis(m.group(2)))
    return args


def _value(name: str, text: str) -> tuple[int | None, int | None, str | None]:
    """(value, errno, RESTART or JUSTRETURN) of a RET's text; the value of a fork, a
    wait or an exec must be one."""
    text = text.strip()
    if text in ("RESTART", "JUSTRETURN"):
        return None, None, text
    if (e := _ERRNO.fullmatch(text)) is not None:
        return -1, int(e.group(1)), None
    m = _VALUE.fullmatch(text)
    if m is None:
        if name in FORKS | WAITS | {"__tfork", "execve"}:
            raise LineError(f"{name} returned {text!r}: not a return value")
        return None, None, None
    return (int(m.group(1)) if m.group(1) else int(m.group(2), 16)), None, None


def _signal(tid: int, rec: _Record) -> Sig:
    m = _PSIG.fullmatch(rec.text)
    if m is None:
        raise LineError(f"not a signal: {rec.text[:60]!r}")
    name = m.group(1)
    child = status = None
    if name == "SIGCHLD" and (s := _STATUS.search(m.group(3))) is not None:
        child = int(s.group(3))
        how, value = s.group(1), s.group(2)
        if how == "CLD_EXITED" and value.isdigit():
            status = int(value) & 0xFF
        elif value in SIGNALS:
            status = 128 + SIGNALS[value]
    kills = m.group(2) == "SIG_DFL" and name in SIGNALS and name not in _HARMLESS
    return Sig(tid, rec.ts, rec.line, name, kills, child, status)


class _Builder:
    """Turns records into processes, one life of a pid at a time."""

    def __init__(self) -> None:
        self.procs: dict[int, _Proc] = {}
        self.current: dict[int, _Proc] = {}
        self.lives: dict[int, int] = {}
        self.pending: dict[tuple[int, int], Call] = {}
        self.threads_known = False
        self.handlers = {
            "CALL": self._call,
            "RET": self._ret,
            "NAMI": self._nami,
            "ARGS": self._args,
            "PSIG": self._psig,
        }

    def new(self, pid: int, ts: int) -> _Proc:
        """The next life of ``pid``: id pid, then pid + REUSE_STRIDE, ..."""
        n = self.lives.get(pid, 0)
        self.lives[pid] = n + 1
        p = _Proc(pid + n * REUSE_STRIDE, pid, ts, ts)
        self.procs[p.id] = p
        self.current[pid] = p
        return p

    def record(self, rec: _Record) -> None:
        if rec.pid <= 0:
            return  # a KTR_START header (pid -1)
        if rec.pid > PID_MAX:
            raise LineError(f"pid: OpenBSD pids are 1 to {PID_MAX} (got {rec.pid})")
        self.threads_known |= rec.tid is not None
        tid = rec.tid if rec.tid is not None else rec.pid
        key = (rec.pid, tid)
        p = self.current.get(rec.pid)
        if rec.kind == "RET" and (r := _RET.fullmatch(rec.text)) is not None:
            pending = self.pending.get(key)
            first = pending is None or pending.name != r.group(1)
            if first and r.group(1) in FORKS and _value(r.group(1), r.group(2))[0] == 0:
                # The child's first record: a new life of the pid, unless the parent's
                # RET came first and made it.
                if p is None or p.own:
                    p = self.new(rec.pid, rec.ts)
        if p is None:
            p = self.new(rec.pid, rec.ts)  # its creation is not in the capture
        p.own = True
        p.first, p.last = min(p.first, rec.ts), max(p.last, rec.ts)
        p.comm = rec.comm
        p.tids.add(tid)
        handler = self.handlers.get(rec.kind)
        if handler is not None:
            handler(p, key, rec)

    def _call(self, p: _Proc, key: tuple[int, int], rec: _Record) -> None:
        m = _CALL.fullmatch(rec.text)
        if m is None:
            raise LineError(f"not a system call: {rec.text[:60]!r}")
        call = Call(key[1], m.group(1), m.group(2), rec.ts, rec.line)
        if call.name == "exit":
            _exit_code(call.args)
            p.ended = True
        p.events.append(call)
        if call.name in ("exit", "__threxit"):
            self.pending.pop(key, None)  # these never return
        else:
            self.pending[key] = call  # a call left pending never returned (unfinished)

    def _ret(self, p: _Proc, key: tuple[int, int], rec: _Record) -> None:
        m = _RET.fullmatch(rec.text)
        if m is None:
            raise LineError(f"not a system call return: {rec.text[:60]!r}")
        name = m.group(1)
        value, errno, special = _value(name, m.group(2))
        if name in FORKS | WAITS and value is not None and value > PID_MAX:
            raise LineError(f"{name} returned {value}: OpenBSD pids are 1 to {PID_MAX}")
        call = self.pending.get(key)
        if call is None or call.name != name:
            return  # a child's first return, or a call made before the capture began
        del self.pending[key]
        call.end, call.end_line = rec.ts, rec.line
        call.ret, call.errno, call.special = value, errno, special
        if value is None or value <= 0 or errno is not None:
            return
        if name in FORKS:
            kid = self.current.get(value)
            if kid is None or kid.ended or kid.parent is not None:
                kid = self.new(value, call.start)
            kid.parent, kid.fork_call = p.id, call
            call.child = kid.id
        elif name == "__tfork":
            p.tids.add(value)
        elif name == "wait4" and (kid := self.current.get(value)) is not None:
            kid.ended = True
            call.child = kid.id

    def _nami(self, p: _Proc, key: tuple[int, int], rec: _Record) -> None:
        path = _quoted(rec)
        call = self.pending.get(key)
        if call is not None:
            call.paths.append(path)

    def _args(self, p: _Proc, key: tuple[int, int], rec: _Record) -> None:
        argv = _argv(rec)
        call = self.pending.get(key)
        if call is not None and call.argv is None:
            call.argv = argv

    def _psig(self, p: _Proc, key: tuple[int, int], rec: _Record) -> None:
        sig = _signal(key[1], rec)
        p.events.append(sig)
        call = self.pending.get(key)
        if call is not None:
            call.signals.append(sig)
        if sig.kills:
            p.ended = True


def read_kdump(path: str | Path, lenient: bool = False) -> KdumpCapture:
    """Parse kdump's text and build the processes; a line that cannot be parsed
    follows ``Lines``' rule."""
    lines = Lines(path, lenient)
    records = _records(lines)
    clock, times = _clock(records)
    b = _Builder()
    for rec, ts in zip(records, times, strict=True):
        try:
            b.record(replace(rec, ts=ts))
        except LineError as e:
            lines.bad(rec.line, str(e))
    if not b.procs:
        raise lines.fail("no kdump records (expected `kdump -TH` output of a ktrace capture)")
    start = min(p.first for p in b.procs.values())
    end = max(p.last for p in b.procs.values())
    procs = _rows(b, end)
    root = next(iter(b.procs))
    pids = {i: p.pid for i, p in b.procs.items()}
    notes = []
    threaded = sum(1 for t in procs.values() if len(t.tids) > 1)
    if threaded and not b.threads_known:
        notes.append(
            f"{lines.path}: no thread ids, yet {threaded} threaded processes: the calls of "
            "their threads may be mixed up (print the capture with `kdump -TH`)"
        )
    reused = sum(n - 1 for n in b.lives.values())
    if reused:
        notes.append(
            f"{lines.path}: {count_of(reused, 'pid')} reused within the "
            f"capture: a later process of a pid has the id pid + {REUSE_STRIDE} * n"
        )
    return KdumpCapture(lines.path, procs, root, start, end, lines.skipped, clock, pids, notes)


def _rows(b: _Builder, end: int) -> dict[int, Traced]:
    """The importer's rows: creation, program, exit, reaps and sleeps."""
    out: dict[int, Traced] = {}
    for p in b.procs.values():
        t = Traced(p.id, in_strace=True, comm=p.comm or None)
        t.parent = p.parent
        t.birth = p.fork_call.start if p.fork_call else p.first
        if p.fork_call is not None:
            t.fork_point = (p.fork_call.start, p.fork_call.line)
        t.tids = set(p.tids) or {p.pid}
        out[p.id] = t
    child_status: dict[tuple[int, int], int] = {}
    for p in b.procs.values():
        _scan(p, out[p.id], out, end, child_status)
    for p in b.procs.values():
        t = out[p.id]
        if t.death is None and p.ended:
            # Reaped, but its end is not in the file (its tracing stopped at a setuid
            # exec, say): it ended after its last record.
            t.death = p.last
            t.exit_status = child_status.get((p.parent or 0, p.pid), 0)
    for p in b.procs.values():
        _vfork_sleeps(p, out, end)
    return out


def _scan(
    p: _Proc,
    t: Traced,
    out: dict[int, Traced],
    end: int,
    child_status: dict[tuple[int, int], int],
) -> None:
    """One process's calls and signals: forks, execs, its exit, reaps and sleeps."""
    for ev in p.events:
        if isinstance(ev, Sig):
            if ev.kills and t.death is None:
                t.death, t.exit_status = ev.ts, 128 + SIGNALS[ev.name]
            if ev.child is not None and ev.child_status is not None:
                child_status[(p.id, ev.child)] = ev.child_status
            continue
        if ev.name in FORKS and ev.child is not None:
            t.forks.append(((ev.start, ev.line), ev.child))
        elif ev.name == "execve" and ev.end is not None and ev.errno is None:
            # The last exec is the program it ran to its exit; failed ones (the
            # PATH probes of execvp) are passed over.
            program = ev.paths[0] if ev.paths else (ev.argv[0] if ev.argv else None)
            t.program = program or t.program
            t.argv = ev.argv or []
            if t.exec_done is None:
                t.exec_done = ev.end
        elif ev.name == "exit" and t.death is None:
            t.death, t.exit_status = ev.start, _exit_code(ev.args)
        elif ev.name in WAITS:
            if ev.child is not None and ev.end is not None:
                t.reaps.append(((ev.end, ev.end_line or ev.line), ev.child))
            if not _nohang(ev):
                t.blocked.append((ev.start, ev.end if ev.end is not None else end))
                continue
        if ev.interrupted and any(s.name == "SIGCHLD" for s in ev.signals):
            # It slept (sigsuspend, poll, read ...) until a child's exit woke it.
            t.blocked.append((ev.start, ev.end if ev.end is not None else end))


def _vfork_sleeps(p: _Proc, out: dict[int, Traced], end: int) -> None:
    """A vfork parent sleeps until its child execs or exits; the call's return is
    when it woke."""
    t = out[p.id]
    for ev in p.events:
        if isinstance(ev, Call) and ev.name == "vfork" and ev.child is not None:
            kid = out[ev.child]
            release = [x for x in (ev.end, kid.exec_done, kid.death) if x is not None]
            t.blocked.append((ev.start, min(release) if release else end))


def _exit_code(args: str) -> int:
    try:
        return int(args.strip(), 0) & 0xFF
    except ValueError:
        raise LineError(f"exit({args}): not an exit status") from None


def _nohang(call: Call) -> bool:
    """A wait that polls (WNOHANG) rather than sleeps; kdump -n prints the options
    as a number."""
    if "WNOHANG" in call.args:
        return True
    opts = call.args.split(",")[-1].split("<")[0].strip()
    try:
        return call.name == "wait4" and bool(int(opts, 0) & WNOHANG)
    except ValueError:
        return False


def join_btrace(cap: KdumpCapture, bt: BtraceCapture, warnings: list[str]) -> None:
    """Give each process of ``cap`` the fault counts of its btrace exit as its sizes
    (file_pages: read and exec faults; anon_pages: write faults), matching by pid and,
    on a realtime clock, the exit time closest to its own (both are nanotime)."""
    if not bt.counts_faults:
        warnings.append(f"{bt.path}: no fault counts (--no-faults): default sizes used")
        return
    lives = bt.by_pid()
    missing: list[int] = []
    cut = 0
    for pid_id, t in cap.processes.items():
        match = _match(lives.get(cap.pids[pid_id], []), t, cap.clock)
        if match is None or match.file_pages is None or match.anon_pages is None:
            missing.append(pid_id)
            continue
        sizes = (match.file_pages, match.anon_pages)
        t.sizes = (min(sizes[0], MAX_FILE_PAGES), min(sizes[1], MAX_ANON_PAGES), 0)
        cut += t.sizes[:2] != sizes
    if missing:
        warnings.append(
            f"{count_of(len(missing), 'process')} without an exit in {bt.path} "
            f"(default sizes): {few(missing)}"
        )
    if cut:
        warnings.append(
            f"{count_of(cut, 'process')} with more faults than a replay holds: "
            f"sizes cut to file {MAX_FILE_PAGES}, anon {MAX_ANON_PAGES} pages"
        )
    if bt.dropped:
        warnings.append(f"{bt.path}: btrace dropped {bt.dropped} events: fault counts are low")


def _match(lives: list[Teardown], t: Traced, clock: str) -> Teardown | None:
    """The btrace exit of the process ``t`` among those of its pid."""
    death = t.death
    if clock != "realtime" or death is None:
        return lives[0] if len(lives) == 1 else None
    best = min(lives, key=lambda x: abs(x.exit_ns - death), default=None)
    if best is None or abs(best.exit_ns - death) > SAME_EXIT_NS:
        return None
    return best
