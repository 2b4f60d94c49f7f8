"""Terminal tables (rich) for what a run returns. Formats only; computes nothing new."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def _us(ns: int) -> str:
    return f"{ns / 1000:,.1f}"


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}" if whole else "-"


def cpu_table(record: dict[str, Any]) -> Table:
    """Per-CPU user/sys/spin/idle, in microseconds and as a share of the makespan."""
    span = record["makespan_ns"]
    t = Table(title=f"CPUs (makespan {_us(span)} us)")
    for col in (
        "cpu",
        "user us",
        "sys us",
        "spin us",
        "idle us",
        "%user",
        "%sys",
        "%spin",
        "%idle",
        "switches",
    ):
        t.add_column(col, justify="right")
    rows = [
        *record["cpus"],
        {"cpu": "all", **record["cpu"], "switches": sum(c["switches"] for c in record["cpus"])},
    ]
    for c in rows:
        whole = span if c["cpu"] != "all" else span * len(record["cpus"])
        t.add_row(
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
        )
    return t


def lock_table(record: dict[str, Any]) -> Table:
    """One row per lock: acquisitions, contention, waiting and holding."""
    t = Table(title="Locks")
    for col in (
        "lock",
        "acquisitions",
        "contended",
        "%contended",
        "wait us",
        "max wait us",
        "hold us",
        "max hold us",
    ):
        t.add_column(col, justify="right")
    for name, s in sorted(record["locks"].items()):
        t.add_row(
            name,
            str(s["acquisitions"]),
            str(s["contended"]),
            _pct(s["contended"], s["acquisitions"]),
            _us(s["wait_ns"]),
            _us(s["max_wait_ns"]),
            _us(s["hold_ns"]),
            _us(s["max_hold_ns"]),
        )
    return t


def tlb_table(record: dict[str, Any]) -> Table:
    """TLB work, as instructions and IPIs issued."""
    t = Table(title="TLB work")
    for key in record["tlb"]:
        t.add_column(key.replace("_", " "), justify="right")
    t.add_row(*(str(v) for v in record["tlb"].values()))
    return t
