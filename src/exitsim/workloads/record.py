"""``exitsim record``: run a command under strace (and bpftrace, when it is there
and allowed) and keep the two captures for the importer.

strace follows the command's whole process tree (ptrace); bpftrace watches the whole
machine for forks, execs and exits with the resident set at exit, and the importer
keeps the command's tree from it. bpftrace is optional: without it the import uses
default sizes, and the user is told why it was left out.
"""

from __future__ import annotations

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
            done = subprocess.run([strace, *opts, "-o", str(rec.strace), "--", *command])
            rec.status = done.returncode
        finally:
            if bpf is not None:
                _stop_bpftrace(bpf, rec)
        if rec.status:
            rec.notes.append(f"{command[0]} exited with status {rec.status}; imported as it ran")
        yield rec


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
