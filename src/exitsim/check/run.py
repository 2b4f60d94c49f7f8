"""What ``exitsim check`` does, below the command line: search a scenario's schedules
for a violation (or an exception from the design's own code, ``check/hooks.py``), shrink
what is found, and replay a schedule step by step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from exitsim.check.hooks import DesignError
from exitsim.check.scenarios import SCENARIOS, CheckRun, Scenario, factory
from exitsim.engine.chooser import ScheduleMismatch
from exitsim.engine.errors import Deadlock, InvariantViolation, LockError
from exitsim.engine.explore import (
    Outcome,
    explore,
    format_schedule,
    run_schedule,
    shrink,
)
from exitsim.engine.thread import DEAD, where
from exitsim.machine.costs import CostProfile
from exitsim.policies.base import Policy
from exitsim.vm.uvm import Tolerated


@dataclass(slots=True)
class Step:
    """One step of a replayed schedule, for the narrative."""

    index: int
    time_ns: int
    cpu: int | None
    thread: str
    function: str
    op: str
    note: str = ""


@dataclass(slots=True)
class CheckResult:
    scenario: str
    policy: str
    arch: str
    preemptions: int
    schedules: int
    states: int
    seconds: float
    complete: bool
    violation: str | None = None
    invariant: int | None = None
    labels: list[str] = field(default_factory=list)  # the violation's schedule, a label a step
    exception: dict[str, Any] | None = None  # for an exception from the design's code
    steps: list[Step] = field(default_factory=list)
    allowed: tuple[int, ...] = ()
    #: Violations of the allowed invariants over every schedule run: invariant ->
    #: {"count": n, "first": the first one's message}.
    tolerated: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def schedule(self) -> str | None:
        """The violation's schedule in compact form (``format_schedule``); None without one."""
        return None if self.violation is None else format_schedule(self.labels)

    def as_dict(self, compact: bool = True) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "policy": self.policy,
            "arch": self.arch,
            "preemptions": self.preemptions,
            "schedules": self.schedules,
            "states": self.states,
            "seconds": round(self.seconds, 3),
            "complete": self.complete,
            "violation": self.violation,
            "invariant": self.invariant,
            "exception": self.exception,
            "schedule": None if self.violation is None else format_schedule(self.labels, compact),
            "allowed": list(self.allowed),
            "tolerated": self.tolerated,
        }


def search(
    scenario: Scenario,
    policy_maker: Callable[[], Policy],
    arch: str,
    preemptions: int = 2,
    max_schedules: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    profile: CostProfile | None = None,
    allow: frozenset[int] | set[int] = frozenset(),
) -> CheckResult:
    """Explore ``scenario`` under a design; on a violation, shrink its schedule.
    ``allow``: invariants whose violations do not stop a run; they are counted over
    the schedules explored, and the first one's message is kept (``tolerated``)."""
    allowed = frozenset(allow)
    tally = Tolerated()
    f = factory(scenario, policy_maker, arch, profile=profile, allow=allowed, tolerated=tally)
    res = explore(f, preemptions, max_schedules, progress)
    out = CheckResult(
        scenario.name,
        policy_maker().name,
        arch,
        preemptions,
        res.schedules,
        res.states,
        res.seconds,
        res.complete,
        allowed=tuple(sorted(allowed)),
    )
    if res.violation is not None:
        small = shrink(f, res.violation.schedule)
        _describe(out, small)
    out.tolerated = tally.as_dict()
    return out


def invariant_of(e: BaseException | None) -> int | None:
    """The design.md invariant an error breaks: its own number, or 7 (lock discipline)
    for a lock-rule error or a deadlock; None for anything else."""
    if isinstance(e, InvariantViolation):
        return e.invariant
    if isinstance(e, (LockError, Deadlock)):
        return 7
    return None


def _describe(out: CheckResult, o: Outcome) -> None:
    e = o.error
    out.violation = str(e)
    out.invariant = invariant_of(e)
    out.exception = e.as_dict() if isinstance(e, DesignError) else None
    out.labels = list(o.schedule)


def replay(
    scenario: Scenario,
    policy_maker: Callable[[], Policy],
    arch: str,
    schedule: list[str],
    profile: CostProfile | None = None,
    allow: frozenset[int] | set[int] = frozenset(),
) -> tuple[Outcome, list[Step]]:
    """Run exactly ``schedule`` (then the default) and record every op: which CPU,
    which thread, in which kernel function, doing what; ``allow`` as for ``search``."""
    f = factory(scenario, policy_maker, arch, record=True, profile=profile, allow=frozenset(allow))
    steps: list[Step] = []
    seen = [0]

    def on_step(run: CheckRun, i: int) -> None:
        eng = run.engine
        log = eng.log or []
        by_tid = {t.tid: t for t in eng.threads}
        for now, cpu, tid, opname, detail in log[seen[0] :]:
            t = by_tid[tid]
            fn = where(t) if t.state != DEAD else "sched_exit"
            steps.append(Step(i, now, cpu, t.name, fn, f"{opname} {detail}".strip()))
        seen[0] = len(log)

    out = run_schedule(f, schedule, on_step=on_step)
    if out.error is None and len(out.points) < len(schedule):
        n = len(out.points)
        raise ScheduleMismatch(f"step {n}: the run ended with no choice left for {schedule[n]!r}")
    return out, steps


def scenario_names(names: list[str]) -> list[Scenario]:
    out = []
    for n in names or list(SCENARIOS):
        if n not in SCENARIOS:
            raise CheckUsageError(f"unknown scenario {n!r} (known: {', '.join(SCENARIOS)})")
        out.append(SCENARIOS[n])
    return out


class CheckUsageError(ValueError):
    """A bad scenario name or schedule: one line, exit status 2."""
