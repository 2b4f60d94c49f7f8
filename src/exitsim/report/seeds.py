"""Results over several seeds: runs grouped by their config less the seed, each figure
as a mean with its 95% interval (Student's t, ``claims.interval``), and a design's
ratio to a baseline paired by seed (the same seed draws the same workload for both)
as the geometric mean of the per-seed ratios with its 95% interval
(``claims.ratio_interval``). The compare tables, the plots and the HTML report read
seeds through this module; it only computes, it formats nothing but seed lists."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from exitsim.report.claims import interval, ratio, ratio_interval

Result = dict[str, Any]
#: How to read a figure from a Result.
Reader = Callable[[Result], float]


def config_key(cfg: Mapping[str, Any]) -> str:
    """A config less its seed, as a key: runs that differ only in the seed share it."""
    return json.dumps({k: v for k, v in cfg.items() if k != "seed"}, sort_keys=True)


@dataclass(frozen=True, slots=True)
class Runs:
    """One config's runs, by seed in the order given; ``config`` is the first run's."""

    config: dict[str, Any]
    by_seed: dict[int, Result]

    @property
    def design(self) -> str:
        return str(self.config["policy"])

    @property
    def results(self) -> list[Result]:
        return list(self.by_seed.values())

    @property
    def seeds(self) -> list[int]:
        return list(self.by_seed)


def group_runs(results: Sequence[Result]) -> list[Runs]:
    """The results grouped by config less the seed, groups in the order first seen."""
    groups: dict[str, Runs] = {}
    for r in results:
        key = config_key(r["config"])
        if key not in groups:
            groups[key] = Runs(r["config"], {})
        groups[key].by_seed[r["config"]["seed"]] = r
    return list(groups.values())


def seed_count(results: Sequence[Result]) -> int:
    """The most seeds any config ran with (1 for a run or a one-seed comparison)."""
    return max((len(g.by_seed) for g in group_runs(results)), default=1)


def several_seeds(results: Result | Sequence[Result]) -> bool:
    """Whether some config of ``results`` ran with more than one seed."""
    return not isinstance(results, dict) and seed_count(results) > 1


def common_seeds(results: Sequence[Result]) -> list[int] | None:
    """The seeds every config ran with, sorted, when all ran the same ones; else None."""
    sets = {tuple(sorted(g.by_seed)) for g in group_runs(results)}
    return list(sets.pop()) if len(sets) == 1 else None


def seeds_text(seeds: Sequence[int]) -> str:
    """Seeds as ``--seeds`` takes them: ``0..4`` when consecutive, else ``3,5,9``
    (one seed ``7..7``, as a lone number would mean seeds 0..6)."""
    s = sorted(seeds)
    if s and s == list(range(s[0], s[-1] + 1)):
        return f"{s[0]}..{s[-1]}"
    return ",".join(map(str, s))


@dataclass(frozen=True, slots=True)
class Estimate:
    """A figure over ``n`` seeds: its mean and 95% interval ``lo``..``hi``."""

    mean: float
    lo: float
    hi: float
    n: int

    @property
    def half(self) -> float:
        """Half the interval's width (Student's t interval is symmetric)."""
        return (self.hi - self.lo) / 2


def estimate(values: Sequence[float]) -> Estimate:
    """The mean of ``values`` and its 95% interval (one value has none)."""
    mean, lo, hi = interval(values)
    return Estimate(mean, lo, hi, len(values))


def mean_of(runs: Runs, read: Reader) -> Estimate:
    """A figure over a config's seeds."""
    return estimate([read(r) for r in runs.results])


def paired_ratios(runs: Runs, base: Runs, read: Reader) -> list[float]:
    """``read(run) / read(base's run of the same seed)`` per seed both have, in the
    order of ``runs`` (``claims.ratio``: 1 for 0/0, infinity for x/0)."""
    return [
        ratio(read(r), read(base.by_seed[s])) for s, r in runs.by_seed.items() if s in base.by_seed
    ]


def paired_ratio(runs: Runs, base: Runs, read: Reader) -> Estimate | None:
    """The ratio to ``base`` paired by seed: the geometric mean of the per-seed ratios
    and its 95% interval; None when they share no seed."""
    qs = paired_ratios(runs, base, read)
    if not qs:
        return None
    mean, lo, hi = ratio_interval(qs)
    return Estimate(mean, lo, hi, len(qs))
