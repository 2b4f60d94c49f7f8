"""A sweep's spec: a TOML file naming the factors of a full factorial, checked as a
workload file is (one line naming the file and the field), and expanded into the
configs to run. docs/experiments.md shows the format::

    format = 1
    designs = ["reaper", "purge", "purge+pmap_purge"]   # the first is the baseline
    arches = ["arm64"]
    cpus = [8, 32]
    seeds = 5                          # 0..4; or "0..9", or [0, 3, 7]

    [workload]
    name = "build"                     # a generator; or file = "lua.toml"
    [workload.params]
    jobs = [16, 64]                    # a list is a factor, a value is fixed

    [costs]
    tlbi_per_sender_ns = ["x0", "x1"]  # "xF": F times the profile's value
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from exitsim.machine.arch import ARCHES
from exitsim.machine.costs import (
    COST_KEYS,
    CostProfileError,
    load_profile,
    resolve_profile,
)
from exitsim.machine.machine import GRANULARITIES
from exitsim.sim import SimConfig
from exitsim.workloads.spec import TREE, read_toml_file, validation_message

#: Past this many runs a spec is refused: a typo (seeds = 1000000) should not start
#: a week of runs. A bigger sweep is split into several specs.
MAX_RUNS = 1_000_000


class SweepSpecError(ValueError):
    """A bad spec: one line naming the file and the field."""


_SEEDS_RANGE = re.compile(r"^\s*(\d+)\s*\.\.\s*(\d+)\s*$")
_SCALE = re.compile(r"^x(\d+(\.\d*)?|\.\d+)$")

Scalar = int | float | str | bool


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class WorkloadPart(_Strict):
    name: str | None = None
    file: str | None = None
    params: dict[str, Scalar | list[Scalar]] = Field(default_factory=dict)


class SpecModel(_Strict):
    format: Literal[1]
    name: str = ""
    designs: Annotated[list[str], Field(min_length=1)]
    arches: Annotated[list[str], Field(min_length=1)] = ["amd64", "arm64"]
    cpus: Annotated[list[int], Field(min_length=1)] = [8]
    seeds: int | str | list[int] = 1
    granularity: str = "range"
    baseline: str | None = None
    profiles: dict[str, str] = Field(default_factory=dict)
    workload: WorkloadPart = Field(default_factory=WorkloadPart)
    costs: dict[str, int | str | list[int | str]] = Field(default_factory=dict)

    @field_validator("designs", "arches")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        dup = next((x for i, x in enumerate(v) if x in v[:i]), None)
        if dup is not None:
            raise ValueError(f"{dup!r} is given twice")
        return v

    @field_validator("arches")
    @classmethod
    def _arches(cls, v: list[str]) -> list[str]:
        bad = next((a for a in v if a not in ARCHES), None)
        if bad is not None:
            raise ValueError(f"unknown arch {bad!r} (known: {', '.join(sorted(ARCHES))})")
        return v

    @field_validator("cpus")
    @classmethod
    def _cpus(cls, v: list[int]) -> list[int]:
        bad = next((n for n in v if not 1 <= n <= 256), None)
        if bad is not None:
            raise ValueError(f"CPU counts are 1..256 (got {bad})")
        if len(set(v)) != len(v):
            raise ValueError("a CPU count is given twice")
        return v

    @field_validator("granularity")
    @classmethod
    def _granularity(cls, v: str) -> str:
        if v not in GRANULARITIES:
            raise ValueError(f"one of {', '.join(GRANULARITIES)} (got {v!r})")
        return v


#: The most seeds one list may name: more is a typo, not an experiment.
MAX_SEEDS = 10_000

_SEEDS_HOW = "give N (seeds 0..N-1), A..B or a list such as 3,5,9"


def parse_seeds(value: int | str | list[int], where: str = "seeds") -> list[int]:
    """Seeds as a spec (``seeds``) or the command line (``--seeds``) give them: ``N``
    (0..N-1), ``"A..B"`` (inclusive), a list, or ``"3,5,9"``; each seed once, at
    most ``MAX_SEEDS``. SweepSpecError in one line starting with ``where``."""

    def bad(what: str) -> SweepSpecError:
        return SweepSpecError(f"{where}: {what}")

    if isinstance(value, str):
        text = value.strip()
        m = _SEEDS_RANGE.match(text)
        if text.isdigit():
            value = int(text)
        elif m is not None:
            a, b = int(m[1]), int(m[2])
            if b < a:
                raise bad(f"{value!r} is an empty range; {_SEEDS_HOW}")
            value = list(range(a, b + 1))
        elif "," in text:
            items = [x.strip() for x in text.split(",")]
            if not all(x.isdigit() for x in items):
                raise bad(f"not a list of whole numbers: {value!r}; {_SEEDS_HOW}")
            value = [int(x) for x in items]
        else:
            raise bad(f"not understood: {value!r}; {_SEEDS_HOW}")
    if isinstance(value, int):
        if value < 1:
            raise bad(f"a count of seeds must be at least 1 (got {value})")
        value = list(range(min(value, MAX_SEEDS + 1)))
    if not value:
        raise bad("an empty list")
    if len(value) > MAX_SEEDS:
        raise bad(f"at most {MAX_SEEDS:,} seeds")
    if any(s < 0 for s in value):
        raise bad("seeds are not negative")
    if len(set(value)) != len(value):
        raise bad("a seed is given twice")
    return list(value)


@dataclass(frozen=True, slots=True)
class Sweep:
    """A checked spec: its factors, and the configs they make (``configs``)."""

    name: str
    path: str
    designs: tuple[str, ...]
    baseline: str
    arches: tuple[str, ...]
    cpus: tuple[int, ...]
    seeds: tuple[int, ...]
    granularity: str
    workload: str
    workload_params: dict[str, Any]
    #: Workload parameters that vary, each with its values.
    param_factors: dict[str, tuple[Any, ...]]
    #: Cost keys that vary or are fixed, each with its values as given (ns or "xF").
    cost_factors: dict[str, tuple[int | str, ...]]
    profiles: dict[str, str]

    def factors(self) -> dict[str, tuple[Any, ...]]:
        """Every factor with more than one level, by the name the report uses."""
        out: dict[str, tuple[Any, ...]] = {
            "policy": self.designs,
            "arch": self.arches,
            "cpus": self.cpus,
        }
        out |= {f"param.{k}": v for k, v in self.param_factors.items()}
        out |= {f"cost.{k}": v for k, v in self.cost_factors.items()}
        return {k: v for k, v in out.items() if len(v) > 1}

    def configs(self) -> list[SimConfig]:
        """Every run, in a fixed order: arch, CPUs, parameters, costs, seed, design
        (a seed's designs side by side, as compare runs them)."""
        pkeys = list(self.param_factors)
        ckeys = list(self.cost_factors)
        out: list[SimConfig] = []
        for arch in self.arches:
            for n in self.cpus:
                for pvals in itertools.product(*(self.param_factors[k] for k in pkeys)):
                    params = self.workload_params | dict(zip(pkeys, pvals, strict=True))
                    for cvals in itertools.product(*(self.cost_factors[k] for k in ckeys)):
                        costs = self._costs(arch, dict(zip(ckeys, cvals, strict=True)))
                        for seed in self.seeds:
                            for d in self.designs:
                                out.append(
                                    SimConfig(
                                        policy=d,
                                        arch=arch,
                                        cpus=n,
                                        workload=self.workload,
                                        seed=seed,
                                        granularity=self.granularity,
                                        workload_params=dict(params),
                                        cost_overrides=costs,
                                        profile=self.profiles.get(arch),
                                    )
                                )
        return out

    def _costs(self, arch: str, given: dict[str, int | str]) -> dict[str, int]:
        prof = resolve_profile(arch, self.profiles.get(arch))
        out = {}
        for k, v in given.items():
            out[k] = v if isinstance(v, int) else round(float(v[1:]) * getattr(prof.costs, k))
        return out

    def size(self) -> int:
        n = len(self.arches) * len(self.cpus) * len(self.seeds) * len(self.designs)
        for v in (*self.param_factors.values(), *self.cost_factors.values()):
            n *= len(v)
        return n


def _levels(v: Any) -> tuple[Any, ...]:
    return tuple(v) if isinstance(v, list) else (v,)


def parse_sweep(data: dict[str, Any], origin: str, base_dir: Path | None = None) -> Sweep:
    """Check a spec already read from TOML; errors name ``origin``. Paths in it are
    relative to ``base_dir`` (the spec's directory)."""
    try:
        m = SpecModel.model_validate(data)
    except ValidationError as e:
        raise SweepSpecError(f"{origin}: {validation_message(e)}") from None
    here = base_dir or Path(".")

    def fail(where: str, what: str) -> SweepSpecError:
        return SweepSpecError(f"{origin}: {where}: {what}")

    try:
        seeds = parse_seeds(m.seeds)
    except SweepSpecError as e:
        raise SweepSpecError(f"{origin}: {e}") from None
    from exitsim.policies.registry import DESIGNS

    for i, d in enumerate(m.designs):
        if d not in DESIGNS:
            raise fail(f"designs[{i}]", f"unknown design {d!r} (exitsim list)")
    baseline = m.baseline if m.baseline is not None else m.designs[0]
    if baseline not in m.designs:
        raise fail("baseline", f"{baseline!r} is not one of the designs")
    profiles = {}
    for arch, p in m.profiles.items():
        if arch not in ARCHES:
            raise fail(f"profiles.{arch}", "not an arch")
        path = str(here / p)
        try:
            prof = load_profile(path)
        except CostProfileError as e:
            raise fail(f"profiles.{arch}", str(e)) from None
        if prof.arch != arch:
            raise fail(f"profiles.{arch}", f"{p} is a profile for {prof.arch}")
        profiles[arch] = path
    workload, fixed, pfactors = _workload(m.workload, here, fail)
    cfactors: dict[str, tuple[int | str, ...]] = {}
    for key, v in m.costs.items():
        if key not in COST_KEYS:
            raise fail(f"costs.{key}", "unknown cost key (exitsim costs)")
        levels = _levels(v)
        if not levels:
            raise fail(f"costs.{key}", "an empty list")
        for lv in levels:
            if isinstance(lv, int) and lv < 0:
                raise fail(f"costs.{key}", f"must not be negative (got {lv})")
            if isinstance(lv, str) and not _SCALE.match(lv):
                raise fail(f"costs.{key}", f'ns, or "xF": F times the profile value (got {lv!r})')
            if key == "quantum_ns" and lv in (0, "x0"):
                raise fail(f"costs.{key}", "must be positive")
        if len(set(levels)) != len(levels):
            raise fail(f"costs.{key}", "a value is given twice")
        cfactors[key] = levels
    sweep = Sweep(
        name=m.name or Path(origin).stem,
        path=origin,
        designs=tuple(m.designs),
        baseline=baseline,
        arches=tuple(m.arches),
        cpus=tuple(m.cpus),
        seeds=tuple(seeds),
        granularity=m.granularity,
        workload=workload,
        workload_params=fixed,
        param_factors=pfactors,
        cost_factors=cfactors,
        profiles=profiles,
    )
    if sweep.size() > MAX_RUNS:
        raise SweepSpecError(f"{origin}: {sweep.size():,} runs, more than {MAX_RUNS:,}: split it")
    _check_levels(sweep, fail)
    return sweep


def _workload(
    w: WorkloadPart, here: Path, fail: Any
) -> tuple[str, dict[str, Any], dict[str, tuple[Any, ...]]]:
    """(generator or tree, fixed parameters, varying parameters)."""
    from exitsim.workloads.registry import WORKLOADS
    from exitsim.workloads.spec import WorkloadFileError, load_workload_file, to_config

    if w.name is not None and w.file is not None:
        raise fail("workload", "give name or file, not both")
    base: dict[str, Any] = {}
    name = w.name or "build"
    if w.file is not None:
        try:
            name, base = to_config(load_workload_file(here / w.file))
        except WorkloadFileError as e:
            raise fail("workload.file", str(e)) from None
        if name == TREE and set(w.params) - {"jobs"}:
            raise fail(
                "workload.params",
                f"{w.file} is a process tree, its only parameter is jobs (make -jN)",
            )
    elif name not in WORKLOADS:
        raise fail("workload.name", f"unknown workload {name!r} (exitsim list)")
    fixed = dict(base)
    factors: dict[str, tuple[Any, ...]] = {}
    for k, v in w.params.items():
        if isinstance(v, list):
            if not v:
                raise fail(f"workload.params.{k}", "an empty list")
            factors[k] = tuple(v)
        else:
            fixed[k] = v
    return name, fixed, factors


def _check_levels(sweep: Sweep, fail: Any) -> None:
    """Every level of every factor is a run the model takes: each workload parameter
    value and each cost value tried once, on each arch."""
    from exitsim.workloads.registry import WorkloadError, check_params

    if sweep.workload != TREE:
        for k, levels in sweep.param_factors.items():
            for v in levels:
                try:
                    check_params(sweep.workload, sweep.workload_params | {k: v})
                except WorkloadError as e:
                    raise fail(f"workload.params.{k}", str(e)) from None
        if not sweep.param_factors:
            try:
                check_params(sweep.workload, sweep.workload_params)
            except WorkloadError as e:
                raise fail("workload.params", str(e)) from None
    for arch in sweep.arches:
        prof = resolve_profile(arch, sweep.profiles.get(arch))
        for k, levels in sweep.cost_factors.items():
            for v in levels:
                if isinstance(v, str) and getattr(prof.costs, k) == 0 and v != "x0":
                    continue  # F times 0 is 0: allowed, if pointless
                try:
                    sweep._costs(arch, {k: v})
                except CostProfileError as e:
                    raise fail(f"costs.{k}", str(e)) from None


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a spec file."""
    data = read_toml_file(path, SweepSpecError)
    return parse_sweep(data, str(path), Path(path).parent)
