"""``exitsim record``: run a command under strace (and bpftrace, when it is there
and allowed) and keep the two captures for the importer.

strace follows the command's whole process tree (ptrace); bpftrace watches the whole
machine for forks, execs and exits with the resident set at exit, and the importer
keeps the command's tree from it. bpftrace is optional: without it the import uses
default sizes, and the user is told why it was left out.

``--keep DIR`` keeps the raw captures and a measurement of the run (``keep``): the
wall time and strace's ``wait4`` resource usage, which covers strace and the whole
traced tree, strace's own tracing time included.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from exitsim.workloads.bpftrace import SCRIPT

STRACE_OPTS = ["-f", "-ttt", "-e", "trace=process"]
#: How long bpftrace may take to compile the script and attach (it reads BTF).
ATTACH_TIMEOUT_S = 30.0
#: Let bpftrace print the last M lines of the tree's exits before stopping it.
DRAIN_S = 0.3


class RecordError(ValueError):
    """The command cannot be recorded here: one line saying what to do."""


@dataclass(slots=True)
class Recording:
    """The capture files of one run, the command's exit status, notes for the user."""

    strace: Path
    bpftrace: Path | None = None
    status: int = 0
    notes: list[str] = field(default_factory=list)
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    """One run of strace with the command under it: when it started, the 1-min load
    average just before, the wall time, and what ``wait4`` of strace reported."""

    started: float  # seconds since the epoch
    load1: float
    wall_ns: int
    utime_ns: int
    stime_ns: int
    maxrss_kib: int


def find_strace() -> tuple[str, list[str]]:
    """strace's path and the options to run it with; RecordError when it is missing
    or cannot trace here."""
    if not sys.platform.startswith("linux"):
        raise RecordError("record needs Linux (strace and ptrace)")
    strace = shutil.which("strace")
    if strace is None:
        raise RecordError("strace not found: install it with apt-get install strace")
    # A trial run tells "cannot trace here" apart from the command's own failure,
    # which later shares strace's exit status and stderr.
    err = ""
    for opts in (["--seccomp-bpf", *STRACE_OPTS], STRACE_OPTS):
        probe = [strace, *opts, "-o", os.devnull, "--", sys.executable, "-S", "-c", ""]
        done = subprocess.run(probe, capture_output=True, text=True, check=False)
        if done.returncode == 0:
            return strace, opts
        err = _last_line(done.stderr)
    raise RecordError(
        f"strace cannot trace here ({err or 'ptrace not permitted'}): run as root or "
        "allow ptrace (sysctl kernel.yama.ptrace_scope=0; in a container, SYS_PTRACE)"
    )


def _last_line(text: str) -> str:
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    return lines[-1] if lines else ""


@contextmanager
def record(command: list[str], use_bpftrace: bool = True) -> Iterator[Recording]:
    """Run ``command`` (stdin, stdout and stderr are the caller's) under strace and,
    when possible, bpftrace; the captures live in a temporary directory until the
    ``with`` block ends."""
    if not command:
        raise RecordError("give the command to record after --, e.g. exitsim record -- make -j8")
    strace, opts = find_strace()
    if shutil.which(command[0]) is None:
        raise RecordError(f"command not found: {command[0]}")
    with tempfile.TemporaryDirectory(prefix="exitsim-record-") as tmp:
        rec = Recording(Path(tmp) / "record.strace")
        bpf = _start_bpftrace(Path(tmp), rec) if use_bpftrace else None
        try:
            rec.status, rec.usage = _run_measured(
                [strace, *opts, "-o", str(rec.strace), "--", *command]
            )
        finally:
            if bpf is not None:
                _stop_bpftrace(bpf, rec)
        if rec.status:
            rec.notes.append(f"{command[0]} exited with status {rec.status}; imported as it ran")
        yield rec


def _run_measured(argv: list[str]) -> tuple[int, Usage]:
    """Run ``argv`` and reap it with ``wait4``, for its resource usage; the exit status
    as ``subprocess`` gives it (negative: killed by that signal)."""
    load1 = os.getloadavg()[0]
    started = time.time()
    t0 = time.monotonic_ns()
    proc = subprocess.Popen(argv)
    try:
        _, status, ru = os.wait4(proc.pid, 0)
    except BaseException:
        proc.wait()  # ^C reaches the command as well: let it end
        raise
    wall = time.monotonic_ns() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    usage = Usage(
        started,
        round(load1, 2),
        wall,
        round(ru.ru_utime * 1e9),
        round(ru.ru_stime * 1e9),
        ru.ru_maxrss,
    )
    return proc.returncode, usage


def machine() -> dict[str, str | int]:
    """The kernel release, the CPU's model name and the CPUs this process may use."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                cpu = value.strip()
                break
    except OSError:
        pass
    return {"kernel": os.uname().release, "cpu": cpu, "nproc": len(os.sched_getaffinity(0))}


def keep_problem(directory: str, name: str) -> str | None:
    """Why ``directory`` cannot take the captures named ``name``, or None (the
    directory is made if missing)."""
    if not directory:
        return "the directory name is empty"
    if not name or "/" in name or name in (".", ".."):
        return f"{name!r} cannot name files in {directory} (give --name)"
    path = Path(directory)
    if path.exists() and not path.is_dir():
        return f"{directory} is not a directory"
    if not path.exists() and not path.resolve().parent.is_dir():
        return f"directory {path.resolve().parent} does not exist"
    return None


def keep(rec: Recording, command: list[str], directory: str, name: str) -> list[Path]:
    """Copy the captures to ``directory`` as NAME.strace (and NAME.bpftrace.txt) and
    write NAME.rusage.json; the paths written."""
    from exitsim.report.files import write_atomic

    out = Path(directory)
    out.mkdir(exist_ok=True)
    written: list[Path] = []
    for src, suffix in ((rec.strace, ".strace"), (rec.bpftrace, ".bpftrace.txt")):
        if src is not None:
            dest = out / f"{name}{suffix}"
            write_atomic(str(dest), src.read_bytes())
            written.append(dest)
    if rec.usage is not None:
        dest = out / f"{name}.rusage.json"
        write_atomic(str(dest), usage_json(rec, command))
        written.append(dest)
    return written


def usage_json(rec: Recording, command: list[str]) -> str:
    """NAME.rusage.json: the measurement of the run, each figure with what it covers."""
    u = rec.usage
    assert u is not None
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(u.started))
    record = {
        "command": command,
        "date": started,
        "status": rec.status,
        "machine": machine(),
        "load1_before": u.load1,
        "wall_ns": u.wall_ns,
        "ru_utime_ns": u.utime_ns,
        "ru_stime_ns": u.stime_ns,
        "ru_maxrss_kib": u.maxrss_kib,
        "bpftrace": rec.bpftrace is not None,
        "what": {
            "wall_ns": "from starting strace to reaping it (CLOCK_MONOTONIC): the command "
            "and strace's start-up and tracing",
            "ru_utime_ns, ru_stime_ns": "wait4() of strace: strace's own time (tracing "
            "included) plus that of every process of the traced tree, all reaped by then",
            "ru_maxrss_kib": "wait4() of strace: the largest peak resident set of any one "
            "of those processes, KiB; at least exitsim's own at the time it started "
            "strace, as Linux carries the high-water mark over exec",
            "load1_before": "1-minute load average just before the run",
        },
    }
    return json.dumps(record, indent=2, sort_keys=True) + "\n"


def _start_bpftrace(tmp: Path, rec: Recording) -> subprocess.Popen[bytes] | None:
    """Start the system-wide bpftrace script and wait until it is attached; None
    (with a note) when it is missing or cannot run here."""
    bpftrace = shutil.which("bpftrace")
    if bpftrace is None:
        rec.notes.append(
            "bpftrace not found: resident sizes are defaults "
            "(install bpftrace and run as root to record them)"
        )
        return None
    script = tmp / "proctree.bt"
    script.write_text(SCRIPT, encoding="utf-8")
    out_path, err_path = tmp / "record.bpftrace.txt", tmp / "bpftrace.err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen(
            [bpftrace, "-B", "line", str(script)],
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # the terminal's ^C goes to the command, not here
        )
    deadline = time.monotonic() + ATTACH_TIMEOUT_S
    while time.monotonic() < deadline:
        if b"Attaching" in out_path.read_bytes():
            rec.bpftrace = out_path
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    why = _last_line(err_path.read_text(errors="replace")) or "did not attach"
    _stop(proc)
    rec.notes.append(f"bpftrace cannot run here ({why}): resident sizes are defaults")
    return None


def _stop_bpftrace(proc: subprocess.Popen[bytes], rec: Recording) -> None:
    time.sleep(DRAIN_S)
    if proc.poll() is not None:
        rec.notes.append("bpftrace stopped before the command ended: resident sizes are defaults")
        rec.bpftrace = None
        return
    _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT (bpftrace flushes and exits), then SIGKILL if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
