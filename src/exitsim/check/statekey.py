"""The explorer's abstract state of a check run: what two runs must agree on for the
one's future to be the other's.

The explorer (``engine/explore.py``) expands a state once, and stops a run as soon as it
reaches a state already expanded with no more preemptions used. That is only sound if the
key covers everything the run's future depends on. So the key is not a hand-picked list
of fields, which would go stale as the model grows: it is a canonical walk of the whole
object graph of the run, starting at the kernel, that takes every attribute of every
object it meets (``__dict__`` and ``__slots__`` alike) except a named list of fields that
only time or count what happened (``SKIP``). A field added to the machine's per-CPU state,
a process, a pmap or a lock is in the key without anyone touching this file; a field that
is in fact only a meter and is not listed here makes the key finer (fewer states merge),
never wrong.

What the walk does with each kind of value:

- numbers, strings, None: themselves;
- an object met a second time: a back reference to the order it was first met in, so
  sharing and cycles are part of the key and the walk ends;
- lists, tuples, deques: their items in order; dicts: their items, sorted when the keys
  are plain values (insertion order is history, not state); sets: sorted; the sorted
  containers (``sortedcontainers``): their items in their order;
- a thread's generator: for each frame of its ``yield from`` chain, the function, the
  instruction it stopped at and its local variables (the thread's position, with its
  loop counters and everything else it will read when it resumes), but for those named
  as skipped fields are (a start time kept to meter a duration);
- functions and methods: their qualified name (what they would run), with a closure's
  cells and a bound method's object (what they carry: a design's hook may keep a count
  in a cell). Module globals are not walked: state a design keeps there is not in the
  key (docs/checking.md);
- the engine's event heap: its pending events as labels (what may run next), with a
  timer's callback and arguments.

Time is left out: the untimed explorer takes every pending step as a possible next step
whatever its timestamp, and costs time a run, they do not decide which orders exist
(``check/scenarios.factory``). The engine's few comparisons with the clock are kept as
what they compare: whether a CPU's quantum or interrupt handler is still running
(``TIME_FLAGS``). The explorer adds the CPU that moved last to the key
(``engine/explore.py``): the default continuation and what counts as a preemption
depend on it.
"""

from __future__ import annotations

import hashlib
from collections import deque
from contextlib import suppress
from operator import attrgetter
from types import (
    BuiltinFunctionType,
    BuiltinMethodType,
    FunctionType,
    GeneratorType,
    MethodType,
)
from typing import Any

from sortedcontainers import SortedDict, SortedList, SortedSet

from exitsim.engine.sched import K_CALL, Engine

#: Fields that only time or count what happened, or are fixed for the whole run, and
#: do not change what a run can do next. Any attribute of this name, on any object, is
#: left out of the key, and so is any whose name ends in ``_ns`` (``skipped``).
SKIP = frozenset(
    {
        # the clock and timestamps (a run's timing, not its state)
        "now",
        "since",
        "spin_since",
        "idle_since",
        "lock_wait_from",
        "cont_at",
        "start",  # a kernel function's own start time, kept to meter its duration
        # CPU and thread time accounting, event and op counts
        "acct",
        "switches",
        "events",
        "ops",
        "ipis",
        "broadcasts",
        "nops",
        # bookkeeping whose meaning is carried elsewhere: heap sequence numbers and the
        # token that marks a CPU's live continuation (the pending labels say which is)
        "seq",
        "token",
        # statistics and meters, read only for reports
        "stats",
        "meters",
        "costs_used",
        # the run's trace and observers
        "log",
        "tracer",
        "switch_hook",
        "exit_hook",
        "idle_hook",
        "watch",  # a pmap's observer: the meters' count of pages unmapped
        # tolerated violations (``--allow``): one tally shared by every run of a search
        "tolerated",
        # fixed for the whole run: configuration, costs, the arch, the chooser
        "config",
        "profile",
        "costs",
        "arch",
        "chooser",
        "_handlers",
        # the heap is encoded by ``_heap`` below
        "heap",
    }
)


def skipped(name: str) -> bool:
    """Whether a field is left out of the key: it is in ``SKIP``, or its name ends in
    ``_ns`` (the model's convention for a duration or a timestamp)."""
    return name in SKIP or name.endswith("_ns")


#: Clock fields the engine compares with ``now``: kept as "still in the future".
TIME_FLAGS = frozenset({"quantum_end", "intr_until"})

_ATOMS = frozenset({int, str, bool, float, bytes, type(None)})
_CALLABLES = (FunctionType, MethodType, BuiltinFunctionType, BuiltinMethodType)


class _Plan:
    """How to read one class's fields: the names kept (slots first, in declaration
    order), which of them are clock flags, and whether instances have a ``__dict__``."""

    __slots__ = ("tag", "names", "get", "flags", "has_dict")

    def __init__(self, cls: type) -> None:
        self.tag = cls.__qualname__
        self.names = tuple(n for n in _field_names(cls) if not skipped(n))
        self.get = attrgetter(*self.names) if len(self.names) > 1 else None
        self.flags = tuple(i for i, n in enumerate(self.names) if n in TIME_FLAGS)
        self.has_dict = hasattr(cls, "__dict__") and "__dict__" in dir(cls)


_PLANS: dict[type, _Plan] = {}


class _Walk:
    """One canonical walk, written as a flat list of plain values: each container or
    object opens with a tag (and its length where it varies), and the first meeting of
    an object numbers it, so a later meeting is ``("@", n)``."""

    __slots__ = ("memo", "now", "out")

    def __init__(self, now: int) -> None:
        self.memo: dict[int, int] = {}
        self.now = now
        self.out: list[Any] = []

    def enc(self, v: Any) -> None:
        t = type(v)
        out = self.out
        if t in _ATOMS:
            out.append(v)
            return
        if t is tuple:
            out.append(("(", len(v)))
            self.seq(v)
            return
        memo = self.memo
        n = memo.get(id(v))
        if n is not None:
            out.append(("@", n))
            return
        memo[id(v)] = len(memo)
        if t is list or t is deque or t is SortedList or t is SortedSet:
            out.append(("[", len(v)))
            self.seq(v)
        elif t is dict:
            self.items(v, True)
        elif t is SortedDict:
            self.items(v, False)
        elif t is set or t is frozenset:
            w = _Walk(self.now)
            w.memo = memo
            parts = []
            for x in v:
                w.out = []
                w.enc(x)
                parts.append(repr(w.out))
            parts.sort()
            out.append(("{", len(parts)))
            out.extend(parts)
        elif t is GeneratorType:
            self.frames(v)
        elif isinstance(v, _CALLABLES):
            self.callable(v)
        elif isinstance(v, type):
            out.append(("T", v.__qualname__))
        else:
            self.fields(v, t)
            if t is Engine or isinstance(v, Engine):
                self.heap(v)

    def callable(self, f: Any) -> None:
        """What a callable would run, and what it carries with it: a closure's cells and
        a bound method's object are state (a design's hook may count in a cell)."""
        out = self.out
        out.append(("F", getattr(f, "__qualname__", repr(f))))
        if type(f) is MethodType:
            self.enc(f.__self__)
            return
        for cell in getattr(f, "__closure__", None) or ():
            try:
                self.enc(cell.cell_contents)
            except ValueError:  # a cell not filled yet
                out.append(_UNSET)

    def seq(self, xs: Any) -> None:
        out = self.out
        for x in xs:
            if type(x) in _ATOMS:
                out.append(x)
            else:
                self.enc(x)

    def items(self, d: Any, sort: bool) -> None:
        """A dict's items, in key order where the keys are plain values (insertion
        order is history, not state)."""
        keys = list(d)
        if sort:
            # Mixed or unorderable keys keep insertion order, which is only finer.
            with suppress(TypeError):
                keys.sort()
        self.out.append(("D", len(keys)))
        for k in keys:
            self.enc(k)
            self.enc(d[k])

    def fields(self, obj: Any, t: type) -> None:
        plan = _PLANS.get(t)
        if plan is None:
            plan = _PLANS[t] = _Plan(t)
        out = self.out
        out.append(plan.tag)
        names = plan.names
        if names:
            try:
                vals = plan.get(obj) if plan.get is not None else (getattr(obj, names[0]),)
            except AttributeError:  # a slot not set yet
                vals = tuple(getattr(obj, n, _UNSET) for n in names)
            if plan.flags:
                vals = list(vals)
                now = self.now
                for i in plan.flags:
                    if type(vals[i]) is int:
                        vals[i] = vals[i] > now
            self.seq(vals)
        if plan.has_dict:
            d = obj.__dict__
            keep = [n for n in d if not skipped(n)]
            out.append(("D", len(keep)))
            for n in keep:
                out.append(n)
                x = d[n]
                if n in TIME_FLAGS and type(x) is int:
                    out.append(x > self.now)
                elif type(x) in _ATOMS:
                    out.append(x)
                else:
                    self.enc(x)

    def frames(self, g: Any) -> None:
        """A generator's position: for each frame of its ``yield from`` chain, the
        function, the instruction it stopped at and its locals (in the code's order)."""
        out = self.out
        out.append("G")
        while g is not None:
            frame = g.gi_frame
            if frame is None:
                out.append("done")
                return
            out.append(frame.f_code.co_qualname)
            out.append(frame.f_lasti)
            local = frame.f_locals
            keep = [n for n in local if not skipped(n)]
            out.append(("D", len(keep)))
            for n in keep:
                out.append(n)
                self.enc(local[n])
            g = g.gi_yieldfrom
            if g is not None and type(g) is not GeneratorType:
                self.enc(g)
                return

    def heap(self, eng: Engine) -> None:
        """Pending events by label, a timer with its callback and arguments; in the
        order ``Engine.pending`` gives them."""
        out = self.out
        out.append("heap")
        for label, e in eng.pending():
            out.append(label)
            if e[2] == K_CALL:
                self.enc(e[3])
                self.enc(e[4])


_UNSET = "<unset>"
_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    """Every slot a class and its bases declare, once, in a fixed order."""
    names = _NAMES.get(cls)
    if names is None:
        seen: list[str] = []
        for base in reversed(cls.__mro__):
            slots = base.__dict__.get("__slots__", ())
            if isinstance(slots, str):
                slots = (slots,)
            for s in slots:
                if s not in seen and s not in ("__dict__", "__weakref__"):
                    seen.append(s)
        names = _NAMES[cls] = tuple(seen)
    return names


def state_of(root: Any, now: int) -> list[Any]:
    """The canonical form of everything reachable from ``root`` (see the module
    docstring), as a flat list of plain values: equal lists mean equal states."""
    w = _Walk(now)
    w.enc(root)
    return w.out


def state_key(root: Any, now: int) -> bytes:
    """A digest of ``state_of(root, now)``: what the explorer prunes on (it adds the
    choices open and the CPU that moved last)."""
    text = repr(state_of(root, now))
    return hashlib.blake2b(text.encode(), digest_size=16).digest()
