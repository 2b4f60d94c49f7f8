"""``exitsim validate``: replay a captured real build in the model and set what the
model predicts beside what was measured, with the error of each figure.

What is measured, from the captures of one run (docs/validation.md):

- wall time: strace's first line to its last (the command's whole run);
- total sys: the rusage file ``exitsim record --keep`` writes (the traced tree with the
  tracer, an upper bound), else the sum of ``si_stime`` over the ``SIGCHLD`` lines
  strace logs (each process's own system time, in clock ticks of 10 ms, reported to
  its parent when it dies; a process whose parent is not traced is missed);
- per-process teardown time: bpftrace's X line (``sched_process_exit``, before
  ``exit_mm``) to the same task's next M line (the end of ``exit_mmap``);
- exit latency: strace's ``exit_group`` call to the parent's ``wait4`` return that
  reaped the process, both on strace's clock.

What is predicted: the same figures of the captured tree replayed (workloads/tree.py)
under a design (``linux`` by default: the captures are of Linux) with a cost profile,
on as many CPUs as the capture's machine had: the run's makespan, the processes'
kernel time (``thread_sys_ns``: what a process's own stime counts), each process's
``teardown_ns`` and ``exit_latency_ns`` (result-schema.md). A process's figures are
paired by its place in the tree, not its pid (the replay renumbers).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from exitsim.report.result import percentile
from exitsim.sim import SimConfig, simulate
from exitsim.workloads.bpftrace import MmExit, TaskExit, read_bpftrace
from exitsim.workloads.importer import import_trace
from exitsim.workloads.spec import to_config
from exitsim.workloads.strace import Call, Signal, read_strace, reaped
from exitsim.workloads.tracelines import TraceError

#: Linux's USER_HZ: si_utime and si_stime count clock ticks of 1/100 s.
USER_HZ = 100
_STIME = re.compile(r"si_stime=(\d+)")


class ValidateError(ValueError):
    """The captures cannot be validated against: one line."""


@dataclass(slots=True)
class Measured:
    """What the captures say of one run; times in ns."""

    wall_ns: int
    sys_ns: int | None
    sys_source: str
    teardown_ns: list[int] = field(default_factory=list)
    exit_latency_ns: list[int] = field(default_factory=list)
    processes: int = 0


def measure(
    strace_path: str | Path, bpftrace_path: str | Path | None, rusage_path: str | Path | None
) -> Measured:
    """The measured figures of one captured run (the module's list says how)."""
    cap = read_strace(strace_path)
    calls = [e for e in cap.events if isinstance(e, Call)]
    exit_at: dict[int, int] = {c.tid: c.start for c in calls if c.name == "exit_group"}
    reaped_at: dict[int, int] = {}
    for c in calls:
        if c.name in ("wait4", "waitid") and c.end is not None:
            pid = reaped(c)
            if pid is not None:
                reaped_at[pid] = c.end
    latency = sorted(reaped_at[p] - exit_at[p] for p in reaped_at if p in exit_at)
    pids = {c.tid for c in calls}
    if rusage_path is not None:
        sys_ns, sys_source = _rusage_sys(rusage_path)
    else:
        ticks = [
            int(m.group(1))
            for e in cap.events
            if isinstance(e, Signal) and e.name == "SIGCHLD"
            for m in [_STIME.search(e.info)]
            if m is not None
        ]
        sys_ns = sum(ticks) * (1_000_000_000 // USER_HZ) if ticks else None
        sys_source = f"sum of si_stime over {len(ticks)} SIGCHLD lines (10 ms ticks)"
    teardown: list[int] = []
    if bpftrace_path is not None:
        teardown = _teardowns(bpftrace_path, pids)
    return Measured(
        wall_ns=cap.end - cap.start,
        sys_ns=sys_ns,
        sys_source=sys_source,
        teardown_ns=sorted(teardown),
        exit_latency_ns=latency,
        processes=len(exit_at),
    )


def _rusage_sys(path: str | Path) -> tuple[int, str]:
    try:
        data = json.loads(Path(path).read_text())
        return int(data["ru_stime_ns"]), f"{Path(path).name}: ru_stime of the traced tree"
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValidateError(f"{path}: not a rusage file of exitsim record --keep ({e})") from None


def _teardowns(path: str | Path, pids: set[int]) -> list[int]:
    """Per process of the capture: its main task's X line to its next M line."""
    cap = read_bpftrace(path)
    exits: dict[int, int] = {}
    out: list[int] = []
    for r in cap.records:
        if isinstance(r, TaskExit) and r.group_dead and r.tgid in pids and r.has_mm:
            exits[r.tid] = r.ts
        elif isinstance(r, MmExit) and r.tid in exits:
            out.append(r.ts - exits.pop(r.tid))
    return out


@dataclass(slots=True)
class Predicted:
    wall_ns: int
    sys_ns: int
    teardown_ns: list[int]
    exit_latency_ns: list[int]
    processes: int


def predict(
    strace_path: str | Path,
    bpftrace_path: str | Path | None,
    cfg: SimConfig,
) -> Predicted:
    """The captured tree replayed under ``cfg``'s design, arch, CPUs and profile."""
    spec = import_trace(strace_path, bpftrace_path).spec
    name, params = to_config(spec)
    r = simulate(replace(cfg, workload=name, workload_params=params | cfg.workload_params))
    return predicted_of(r)


def predicted_of(r: dict[str, Any]) -> Predicted:
    """The validated figures of one Result."""
    pp = r["per_process"]
    return Predicted(
        wall_ns=r["makespan_ns"],
        sys_ns=r["processes"]["thread_sys_ns_total"],
        teardown_ns=sorted(p["teardown_ns"] for p in pp if p.get("teardown_ns")),
        exit_latency_ns=sorted(
            p["exit_latency_ns"] for p in pp if p.get("exit_latency_ns") is not None
        ),
        processes=len(pp),
    )


@dataclass(frozen=True, slots=True)
class Row:
    """One figure: measured, predicted, and the relative error (None: not measured)."""

    figure: str
    measured: float | None
    predicted: float
    unit: str

    @property
    def error(self) -> float | None:
        if self.measured is None or self.measured == 0:
            return None
        return (self.predicted - self.measured) / self.measured


def error_table(m: Measured, p: Predicted) -> list[Row]:
    """Measured beside predicted, figure by figure. A distribution is compared at its
    p10, p50 and p90 (and its mean); an empty measured one gives no rows."""
    rows = [
        Row("wall time", m.wall_ns / 1e6, p.wall_ns / 1e6, "ms"),
        Row("total sys", None if m.sys_ns is None else m.sys_ns / 1e6, p.sys_ns / 1e6, "ms"),
    ]
    for label, meas, pred in (
        ("teardown per process", m.teardown_ns, p.teardown_ns),
        ("exit latency", m.exit_latency_ns, p.exit_latency_ns),
    ):
        if not meas or not pred:
            continue
        for q in (0.1, 0.5, 0.9):
            rows.append(
                Row(
                    f"{label} p{round(q * 100)}",
                    percentile(meas, q) / 1e3,
                    percentile(pred, q) / 1e3,
                    "us",
                )
            )
        rows.append(
            Row(f"{label} mean", sum(meas) / len(meas) / 1e3, sum(pred) / len(pred) / 1e3, "us")
        )
    return rows


def validate(
    strace_path: str | Path,
    bpftrace_path: str | Path | None,
    rusage_path: str | Path | None,
    cfg: SimConfig,
) -> tuple[Measured, Predicted, list[Row]]:
    """Measure the captures, replay them, and compare; ValidateError on bad input."""
    try:
        m = measure(strace_path, bpftrace_path, rusage_path)
        p = predict(strace_path, bpftrace_path, cfg)
    except TraceError as e:
        raise ValidateError(str(e)) from None
    return m, p, error_table(m, p)


def as_dict(m: Measured, p: Predicted, rows: list[Row], cfg: SimConfig) -> dict[str, Any]:
    """The record ``--json`` writes."""
    return {
        "config": cfg.as_dict(),
        "measured": asdict(m),
        "predicted": asdict(p),
        "rows": [
            {
                "figure": r.figure,
                "unit": r.unit,
                "measured": r.measured,
                "predicted": r.predicted,
                "error": r.error,
            }
            for r in rows
        ],
    }
