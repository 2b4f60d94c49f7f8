"""The engine's demo: threads that compute, take the kernel lock and flush TLBs.

It exists to show the engine and the machine at work before any teardown design does:
``procs`` processes of ``threads`` threads each run ``iterations`` rounds of user
compute (filling their CPU's TLB), a syscall whose body holds the kernel lock, and now
and then an munmap-like TLB invalidation of a few pages of their address space: on
amd64 a shootdown to the CPUs where a sibling runs, on arm64 broadcast TLBIs.

``simulate_demo(config) -> dict`` is pure: the same config gives the same record.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

from exitsim.engine.locks import TicketLock
from exitsim.engine.ops import USER, Run
from exitsim.engine.sched import Engine
from exitsim.engine.sync import KERNEL_LOCK, KERNEL_UNLOCK
from exitsim.engine.thread import KPath, Thread
from exitsim.machine.arch import pmap_tlb_shootrange, ttlb_flush_range
from exitsim.machine.costs import CostProfile
from exitsim.machine.machine import Machine

#: Virtual pages each thread touches per round; the demo's address spaces are small.
PAGES_PER_ROUND = 16


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """Parameters of the demo workload (all times in ns)."""

    arch: str = "amd64"
    cpus: int = 8
    procs: int = 4
    threads: int = 4
    iterations: int = 200
    user_ns: int = 20_000
    flush_every: int = 10
    flush_pages: int = 8
    granularity: str = "exact"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("cpus", "procs", "threads", "iterations", "flush_every", "flush_pages"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1 (got {getattr(self, name)})")
        if self.user_ns < 0:
            raise ValueError(f"user_ns must not be negative (got {self.user_ns})")


class DemoKernel:
    """Just enough kernel for the demo: the kernel lock, the machine, the engine."""

    def __init__(self, cfg: DemoConfig, profile: CostProfile | None) -> None:
        self.machine = Machine(cfg.arch, cfg.cpus, cfg.granularity, profile)
        self.engine = Engine(self.machine.engine_config())
        self.kernel_lock = TicketLock("kernel_lock")
        self.asid_of: dict[int, int] = {}
        self.engine.switch_hook = self._switched

    def _switched(self, cpu: int, t: Thread | None) -> None:
        # Like cpu_switchto loading the incoming thread's pmap; idle keeps the old one
        # loaded (lazy), so shootdowns still reach that CPU.
        if t is not None:
            self.machine.curpm[cpu] = self.asid_of[t.tid]


def _worker(k: DemoKernel, cfg: DemoConfig, proc: int, rng: random.Random, t: Thread) -> KPath:
    m = k.machine
    asid = 2 * proc + 2  # an even ASID and its user twin, as arm64 pairs them
    pair = (asid, asid | 1)
    lo = max(1, cfg.user_ns // 2)
    hi = max(lo, cfg.user_ns * 3 // 2)
    base = 0x1000 * (t.tid % cfg.threads)
    for i in range(cfg.iterations):
        yield Run(rng.randint(lo, hi), USER)
        vpn = base + (i % 8) * PAGES_PER_ROUND
        m.tlb.fill(t.cpu, asid, vpn, vpn + (proc << 20), PAGES_PER_ROUND)  # type: ignore[arg-type]
        yield from KERNEL_LOCK(k)
        yield Run(m.costs.kernel_lock_section_ns)
        yield from KERNEL_UNLOCK(k)
        if i % cfg.flush_every == cfg.flush_every - 1:
            end = vpn + cfg.flush_pages
            if m.arch.broadcast_tlbi:
                yield from ttlb_flush_range(m, pair, vpn, end)
            else:
                me = t.cpu
                targets = tuple(c for c in range(m.ncpu) if c != me and m.curpm[c] == asid)
                yield from pmap_tlb_shootrange(m, me, asid, vpn, end, targets, True)  # type: ignore[arg-type]


def simulate_demo(cfg: DemoConfig, profile: CostProfile | None = None) -> dict[str, Any]:
    """Run the demo and return a plain, JSON-ready record."""
    k = DemoKernel(cfg, profile)
    eng = k.engine
    for p in range(cfg.procs):
        for j in range(cfg.threads):
            rng = random.Random(f"{cfg.seed}:{p}:{j}")
            t = eng.spawn(
                f"p{p}t{j}",
                lambda t, p=p, rng=rng: _worker(k, cfg, p, rng, t),
            )
            k.asid_of[t.tid] = 2 * p + 2
    eng.run()
    eng.finish()
    cpus = [{"cpu": c.index, **c.times(), "switches": c.switches} for c in eng.cpus]
    totals = {key: sum(c[key] for c in cpus) for key in cpus[0] if key.endswith("_ns")}
    return {
        "config": asdict(cfg),
        "makespan_ns": eng.now,
        "cpu": totals,
        "cpus": cpus,
        "locks": {"kernel_lock": k.kernel_lock.stats.as_dict()},
        "tlb": k.machine.stats.as_dict(),
        "events": eng.events,
        "ops": eng.ops,
    }
