"""The simulated hardware of one run: its arch, its costs, its CPUs' TLBs."""

from __future__ import annotations

from typing import Any

from exitsim.engine.sched import EngineConfig
from exitsim.machine.arch import ARCHES, Arch, TlbStats
from exitsim.machine.costs import CostProfile, CostProfileError, builtin_profile
from exitsim.machine.tlb import Tlb, make_tlb

GRANULARITIES = ("exact", "range")
#: Physical memory of the simulated machine, in 4 KiB pages (64 GiB): enough that no
#: default workload runs short; memory pressure is not what is studied here.
DEFAULT_TOTAL_PAGES = 16 << 20


class Machine:
    """CPUs' TLBs and the per-CPU loaded address space, plus the cost profile.

    ``curpm[cpu]`` is the user pmap whose translations that CPU may use right now: amd64
    ``ci_proc_pmap``, arm64 ``ci_curpm`` with a user TTBR0. ``vm/pmap`` keeps it.
    """

    def __init__(
        self,
        arch: str,
        ncpu: int,
        granularity: str = "exact",
        profile: CostProfile | None = None,
    ) -> None:
        if arch not in ARCHES:
            raise ValueError(f"unknown arch {arch!r} (known: {', '.join(sorted(ARCHES))})")
        if ncpu < 1:
            raise ValueError(f"ncpu must be at least 1 (got {ncpu})")
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be exact or range (got {granularity!r})")
        self.profile = profile if profile is not None else builtin_profile(arch)
        if self.profile.arch != arch:
            raise CostProfileError(
                f"{self.profile.path}: profile is for {self.profile.arch}, not {arch}"
            )
        self.arch: Arch = ARCHES[arch]
        self.costs = self.profile.costs
        self.ncpu = ncpu
        self.granularity = granularity
        self.tlb: Tlb = make_tlb(granularity, ncpu)
        self.stats = TlbStats()
        self.curpm: list[Any] = [None] * ncpu

    def engine_config(self, **overrides: Any) -> EngineConfig:
        """The engine settings this machine implies (quantum, switch, lock hand-off and
        IPI costs)."""
        kw: dict[str, Any] = {
            "ncpu": self.ncpu,
            "quantum_ns": self.costs.quantum_ns,
            "ctxsw_ns": self.costs.ctxsw_ns,
            "lock_handoff_ns": self.costs.lock_handoff_ns,
            "ipi_latency_ns": self.costs.ipi_latency_ns,
        }
        kw.update(overrides)
        return EngineConfig(**kw)
