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
    """CPUs' TLBs and each CPU's MMU state, plus the cost profile.

    Three per-CPU lists, kept by ``vm/pmap`` (docs/model.md, "Per-CPU MMU state"):

    - ``ttbr0[cpu]``: the user pmap whose page tables the MMU can walk, so a TLB fill
      (even a speculative one) can happen: arm64 TTBR0 on the pmap's tables (None on
      the kernel's empty table), amd64 the pmap in %cr3 (None for the kernel's).
    - ``asid[cpu]``: the user pmap whose address-space tag is current, so its cached
      translations can be used: arm64 the ASID ``cpu_setttb`` writes into TTBR1 (it
      stays when TTBR0 goes to the empty table), amd64 the PCID of the loaded %cr3
      (always the same pmap as ``ttbr0``).
    - ``curpm[cpu]``: what the software believes: amd64 ``ci_proc_pmap`` (the shootdown
      targets), arm64 ``ci_curpm`` (set by ``pmap_setttb``, the same pmap as ``asid``).

    ``left[cpu]`` names the pmap the thread on that CPU gave up for good
    (``pmap_deactivate`` in exit1) while the MMU keeps it until the next switch: the
    exit window of design.md invariant 8.
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
        self.ttbr0: list[Any] = [None] * ncpu
        self.asid: list[Any] = [None] * ncpu
        self.left: list[Any] = [None] * ncpu

    def loaded_on(self, pm: Any) -> list[int]:
        """CPUs where ``pm`` is loaded as the hardware sees it: its tables walkable or
        its tag current (design.md invariant 8)."""
        return [
            c
            for c in range(self.ncpu)
            if self.ttbr0[c] is pm or self.asid[c] is pm or self.curpm[c] is pm
        ]

    def mmu_state(self) -> tuple[tuple[int, int, int, int], ...]:
        """Per CPU, the tags of (ttbr0, asid, curpm, left), 0 for none: for state
        hashing."""

        def tag(pm: Any) -> int:
            return 0 if pm is None else pm.tag

        return tuple(
            (tag(self.ttbr0[c]), tag(self.asid[c]), tag(self.curpm[c]), tag(self.left[c]))
            for c in range(self.ncpu)
        )

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
