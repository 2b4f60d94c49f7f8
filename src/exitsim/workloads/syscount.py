"""``exitsim trace syscalls``: how many system calls of each kind a real build's
processes make, per program, for the workloads that model one.

Input is an ``strace -f -ttt`` capture (``-e trace=process,file,desc,memory`` gives the
calls the model has names for), plain or gzipped. Every call a process starts is
counted, failed ones too (a failed ``open`` still looks its path up), by its Linux name
and by the model's name (``kern/syscall.py``) where it has one:

| model | Linux |
|---|---|
| open | open, openat, openat2, creat |
| stat | stat, lstat; newfstatat, fstatat64, statx on an absolute path or AT_FDCWD |
| fstatat | newfstatat, fstatat64, statx on a path relative to a directory descriptor |
| fstat | fstat; newfstatat, fstatat64, statx on ``""`` with AT_EMPTY_PATH |
| access | access, faccessat, faccessat2 |
| readlink | readlink, readlinkat |
| getdents | getdents, getdents64 |
| read | read, pread64, readv, preadv, preadv2 |
| write | write, pwrite64, writev, pwritev, pwritev2 |
| close | close |

``mmap``, ``munmap``, ``mprotect`` and ``brk`` are counted apart, as ``memory``: the
model gives them no generic body. A process is a thread group (a thread's calls count
for its process); its program is the file name of its last successful ``execve``, or
its parent's program when it never exec'd. Its calls before that exec count too (the
failed ``execve`` probes of a driver's PATH search, for one).

An ``strace -f -c`` summary of another run of the same build can be given to check the
totals: its table counts every call of the whole tree, traced classes or not.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from exitsim.workloads.strace import (
    EXECS,
    Call,
    child_of,
    exec_path,
    makes_thread,
    read_strace,
    strings,
)
from exitsim.workloads.tracelines import LineError, Lines, TraceError

#: The model's names of generic calls, in the order the TOML lists them.
MODEL_CALLS = (
    "open",
    "stat",
    "fstatat",
    "fstat",
    "access",
    "readlink",
    "getdents",
    "read",
    "write",
    "close",
)
MEMORY_CALLS = ("mmap", "munmap", "mprotect", "brk")

_MODEL: dict[str, str] = {
    "open": "open",
    "openat": "open",
    "openat2": "open",
    "creat": "open",
    "stat": "stat",
    "lstat": "stat",
    "fstat": "fstat",
    "access": "access",
    "faccessat": "access",
    "faccessat2": "access",
    "readlink": "readlink",
    "readlinkat": "readlink",
    "getdents": "getdents",
    "getdents64": "getdents",
    "read": "read",
    "pread64": "read",
    "readv": "read",
    "preadv": "read",
    "preadv2": "read",
    "write": "write",
    "pwrite64": "write",
    "writev": "write",
    "pwritev": "write",
    "pwritev2": "write",
    "close": "close",
}
#: The ``*at`` stat calls, whose name depends on the directory descriptor and path.
_AT_STATS = frozenset({"newfstatat", "fstatat64", "statx"})


def model_name(call: Call) -> str | None:
    """The model's name for ``call`` (see the module's table); None when it has none."""
    if call.name in _AT_STATS:
        dirfd = call.args.split(",", 1)[0].strip()
        found = strings(call.args)
        path = found[0] if found else None
        if path == "" and "AT_EMPTY_PATH" in call.args:
            return "fstat"
        if dirfd == "AT_FDCWD" or (path or "").startswith("/"):
            return "stat"
        return "fstatat"
    if call.name in MEMORY_CALLS:
        return call.name
    return _MODEL.get(call.name)


@dataclass(slots=True)
class Process:
    """One thread group of the capture: its program and its calls by Linux name."""

    pid: int
    program: str
    calls: Counter[str] = field(default_factory=Counter)
    model: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True, slots=True)
class Header:
    """What was captured, where and when: the TOML's ``[capture]`` table."""

    file: str
    command: str
    date: str
    machine: str


def count(path: str | Path) -> tuple[list[Process], Header]:
    """Every process of the capture at ``path`` with its counts, in order of first
    appearance, and the header (from NAME.rusage.json beside it when there is one)."""
    cap = read_strace(path)
    procs: dict[int, Process] = {}
    leader: dict[int, int] = {}  # task id -> its thread group's first task
    root_argv: list[str] | None = None
    for ev in cap.events:
        if not isinstance(ev, Call):
            continue
        pid = leader.setdefault(ev.tid, ev.tid)
        proc = procs.get(pid)
        if proc is None:
            proc = procs[pid] = Process(pid, "?")
        proc.calls[ev.name] += 1
        if (m := model_name(ev)) is not None:
            proc.model[m] += 1
        if ev.name in EXECS and ev.ret == 0:
            proc.program = Path(exec_path(ev) or "?").name or "?"
            if pid == cap.first_tid and root_argv is None:
                root_argv = strings(ev.args)[1:]
        elif (child := child_of(ev)) is not None:
            if makes_thread(ev):
                leader[child] = pid
            elif child not in procs:
                procs[child] = Process(child, proc.program)
            elif procs[child].program == "?":  # its lines came first; not exec'd yet
                procs[child].program = proc.program
    return list(procs.values()), _header(Path(path), cap.start, root_argv)


def _header(path: Path, start_ns: int, argv: list[str] | None) -> Header:
    """Command, date and machine from NAME.rusage.json (``record --keep``) if it is
    there; else the root's argv, the first timestamp, and no machine."""
    stem = path.name.removesuffix(".gz").removesuffix(".strace")
    side = path.with_name(f"{stem}.rusage.json")
    command = " ".join(argv or [])
    date = datetime.fromtimestamp(start_ns // 10**9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    machine = "not recorded"
    if side.is_file():
        try:
            data = json.loads(side.read_text(encoding="utf-8"))
            command = " ".join(data["command"])
            date = data["date"]
            machine = describe_machine(data["machine"])
        except (ValueError, KeyError, TypeError) as e:
            raise TraceError(f"{side}: not a rusage file of exitsim record --keep ({e})") from None
    return Header(path.name, command, date, machine)


def describe_machine(m: dict[str, Any]) -> str:
    """``record --keep``'s machine as one line."""
    return f"Linux {m['kernel']}, {m['cpu']}, {m['nproc']} CPUs"


# The strace -c summary ---------------------------------------------------------------


def read_summary(path: str | Path) -> dict[str, int]:
    """An ``strace -c`` table: calls per name (the ``total`` row left out)."""
    lines = Lines(path, lenient=False)
    ends: dict[str, int] = {}
    out: dict[str, int] = {}
    total: int | None = None
    for n, text in lines:
        if text.lstrip().startswith("% time"):
            ends = {m.group(): m.end() for m in re.finditer(r"\S+", text)}
            if "calls" not in ends or "syscall" not in ends:
                lines.bad(n, "summary header without `calls` and `syscall` columns")
            continue
        if set(text.strip()) <= {"-", " "}:
            continue
        if not ends:
            lines.bad(n, "not an strace -c summary (no `% time ... syscall` header first)")
        try:
            name, calls = _summary_row(text, ends["calls"])
        except LineError as e:
            lines.bad(n, str(e))
            continue
        if name == "total":
            total = calls
        elif name in out:
            lines.bad(n, f"{name} listed twice")
        else:
            out[name] = calls
    if not ends:
        raise lines.fail("not an strace -c summary (no `% time ... syscall` header)")
    if total is not None and total != sum(out.values()):
        raise lines.fail(
            f"the rows add up to {sum(out.values())} calls, the total row says {total}"
        )
    return out


def _summary_row(text: str, calls_end: int) -> tuple[str, int]:
    """One row: its name (last column) and the number that ends under ``calls``."""
    tokens = list(re.finditer(r"\S+", text))
    if len(tokens) < 4:
        raise LineError(f"not a summary row: {text.strip()[:60]!r}")
    name = tokens[-1].group()
    for t in tokens[:-1]:
        if t.end() == calls_end:
            if not t.group().isdigit():
                raise LineError(f"calls of {name}: not a number: {t.group()!r}")
            return name, int(t.group())
    raise LineError(f"no calls column in the row of {name}")


# Aggregating and writing -------------------------------------------------------------


def _num(x: float) -> int | float:
    """A median or mean as TOML writes it: whole numbers as integers, others to 0.01."""
    return int(x) if float(x).is_integer() else round(x, 2)


Stats = dict[str, int | float]


def _stats(procs: list[Process], names: list[str], model: bool) -> tuple[Stats, Stats]:
    """Median and mean per process of each of ``names``."""
    median: Stats = {}
    mean: Stats = {}
    for name in names:
        values = [(p.model if model else p.calls)[name] for p in procs]
        median[name] = _num(statistics.median(values))
        mean[name] = _num(statistics.fmean(values))
    return median, mean


def per_program(procs: list[Process]) -> dict[str, dict[str, Any]]:
    """Per program: processes, then median and mean calls per process by model name
    (``model``, ``model_mean``), memory calls (``memory``, ``memory_mean``) and every
    Linux name seen (``calls``, ``mean``)."""
    groups: dict[str, list[Process]] = {}
    for p in procs:
        groups.setdefault(p.program, []).append(p)
    out: dict[str, dict[str, Any]] = {}
    for prog in sorted(groups):
        ps = groups[prog]
        seen = sorted({name for p in ps for name in p.calls})
        model, model_mean = _stats(ps, list(MODEL_CALLS), True)
        memory, memory_mean = _stats(ps, list(MEMORY_CALLS), True)
        calls, mean = _stats(ps, seen, False)
        out[prog] = {
            "processes": len(ps),
            "model": model,
            "model_mean": model_mean,
            "memory": memory,
            "memory_mean": memory_mean,
            "calls": calls,
            "mean": mean,
        }
    return out


def crosscheck(procs: list[Process], summary: dict[str, int], name: str) -> dict[str, Any]:
    """The capture's total of each call and the summary's (another run of the same
    command), and the share of the summary's calls that the capture's names cover.
    (``strace -c`` leaves out calls that never return, such as ``exit_group``.)"""
    traced: Counter[str] = Counter()
    for p in procs:
        traced.update(p.calls)
    total = sum(summary.values())
    covered = sum(n for call, n in summary.items() if call in traced)
    return {
        "file": name,
        "calls": total,
        "calls_of_traced_names": covered,
        "share_of_traced_names": round(covered / total, 4) if total else 0.0,
        "this_capture": {call: traced[call] for call in sorted(traced)},
        "summary_table": {call: summary[call] for call in sorted(summary)},
    }


def syscalls_toml(
    path: str | Path, summary: str | Path | None = None, machine: str | None = None
) -> str:
    """The TOML ``exitsim trace syscalls`` writes for the capture at ``path``."""
    import tomli_w

    procs, head = count(path)
    if machine is not None:
        head = Header(head.file, head.command, head.date, machine)
    capture = {
        "file": head.file,
        "command": head.command,
        "date": head.date,
        "machine": head.machine,
        "processes": len(procs),
        "calls": sum(sum(p.calls.values()) for p in procs),
    }
    data: dict[str, Any] = {"capture": capture}
    if summary is not None:
        data["summary"] = crosscheck(procs, read_summary(summary), Path(summary).name)
    data["programs"] = per_program(procs)
    top = (
        "# System calls per process of a real build, by program: `model` and `model_mean`\n"
        "# are the median and mean count per process by the model's call names, `memory`\n"
        "# the same for mmap/munmap/mprotect/brk, `calls` and `mean` every call by its\n"
        "# Linux name. Written by `exitsim trace syscalls` (docs/workloads.md).\n"
    )
    return top + tomli_w.dumps(data)
