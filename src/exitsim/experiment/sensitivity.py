"""Which cost parameters can flip a claim (``exitsim sensitivity``; docs/experiments.md,
"Sensitivity").

Each claim of ``report/claims.py`` is evaluated at one cell (an arch, a CPU count, one
reading of the reaper, a few seeds) at the profile's costs, then with one cost key at
a time moved to the low and to the high end of its range (one-at-a-time, OAT), and,
with ``--lhs N``, at N Latin-hypercube samples that move every chosen key at once.
A key "flips" a claim when its verdict at either end differs from the profile's.

The range rule is ``SCALES``, by what backs the profile's value (``source_kind``);
the default keys are ``SUSPECTS`` and every key the profile marks an assumption.
Everything here is a pure function of the profile and the stored Results, except
``probe``, which runs a profile config and notes which cost keys it reads: a key no
profile run of an arch reads is "not charged" there, and its OAT ends, which would
give the profile's Results exactly, are not run.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from exitsim.experiment.store import Store, config_key, model_digest, result_text
from exitsim.machine.costs import COST_KEYS, CostProfile, builtin_profile, source_kind
from exitsim.report.claims import (
    BASELINES,
    DOWN,
    SAME,
    UP,
    Claim,
    ratio,
    ratio_interval,
    run_config,
    same_work,
    verdict,
)
from exitsim.sim import SimConfig

#: The range of a key, as factors of its profile value, by what backs the value: an
#: assumption is off by a factor of 4 either way before anyone would notice, a number
#: from a publication or measured here by a factor of 2 (another machine, another
#: kernel). The one rule; docs/experiments.md says why.
SCALES: dict[str, tuple[float, float]] = {
    "assumption": (0.25, 4.0),
    "sourced": (0.5, 2.0),
    "measured": (0.5, 2.0),
    # A fitted value absorbs whatever the model leaves out (docs/calibration.md): as
    # uncertain as an assumption.
    "fitted": (0.25, 4.0),
}

#: The first suspects, in the default set whatever their source. The arm64 broadcast
#: TLBI costs (kettenis's objection rests on them); and what decides how long the
#: kernel lock is held: its hand-off between CPUs, the demo's locked section, and the
#: biggest bodies a build runs under it (fork1 and execve, open with its lookup, and
#: exit1's fdfree, a closef per open file).
SUSPECTS: tuple[str, ...] = (
    "tlbi_ns",
    "tlbi_per_sender_ns",
    "tlbi_receiver_ns",
    "lock_handoff_ns",
    "kernel_lock_section_ns",
    "fork_ns",
    "exec_ns",
    "namei_ns",
    "open_ns",
    "fdfree_file_ns",
)

#: The cell a claim is evaluated at unless the command says otherwise.
DEFAULT_CPUS = 32
DEFAULT_SEEDS = 3
DEFAULT_BASELINE = "reaper"

LOW = "low"
HIGH = "high"
ENDS = (LOW, HIGH)


# -- ranges ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Range:
    """A key's range on one arch: its profile value, the ends as factors and as the
    whole numbers run."""

    key: str
    kind: str
    profile: int
    low_factor: float
    high_factor: float

    @property
    def low(self) -> int:
        return self.value(self.profile * self.low_factor)

    @property
    def high(self) -> int:
        return self.value(self.profile * self.high_factor)

    def end(self, which: str) -> int:
        return self.low if which == LOW else self.high

    def value(self, x: float) -> int:
        """``x`` ns as a cost value: a whole number, the quantum at least 1."""
        v = round(x)
        return max(1, v) if self.key == "quantum_ns" else v


def param_range(profile: CostProfile, key: str) -> Range | None:
    """``key``'s range by ``SCALES``; None when its profile value is 0, which no
    factor moves."""
    value = getattr(profile.costs, key)
    if value == 0:
        return None
    kind = source_kind(profile.sources[key])
    lo, hi = SCALES[kind]
    return Range(key, kind, value, lo, hi)


def default_params(profile: CostProfile) -> list[str]:
    """``SUSPECTS`` and every key the profile marks an assumption or fitted, in
    ``COST_KEYS`` order."""
    return [
        k
        for k in COST_KEYS
        if k in SUSPECTS or source_kind(profile.sources[k]) in ("assumption", "fitted")
    ]


def parse_params(text: str) -> tuple[str, ...] | str:
    """``--params``: ``default``, ``all``, or cost keys separated by commas, each once.
    ValueError in one line otherwise."""
    t = text.strip()
    if t in ("default", "all"):
        return t
    keys = [x.strip() for x in text.split(",")]
    if not t or any(not k for k in keys):
        raise ValueError(f"--params: an empty entry in {text!r}")
    for k in keys:
        if k not in COST_KEYS:
            raise ValueError(f"--params: unknown cost key {k!r} (exitsim costs)")
    dup = next((k for i, k in enumerate(keys) if k in keys[:i]), None)
    if dup is not None:
        raise ValueError(f"--params: {dup!r} is given twice")
    return tuple(keys)


def ranges(
    profile: CostProfile, which: tuple[str, ...] | str
) -> tuple[list[Range], dict[str, str]]:
    """The ranges of the chosen keys (``parse_params``) on the profile's arch, in
    ``COST_KEYS`` order, and the chosen keys skipped, with why."""
    if which == "default":
        keys = default_params(profile)
    elif which == "all":
        keys = list(COST_KEYS)
    else:
        keys = [k for k in COST_KEYS if k in which]
    out: list[Range] = []
    skipped: dict[str, str] = {}
    for k in keys:
        r = param_range(profile, k)
        if r is None:
            skipped[k] = f"0 in the {profile.arch} profile: no factor moves it"
        else:
            out.append(r)
    return out, skipped


# -- what runs ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """A claim at one cell: an arch and the reading of the reaper it is checked
    against (the claim's own baseline unless that is every reading)."""

    claim: Claim
    arch: str
    baseline: str


def targets(
    claims: Sequence[Claim], arches: Sequence[str] | None, baseline: str = DEFAULT_BASELINE
) -> list[Target]:
    """Each claim on each of its arches (those of ``arches`` only, when given)."""
    if baseline not in BASELINES:
        raise ValueError(f"baseline: one of {', '.join(BASELINES)} (got {baseline!r})")
    out = []
    for c in claims:
        base = baseline if c.baseline == "*" else c.baseline
        for a in c.arches:
            if arches is None or a in arches:
                out.append(Target(c, a, base))
    return out


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything a sensitivity run needs, fixed before any run."""

    targets: tuple[Target, ...]
    cpus: int
    seeds: tuple[int, ...]
    #: Workload parameters over the claims' own (``--param``); empty for the claims.
    workload: dict[str, Any]
    ranges: dict[str, tuple[Range, ...]]  # by arch
    skipped: dict[str, dict[str, str]]  # by arch: key -> why
    lhs: int = 0
    lhs_seed: int = 0

    def arches(self) -> list[str]:
        return list(dict.fromkeys(t.arch for t in self.targets))

    def workload_of(self, t: Target) -> dict[str, Any]:
        return dict(t.claim.workload) | self.workload

    def designs(self, arch: str) -> list[tuple[str, dict[str, Any]]]:
        """(design, workload) of every run the arch's targets need, each once."""
        out: dict[str, tuple[str, dict[str, Any]]] = {}
        for t in self.targets:
            if t.arch == arch:
                w = self.workload_of(t)
                for d in (t.claim.design, t.baseline):
                    out.setdefault(json.dumps([d, w], sort_keys=True), (d, w))
        return list(out.values())


#: One run of a claim's cell (``report.claims.run_config``).
config = run_config


def profile_configs(plan: Plan) -> list[SimConfig]:
    """The runs at the profile's costs: every design of every arch, every seed."""
    return [
        config(d, a, plan.cpus, s, w, {})
        for a in plan.arches()
        for d, w in plan.designs(a)
        for s in plan.seeds
    ]


def oat_costs(r: Range, end: str) -> dict[str, int]:
    """The overrides of one OAT end: the key at that end, every other at the profile."""
    return {r.key: r.end(end)}


def oat_configs(plan: Plan, charged: Mapping[str, frozenset[str]]) -> list[SimConfig]:
    """The OAT runs: each charged key of each arch (``charged``, by arch) at each end,
    every design, every seed. A key not charged is not run: its ends give the
    profile's Results."""
    out = []
    for a in plan.arches():
        for r in plan.ranges[a]:
            if r.key not in charged[a]:
                continue
            for end in ENDS:
                for d, w in plan.designs(a):
                    for s in plan.seeds:
                        out.append(config(d, a, plan.cpus, s, w, oat_costs(r, end)))
    return out


def lhs_unit(n: int, k: int, seed: int | Sequence[int]) -> np.ndarray:
    """An ``n`` x ``k`` Latin hypercube on [0, 1): in each column every one of the
    ``n`` strata ``[i/n, (i+1)/n)`` holds exactly one point, at a uniform place in
    it. Deterministic by ``seed``."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, k))
    for j in range(k):
        out[:, j] = (rng.permutation(n) + rng.random(n)) / n
    return out


def lhs_values(rs: Sequence[Range], n: int, seed: int | Sequence[int]) -> np.ndarray:
    """``n`` samples of the keys ``rs``, stratified in log space over each range
    (``n`` x ``len(rs)``, ns before rounding)."""
    u = lhs_unit(n, len(rs), seed)
    lo = np.log([r.profile * r.low_factor for r in rs])
    hi = np.log([r.profile * r.high_factor for r in rs])
    return np.exp(lo + u * (hi - lo))


def lhs_costs(plan: Plan, arch: str) -> list[dict[str, int]]:
    """The overrides of the arch's LHS samples, every chosen key in each. Each arch
    draws from a stream of its own (``lhs_seed`` and a checksum of its name), the
    same whichever other arches run."""
    rs = plan.ranges[arch]
    if not plan.lhs or not rs:
        return []
    vals = lhs_values(rs, plan.lhs, [plan.lhs_seed, zlib.crc32(arch.encode())])
    return [{r.key: r.value(float(vals[i, j])) for j, r in enumerate(rs)} for i in range(plan.lhs)]


def lhs_configs(plan: Plan) -> list[SimConfig]:
    """Sample ``i`` runs every design of the arch once, with workload seed ``i``
    (paired: design and baseline see the same draw)."""
    out = []
    for a in plan.arches():
        for i, costs in enumerate(lhs_costs(plan, a)):
            for d, w in plan.designs(a):
                out.append(config(d, a, plan.cpus, i, w, costs))
    return out


# -- which keys a run reads -----------------------------------------------------------


def probe(cfg: SimConfig) -> tuple[str, str, tuple[str, ...], str]:
    """Run ``cfg`` as ``simulate`` does, noting which cost keys the run reads:
    (store key, Result text, keys read, model digest), as ``experiment.runner.run_one``
    gives with the keys. A key never read cannot change the run."""
    from exitsim.sim import simulate

    seen: set[str] = set()
    result = simulate(cfg, costs_read=seen)
    keys = tuple(k for k in COST_KEYS if k in seen)
    return config_key(cfg), result_text(result), keys, model_digest()


#: Where the store keeps what a profile run read (``probe``), by its key.
READS_META = "sensitivity.reads:"


# -- evaluation -----------------------------------------------------------------------


def figures(tg: Sequence[Target], result: dict[str, Any]) -> dict[str, Any]:
    """What the targets' claims read from one Result, by claim key: a number, or for
    a claim of identical work a digest of the Result but its config."""
    import hashlib

    out: dict[str, Any] = {}
    for t in tg:
        c = t.claim
        if c.key in out:
            continue
        if c.direction == SAME:
            text = json.dumps(same_work(result), sort_keys=True)
            out[c.key] = hashlib.sha256(text.encode()).hexdigest()
        else:
            out[c.key] = float(c.read(result))
    return out


#: Figures by store key (what ``figures`` gives for each Result).
Figures = Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class Ratio:
    """A claim's ratio over seeds: geometric mean, 95% interval, verdict (from the
    exact interval; the numbers rounded as docs/claims.json keeps them)."""

    mean: float
    lo: float
    hi: float
    verdict: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "ratio": _num(self.mean),
            "lo": _num(self.lo),
            "hi": _num(self.hi),
            "verdict": self.verdict,
        }


def _num(x: float, digits: int = 4) -> float | str:
    """A number for the JSON record: rounded, or "inf"/"-inf"/"nan" as text."""
    return round(x, digits) if math.isfinite(x) else str(x)


def pair_ratio(claim: Claim, mine: Any, theirs: Any) -> float:
    """One seed's ratio: the design's figure over the baseline's; for a claim of
    identical work 1 when they are, else 0."""
    if claim.direction == SAME:
        return 1.0 if mine == theirs else 0.0
    return ratio(mine, theirs)


def cell_ratio(claim: Claim, ratios: Sequence[float]) -> Ratio:
    """As ``report.claims.evaluate`` makes a cell of per-seed ratios."""
    if claim.direction == SAME:
        mean = lo = hi = min(ratios)
    else:
        mean, lo, hi = ratio_interval(ratios)
    return Ratio(round(mean, 4), round(lo, 4), round(hi, 4), verdict(claim.direction, lo, hi))


def target_ratios(
    plan: Plan, t: Target, costs: Mapping[str, int], figs: Figures, seeds: Sequence[int]
) -> list[float]:
    """The per-seed ratios of a target with the given overrides."""
    w = plan.workload_of(t)
    out = []
    for s in seeds:
        mine = figs[config_key(config(t.claim.design, t.arch, plan.cpus, s, w, costs))]
        theirs = figs[config_key(config(t.baseline, t.arch, plan.cpus, s, w, costs))]
        out.append(pair_ratio(t.claim, mine[t.claim.key], theirs[t.claim.key]))
    return out


def swing(a: Ratio, b: Ratio) -> float:
    """How far the ends lie apart: ``|ln b - ln a|`` of the mean ratios; infinite
    when they differ and one is 0 or infinite (a claim of identical work whose ends
    disagree)."""
    if a.mean == b.mean:
        return 0.0
    if a.mean > 0 and b.mean > 0 and math.isfinite(a.mean) and math.isfinite(b.mean):
        return abs(math.log(b.mean) - math.log(a.mean))
    return math.inf


@dataclass(frozen=True, slots=True)
class Effect:
    """One key's OAT result for one target."""

    range: Range
    charged: bool
    low: Ratio
    high: Ratio
    swing: float
    flips: bool
    #: The profile and the two ends give both definite verdicts, holds and fails:
    #: more than a move to or from an interval that cannot tell ("not shown").
    reverses: bool


@dataclass(frozen=True, slots=True)
class TargetResult:
    """One target's sensitivity: its verdict at the profile, each key's effect
    (largest swing first), and its LHS summary."""

    target: Target
    profile: Ratio
    effects: tuple[Effect, ...]
    lhs: dict[str, Any] | None = field(default=None)

    def flipped_by(self) -> list[str]:
        return [e.range.key for e in self.effects if e.flips]

    def reversed_by(self) -> list[str]:
        return [e.range.key for e in self.effects if e.reverses]

    def summary(self) -> str:
        by, rev = self.flipped_by(), self.reversed_by()
        head = f"{self.profile.verdict} at the profile"
        if by:
            tail = f" (both holds and fails with: {', '.join(rev)})" if rev else ""
            return f"{head}; flipped by: {', '.join(by)}{tail}"
        n = len(self.effects)
        return f"{head}; not flipped by any of {n} parameter{'s' * (n != 1)} over their ranges"


def evaluate_oat(
    plan: Plan, t: Target, figs: Figures, charged: Mapping[str, frozenset[str]]
) -> TargetResult:
    """A target's verdict at the profile and with each key at each end. A key not
    charged on the arch takes the profile's Results."""
    prof = cell_ratio(t.claim, target_ratios(plan, t, {}, figs, plan.seeds))
    effects = []
    for r in plan.ranges[t.arch]:
        on = r.key in charged[t.arch]
        ends = []
        for end in ENDS:
            costs = oat_costs(r, end) if on else {}
            ends.append(cell_ratio(t.claim, target_ratios(plan, t, costs, figs, plan.seeds)))
        lo, hi = ends
        flips = lo.verdict != prof.verdict or hi.verdict != prof.verdict
        rev = {"holds", "fails"} <= {prof.verdict, lo.verdict, hi.verdict}
        effects.append(Effect(r, on, lo, hi, swing(lo, hi), flips, rev))
    order = {k: i for i, k in enumerate(COST_KEYS)}
    effects.sort(key=lambda e: (-e.swing, order[e.range.key]))
    return TargetResult(t, prof, tuple(effects))


def on_side(direction: str, r: float) -> bool:
    """Whether one ratio lies on the claim's side of 1."""
    if direction == UP:
        return r > 1
    if direction == DOWN:
        return r < 1
    return r == 1


def ranks(x: Sequence[float] | np.ndarray) -> np.ndarray:
    """Ranks from 1, ties given the mean of the ranks they share."""
    a = np.asarray(x, dtype=float)
    order = np.argsort(a, kind="mergesort")
    s = a[order]
    out = np.empty(len(a))
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        out[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float | None:
    """Spearman's rank correlation (Pearson's on the ranks); None when either side
    has no spread or there are fewer than 3 points."""
    if len(x) != len(y):
        raise ValueError("spearman: x and y differ in length")
    if len(x) < 3:
        return None
    rx, ry = ranks(x), ranks(y)
    dx, dy = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float((dx * dx).sum()) * float((dy * dy).sum()))
    if den == 0:
        return None
    return float((dx * dy).sum()) / den


def evaluate_lhs(
    plan: Plan, t: Target, figs: Figures, charged: Mapping[str, frozenset[str]]
) -> dict[str, Any] | None:
    """The share of the target's LHS samples on the claim's side of 1, and each
    key's rank correlation with the (log) ratio, strongest first. A key not charged
    moves nothing: its correlation is what chance alone gives."""
    samples = lhs_costs(plan, t.arch)
    if not samples:
        return None
    rs: list[float] = []
    for i, costs in enumerate(samples):
        rs.append(target_ratios(plan, t, costs, figs, [i])[0])
    side = sum(on_side(t.claim.direction, r) for r in rs)
    rho: list[tuple[str, float | None]] = []
    if t.claim.direction != SAME:
        for r in plan.ranges[t.arch]:
            rho.append((r.key, spearman([s[r.key] for s in samples], rs)))
    rho.sort(key=lambda kv: -abs(kv[1]) if kv[1] is not None else 1.0)
    return {
        "samples": len(samples),
        "on_side": side,
        "share": round(side / len(samples), 4),
        "spearman": [
            {
                "key": k,
                "rho": None if v is None else round(v, 4),
                "charged": k in charged[t.arch],
            }
            for k, v in rho
        ],
    }


def evaluate(
    plan: Plan, figs: Figures, charged: Mapping[str, frozenset[str]]
) -> list[TargetResult]:
    """Every target's OAT result, with its LHS summary when there are samples."""
    out = []
    for t in plan.targets:
        res = evaluate_oat(plan, t, figs, charged)
        out.append(replace(res, lhs=evaluate_lhs(plan, t, figs, charged)))
    return out


# -- the record -----------------------------------------------------------------------


def record(
    plan: Plan,
    results: Sequence[TargetResult],
    charged: Mapping[str, frozenset[str]],
    params: tuple[str, ...] | str,
    runs: int,
) -> dict[str, Any]:
    """The JSON record: settings, ranges by arch, each target's result. The same
    plan and Results give the same record."""
    arches = {}
    for a in plan.arches():
        arches[a] = {
            "params": [
                {
                    "key": r.key,
                    "kind": r.kind,
                    "profile": r.profile,
                    "low": r.low,
                    "high": r.high,
                    "charged": r.key in charged[a],
                }
                for r in plan.ranges[a]
            ],
            "skipped": dict(plan.skipped[a]),
        }
    claims = []
    for res in results:
        t, c = res.target, res.target.claim
        claims.append(
            {
                "claim": c.key,
                "arch": t.arch,
                "design": c.design,
                "baseline": t.baseline,
                "figure": c.figure,
                "direction": c.direction,
                "says": c.says,
                "profile": res.profile.as_dict(),
                "params": [
                    {
                        "key": e.range.key,
                        "low": e.range.low,
                        "high": e.range.high,
                        "charged": e.charged,
                        "at_low": e.low.as_dict(),
                        "at_high": e.high.as_dict(),
                        "swing": _num(e.swing),
                        "flips": e.flips,
                        "reverses": e.reverses,
                    }
                    for e in res.effects
                ],
                "flipped_by": res.flipped_by(),
                "reversed_by": res.reversed_by(),
                "summary": res.summary(),
                "lhs": res.lhs,
            }
        )
    return {
        "command": "sensitivity",
        "cpus": plan.cpus,
        "seeds": list(plan.seeds),
        "workload_overrides": dict(sorted(plan.workload.items())),
        "params": params if isinstance(params, str) else list(params),
        "scales": {k: list(v) for k, v in SCALES.items()},
        "lhs": {"samples": plan.lhs, "seed": plan.lhs_seed},
        "runs": runs,
        "arches": arches,
        "claims": claims,
    }


def _f(x: float | str) -> str:
    return x if isinstance(x, str) else f"{x:.3f}"


def _r(d: dict[str, Any]) -> str:
    return _f(d["ratio"])


def _iv(d: dict[str, Any]) -> str:
    """A ratio with its interval: ``1.234 (1.100..1.400)``."""
    return f"{_f(d['ratio'])} ({_f(d['lo'])}..{_f(d['hi'])})"


def tables(rec: dict[str, Any]) -> list[Any]:
    """The record as rich tables: one per claim and arch, keys by swing, the keys not
    charged named in its caption."""
    from rich.table import Table

    out = []
    for c in rec["claims"]:
        p = c["profile"]
        title = (
            f"{c['claim']} on {c['arch']}: {c['design']} against {c['baseline']}, "
            f"{c['figure']} expected {c['direction']}; profile {_r(p)} "
            f"({_f(p['lo'])} .. {_f(p['hi'])}) {p['verdict']}"
        )
        t = Table(title=title, title_justify="left")
        t.add_column("parameter")
        for col in ("low", "high", "at low (95%)", "verdict", "at high (95%)", "verdict"):
            t.add_column(col, justify="right")
        t.add_column("swing", justify="right")
        t.add_column("flips")
        idle = []
        for e in c["params"]:
            if not e["charged"]:
                idle.append(e["key"])
                continue
            lo, hi = e["at_low"], e["at_high"]
            sw = e["swing"]
            t.add_row(
                e["key"],
                f"{e['low']:,}",
                f"{e['high']:,}",
                _iv(lo),
                lo["verdict"],
                _iv(hi),
                hi["verdict"],
                sw if isinstance(sw, str) else f"{sw:.3f}",
                "reverses" if e["reverses"] else "flips" if e["flips"] else "",
            )
        notes = [c["summary"]]
        if idle:
            notes.append(f"not charged at the profile (not run, no effect): {', '.join(idle)}")
        if c["lhs"]:
            lh = c["lhs"]
            top = [
                f"{s['key']} {s['rho']:+.2f}{'' if s['charged'] else ' (not charged)'}"
                for s in lh["spearman"][:4]
                if s["rho"] is not None
            ]
            text = f"LHS: {lh['on_side']} of {lh['samples']} samples on the claim's side"
            if top:
                text += "; rank correlation with the ratio: " + ", ".join(top)
            notes.append(text)
        t.caption = "\n".join(notes)
        t.caption_justify = "left"
        out.append(t)
    return out


# -- running --------------------------------------------------------------------------


def map_probes(configs: Sequence[SimConfig]) -> Iterator[Any]:
    """``probe`` of each config, here, in turn."""
    return map(probe, configs)


def profile_todo(plan: Plan, store: Store) -> list[SimConfig]:
    """The profile runs whose Result or read keys the store lacks."""
    have = store.keys()
    return [
        c
        for c in profile_configs(plan)
        if config_key(c) not in have or store.meta(READS_META + config_key(c)) is None
    ]


def charged_keys(
    plan: Plan,
    store: Store,
    mapper: Callable[[Sequence[SimConfig]], Iterator[Any]] = map_probes,
    on_done: Callable[[], None] | None = None,
) -> dict[str, frozenset[str]]:
    """By arch, the cost keys some profile run reads. Profile runs the store lacks
    (or lacks the read keys of) are probed (``mapper``: an executor of
    ``experiment.runner`` with ``task=probe``) and stored with what they read, so a
    restart probes nothing again. SweepError when a worker's model is not this one
    (as ``experiment.runner.run_missing``)."""
    from exitsim.experiment.runner import SweepError

    todo = profile_todo(plan, store)
    by_key = {config_key(c): c for c in todo}
    here = model_digest()
    for key, text, keys, model in mapper(todo):
        if model != here or key not in by_key:
            raise SweepError(
                f"a worker runs another version of exitsim's model (digest {model}, "
                f"here {here}): was it edited during the run?"
            )
        store.put(key, by_key[key], text, model)
        store.set_meta(READS_META + key, json.dumps(list(keys)))
        if on_done is not None:
            on_done()
    out: dict[str, set[str]] = {a: set() for a in plan.arches()}
    for c in profile_configs(plan):
        text = store.meta(READS_META + config_key(c))
        assert text is not None
        out[c.arch].update(json.loads(text))
    return {a: frozenset(v) for a, v in out.items()}


def load_figures(plan: Plan, store: Store, configs: Sequence[SimConfig]) -> dict[str, Any]:
    """The figures (``figures``) of the configs' Results, read from the store one at
    a time, by store key. A Result the store lacks is an error."""
    out: dict[str, Any] = {}
    for c in configs:
        key = config_key(c)
        if key in out:
            continue
        r = store.get(key)
        if r is None:
            raise KeyError(f"the store has no Result for {c}")
        tg = [
            t for t in plan.targets if t.arch == c.arch and c.policy in (t.claim.design, t.baseline)
        ]
        out[key] = figures(tg, r)
    return out


def make_plan(
    claims: Sequence[Claim],
    arches: Sequence[str] | None = None,
    params: tuple[str, ...] | str = "default",
    cpus: int = DEFAULT_CPUS,
    seeds: int = DEFAULT_SEEDS,
    baseline: str = DEFAULT_BASELINE,
    workload: Mapping[str, Any] | None = None,
    lhs: int = 0,
    lhs_seed: int = 0,
) -> Plan:
    """The plan for the claims on their arches (``arches`` only, when given) with the
    chosen keys (``parse_params``) over their ranges. ValueError in one line for a
    plan with nothing to run."""
    if lhs < 0 or lhs in (1, 2):
        raise ValueError(f"--lhs: 0, or at least 3 samples to rank (got {lhs})")
    tg = targets(claims, arches, baseline)
    if not tg:
        raise ValueError("no claim concerns the arches asked for")
    rs: dict[str, tuple[Range, ...]] = {}
    skipped: dict[str, dict[str, str]] = {}
    for a in dict.fromkeys(t.arch for t in tg):
        got, skip = ranges(builtin_profile(a), params)
        rs[a], skipped[a] = tuple(got), skip
    if not any(rs.values()):
        keys = ", ".join(sorted({k for s in skipped.values() for k in s}))
        raise ValueError(f"--params: nothing to vary on these arches ({keys}: 0 in the profile)")
    return Plan(
        targets=tuple(tg),
        cpus=cpus,
        seeds=tuple(range(seeds)),
        workload=dict(workload or {}),
        ranges=rs,
        skipped=skipped,
        lhs=lhs,
        lhs_seed=lhs_seed,
    )


def run_count(plan: Plan, charged: Mapping[str, frozenset[str]] | None = None) -> int:
    """How many distinct runs the plan needs: at the profile, each key's two ends
    (charged keys only, when known) and the LHS samples."""
    if charged is None:
        charged = {a: frozenset(COST_KEYS) for a in plan.arches()}
    every = [*profile_configs(plan), *oat_configs(plan, charged), *lhs_configs(plan)]
    return len({config_key(c) for c in every})
