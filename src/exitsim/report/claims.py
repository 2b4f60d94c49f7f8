"""The claims of the uvm_purge thread, checked over a matrix of runs.

A claim compares a design with a baseline on one figure of the Result, seed by seed
(the same seed gives both the same workload draw), and says which way the figure
moves: up (ratio above 1), down (below 1), or not at all (identical). Over the seeds
the ratio has a geometric mean and a 95% interval (Student's t on the logs); the
claim *holds* where the
whole interval is on its side of 1, *fails* where the whole interval is on the other
side, and is *not shown* where the interval straddles 1: the model cannot tell.

Every claim is checked for each arch it concerns, at 4, 8, 16 and 32 CPUs, against
every reading of the pre-change reaper (``BASELINES``), and, where it hangs on an
assumed cost, at each value of that cost (``Assumption``). ``exitsim claims`` prints
the table; docs/claims.md holds it with the command that made it, and
tests/test_claims.py checks that the model still gives every verdict there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from exitsim.machine.costs import builtin_profile
from exitsim.sim import SimConfig

#: The readings of the reaper just before the change (docs/designs.md).
BASELINES: tuple[str, ...] = ("reaper", "reaper-locked", "reaper-fifo")
CPUS: tuple[int, ...] = (4, 8, 16, 32)
SEEDS: tuple[int, ...] = (0, 1, 2, 3, 4)

#: The built-in build at its defaults: what ``time make`` would be asked about.
BUILD: dict[str, Any] = {}
#: An exit-heavy build: short compiles, so the run is mostly fork, exec and exit.
EXIT_HEAVY: dict[str, Any] = {"jobs": 64, "cc1_user_ms": 1, "as_user_ms": 0.5}

#: Student's t, 0.975 quantile, by degrees of freedom (a standard table).
_T975 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    15: 2.131,
    20: 2.086,
    30: 2.042,
}

UP = "up"
DOWN = "down"
SAME = "same"


@dataclass(frozen=True, slots=True)
class Assumption:
    """A reading of the costs a claim may hang on: a label and the overrides as
    multiples of the profile's values."""

    label: str
    scale: dict[str, float] = field(default_factory=dict)

    def overrides(self, arch: str) -> dict[str, int]:
        costs = builtin_profile(arch).costs
        return {k: round(getattr(costs, k) * f) for k, f in self.scale.items()}


AS_PROFILED = Assumption("profile")
#: cost-anchors row 10 says broadcast TLBI latency grows "almost linearly" with
#: concurrent senders, with no slope; the profile assumes one sender's cost per sender.
#: The single-sender cost itself is published between 0.35 us (the profile's) and
#: 1.46 us (arm64.toml gives both sources): the last reading takes the high one, with
#: the slope and the receivers' stall scaled alike.
#: The receivers' stall is a lower bound derived from one measurement (arm64.toml).
TLBI_SLOPE = (
    Assumption("tlbi slope x0", {"tlbi_per_sender_ns": 0.0}),
    Assumption("tlbi slope x0.25", {"tlbi_per_sender_ns": 0.25}),
    AS_PROFILED,
    Assumption("no receiver stall", {"tlbi_receiver_ns": 0.0}),
    Assumption(
        "tlbi 1.46 us",
        {"tlbi_ns": 4.16, "tlbi_per_sender_ns": 4.16, "tlbi_receiver_ns": 4.16},
    ),
)


def _get(r: dict[str, Any], path: str) -> float:
    v: Any = r
    for key in path.split("."):
        v = v[key]
    return float(v)


def _figure(path: str) -> Callable[[dict[str, Any]], float]:
    return lambda r: _get(r, path)


def _machine_sys(r: dict[str, Any]) -> float:
    m = r["machine"]
    return float(m["sys_ns"] + m["spin_ns"])


def _page_locks_wait(r: dict[str, Any]) -> float:
    locks = r["locks"]
    return float(sum(locks[n]["wait_ns"] for n in ("fpageqlock", "pageqlock") if n in locks))


def same_work(r: dict[str, Any]) -> dict[str, Any]:
    """Not a figure: the part of a Result that two designs doing the same work
    share (everything but the config, which names the design)."""
    return {k: v for k, v in r.items() if k != "config"}


@dataclass(frozen=True, slots=True)
class Claim:
    """One claim: who said it, what figure it is about and which way it moves."""

    key: str
    says: str
    figure: str
    read: Callable[[dict[str, Any]], Any]
    design: str
    baseline: str  # a design name, or "*" for every reading in BASELINES
    direction: str
    workload: dict[str, Any]
    arches: tuple[str, ...] = ("amd64", "arm64")
    assumptions: tuple[Assumption, ...] = (AS_PROFILED,)

    def baselines(self) -> tuple[str, ...]:
        return BASELINES if self.baseline == "*" else (self.baseline,)


SEED_MAIL = "seed mail (mpi, 12 May 2025)"

CLAIMS: tuple[Claim, ...] = (
    Claim(
        "sys-wait4",
        f'{SEED_MAIL}: "their %sys time will increase", as wait4 and time(1) report it',
        "processes.wait4_sys_ns_total",
        _figure("processes.wait4_sys_ns_total"),
        "purge+pmap_purge",
        "*",
        UP,
        BUILD,
    ),
    Claim(
        "sys-threads",
        f"{SEED_MAIL}: the same, as the processes' own thread CPU time",
        "processes.thread_sys_ns_total",
        _figure("processes.thread_sys_ns_total"),
        "purge+pmap_purge",
        "*",
        UP,
        BUILD,
    ),
    Claim(
        "sys-machine",
        f"{SEED_MAIL}: the same, as the machine's sys + spin (top, systat)",
        "machine.sys_ns + machine.spin_ns",
        _machine_sys,
        "purge+pmap_purge",
        "*",
        UP,
        BUILD,
    ),
    Claim(
        "parallel-wall",
        f'{SEED_MAIL}: uvm_purge "executed in parallel": an exit-heavy build ends sooner',
        "makespan_ns",
        _figure("makespan_ns"),
        "purge+pmap_purge",
        "*",
        DOWN,
        EXIT_HEAVY,
    ),
    Claim(
        "parallel-latency",
        f"{SEED_MAIL}: the parent learns of an exit sooner (exit1 to wait4, p50)",
        "processes.exit_latency_ns_p50",
        _figure("processes.exit_latency_ns_p50"),
        "purge+pmap_purge",
        "*",
        DOWN,
        EXIT_HEAVY,
    ),
    Claim(
        "reaper-unloaded",
        'Claudio Jeker, Oct 2025: "the reaper does a lot less work now"',
        "reaper.busy_ns",
        _figure("reaper.busy_ns"),
        "purge+pmap_purge",
        "*",
        DOWN,
        EXIT_HEAVY,
    ),
    Claim(
        "release-all",
        f"{SEED_MAIL}: kernel_lock tokens must be released for the purge to run in "
        "parallel (purge-locked waits longer for the kernel lock than purge)",
        "locks.kernel_lock.wait_ns",
        _figure("locks.kernel_lock.wait_ns"),
        "purge-locked",
        "purge",
        UP,
        EXIT_HEAVY,
    ),
    Claim(
        "arm64-tlbi",
        "kettenis, same day: the purge as posted disables the arm64 TLB-flush "
        "optimisation (more broadcast TLBIs than with pmap_purge)",
        "tlb.broadcasts",
        _figure("tlb.broadcasts"),
        "purge",
        "purge+pmap_purge",
        UP,
        EXIT_HEAVY,
        arches=("arm64",),
    ),
    Claim(
        "arm64-purge-wall",
        "kettenis's objection in time: on arm64 the purge as posted makes an "
        "exit-heavy build slower than the reaper did",
        "makespan_ns",
        _figure("makespan_ns"),
        "purge",
        "*",
        UP,
        EXIT_HEAVY,
        arches=("arm64",),
        assumptions=TLBI_SLOPE,
    ),
    Claim(
        "amd64-same",
        "pmap_purge exists only on arm64 (and sparc64): on amd64 purge and "
        "purge+pmap_purge do identical work",
        "the whole Result but its config",
        same_work,
        "purge",
        "purge+pmap_purge",
        SAME,
        EXIT_HEAVY,
        arches=("amd64",),
    ),
    Claim(
        "page-locks",
        "Theo de Raadt, 3 May 2025: parallel teardown trades the reaper for contention "
        "on the page allocator (fpageqlock and pageqlock wait grow)",
        "locks.fpageqlock.wait_ns + locks.pageqlock.wait_ns",
        _page_locks_wait,
        "purge+pmap_purge",
        "*",
        UP,
        EXIT_HEAVY,
    ),
)


@dataclass(frozen=True, slots=True)
class Cell:
    """One line of the table: a claim on one arch, CPU count, baseline reading and
    cost assumption, over the seeds."""

    claim: str
    arch: str
    cpus: int
    baseline: str
    assumption: str
    seeds: int
    mean: float
    lo: float
    hi: float
    verdict: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "claim": self.claim,
            "arch": self.arch,
            "cpus": self.cpus,
            "baseline": self.baseline,
            "assumption": self.assumption,
            "seeds": self.seeds,
            "mean": round(self.mean, 4),
            "lo": round(self.lo, 4),
            "hi": round(self.hi, 4),
            "verdict": self.verdict,
        }


def run_config(
    design: str,
    arch: str,
    cpus: int,
    seed: int,
    workload: Mapping[str, Any],
    costs: Mapping[str, int],
) -> SimConfig:
    """One run of a claim's cell: a design on the built-in workload with its
    parameters, cost overrides in ns."""
    return SimConfig(
        policy=design,
        arch=arch,
        cpus=cpus,
        seed=seed,
        workload_params=dict(workload),
        cost_overrides=dict(costs),
    )


def config(
    design: str, arch: str, cpus: int, seed: int, workload: dict[str, Any], a: Assumption
) -> SimConfig:
    return run_config(design, arch, cpus, seed, workload, a.overrides(arch))


def config_key(cfg: SimConfig) -> str:
    return repr(sorted(cfg.as_dict().items()))


def needed_configs(
    claims: Sequence[Claim] = CLAIMS,
    cpus: Sequence[int] = CPUS,
    seeds: Sequence[int] = SEEDS,
) -> list[SimConfig]:
    """Every run the claims need, each once, in a fixed order."""
    out: dict[str, SimConfig] = {}
    for c in claims:
        for arch in c.arches:
            for n in cpus:
                for a in c.assumptions:
                    for base in c.baselines():
                        for s in seeds:
                            for d in (c.design, base):
                                cfg = config(d, arch, n, s, c.workload, a)
                                out.setdefault(config_key(cfg), cfg)
    return list(out.values())


def interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and 95% interval of the mean (Student's t); one value has none."""
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return mean, mean, mean
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    df = n - 1
    t = _T975[max(d for d in _T975 if d <= df)]
    half = t * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def ratio_interval(ratios: Sequence[float]) -> tuple[float, float, float]:
    """Geometric mean of per-seed ratios and its 95% interval, taken on their logs
    (a ratio of 2 and one of 0.5 are equally far from 1). A ratio of 0 or infinity
    (a figure that is 0 on one side) is kept out of the logs and decides alone."""
    if any(r <= 0 or math.isinf(r) for r in ratios):
        lo, hi = min(ratios), max(ratios)
        return (lo if hi <= 1 else hi), lo, hi
    mean, lo, hi = interval([math.log(r) for r in ratios])
    return math.exp(mean), math.exp(lo), math.exp(hi)


def verdict(direction: str, lo: float, hi: float) -> str:
    if direction == UP:
        return "holds" if lo > 1 else "fails" if hi < 1 else "not shown"
    if direction == DOWN:
        return "holds" if hi < 1 else "fails" if lo > 1 else "not shown"
    return "holds" if lo == hi == 1 else "fails"


def ratio(a: float, b: float) -> float:
    """``a / b``; 1 for 0/0, infinity for a/0."""
    if b == 0:
        return 1.0 if a == 0 else math.inf
    return a / b


def evaluate(
    results: dict[str, dict[str, Any]],
    claims: Sequence[Claim] = CLAIMS,
    cpus: Sequence[int] = CPUS,
    seeds: Sequence[int] = SEEDS,
) -> list[Cell]:
    """The table from results keyed as ``needed_configs`` makes them."""
    cells: list[Cell] = []
    for c in claims:
        for arch in c.arches:
            for n in cpus:
                for a in c.assumptions:
                    for base in c.baselines():
                        ratios = []
                        for s in seeds:
                            mine = results[config_key(config(c.design, arch, n, s, c.workload, a))]
                            theirs = results[config_key(config(base, arch, n, s, c.workload, a))]
                            if c.direction == SAME:
                                ratios.append(1.0 if c.read(mine) == c.read(theirs) else 0.0)
                            else:
                                ratios.append(ratio(c.read(mine), c.read(theirs)))
                        if c.direction == SAME:
                            mean = lo = hi = min(ratios)
                        else:
                            mean, lo, hi = ratio_interval(ratios)
                        # The verdict from the exact interval; the cell keeps four
                        # decimals, as docs/claims.json records them.
                        cells.append(
                            Cell(
                                c.key,
                                arch,
                                n,
                                base,
                                a.label,
                                len(seeds),
                                round(mean, 4),
                                round(lo, 4),
                                round(hi, 4),
                                verdict(c.direction, lo, hi),
                            )
                        )
    return cells


def run_all(
    configs: Iterable[SimConfig], mapper: Callable[..., Iterable[dict[str, Any]]] = map
) -> dict[str, dict[str, Any]]:
    """Simulate every config (``mapper`` may be a pool's map) and key the results."""
    from exitsim.sim import simulate

    cfgs = list(configs)
    return {config_key(cfg): r for cfg, r in zip(cfgs, mapper(simulate, cfgs), strict=True)}


def markdown(cells: Sequence[Cell], claims: Sequence[Claim] = CLAIMS) -> str:
    """The table as docs/claims.md shows it: a section per claim."""
    out: list[str] = []
    by_key = {c.key: c for c in claims}
    for key in dict.fromkeys(c.claim for c in cells):
        cl = by_key[key]
        out.append(f"### `{key}`: {cl.design} against {cl.baseline.replace('*', 'the reaper')}")
        out.append("")
        out.append(f"{cl.says}. Figure: `{cl.figure}`, expected to go {cl.direction}.")
        out.append("")
        out.append("| arch | CPUs | baseline | costs | ratio (mean) | 95% interval | verdict |")
        out.append("|---|---|---|---|---|---|---|")
        for c in cells:
            if c.claim != key:
                continue
            if cl.direction == SAME:
                ratio, iv = ("identical" if c.mean == 1 else "differ"), "-"
            else:
                ratio, iv = f"{c.mean:.3f}", f"{c.lo:.3f} .. {c.hi:.3f}"
            out.append(
                f"| {c.arch} | {c.cpus} | {c.baseline} | {c.assumption} | {ratio} | {iv} "
                f"| {c.verdict} |"
            )
        out.append("")
    return "\n".join(out)
