"""Where the time goes: CPU time by kernel function, and folded stacks.

A ``KernelProfiler`` watches a timed run and gives every nanosecond the engine charges
to a CPU to the stack of the thread it is charged to at that moment: the thread's
process name (``comm``, or the thread's name) as the root frame, then the kernel
functions down its generator's ``yield from`` chain, outermost first, and a leaf for
what it does there:

* ``user``: user time (the workload's own code stands for user land and is left out);
* nothing: sys time of the innermost kernel function itself;
* ``cpu_switchto``: the context switch that brought the thread in;
* a broadcast's label (``tlbi_vae1is``, ``tlbi_aside1is``): arm64 TLB invalidations;
* ``spin:<lock>``: spinning on a lock (per-object locks by family: ``spin:pm_mtx``),
  ``spin:ipi_acks:<label>`` waiting for IPI acknowledgements (amd64
  ``pmap_tlb_shootwait``), ``spin:<wmesg>`` a spin-wait (``spin:pmap_purge``);
* ``stall:<label>``: the time a broadcast from another CPU held this one up
  (``tlbi_receiver_ns``), below ``user`` or the kernel function it held up;
* ``intr:<label>``: an interrupt handler, on top of whatever it interrupted
  (``idle;intr:tlb_shoot`` on an idle CPU).

Idle time is the one-frame stack ``idle``. So the samples add up, exactly, to the
run's ``user + sys + spin + idle`` (``cpus * makespan``), and each kind of time to its
own total in the Result's ``cpu`` block (docs/result-schema.md, ``kprof``). Frames
named with a leading underscore (the simulator's private helpers) are left out: their
time is their caller's, as in the Perfetto timeline (report/perfetto.py).

How: the engine charges work of known length when it starts and open-ended stretches
(spin, idle) when they end, always while the thread's stack is still the one the time
belongs to. The profiler keeps, per CPU, what it has attributed so far of each
accounting bucket and the thread's current stack, and attributes the difference
whenever that stack is about to change: before a thread's generator is resumed, when
a thread goes on or off a CPU, when a spin begins, around a broadcast's stall. It does
so by wrapping a few engine methods on the one engine instance it watches, as the
Perfetto recorder does, so a run without it pays nothing (one with it takes about
twice as long). tests/test_kprof.py holds it exact against the engine's accounting,
per CPU bucket and per thread, on random engine programs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import CodeType
from typing import TYPE_CHECKING, Any

from exitsim.report.perfetto import kernel_frames, lock_family
from exitsim.report.table import Rows

if TYPE_CHECKING:
    from rich.table import Table

    from exitsim.engine.ops import Ipi
    from exitsim.engine.sched import Cpu, Engine
    from exitsim.engine.thread import Thread

#: The one-frame stack of an idle CPU.
IDLE = "idle"
#: The leaf of user time.
USER_LEAF = "user"
#: The leaf of a context switch.
SWITCH_LEAF = "cpu_switchto"

# A stack: frame names, root first.
Stack = tuple[str, ...]


def _frame_name(text: str) -> str:
    """A frame name as folded stacks allow it: no spaces, no semicolons."""
    return text.replace(" ", "_").replace(";", "_") or "?"


class _Ctx:
    """What a CPU's unattributed time goes to: per accounting bucket (user, sys, spin,
    idle) a stack, and the thread it is charged to (None when idle)."""

    __slots__ = ("tid", "keys")

    def __init__(
        self, tid: int | None, stack: Stack, sys_leaf: str | None = None, spin_leaf: str = "?"
    ) -> None:
        self.tid = tid
        #: The stacks of the user, sys and spin buckets (M_USER, M_SYS, M_SPIN).
        self.keys: tuple[Stack, Stack, Stack] = (
            (*stack, USER_LEAF),
            (*stack, sys_leaf) if sys_leaf else stack,
            (*stack, spin_leaf),
        )


_IDLE_STACK: Stack = (IDLE,)
_IDLE_CTX = _Ctx(None, _IDLE_STACK)


class KernelProfiler:
    """CPU time of a kernel's timed run by stack of kernel functions.

    Attach it to a kernel's engine (or any timed engine) before it runs; ``close`` once
    the engine has finished (``Engine.finish``); then ``folded`` gives ``{stack: ns}``.
    A thread of a process is named by its process (``comm``), any other by its name."""

    def __init__(self, eng: Engine) -> None:
        self.eng = eng
        self.samples: dict[Stack, int] = {}
        #: Time attributed per thread id (user, sys and spin; not interrupts): what the
        #: engine charges the thread itself (``user_ns + sys_ns``).
        self.by_thread: dict[int, int] = {}
        # Frame names by code object (kernel_frames's cache).
        self._code_names: dict[CodeType, str] = {}
        self._ctx: list[_Ctx] = [_IDLE_CTX for _ in eng.cpus]
        self._seen: list[list[int]] = [list(c.acct) for c in eng.cpus]
        self._ipi_label: list[str] = ["ipi" for _ in eng.cpus]
        self._bcast_label: list[str] = ["tlbi" for _ in eng.cpus]
        self._closed = False
        self._attach()

    # -- wiring ------------------------------------------------------------------------

    def _attach(self) -> None:
        from exitsim.engine.ops import Ipi

        eng = self.eng
        wrapped = ("_resume", "_spin_begin", "_on_intr", "_stall_receivers", "_handlers")
        for name in (*wrapped, "switch_hook"):
            if not hasattr(eng, name):
                raise RuntimeError(f"the engine has no {name}: KernelProfiler needs updating")
        resume, spin_begin, on_intr = eng._resume, eng._spin_begin, eng._on_intr
        stall_receivers = eng._stall_receivers
        op_ipi = eng._handlers[Ipi]
        switch_hook = eng.switch_hook
        flush, enter = self._flush, self._enter

        def wrapped_resume(c: Cpu, t: Thread) -> None:
            flush(c)
            resume(c, t)
            # What the thread was charged in there (a run, a broadcast) is charged at
            # the stack it has now; it is attributed at the next flush.
            if c.thread is t:
                enter(c, t)

        def wrapped_spin_begin(c: Cpu, lock: Any) -> None:
            flush(c)
            spin_begin(c, lock)
            t = c.thread
            if t is not None:
                enter(c, t)

        def wrapped_intr(c: Cpu, payload: tuple[int, Ipi]) -> None:
            on_intr(c, payload)
            self._intr(c, payload[1].label)

        def wrapped_stall(sender: Cpu, stall: int) -> None:
            # What the other CPUs were charged so far goes where it belongs; what the
            # stall adds gets a leaf of its own.
            for x in eng.cpus:
                flush(x)
            stall_receivers(sender, stall)
            leaf = f"stall:{self._bcast_label[sender.index]}"
            for x in eng.cpus:
                flush(x, leaf)

        def wrapped_ipi(c: Cpu, t: Thread, op: Ipi) -> bool:
            self._ipi_label[c.index] = op.label
            return op_ipi(c, t, op)

        def on_switch(cpu: int, t: Thread | None) -> None:
            if switch_hook is not None:
                switch_hook(cpu, t)
            c = eng.cpus[cpu]
            flush(c)
            if t is None:
                self._ctx[cpu] = _IDLE_CTX
            else:
                self._ctx[cpu] = _Ctx(t.tid, self.stack(t), SWITCH_LEAF)

        # The engine calls these through the instance (run() binds _resume when it
        # starts), so wrapping them here reaches every call.
        eng._resume = wrapped_resume  # type: ignore[method-assign]
        eng._spin_begin = wrapped_spin_begin  # type: ignore[method-assign]
        eng._on_intr = wrapped_intr  # type: ignore[method-assign]
        eng._stall_receivers = wrapped_stall  # type: ignore[method-assign]
        eng._handlers[Ipi] = wrapped_ipi  # type: ignore[assignment]
        eng.switch_hook = on_switch

    # -- stacks ------------------------------------------------------------------------

    def stack(self, t: Thread) -> Stack:
        """``t``'s root frame and the kernel functions it is in, outermost first (the
        Perfetto timeline's, less generator expressions and lambdas too)."""
        pr = getattr(t, "p_p", None)
        root = _frame_name(pr.comm if pr is not None else t.name)
        frames = kernel_frames(t, self._code_names, ("_", "<"))
        return (root, *(name for _, name in frames))

    def _enter(self, c: Cpu, t: Thread) -> None:
        """``t`` on ``c`` has just yielded what it now waits on: its new context."""
        bc = c.bcast
        if bc is not None:
            self._bcast_label[c.index] = _frame_name(bc.label)
        what = "?"
        if c.spin_since >= 0:
            lock = c.spinning_on
            if lock is not None:
                what = lock_family(lock)
            elif c.acks_pending:
                what = f"ipi_acks:{self._ipi_label[c.index]}"
            elif t.wchan is not None:
                what = t.wmesg
        self._ctx[c.index] = _Ctx(
            t.tid,
            self.stack(t),
            self._bcast_label[c.index] if bc is not None else None,
            _frame_name(f"spin:{what}"),
        )

    # -- attributing -------------------------------------------------------------------

    def _flush(self, c: Cpu, leaf: str | None = None) -> None:
        """Give what ``c`` was charged since the last flush to its current context;
        ``leaf``: below it, for user and sys time."""
        acct = c.acct
        seen = self._seen[c.index]
        if acct == seen:
            return
        ctx = self._ctx[c.index]
        samples = self.samples
        d = acct[3] - seen[3]
        if d:
            seen[3] = acct[3]
            samples[_IDLE_STACK] = samples.get(_IDLE_STACK, 0) + d
        moved = 0
        for bucket in (0, 1, 2):
            d = acct[bucket] - seen[bucket]
            if not d:
                continue
            seen[bucket] = acct[bucket]
            if ctx.tid is None:
                raise RuntimeError(
                    f"kprof: cpu{c.index} was charged {d} ns of bucket {bucket} with no "
                    "thread on it: the engine's accounting changed, KernelProfiler needs "
                    "updating"
                )
            key = ctx.keys[bucket]
            if leaf is not None and bucket < 2:
                key = (*key, leaf)
            samples[key] = samples.get(key, 0) + d
            moved += d
        if moved:
            self.by_thread[ctx.tid] = self.by_thread.get(ctx.tid, 0) + moved  # type: ignore[index]

    def _intr(self, c: Cpu, label: str) -> None:
        """An interrupt handler was charged to ``c``: on top of what it interrupted."""
        seen = self._seen[c.index]
        d = c.acct[4] - seen[4]
        if not d:
            return
        seen[4] = c.acct[4]
        ctx = self._ctx[c.index]
        if c.thread is None or ctx.tid is None:
            under: Stack = _IDLE_STACK
        elif c.spin_since >= 0:
            under = ctx.keys[2]
        elif c.in_user and c.bcast is None:
            under = ctx.keys[0]
        else:
            under = ctx.keys[1]
        key = (*under, _frame_name(f"intr:{label}"))
        self.samples[key] = self.samples.get(key, 0) + d

    def close(self) -> None:
        """Attribute what is left once the engine has finished. Calling it again adds
        nothing."""
        if self._closed:
            return
        self._closed = True
        for c in self.eng.cpus:
            self._flush(c)
            if c.acct != self._seen[c.index]:
                raise RuntimeError(f"kprof: cpu{c.index}'s time was not all attributed")

    def folded(self) -> dict[str, int]:
        """``{"frame;frame;...": ns}``, sorted by stack, zero samples left out."""
        self.close()
        out = {";".join(s): ns for s, ns in self.samples.items() if ns}
        return dict(sorted(out.items()))


# -- folded stacks -----------------------------------------------------------------------


def run_frames(result: dict[str, Any]) -> Stack:
    """The root frames that tell one run of a comparison from another: design, arch,
    CPU count (``purge+pmap_purge;arm64;16cpus``)."""
    cfg = result["config"]
    return (_frame_name(cfg["policy"]), _frame_name(cfg["arch"]), f"{cfg['cpus']}cpus")


def folded_text(results: dict[str, Any] | Sequence[dict[str, Any]]) -> str:
    """The ``kprof`` of a run (a Result) or of a comparison (a list of them) as folded
    stacks: a ``frame;frame;... N`` line per stack, ``N`` in ns, sorted by stack; for a
    comparison each stack starts with ``run_frames``, so one file holds every run.
    flamegraph.pl, speedscope and inferno read it."""
    if isinstance(results, dict):
        lines = [f"{s} {ns}" for s, ns in kprof_of(results).items()]
    else:
        lines = [
            f"{';'.join(run_frames(r))};{s} {ns}" for r in results for s, ns in kprof_of(r).items()
        ]
    lines.sort()
    return "".join(line + "\n" for line in lines)


def kprof_of(result: dict[str, Any]) -> dict[str, int]:
    """A Result's ``kprof``; refused in one line when the run was not profiled."""
    kp = result.get("kprof")
    if not isinstance(kp, dict):
        cfg = result.get("config", {})
        raise ValueError(
            f"the run {cfg.get('policy')} {cfg.get('arch')} {cfg.get('cpus')} CPUs has no "
            "kprof: it was not run with kprof=True (--folded)"
        )
    return kp


# -- the table ---------------------------------------------------------------------------


def kind(frames: Stack) -> str:
    """Which of the Result's ``cpu`` times a stack is: ``user``, ``sys`` (interrupts
    apart), ``spin``, ``idle`` or ``intr``."""
    leaf = frames[-1]
    if leaf.startswith("intr:"):
        return "intr"
    if frames == (IDLE,):
        return "idle"
    if leaf.startswith("spin:"):
        return "spin"
    if leaf == USER_LEAF or (leaf.startswith("stall:") and frames[-2:-1] == (USER_LEAF,)):
        return "user"
    return "sys"


def _is(*names: str) -> Callable[[str], bool]:
    return frozenset(names).__contains__


def _starts(prefix: str) -> Callable[[str], bool]:
    return lambda f: f.startswith(prefix)


#: The fixed rows of the table: (label, which frames it counts). A row's self time is
#: that of the stacks whose last frame matches; its total, of the stacks with a
#: matching frame anywhere, each stack counted once. A row no design spent time in is
#: left out. Spinning on each other lock gets a row of its own after these.
ROWS: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("exit1", _is("exit1")),
    ("uvm_purge", _is("uvm_purge")),
    ("pmap_purge", _is("pmap_purge")),
    ("uvm_map_teardown", _is("uvm_map_teardown")),
    ("uvm_unmap_detach", _is("uvm_unmap_detach")),
    ("pmap_remove", _is("pmap_remove")),
    ("amap_wipeout", _is("amap_wipeout")),
    ("page frees (uvm_pagefree, uvm_pglistfree)", _is("uvm_pagefree", "uvm_pglistfree")),
    (
        "into the trees (uvm_pmr_freepageq, _freepages)",
        _is("uvm_pmr_freepageq", "uvm_pmr_freepages"),
    ),
    ("TLB shootdown: wait for IPI acks", _starts("spin:ipi_acks")),
    ("TLB shootdown: IPI handlers", _starts("intr:")),
    ("TLB broadcast: tlbi", _starts("tlbi_")),
    ("TLB broadcast: stall of other CPUs", _starts("stall:")),
    ("spin: kernel_lock", _is("spin:kernel_lock")),
    ("reaper", _is("reaper")),
    ("uvm_exit", _is("uvm_exit")),
)

#: How many other functions, by self time, the table adds below the fixed rows.
TOP_OTHERS = 8


def _self_total(stacks: list[tuple[Stack, int]], match: Callable[[str], bool]) -> tuple[int, int]:
    own = total = 0
    for frames, ns in stacks:
        if match(frames[-1]):
            own += ns
        for f in frames:
            if match(f):
                total += ns
                break
    return own, total


def _ms(ns: int) -> str:
    return f"{ns / 1e6:,.3f}"


def kprof_rows(results: Sequence[dict[str, Any]]) -> list[Rows]:
    """Time by kernel function: a table per (arch, CPUs) in the order first seen, a
    pair of columns (self ms, total ms) per design in the order given. The ``ROWS``
    any design spent time in, a row per other lock spun on, the ``TOP_OTHERS`` other
    last frames with the most self time (user time and idle left out), then the
    Result's kernel time (sys, spin and interrupts), user and idle time. Runs without
    ``kprof`` are left out."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in results:
        if isinstance(r.get("kprof"), dict):
            cfg = r["config"]
            groups.setdefault((cfg["arch"], cfg["cpus"]), []).append(r)
    out = []
    for (arch, cpus), rs in groups.items():
        runs = [[(tuple(s.split(";")), ns) for s, ns in r["kprof"].items()] for r in rs]
        rows: list[list[str]] = []

        def add(
            label: str,
            match: Callable[[str], bool],
            runs: list[list[tuple[Stack, int]]] = runs,
            rows: list[list[str]] = rows,
        ) -> None:
            values = [_self_total(st, match) for st in runs]
            if any(total for _, total in values):
                rows.append([label, *(_ms(v) for pair in values for v in pair)])

        for label, match in ROWS:
            add(label, match)
        # Every leaf's self time, per run: the other locks spun on, the other functions.
        leaves: dict[str, int] = {}
        for st in runs:
            mine: dict[str, int] = {}
            for frames, ns in st:
                if kind(frames) not in ("user", "idle"):
                    mine[frames[-1]] = mine.get(frames[-1], 0) + ns
            for leaf, ns in mine.items():
                leaves[leaf] = max(leaves.get(leaf, 0), ns)
        ranked = sorted(leaves, key=lambda f: (-leaves[f], f))
        for leaf in ranked:
            if leaf.startswith("spin:") and not leaf.startswith("spin:ipi_acks"):
                if leaf != "spin:kernel_lock":
                    add(f"spin: {leaf[5:]}", _is(leaf))
        others = [f for f in ranked if not any(m(f) for _, m in ROWS) and ":" not in f]
        for leaf in others[:TOP_OTHERS]:
            add(leaf, _is(leaf))
        for label, kinds in (
            ("kernel time (sys, spin, interrupts)", ("sys", "spin", "intr")),
            ("user time", ("user",)),
            ("idle time", ("idle",)),
        ):
            sums = [sum(ns for fr, ns in st if kind(fr) in kinds) for st in runs]
            rows.append([label, *(c for v in sums for c in ("", _ms(v)))])
        designs = [r["config"]["policy"] for r in rs]
        if len(rs) == 1:
            cols = ["function", "self ms", "total ms"]
        else:
            cols = ["function", *(f"{d} {w} ms" for d in designs for w in ("self", "total"))]
        title = f"Time by kernel function, {arch}, {cpus} CPUs (total: with what it calls)"
        out.append((title, cols, rows))
    return out


def kprof_tables(results: Sequence[dict[str, Any]]) -> list[Table]:
    """``kprof_rows`` as terminal tables (rich)."""
    from rich.table import Table

    tables = []
    for title, cols, rows in kprof_rows(results):
        t = Table(title=title)
        t.add_column(cols[0], no_wrap=True)
        for c in cols[1:]:
            t.add_column(c, justify="right")
        for row in rows:
            t.add_row(*row)
        tables.append(t)
    return tables
