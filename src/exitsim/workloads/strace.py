"""strace's text output (``strace -f -ttt -o FILE``) as events: system calls with
their entry and return times, exits and signals, per task id.

Line formats (docs/workloads.md, "Importing a real build"): ``TID SECONDS.USEC REST``
(or ``[pid TID] ...`` when strace wrote to a terminal), REST one of ``NAME(ARGS) =
RET``, ``NAME(ARGS <unfinished ...>`` and later ``<... NAME resumed>ARGS) = RET`` on
the same task, ``+++ exited with N +++``, ``+++ killed by SIGX +++``, ``--- SIGX {...}
---``. The halves of a split call are joined here, per task, so the importer sees
whole calls; lines of different tasks need not be in time order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from exitsim.workloads.tracelines import LineError, Lines, check_tid

#: Linux signal numbers (x86, arm and most others), for ``+++ killed by SIGX +++``.
SIGNALS: dict[str, int] = {
    "SIGHUP": 1,
    "SIGINT": 2,
    "SIGQUIT": 3,
    "SIGILL": 4,
    "SIGTRAP": 5,
    "SIGABRT": 6,
    "SIGIOT": 6,
    "SIGBUS": 7,
    "SIGFPE": 8,
    "SIGKILL": 9,
    "SIGUSR1": 10,
    "SIGSEGV": 11,
    "SIGUSR2": 12,
    "SIGPIPE": 13,
    "SIGALRM": 14,
    "SIGTERM": 15,
    "SIGSTKFLT": 16,
    "SIGCHLD": 17,
    "SIGCONT": 18,
    "SIGSTOP": 19,
    "SIGTSTP": 20,
    "SIGTTIN": 21,
    "SIGTTOU": 22,
    "SIGURG": 23,
    "SIGXCPU": 24,
    "SIGXFSZ": 25,
    "SIGVTALRM": 26,
    "SIGPROF": 27,
    "SIGWINCH": 28,
    "SIGIO": 29,
    "SIGPOLL": 29,
    "SIGPWR": 30,
    "SIGSYS": 31,
}
#: The calls that make a task; the child's id is the return value.
FORKS = frozenset({"clone", "clone3", "fork", "vfork"})
EXECS = frozenset({"execve", "execveat"})
WAITS = frozenset({"wait4", "waitid"})

_HEAD = re.compile(r"(?:\[pid\s+(\d+)\]|(\d+))\s+(\S+)\s+(.*)")
_TS = re.compile(r"(\d+)\.(\d{1,9})")
_UNFINISHED = re.compile(r"(\w+)\((.*?)\s*<unfinished \.\.\.>")
_RESUMED = re.compile(r"<\.\.\. (\w+) resumed>(.*)")
_COMPLETE = re.compile(r"(\w+)\((.*)\)\s+=\s+(.*)")
_TAIL = re.compile(r"(.*)\)\s+=\s+(.*)")
_RET = re.compile(r"(-?\d+|0x[0-9a-fA-F]+|\?)(?:\s+(E[A-Z0-9]+)\b.*|\s.*)?")
_EXIT = re.compile(r"\+\+\+ (.*) \+\+\+")
_SIGNAL = re.compile(r"--- (.*) ---")
_SUPERSEDED = re.compile(r"superseded by execve in pid (\d+)")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"(\.\.\.)?')
_FLAGS = re.compile(r"flags=([A-Z0-9_|]+)")
_SI_PID = re.compile(r"si_pid=(\d+)")
_ESCAPES = {"n": 10, "t": 9, "r": 13, "v": 11, "f": 12, "a": 7, "b": 8, "\\": 92, '"': 34}


@dataclass(slots=True)
class Call:
    """One system call of task ``tid``; times in ns of strace's clock. ``end`` is
    None when the call had not returned by the end of the capture (or the task
    died in it); ``ret`` is None for ``?`` or no return."""

    tid: int
    name: str
    args: str
    start: int
    line: int
    end: int | None = None
    end_line: int | None = None
    ret: int | None = None
    errno: str | None = None


@dataclass(frozen=True, slots=True)
class Exit:
    """``+++ ... +++``: the task is gone. ``status`` is the wait status's exit code
    (128 + signal number when killed), None when an exec in another thread of its
    group took its place."""

    tid: int
    ts: int
    line: int
    status: int | None


@dataclass(frozen=True, slots=True)
class Signal:
    """``--- SIGX {...} ---``: a signal delivered to ``tid``."""

    tid: int
    ts: int
    line: int
    name: str
    info: str


Event = Call | Exit | Signal


@dataclass(frozen=True, slots=True)
class StraceCapture:
    """A whole file: events in the order they start in it."""

    path: str
    events: list[Event]
    first_tid: int
    start: int
    end: int
    skipped: int


def parse_ts(text: str) -> int:
    """``SECONDS.FRACTION`` as integer nanoseconds (exact, unlike a float)."""
    m = _TS.fullmatch(text)
    if m is None:
        if ":" in text:
            raise LineError(f"timestamp {text!r}: record with -ttt (seconds since the epoch)")
        raise LineError(f"not a timestamp: {text!r}")
    return int(m.group(1)) * 1_000_000_000 + int(m.group(2).ljust(9, "0"))


def _ret(name: str, text: str) -> tuple[int | None, str | None]:
    """A call's return value and errno; a fork's or a wait's positive value is a task
    id, and is checked as one."""
    m = _RET.fullmatch(text.strip())
    if m is None:
        raise LineError(f"not a return value: {text.strip()!r}")
    value = None if m.group(1) == "?" else int(m.group(1), 0)
    if value is not None and value > 0 and (name in FORKS or name in WAITS):
        check_tid(value, f"{name} result")
    return value, m.group(2)


def _exit_status(text: str) -> int:
    if text.startswith("exited with "):
        code = text.removeprefix("exited with ")
        if not code.isdigit() or int(code) > 255:
            raise LineError(f"bad exit status {code!r}")
        return int(code)
    if text.startswith("killed by "):
        name = text.removeprefix("killed by ").removesuffix(" (core dumped)")
        if name.startswith("SIGRT_") and name[6:].isdigit():
            return 128 + 32 + int(name[6:])
        if name not in SIGNALS:
            raise LineError(f"unknown signal {name!r}")
        return 128 + SIGNALS[name]
    raise LineError(f"unknown exit record {text!r}")


def read_strace(path: str | Path, lenient: bool = False) -> StraceCapture:
    """Parse an strace file; a line that cannot be parsed follows ``Lines``' rule."""
    lines = Lines(path, lenient)
    events: list[Event] = []
    pending: dict[int, Call] = {}
    exited: dict[int, int] = {}  # tid -> line of its exit record
    first: int | None = None
    lo = hi = 0
    for n, text in lines:
        try:
            ts, ev = _parse_line(n, text, pending, exited)
        except LineError as e:
            lines.bad(n, str(e))
            continue
        if first is None:
            first, lo, hi = (ev.tid if ev else 0), ts, ts
        lo, hi = min(lo, ts), max(hi, ts)
        if ev is not None:
            events.append(ev)
    if first is None:
        raise lines.fail("no strace lines (expected `strace -f -ttt` output)")
    return StraceCapture(lines.path, events, first, lo, hi, lines.skipped)


def _parse_line(
    n: int, text: str, pending: dict[int, Call], exited: dict[int, int]
) -> tuple[int, Event | None]:
    """One line: its time and the event it starts (None when it completes a call
    already listed at its first half)."""
    m = _HEAD.fullmatch(text)
    if m is None:
        raise LineError("not an strace line (expected `TID SECONDS.USEC ...`, strace -f -ttt)")
    tid = check_tid(int(m.group(1) or m.group(2)), "task id")
    ts = parse_ts(m.group(3))
    rest = m.group(4)
    if tid in exited:
        raise LineError(f"task {tid} already exited at line {exited[tid]} (pid reused?)")
    if (x := _EXIT.fullmatch(rest)) is not None:
        if (sup := _SUPERSEDED.fullmatch(x.group(1))) is not None:
            # A non-leader thread exec'd: it goes on as the leader's pid, and strace
            # prints the rest of its execve there.
            old = int(sup.group(1))
            mine = pending.pop(tid, None)
            if mine is not None:
                mine.end, mine.end_line = ts, n
            call = pending.pop(old, None)
            if call is not None:
                pending[tid] = call
            exited[old] = n
            return ts, Exit(old, ts, n, None)
        status = _exit_status(x.group(1))
        # A call the task died in never returns.
        call = pending.pop(tid, None)
        if call is not None:
            call.end, call.end_line = ts, n
        exited[tid] = n
        return ts, Exit(tid, ts, n, status)
    if (s := _SIGNAL.fullmatch(rest)) is not None:
        name, _, info = s.group(1).partition(" ")
        return ts, Signal(tid, ts, n, name, info)
    if (r := _RESUMED.fullmatch(rest)) is not None:
        call = pending.pop(tid, None)
        if call is None or call.name != r.group(1):
            raise LineError(f"{r.group(1)} resumed, but task {tid} has no unfinished {r.group(1)}")
        t = _TAIL.fullmatch(r.group(2))
        if t is None:
            raise LineError(f"{r.group(1)} resumed without `) = RESULT`")
        call.args += " " + t.group(1).replace("<unfinished ...>", "").strip()
        call.ret, call.errno = _ret(call.name, t.group(2))
        call.end, call.end_line = ts, n
        return ts, None
    if (u := _UNFINISHED.fullmatch(rest)) is not None:
        if tid in pending:
            old = pending[tid]
            raise LineError(f"task {tid} starts {u.group(1)} inside {old.name} (line {old.line})")
        call = Call(tid, u.group(1), u.group(2), ts, n)
        pending[tid] = call
        return ts, call
    if (c := _COMPLETE.fullmatch(rest)) is not None:
        if tid in pending:
            old = pending[tid]
            raise LineError(f"task {tid} calls {c.group(1)} inside {old.name} (line {old.line})")
        ret, errno = _ret(c.group(1), c.group(3))
        return ts, Call(tid, c.group(1), c.group(2), ts, n, ts, n, ret, errno)
    raise LineError(f"not a system call, exit or signal: {rest[:60]!r}")


def unescape(body: str) -> str:
    """A C string as strace prints it (``\\n``, ``\\x41``, ``\\101``), decoded."""
    out = bytearray()
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\" or i + 1 == len(body):
            out += ch.encode()
            i += 1
            continue
        nxt = body[i + 1]
        if nxt == "x" and re.fullmatch(r"[0-9a-fA-F]{2}", body[i + 2 : i + 4]):
            out.append(int(body[i + 2 : i + 4], 16))
            i += 4
        elif nxt in "01234567":
            j = i + 1
            while j < min(i + 4, len(body)) and body[j] in "01234567":
                j += 1
            out.append(int(body[i + 1 : j], 8) & 0xFF)
            i = j
        else:
            out.append(_ESCAPES.get(nxt, ord(nxt) if nxt.isascii() else 63))
            i += 2
    return out.decode("utf-8", errors="backslashreplace")


def strings(args: str) -> list[str]:
    """The quoted strings of an argument list, in order (execve: path, argv...); one
    strace cut short (``-s``) ends in ``...``."""
    return [unescape(body) + cut for body, cut in _STRING.findall(args)]


def exec_path(call: Call) -> str | None:
    """The file an execve/execveat ran (its first string argument)."""
    found = strings(call.args)
    return found[0] if found else None


def clone_flags(call: Call) -> frozenset[str]:
    """The ``flags=`` of a clone/clone3 (empty for fork/vfork)."""
    m = _FLAGS.search(call.args)
    return frozenset(m.group(1).split("|")) if m else frozenset()


def makes_thread(call: Call) -> bool:
    return call.name in FORKS and "CLONE_THREAD" in clone_flags(call)


def parent_waits(call: Call) -> bool:
    """vfork semantics: the caller sleeps until the child execs or exits."""
    return call.name == "vfork" or "CLONE_VFORK" in clone_flags(call)


def child_of(call: Call) -> int | None:
    """The task a successful fork-type call made."""
    if call.name in FORKS and call.ret is not None and call.ret > 0:
        return call.ret
    return None


def nohang(call: Call) -> bool:
    """A wait that polls (``WNOHANG``) rather than sleeps."""
    return "WNOHANG" in call.args


def reaped(call: Call) -> int | None:
    """The child a wait4/waitid collected (not a poll that found none, not a
    WNOWAIT peek)."""
    if call.name == "wait4":
        return call.ret if call.ret is not None and call.ret > 0 else None
    if call.name == "waitid" and call.ret == 0 and "WNOWAIT" not in call.args:
        m = _SI_PID.search(call.args)
        if m is not None and int(m.group(1)) > 0:
            return int(m.group(1))
    return None
