"""System call and exit1 costs measured on this machine, for the cost profiles.

Builds bench/syscalls.c with the system C compiler (``cc -O2``), runs it, and derives
from its figures the per-call body costs of the system calls the workloads make and
the exit1 steps that user space can time (docs/model.md, "System call and exit1
costs"). Every figure is a median of 7 timed loops (100,000 calls, or 1,000 exits per
loop); a body is the call's figure less ``getpid`` (entry and return only) and less
the path lookup where the call makes one.

This is Linux: the work is the same as OpenBSD's, but OpenBSD holds its kernel lock
across the locked calls and across exit1, and Linux takes no such lock. The figures are
for the work, not for the lock.

Usage: python bench/syscalls.py [--toml] [--quick]
  --toml   print the ``[costs.X]`` entries for a cost profile instead of the table
  --quick  few iterations (a smoke run, for the tests: the figures are not meant to be
           used)
"""

from __future__ import annotations

import argparse
import datetime
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "syscalls.c"
#: Files the child holds open at exit against none (EXIT_FILES in syscalls.c).
EXIT_FILES = 64

#: What every entry's source says about the lock.
LOCK_CAVEAT = "OpenBSD holds its kernel lock across this work; Linux does it without one"

Figures = dict[str, float]


@dataclass(frozen=True)
class Derived:
    """One cost key: how it is made of the figures, and what that measures."""

    key: str
    formula: Callable[[Figures], float]
    what: str
    caveat: str = LOCK_CAVEAT


def _namei(f: Figures) -> float:
    return f["stat"] - f["fstat"]


DERIVED: tuple[Derived, ...] = (
    Derived(
        "namei_ns",
        _namei,
        "stat(2) less fstat(2) of the same file: the lookup of a 4-component relative "
        "path (a/b/c/file, all in the name cache)",
        "OpenBSD's namei walks its name cache a component at a time under the kernel "
        "lock; Linux walks its dcache under RCU, without a lock of that kind",
    ),
    Derived(
        "open_ns",
        lambda f: f["open"] - f["getpid"] - _namei(f),
        "open(2) of that file less getpid(2) and the lookup: the file, the vnode open "
        "and the descriptor",
    ),
    Derived(
        "stat_ns",
        lambda f: f["fstat"] - f["getpid"],
        "fstat(2) less getpid(2): a vnode's attributes copied out",
    ),
    Derived(
        "access_ns",
        lambda f: f["access"] - f["getpid"] - _namei(f),
        "access(2) of that file less getpid(2) and the lookup: the permission check",
    ),
    Derived(
        "readlink_ns",
        lambda f: f["readlink"] - f["getpid"] - _namei(f),
        "readlink(2) of a link beside it less getpid(2) and the lookup",
    ),
    Derived(
        "getdents_ns",
        lambda f: f["getdents"] - f["open"] - f["close"] - f["getpid"],
        "open+getdents64+close of a directory of 8 entries less the open, the close "
        "and getpid(2): one getdents of a small directory",
    ),
    Derived(
        "read_ns",
        lambda f: f["read4k"] - f["getpid"],
        "pread(2) of 4 KiB of a cached file less getpid(2)",
        "OpenBSD runs read(2) without the kernel lock too (SY_NOLOCK); its vnode read "
        "path is not Linux's page-cache copy",
    ),
    Derived(
        "write_ns",
        lambda f: f["write_null"] - f["getpid"],
        "write(2) of 4 KiB to /dev/null less getpid(2)",
        "OpenBSD runs write(2) without the kernel lock too (SY_NOLOCK); /dev/null "
        "copies nothing, so a write to a pipe or a file costs more",
    ),
    Derived(
        "close_ns",
        lambda f: f["close"] - f["getpid"],
        "close(2) of the last reference to a file less getpid(2)",
        "OpenBSD runs close(2) without the kernel lock (SY_NOLOCK); its closef and "
        "vn_close do the same work",
    ),
    Derived(
        "fdfree_file_ns",
        lambda f: (f["exit_files64"] - f["exit_files0"]) / EXIT_FILES,
        f"exit of a child with {EXIT_FILES} more files open less one without them, per "
        "file (each the last reference)",
        "OpenBSD's fdfree closes each with closef under the kernel lock exit1 holds; "
        "Linux's exit_files does the same work without it",
    ),
    Derived(
        "itimer_ns",
        lambda f: 3 * (f["itimer_off"] - f["getpid"]) + (f["itimer_on_off"] - 2 * f["getpid"]) / 2,
        "three setitimer(2) disarms of timers not armed, plus half an arm+disarm pair "
        "(each less getpid(2))",
        "taken as OpenBSD's cancel_all_itimers (a setitimer disarm for each of the 3 "
        "itimers) and the timeout_del of ps_rucheck_to (one armed timer); " + LOCK_CAVEAT,
    ),
    Derived(
        "semexit_ns",
        lambda f: f["exit_sem_undo"] - f["exit_sem_plain"],
        "exit of a child after a semop(2) with SEM_UNDO less one after the same semop "
        "without it: one undo adjustment applied at exit",
        "OpenBSD's semexit finds the process's undo vector on semu_list and applies it, "
        "under the kernel lock; the difference is within the noise of an exit "
        "(tens of us), so it is an order of magnitude",
    ),
    Derived(
        "acct_ns",
        lambda f: f["append64"] - f["getpid"],
        "write(2) of 64 bytes to a file opened O_APPEND less getpid(2)",
        "taken as OpenBSD's acct_process, which fills a struct acct and appends it to "
        "the accounting file with vn_rdwr; " + LOCK_CAVEAT,
    ),
)

#: The figures syscalls.c prints, in its order.
FIGURES = (
    "getpid",
    "open_close",
    "open",
    "close",
    "stat",
    "lstat",
    "fstat",
    "access",
    "readlink",
    "getdents",
    "dup_close",
    "read4k",
    "write_null",
    "append64",
    "itimer_off",
    "itimer_on_off",
    "exit_files0",
    "exit_files64",
    "exit_sem_plain",
    "exit_sem_undo",
)


class BenchError(RuntimeError):
    """The benchmark could not be built or run."""


def build(workdir: Path) -> Path:
    """Compile syscalls.c with the system ``cc -O2``; the binary's path."""
    cc = shutil.which("cc")
    if cc is None:
        raise BenchError("no C compiler: bench/syscalls.py needs `cc` on PATH")
    exe = workdir / "syscalls"
    done = subprocess.run(
        [cc, "-O2", "-Wall", "-o", str(exe), str(SOURCE)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise BenchError(f"cc -O2 bench/syscalls.c failed:\n{done.stderr}")
    return exe


def parse_output(text: str) -> tuple[Figures, dict[str, str]]:
    """``name<TAB>ns<TAB>what`` lines into figures and their descriptions."""
    figures: Figures = {}
    what: dict[str, str] = {}
    for line in text.splitlines():
        name, ns, desc = line.split("\t", 2)
        figures[name] = float(ns)
        what[name] = desc
    missing = [n for n in FIGURES if n not in figures]
    if missing:
        raise BenchError(f"syscalls printed no figure for {', '.join(missing)}")
    return figures, what


def run(quick: bool = False) -> tuple[Figures, dict[str, str]]:
    """Build and run the benchmark; its figures (ns per call or per exit)."""
    with tempfile.TemporaryDirectory(prefix="exitsim-bench-") as d:
        exe = build(Path(d))
        done = subprocess.run(
            [str(exe), *(["-q"] if quick else []), d], capture_output=True, text=True
        )
    if done.returncode != 0:
        raise BenchError(f"bench/syscalls.c exited {done.returncode}: {done.stderr.strip()}")
    return parse_output(done.stdout)


def derive(figures: Figures) -> dict[str, int]:
    """The cost keys, whole nanoseconds, none below 0 (a difference in the noise)."""
    return {d.key: max(0, round(d.formula(figures))) for d in DERIVED}


def machine() -> str:
    """``Linux <uname -r>, <lscpu model name>``."""
    model = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if not model:
        model = platform.processor() or platform.machine()
    return f"Linux {platform.release()}, {model}"


def toml_entries(values: dict[str, int], where: str, date: str) -> str:
    """The ``[costs.X]`` entries, each with its source."""
    out = []
    for d in DERIVED:
        src = (
            f"measured here by bench/syscalls.py ({where}, {date}): {d.what}; {d.caveat}"
        ).replace('"', "'")
        out.append(f'[costs.{d.key}]\nvalue = {values[d.key]}\nsource = "{src}"\n')
    return "\n".join(out)


def table(figures: Figures, what: dict[str, str], values: dict[str, int]) -> str:
    rows = [f"{'figure':<16} {'ns':>10}  what"]
    rows += [f"{n:<16} {figures[n]:>10.1f}  {what[n]}" for n in FIGURES]
    rows.append("")
    rows.append(f"{'cost key':<16} {'ns':>10}  from")
    rows += [f"{d.key:<16} {values[d.key]:>10}  {d.what}" for d in DERIVED]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--toml", action="store_true", help="print cost-profile entries")
    ap.add_argument("--quick", action="store_true", help="few iterations (smoke run)")
    a = ap.parse_args(argv)
    try:
        figures, what = run(a.quick)
    except BenchError as e:
        print(f"bench/syscalls.py: {e}", file=sys.stderr)
        return 1
    values = derive(figures)
    where = machine()
    date = datetime.date.today().isoformat()
    if a.toml:
        print(toml_entries(values, where, date), end="")
    else:
        print(f"machine: {where}; {date}{' (--quick)' if a.quick else ''}")
        print(table(figures, what, values))
    return 0


if __name__ == "__main__":
    sys.exit(main())
