"""The bpftrace side of a capture: the script ``exitsim record`` runs, and the reader
of the lines it prints (the same formats as the shipped capture's ``proctree.bt``).

One event per line, ``ts`` = CLOCK_MONOTONIC nanoseconds:

- ``F ts parent_tid child_tid``: sched_process_fork (threads too)
- ``E ts tgid path``: sched_process_exec, successful execs only
- ``X ts tid tgid comm group_dead file_pages anon_pages shmem_pages maxrss_pages``:
  sched_process_exit; the page counts are the mm's resident set at exit (0 0 0 0 when
  the task has no mm any more)
- ``M ts tid``: an mm torn down (mmap:exit_mmap)

The capture is system-wide; ``process_tree`` keeps the tasks of one tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from exitsim.workloads.tracelines import LineError, Lines, check_tid

#: What ``exitsim record`` runs. The exit tracepoint must see the mm before exit_mm
#: drops it (true on recent kernels, whose do_exit fires it first); group_dead is
#: worked out from signal->live rather than read from the tracepoint, which has that
#: field only on recent kernels. rss_stat[] is MM_FILEPAGES 0, MM_ANONPAGES 1,
#: MM_SHMEMPAGES 3, percpu counters since Linux 6.2.
SCRIPT = r"""
tracepoint:sched:sched_process_fork
{
    printf("F %llu %d %d\n", nsecs, args->parent_pid, args->child_pid);
}

tracepoint:sched:sched_process_exec
{
    printf("E %llu %d %s\n", nsecs, pid, str(args->filename));
}

tracepoint:sched:sched_process_exit
{
    $last = curtask->signal->live.counter == 0 ? 1 : 0;
    $mm = curtask->mm;
    if ($mm != 0) {
        printf("X %llu %d %d %s %d %ld %ld %ld %lu\n", nsecs, tid, pid, comm, $last,
               $mm->rss_stat[0].count, $mm->rss_stat[1].count, $mm->rss_stat[3].count,
               curtask->signal->maxrss);
    } else {
        printf("X %llu %d %d %s %d 0 0 0 0\n", nsecs, tid, pid, comm, $last);
    }
}

tracepoint:mmap:exit_mmap
{
    printf("M %llu %d\n", nsecs, tid);
}
"""


@dataclass(frozen=True, slots=True)
class Fork:
    ts: int
    parent: int
    child: int


@dataclass(frozen=True, slots=True)
class Exec:
    ts: int
    pid: int
    path: str


@dataclass(frozen=True, slots=True)
class TaskExit:
    """An X line. The counts are signed in the file (a percpu counter's central
    value can dip below zero); ``has_mm`` is False for the ``0 0 0 0`` form."""

    ts: int
    tid: int
    tgid: int
    comm: str
    group_dead: bool
    file_pages: int
    anon_pages: int
    shm_pages: int
    maxrss_pages: int

    @property
    def has_mm(self) -> bool:
        return any((self.file_pages, self.anon_pages, self.shm_pages, self.maxrss_pages))


@dataclass(frozen=True, slots=True)
class MmExit:
    ts: int
    tid: int


Record = Fork | Exec | TaskExit | MmExit


@dataclass(frozen=True, slots=True)
class BpfCapture:
    path: str
    records: list[Record]
    skipped: int


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise LineError(f"{what}: not a whole number: {text!r}") from None


def _task(text: str, what: str) -> int:
    """A task id: a whole number from 1 (0 is the idle task, never a tree's)."""
    return check_tid(_int(text, what), what)


def _ts(text: str) -> int:
    ts = _int(text, "ts")
    if ts < 0:
        raise LineError(f"ts: negative: {text!r}")
    return ts


def parse_record(text: str) -> Record | None:
    """One line; None for bpftrace's own ``Attaching N probes...``."""
    if text.startswith("Attaching ") and text.endswith("..."):
        return None
    kind, _, rest = text.partition(" ")
    f = rest.split()
    if kind == "F" and len(f) == 3:
        return Fork(_ts(f[0]), _int(f[1], "parent"), _task(f[2], "child"))
    if kind == "E" and len(f) >= 3:
        ts, pid, path = rest.split(maxsplit=2)
        return Exec(_ts(ts), _task(pid, "pid"), path)
    if kind == "X" and len(f) >= 9:
        # comm may hold spaces: the fixed fields are counted from both ends.
        nums = [_int(x, name) for x, name in zip(f[-5:], ("group_dead", *_PAGES), strict=True)]
        return TaskExit(
            _ts(f[0]),
            _task(f[1], "tid"),
            _task(f[2], "tgid"),
            " ".join(f[3:-5]),
            nums[0] != 0,
            *nums[1:],
        )
    if kind == "M" and len(f) == 2:
        return MmExit(_ts(f[0]), _task(f[1], "tid"))
    if kind in ("F", "E", "X", "M"):
        raise LineError(f"{kind} line with {len(f)} fields")
    raise LineError("not a bpftrace line (expected F, E, X or M and a timestamp)")


_PAGES = ("file_pages", "anon_pages", "shmem_pages", "maxrss_pages")


def read_bpftrace(path: str | Path, lenient: bool = False) -> BpfCapture:
    lines = Lines(path, lenient)
    records: list[Record] = []
    for n, text in lines:
        try:
            rec = parse_record(text)
        except LineError as e:
            lines.bad(n, str(e))
            continue
        if rec is not None:
            records.append(rec)
    if not records:
        raise lines.fail("no bpftrace lines (expected F/E/X/M lines of exitsim record)")
    return BpfCapture(lines.path, records, lines.skipped)


@dataclass(slots=True)
class BpfTask:
    """What the bpftrace lines say about one task of the tree."""

    tid: int
    fork: Fork | None = None
    execs: list[Exec] = field(default_factory=list)
    exit: TaskExit | None = None


def process_tree(cap: BpfCapture, root: int, known: set[int]) -> dict[int, BpfTask]:
    """The tasks of the tree rooted at ``root``, by tid: from the F line that makes
    ``root`` on (the whole file when there is none), a task belongs to the tree when
    its parent does or when strace saw it (``known``); after its X line a tid is out,
    so a pid reused by another program later is not mixed in."""
    recs = cap.records
    begin = next((i for i, r in enumerate(recs) if isinstance(r, Fork) and r.child == root), None)
    live = {root} if begin is not None else {root} | known
    tasks: dict[int, BpfTask] = {t: BpfTask(t) for t in live}
    gone: set[int] = set()
    for r in recs[begin or 0 :]:
        if isinstance(r, Fork):
            if r.child in gone:
                continue
            if r.child == root or r.parent in live or r.child in known:
                live.add(r.child)
                tasks.setdefault(r.child, BpfTask(r.child)).fork = r
        elif isinstance(r, Exec):
            if r.pid in live:
                tasks[r.pid].execs.append(r)
        elif isinstance(r, TaskExit):
            if r.tid in live:
                tasks[r.tid].exit = r
                live.discard(r.tid)
                gone.add(r.tid)
    return {t: task for t, task in tasks.items() if task.fork or task.execs or task.exit}
