"""Tables of what a run returns, as rows of text (for the HTML report) and as terminal
tables (rich). Formats only; computes nothing new."""

from __future__ import annotations

from typing import Any

from rich.table import Table

#: A table as (title, column headings, rows of cells); the first column is a name, the
#: others are numbers.
Rows = tuple[str, list[str], list[list[str]]]


def _us(ns: int) -> str:
    return f"{ns / 1000:,.1f}"


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}" if whole else "-"


def cpu_rows(record: dict[str, Any]) -> Rows:
    """Per-CPU user/sys/spin/idle, in microseconds and as a share of the makespan."""
    span = record["makespan_ns"]
    cols = ["cpu", "user us", "sys us", "spin us", "idle us"]
    cols += ["%user", "%sys", "%spin", "%idle", "switches"]
    rows = []
    every = [
        *record["cpus"],
        {"cpu": "all", **record["cpu"], "switches": sum(c["switches"] for c in record["cpus"])},
    ]
    for c in every:
        whole = span if c["cpu"] != "all" else span * len(record["cpus"])
        rows.append(
            [
                str(c["cpu"]),
                _us(c["user_ns"]),
                _us(c["sys_ns"]),
                _us(c["spin_ns"]),
                _us(c["idle_ns"]),
                _pct(c["user_ns"], whole),
                _pct(c["sys_ns"], whole),
                _pct(c["spin_ns"], whole),
                _pct(c["idle_ns"], whole),
                str(c["switches"]),
            ]
        )
    return f"CPUs (makespan {_us(span)} us)", cols, rows


def lock_rows(record: dict[str, Any]) -> Rows:
    """One row per lock: acquisitions, contention, waiting and holding."""
    cols = ["lock", "acquisitions", "contended", "%contended"]
    cols += ["wait us", "max wait us", "hold us", "max hold us"]
    rows = [
        [
            name,
            str(s["acquisitions"]),
            str(s["contended"]),
            _pct(s["contended"], s["acquisitions"]),
            _us(s["wait_ns"]),
            _us(s["max_wait_ns"]),
            _us(s["hold_ns"]),
            _us(s["max_hold_ns"]),
        ]
        for name, s in sorted(record["locks"].items())
    ]
    return "Locks", cols, rows


def tlb_rows(record: dict[str, Any]) -> Rows:
    """TLB work, as instructions and IPIs issued."""
    cols = [key.replace("_", " ") for key in record["tlb"]]
    return "TLB work", cols, [[str(v) for v in record["tlb"].values()]]


def _rich(rows: Rows) -> Table:
    title, cols, body = rows
    t = Table(title=title)
    for col in cols:
        t.add_column(col, justify="right")
    for row in body:
        t.add_row(*row)
    return t


def cpu_table(record: dict[str, Any]) -> Table:
    """``cpu_rows`` as a terminal table."""
    return _rich(cpu_rows(record))


def lock_table(record: dict[str, Any]) -> Table:
    """``lock_rows`` as a terminal table."""
    return _rich(lock_rows(record))


def tlb_table(record: dict[str, Any]) -> Table:
    """``tlb_rows`` as a terminal table."""
    return _rich(tlb_rows(record))


def params_text(cfg: dict[str, Any]) -> str:
    """A config's workload parameters in a few words: ``jobs=8, parallel=2``; a process
    tree by its size, not its text."""
    params = cfg.get("workload_params") or {}
    if cfg.get("workload") == "tree":
        return f"{len(params.get('process', ()))} processes, {params.get('name') or 'unnamed'}"
    return ", ".join(f"{k}={v}" for k, v in sorted(params.items())) or "defaults"


def workload_text(cfg: dict[str, Any]) -> str:
    """A config's workload and its parameters: ``build (jobs=8)``."""
    return f"{cfg.get('workload')} ({params_text(cfg)})"


def validation_rows(record: dict[str, Any], title: str) -> Rows:
    """``exitsim validate``'s record: each figure measured, predicted, and the error."""
    body = []
    for r in record["rows"]:
        meas = "-" if r["measured"] is None else f"{r['measured']:,.1f}"
        err = "-" if r["error"] is None else f"{r['error'] * 100:+.1f}%"
        body.append([r["figure"], r["unit"], meas, f"{r['predicted']:,.1f}", err])
    return title, ["figure", "unit", "measured", "predicted", "error"], body


def validation_table(record: dict[str, Any], title: str) -> Table:
    """``validation_rows`` as a terminal table."""
    return _rich(validation_rows(record, title))
