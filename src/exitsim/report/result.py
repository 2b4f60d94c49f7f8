"""The Result of a run: a plain, JSON-ready dict with a stable schema
(docs/result-schema.md). Built from a finished kernel; formats nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from exitsim.vm.uvm import PAGE_SIZE

if TYPE_CHECKING:
    from exitsim.engine.locks import Lock
    from exitsim.kern.kernel import Kernel
    from exitsim.sim import SimConfig

SCHEMA_VERSION = 1

# Locks reported one by one; the per-object ones are summed by family.
LOCK_FAMILIES = (
    ("vmmaplk.", "vm_map_lock"),
    ("pm_mtx.", "pmap_mtx"),
    ("amaplk.", "amap_lock"),
    ("ps_mtx.", "ps_mtx"),
    ("vmobjlock.", "vmobjlock"),
)


def percentile(values: list[int], q: float) -> int:
    """The q-quantile by the nearest-rank method (0 for no values)."""
    if not values:
        return 0
    s = sorted(values)
    rank = max(1, -(-len(s) * q // 1))  # ceil(n*q), at least 1
    return int(s[int(min(rank, len(s))) - 1])


def _lock_stats(locks: dict[str, Lock]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(locks):
        st = locks[name].stats.as_dict()
        key = name
        for prefix, family in LOCK_FAMILIES:
            if name.startswith(prefix):
                key = family
                break
        if key in out:
            agg = out[key]
            for f, v in st.items():
                agg[f] = max(agg[f], v) if f.startswith("max_") else agg[f] + v
        else:
            out[key] = dict(st) | {"wait_log2_hist": []}
        add_hist(out[key]["wait_log2_hist"], locks[name].stats.wait_hist)
    return out


def add_hist(into: list[int], hist: list[int]) -> None:
    """Add the bucket counts ``hist`` into ``into``, element by element."""
    into.extend([0] * (len(hist) - len(into)))
    for i, n in enumerate(hist):
        into[i] += n


def _machine_states(totals: dict[str, int]) -> dict[str, float | int]:
    """The machine's CPU states as ``top``/``systat`` show them (cp_time): user,
    sys (interrupts and spinning apart), spin, intr, idle, in ns and in per cent of
    all CPU time. Nice is never used here."""
    states = {
        "user_ns": totals["user_ns"],
        "sys_ns": totals["sys_ns"] - totals["intr_ns"],
        "spin_ns": totals["spin_ns"],
        "intr_ns": totals["intr_ns"],
        "idle_ns": totals["idle_ns"],
    }
    whole = sum(states.values())
    pct = {
        k.removesuffix("_ns") + "_pct": round(100 * v / whole, 3) if whole else 0.0
        for k, v in states.items()
    }
    return states | pct


def exit_latencies(r: dict[str, Any]) -> list[int]:
    """A Result's exit latencies, one per process waited for, in pid order."""
    return [p["exit_latency_ns"] for p in r["per_process"] if p.get("exit_latency_ns") is not None]


def build_result(k: Kernel, cfg: SimConfig) -> dict[str, Any]:
    eng = k.engine
    cpus = [{"cpu": c.index, **c.times(), "switches": c.switches} for c in eng.cpus]
    totals = {key: sum(c[key] for c in cpus) for key in cpus[0] if key.endswith("_ns")}
    recs = [r for r in sorted(k.meters.records.values(), key=lambda r: r.pid)]
    sys_ns = [r.sys_ns for r in recs]
    thread_sys = [r.thread_sys_ns for r in recs]
    lat = [r.latency_ns for r in recs if r.latency_ns is not None]
    reaper = k.reaper_proc
    m = k.meters
    teardown = [m.teardown_ns.get(r.pid, 0) for r in recs]
    return {
        "schema": SCHEMA_VERSION,
        "config": cfg.as_dict() | {"policy": k.policy.name},
        "costs": k.costs_used,
        "makespan_ns": eng.now,
        "cpu": totals,
        "cpus": cpus,
        "processes": {
            "count": len(recs),
            "charged_sys_ns_mean": (sum(sys_ns) // len(sys_ns)) if sys_ns else 0,
            "charged_sys_ns_p50": percentile(sys_ns, 0.5),
            "charged_sys_ns_p99": percentile(sys_ns, 0.99),
            "charged_sys_ns_total": sum(sys_ns),
            "charged_user_ns_total": sum(r.user_ns for r in recs),
            "exit_latency_ns_p50": percentile(lat, 0.5),
            "exit_latency_ns_p99": percentile(lat, 0.99),
            "exit_latency_ns_max": max(lat) if lat else 0,
            "teardown_ns_p50": percentile(teardown, 0.5),
            "teardown_ns_p99": percentile(teardown, 0.99),
            "waited_for": len(lat),
            "wait4_sys_ns_total": sum(sys_ns),
            "wait4_user_ns_total": sum(r.user_ns for r in recs),
            "thread_sys_ns_mean": (sum(thread_sys) // len(thread_sys)) if thread_sys else 0,
            "thread_sys_ns_p50": percentile(thread_sys, 0.5),
            "thread_sys_ns_p99": percentile(thread_sys, 0.99),
            "thread_sys_ns_total": sum(thread_sys),
            "thread_user_ns_total": sum(r.thread_user_ns for r in recs),
        },
        "machine": _machine_states(totals),
        "locks": _lock_stats(k.uvm.locks),
        "tlb": k.machine.stats.as_dict(),
        "memory": {
            "held_after_exit_peak_bytes": m.held_pages.peak * PAGE_SIZE,
            "held_after_exit_integral_byte_ns": m.held_pages.integral * PAGE_SIZE,
            "pages_allocated": k.uvm.counters.pages_allocated,
            "pages_freed": k.uvm.counters.pages_freed,
        },
        "reaper": {
            "busy_ns": (reaper.user_ns + reaper.sys_ns) if reaper is not None else 0,
            "backlog_peak": m.backlog.peak,
            "backlog_integral_ns": m.backlog.integral,
        },
        "zombies": {"peak": m.zombies.peak},
        "threads": {"unfreed_peak": m.unfreed_threads.peak},
        "known_violations": {str(i): n for i, n in sorted(k.known_violations.items())},
        "vm": k.uvm.counters.as_dict(),
        "events": eng.events,
        "ops": eng.ops,
        "series": {
            "reaper_backlog": m.backlog.samples,
            "held_after_exit_pages": m.held_pages.samples,
            "zombies": m.zombies.samples,
        },
        "per_process": [
            {
                "pid": r.pid,
                "comm": r.comm,
                "user_ns": r.user_ns,
                "sys_ns": r.sys_ns,
                "thread_user_ns": r.thread_user_ns,
                "thread_sys_ns": r.thread_sys_ns,
                "exit_latency_ns": r.latency_ns,
                "teardown_ns": m.teardown_ns.get(r.pid, 0),
                "resident_pages": r.resident_pages_at_exit,
            }
            for r in recs
        ],
    }


def with_kprof(result: dict[str, Any], folded: dict[str, int]) -> dict[str, Any]:
    """``result`` with ``kprof``: CPU time by stack of kernel functions, folded
    (``{"cc1;sys_exit;exit1;...": ns}``, sorted as ``KernelProfiler.folded`` gives
    it), for a run profiled with ``simulate(cfg, kprof=True)`` (report/kprof.py). A run
    without it has no such key."""
    return result | {"kprof": folded}
