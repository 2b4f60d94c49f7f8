"""``simulate(config) -> Result``: pure config in, plain record out, so any pool can map
it. The same config (seed included) gives a byte-identical JSON result."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from exitsim.engine.errors import SimError
from exitsim.kern.kernel import Kernel
from exitsim.machine.arch import ARCHES
from exitsim.machine.costs import costs_record, recording, resolve_profile, with_overrides
from exitsim.machine.machine import DEFAULT_TOTAL_PAGES, Machine
from exitsim.policies.base import Policy
from exitsim.policies.registry import get_policy, load_policy_file
from exitsim.report.result import build_result
from exitsim.vm.audit import audit_all_exited
from exitsim.workloads.registry import start_workload


@dataclass(frozen=True, slots=True)
class SimConfig:
    """One run: a design on an arch with N CPUs, a workload, a seed."""

    policy: str = "purge+pmap_purge"
    arch: str = "amd64"
    cpus: int = 8
    workload: str = "build"
    seed: int = 0
    granularity: str = "range"
    workload_params: dict[str, Any] = field(default_factory=dict)
    policy_file: str | None = None
    debug: bool = False
    total_pages: int = DEFAULT_TOTAL_PAGES
    #: Cost values that replace the profile's, by key (sensitivity runs).
    cost_overrides: dict[str, int] = field(default_factory=dict)
    #: A cost profile TOML for the arch, instead of the built-in one.
    profile: str | None = None
    #: Page faults take the kernel lock (the kernels before faults were unlocked,
    #: such as the one behind the 2021 arm64 build profile of docs/calibration.md).
    fault_kernel_lock: bool = False

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.policy_file is None:
            del d["policy_file"]
        if not self.cost_overrides:
            del d["cost_overrides"]
        if self.profile is None:
            del d["profile"]
        if not self.fault_kernel_lock:
            del d["fault_kernel_lock"]
        return d


def make_policy(cfg: SimConfig) -> Policy:
    if cfg.policy_file is not None:
        return load_policy_file(cfg.policy_file)
    return get_policy(cfg.policy)


def build_kernel(cfg: SimConfig, costs_read: set[str] | None = None, **kernel_kw: Any) -> Kernel:
    """The machine and kernel a config describes, with its workload started; with
    ``costs_read``, every cost key the run reads is added to it."""
    if cfg.cpus < 1:
        raise ValueError(f"cpus must be at least 1 (got {cfg.cpus})")
    if cfg.arch not in ARCHES:
        raise ValueError(f"unknown arch {cfg.arch!r} (known: {', '.join(sorted(ARCHES))})")
    base = resolve_profile(cfg.arch, cfg.profile)
    costs = with_overrides(base, cfg.cost_overrides) if cfg.cost_overrides else base
    if costs_read is not None:
        costs = recording(costs, costs_read)
    machine = Machine(cfg.arch, cfg.cpus, cfg.granularity, costs)
    k = Kernel(machine, make_policy(cfg), total_pages=cfg.total_pages, debug=cfg.debug, **kernel_kw)
    k.config = cfg
    k.uvm.fault_kernel_lock = cfg.fault_kernel_lock
    k.costs_used = costs_record(base, cfg.cost_overrides)
    k.start_kernel_threads()
    start_workload(k, cfg.workload, cfg.workload_params, cfg.seed)
    return k


#: Called now and then during a run with (simulated ns so far, processes exited so far).
Progress = Callable[[int, int], None]

#: Engine events between two progress calls: several calls a second at the kernel
#: model's usual 30-40 k events a second, nothing next to the events themselves.
PROGRESS_EVENTS = 5_000


def simulate(
    cfg: SimConfig,
    progress: Progress | None = None,
    kprof: bool = False,
    costs_read: set[str] | None = None,
) -> dict[str, Any]:
    """Run ``cfg`` to the end and return its Result (a JSON-ready dict).

    ``kprof``: also profile the CPU time by kernel function into the Result's
    ``kprof`` (report/kprof.py, docs/result-schema.md). Off, nothing watches the run
    and the Result has no such key; on, the rest of the Result is the same.
    ``costs_read``: a set that gets the name of every cost key the run reads (the
    Result is the same)."""
    k = build_kernel(cfg, costs_read)
    prof = _profiler(k, kprof)
    return _profiled(_run(k, progress), prof)


def simulate_traced(
    cfg: SimConfig, progress: Progress | None = None, kprof: bool = False
) -> tuple[dict[str, Any], bytes]:
    """As ``simulate``, also recording a Perfetto trace of the run (protobuf bytes;
    docs/traces.md). Slower: the engine logs every op."""
    from exitsim.report.perfetto import TraceRecorder

    k = build_kernel(cfg, record=True)
    rec = TraceRecorder(k)
    prof = _profiler(k, kprof)
    result = _run(k, progress)
    return _profiled(result, prof), rec.to_bytes()


def _profiler(k: Kernel, kprof: bool) -> Any:
    if not kprof:
        return None
    from exitsim.report.kprof import KernelProfiler

    return KernelProfiler(k.engine)


def _profiled(result: dict[str, Any], prof: Any) -> dict[str, Any]:
    if prof is None:
        return result
    from exitsim.report.result import with_kprof

    return with_kprof(result, prof.folded())


def _run(k: Kernel, progress: Progress | None = None) -> dict[str, Any]:
    cfg = k.config
    if progress is None:
        k.engine.run()
    else:
        # run() stops between events, never inside one: the same events in the same
        # order, so the same result, as a single run().
        while True:
            k.engine.run(max_events=PROGRESS_EVENTS)
            progress(k.engine.now, len(k.meters.records))
            if not k.engine.heap:
                break
    k.engine.finish()
    k.meters.close()
    left = [pr for pr in k.allprocess.values() if pr is not k.initprocess and pr.comm != "reaper"]
    if left:
        names = ", ".join(f"{pr.comm}[{pr.ps_pid}]" for pr in left[:5])
        raise SimError(f"the run ended with {len(left)} processes still alive: {names}")
    if k.zombprocess:
        raise SimError(f"the run ended with {len(k.zombprocess)} zombies never waited for")
    unfreed = sum(len(pr.dead_threads) for pr in k.all_processes())
    if unfreed:
        raise SimError(f"the run ended with {unfreed} dead threads never freed")
    audit_all_exited(k.uvm)
    return build_result(k, cfg)
