"""The interleaving explorer: run the same kernel code untimed under every schedule up
to a preemption bound, and stop at the first that breaks an invariant.

Generators cannot be copied, so every schedule re-executes from the start: a run is
built afresh by a factory, driven step by step through the engine's chooser seam, and
the choices made are recorded. A schedule is the list of option labels picked at each
choice point (a CPU number, ``ik.j`` for an IPI from CPU j arriving at k, ``ak.j`` for
its acknowledgement); written as a string, they are joined by commas, a run of the
same label shortened to ``LABEL*COUNT`` (``1*6,0`` for ``1,1,1,1,1,1,0``). After the given
prefix the explorer's default applies: the CPU that moved last goes on if it can, else
the first CPU that can.

The search is depth first over choice points, with a preemption bound (switching away
from a CPU that could have gone on is a preemption) and a visited set of abstract
states so that a state is expanded once. A state is the run's ``state_key()`` (for
``exitsim check``, ``check/statekey.py``: everything the run's future depends on), the
choices open and the CPU that moved last (the default continuation and the cost of a
preemption depend on it); it is remembered with the fewest preemptions used to reach
it. Two things follow from a visited state:

- a run that reaches a state an earlier run has already expanded, with no fewer
  preemptions used, stops there: from that state on it would do what the earlier run
  did (its default continuation) or what the alternatives pushed then will do, within
  a budget at least as large. Only a state met again in the same run does not stop it
  (a loop under the default schedule still runs into ``MAX_STEPS``);
- the work is taken fewest preemptions first (a stack for each count, the lowest
  non-empty one first), so a state is mostly met first with its fewest preemptions and
  is not expanded a second time with fewer.

A stopped run counts as a schedule explored: its choices up to that state are new.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any, Protocol

from exitsim.engine.chooser import EVENT, Chooser, ScheduleMismatch
from exitsim.engine.errors import SimError
from exitsim.engine.sched import Engine


class Run(Protocol):
    """What a factory gives: an engine built with the chooser it was handed, an
    abstract state for pruning, and a check when nothing is left to run.

    A run may also have ``design_error(e) -> SimError | None``: it turns an exception
    that is not the model's (not a ``SimError``) into a finding about the design under
    check, or gives None when the exception is a bug of the simulator's own, which then
    propagates."""

    engine: Engine

    def state_key(self) -> Any: ...

    def at_end(self) -> None: ...


Factory = Callable[[Chooser], Run]


#: No run takes more choices than steps, and ``run_schedule`` stops at this many steps.
MAX_STEPS = 200_000

_LABEL_HELP = "a CPU number, iK.J, aK.J or tN, optionally followed by *COUNT"


def format_schedule(labels: Sequence[str], compact: bool = True) -> str:
    """Labels as a string. Compact (the default): a run of the same label twice or
    more is written ``LABEL*COUNT``, so ``1,1,1,1,1,1,0`` is ``1*6,0``; otherwise one
    label per item, as the explorer picked them."""
    if not compact:
        return ",".join(labels)
    runs = ((label, sum(1 for _ in group)) for label, group in groupby(labels))
    return ",".join(label if n == 1 else f"{label}*{n}" for label, n in runs)


def parse_schedule(text: str) -> list[str]:
    """A schedule string back to labels, in either form ``format_schedule`` writes
    (they mix freely: ``1*6,0`` and ``1,1,1,1,1,1,0`` are the same schedule). Refuses,
    naming the item, anything that is not a label with an optional repeat count."""
    if not text.strip():
        return []
    labels: list[str] = []
    for n, raw in enumerate(text.split(","), 1):
        item = raw.strip()
        if not item:
            raise ValueError(f"item {n} is empty (two commas in a row, or one at an end)")
        label, star, count = (x.strip() for x in item.partition("*"))
        if not label:
            raise ValueError(f"item {n}, {item!r}: no step before the *")
        if not _is_label(label):
            raise ValueError(f"item {n}, {label!r} is not a step ({_LABEL_HELP})")
        times = 1
        if star:
            if not count.isdigit() or int(count) < 1:
                raise ValueError(
                    f"item {n}, {item!r}: the count after * must be a whole number of at least 1"
                )
            times = int(count)
        if len(labels) + times > MAX_STEPS:
            raise ValueError(
                f"item {n}, {item!r}: makes the schedule longer than {MAX_STEPS} "
                "steps, more than any run takes"
            )
        labels.extend([label] * times)
    return labels


def _is_label(x: str) -> bool:
    return (
        x.isdigit()
        or (x[:1] in ("i", "a") and _is_pair(x[1:]))
        or (x[:1] == "t" and x[1:].isdigit())
    )


def _is_pair(s: str) -> bool:
    a, dot, b = s.partition(".")
    return bool(dot) and a.isdigit() and b.isdigit()


@dataclass(slots=True)
class ChoicePoint:
    """One point where several steps could come next."""

    options: tuple[str, ...]
    chosen: str
    current: str | None  # the CPU that moved last
    preemptions: int  # used before this choice
    key: Any  # the state here, in a pruned search where it may branch; else None
    branch: bool = False  # a search may take another choice here (``_may_branch``)


class Explored(Exception):
    """A run reached a state an earlier run has already expanded (see the module
    docstring): what follows is known, and the run stops."""


class GuidedChooser:
    """Follows a prefix of labels, then the default (the last CPU goes on if it can),
    recording every choice point it meets; with ``visited``, past the prefix it
    records each new state there and stops the run (``Explored``) at one an earlier
    run expanded with no more preemptions. ``bound``: the search's preemption bound,
    past which a choice point takes no state (``_may_branch``)."""

    def __init__(
        self,
        prefix: Sequence[str],
        run_ref: list[Run],
        visited: dict[Any, int] | None = None,
        bound: int | None = None,
    ) -> None:
        self.prefix = list(prefix)
        self.bound = bound
        self.points: list[ChoicePoint] = []
        self.current: str | None = None
        self.preemptions = 0
        self.run_ref = run_ref
        self.visited = visited
        self.mine: set[Any] = set()  # states this run recorded

    def choose(self, point: str, options: Sequence[str]) -> int:
        if point != EVENT:
            return 0  # run-queue and placement choices keep the engine's preference
        opts = tuple(options)
        i = len(self.points)
        if i < len(self.prefix):
            want = self.prefix[i]
            if want not in opts:
                raise ScheduleMismatch(
                    f"step {i}: schedule says {want!r} but the choices here are {', '.join(opts)}"
                )
            pick = want
        else:
            pick = self.current if self.current in opts else opts[0]
        # The abstract state only matters to a search, where it may branch: past the
        # prefix, and where some other choice fits in the bound (``_may_branch``).
        key = None
        branch = i >= len(self.prefix) and self._may_branch(opts)
        if branch and self.visited is not None and self.run_ref:
            key = (self.run_ref[0].state_key(), opts, self.current)
            self._visit(key)
        self.points.append(ChoicePoint(opts, pick, self.current, self.preemptions, key, branch))
        if self.current is not None and self.current in opts and pick != self.current:
            self.preemptions += 1
        self.current = pick if pick.isdigit() else self.current
        return opts.index(pick)

    def _may_branch(self, opts: tuple[str, ...]) -> bool:
        """Whether the search could take another choice here: one that is not a
        preemption (the CPU that moved last cannot go on), or preemptions left. Where it
        could not, the state is neither recorded nor looked up: the run goes on with the
        default, as any run reaching it with as many preemptions would, and a state
        recorded elsewhere stays sound, since a run stopped there would not have
        branched here either."""
        if self.bound is None:
            return True
        return self.current not in opts or self.preemptions < self.bound

    def _visit(self, key: Any) -> None:
        """Record ``key`` as reached with this run's preemptions, or stop the run if an
        earlier run expanded it with no more."""
        assert self.visited is not None
        seen = self.visited.get(key)
        if seen is not None and seen <= self.preemptions:
            if key not in self.mine:
                raise Explored
            return  # the same run came back to a state: a loop, not pruned
        self.visited[key] = self.preemptions
        self.mine.add(key)

    def labels(self) -> list[str]:
        return [cp.chosen for cp in self.points]


@dataclass(slots=True)
class Outcome:
    """How one schedule ended."""

    schedule: list[str]
    error: SimError | None
    steps: int
    points: list[ChoicePoint] = field(default_factory=list)
    stopped: bool = False  # stopped at a state already explored (``Explored``)

    @property
    def violated(self) -> bool:
        return self.error is not None


def run_schedule(
    factory: Factory,
    prefix: Sequence[str],
    max_steps: int = MAX_STEPS,
    on_step: Callable[[Run, int], None] | None = None,
    visited: dict[Any, int] | None = None,
    bound: int | None = None,
) -> Outcome:
    """Build a run, follow ``prefix`` then the default, to the end or the first error
    the model raises (an invariant, a lock rule, a deadlock), or the first exception
    the run's ``design_error`` blames on the design (see ``Run``). With ``visited``
    (the explorer's), past the prefix the run also stops at a state already explored
    (``GuidedChooser``, which ``bound`` is for)."""
    ref: list[Run] = []
    chooser = GuidedChooser(prefix, ref, visited, bound)
    run = factory(chooser)
    ref.append(run)
    steps = 0
    try:
        while run.engine.step_untimed():
            steps += 1
            if on_step is not None:
                on_step(run, steps)
            if steps >= max_steps:
                raise SimError(f"schedule longer than {max_steps} steps")
        run.at_end()
    except ScheduleMismatch:
        raise
    except Explored:
        return Outcome(chooser.labels(), None, steps, chooser.points, stopped=True)
    except SimError as e:
        return Outcome(chooser.labels(), e, steps, chooser.points)
    except Exception as e:
        blame = getattr(run, "design_error", None)
        found = blame(e) if blame is not None else None
        if found is None:
            raise
        return Outcome(chooser.labels(), found, steps, chooser.points)
    return Outcome(chooser.labels(), None, steps, chooser.points)


@dataclass(slots=True)
class SearchResult:
    """What a search found: a violation (with its schedule) or none within the bound."""

    violation: Outcome | None
    schedules: int
    states: int
    seconds: float
    complete: bool  # every schedule within the bound was explored


def explore(
    factory: Factory,
    preemptions: int = 2,
    max_schedules: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    prune: bool = True,
) -> SearchResult:
    """Depth-first search over schedules with at most ``preemptions`` preemptions,
    fewest preemptions first (see the module docstring). ``prune=False``: without the
    visited set, every schedule within the bound run to its end (what pruning must
    not change the verdict of; exponential, for small checks only)."""
    t0 = time.perf_counter()
    visited: dict[Any, int] | None = {} if prune else None
    # work[p]: the prefixes still to run that use p preemptions, a stack each.
    work: list[list[list[str]]] = [[] for _ in range(preemptions + 1)]
    work[0].append([])
    schedules = 0
    while True:
        level = next((p for p, stack in enumerate(work) if stack), None)
        if level is None:
            break
        if max_schedules is not None and schedules >= max_schedules:
            return SearchResult(None, schedules, _count(visited), time.perf_counter() - t0, False)
        prefix = work[level].pop()
        out = run_schedule(factory, prefix, visited=visited, bound=preemptions)
        schedules += 1
        if progress is not None:
            progress(schedules, _count(visited))
        if out.violated:
            return SearchResult(out, schedules, _count(visited), time.perf_counter() - t0, False)
        _branch(out, len(prefix), preemptions, work)
    return SearchResult(None, schedules, _count(visited), time.perf_counter() - t0, True)


def _count(visited: dict[Any, int] | None) -> int:
    return 0 if visited is None else len(visited)


def _branch(out: Outcome, start: int, bound: int, work: list[list[list[str]]]) -> None:
    """Push the alternatives at the choice points ``out`` met past its prefix (in a
    pruned search each a state it recorded as new), deepest first out of each stack; a
    state the run met twice (a loop) is expanded once."""
    labels = out.schedule
    done: set[Any] = set()
    for i in range(start, len(out.points)):
        cp = out.points[i]
        if not cp.branch:
            continue  # no other choice fits in the bound here
        if cp.key is not None:
            if cp.key in done:
                continue  # a loop's second visit
            done.add(cp.key)
        for alt in cp.options:
            if alt == cp.chosen:
                continue
            switch = cp.current is not None and cp.current in cp.options and alt != cp.current
            used = cp.preemptions + (1 if switch else 0)
            if used > bound:
                continue
            work[used].append([*labels[:i], alt])


def shrink(factory: Factory, schedule: Sequence[str]) -> Outcome:
    """A short schedule that still breaks the same invariant: the shortest prefix of
    ``schedule`` whose default continuation still fails, then every choice in it that
    can go without the failure going too. The returned outcome's ``schedule`` is that
    prefix; replayed, it fails the same way."""
    first = run_schedule(factory, schedule)
    if not first.violated:
        raise ValueError("shrink: the schedule does not fail")
    want = _kind(first.error)

    def fails(prefix: list[str]) -> bool:
        try:
            out = run_schedule(factory, prefix)
        except ScheduleMismatch:
            return False
        return out.violated and _kind(out.error) == want

    best = list(schedule)
    for n in range(len(best) + 1):
        if fails(best[:n]):
            best = best[:n]
            break
    i = 0
    while i < len(best):
        cand = best[:i] + best[i + 1 :]
        if fails(cand):
            best = cand
        else:
            i += 1
    final = run_schedule(factory, best)
    final.schedule = best
    return final


def _kind(e: SimError | None) -> tuple[str, int | None, str | None]:
    """What makes two failures the same: the error's type, its invariant, and for an
    exception from a design's code, where it was raised."""
    return (type(e).__name__, getattr(e, "invariant", None), getattr(e, "where", None))
