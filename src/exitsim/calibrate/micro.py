"""The host microbenchmarks (``host.py``) run in the model: the same forks, touches,
execs and exits, on a simulated machine with the host's CPU count, under a design
(``linux`` by default: the host is Linux), with a given cost profile.

Each benchmark runs on a kernel of its own, in range granularity. Its parent stands
for the bare interpreter that forks on the host: it execs an image with as many map
entries as the interpreter had mappings and as much anonymous memory as it had
resident, and in every fork the child writes as many of the parent's pages as the
host's child took page faults before it exited (CPython's work after fork) and the
parent as many as it took (``Layout``). The model's fork does not copy page-table
entries, as OpenBSD's does not; Linux's does, and that part of a host figure has no
counterpart here (hostprofile.py takes it out before it fits ``fork_ns``).

Times are the kernel clock (``k.now``), stamped where the host stamps: before fork and
after ``wait4``; in the child before and after its writes and right before ``exit``.
The model is deterministic: each figure is the median of ``MODEL_REPEATS`` runs in a
row (the first fork write-protects the parent's memory, the later ones find it done).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from exitsim.calibrate.stats import line_fit, median
from exitsim.engine.ops import Run, Wakeup
from exitsim.engine.sync import tsleep
from exitsim.engine.thread import KPath
from exitsim.kern.exec import Image, Segment, sys_execve
from exitsim.kern.exit import sys_exit, sys_wait4
from exitsim.kern.fork import fork1, spawn_user_process
from exitsim.kern.kernel import Kernel
from exitsim.kern.sig import userret
from exitsim.machine.machine import DEFAULT_TOTAL_PAGES, Machine
from exitsim.policies.registry import get_policy
from exitsim.vm.fault import uvm_touch
from exitsim.vm.map import PROT_READ, uvm_map, uvm_unmap
from exitsim.vm.object import uvn_attach
from exitsim.workloads.program import (
    BIG_VPN,
    DATA_VPN,
    HEAP_VPN,
    LIBC_VPN,
    SHM_VPN,
    STACK_VPN,
    TEXT_VPN,
)

if TYPE_CHECKING:
    from exitsim.kern.proc import Proc
    from exitsim.machine.costs import CostProfile

#: 4 KiB pages in a MiB.
MIB_PAGES = 256
#: Runs of each benchmark in the model; the median is taken.
MODEL_REPEATS = 3
#: The parent's stack, written (pages).
STACK_PAGES = 16
#: Where the parent's pages the child writes after fork, and those the parent writes,
#: sit (each its own 2 MB block and entry).
HOT_VPN = DATA_VPN
HOTP_VPN = DATA_VPN + 0x80000
#: The image the exec benchmark runs: text at TEXT_VPN, libraries at LIBC_VPN.
TRUE_DATA_PAGES = 8
TRUE_STACK_PAGES = 4

BENCHMARKS = ("fork_exit", "touch_exit", "exec", "cow", "file", "concurrent")


@dataclass(frozen=True, slots=True)
class Layout:
    """The forking parent as the host measured it: its mappings, its resident
    anonymous pages, and the pages each side writes after a fork (page faults the
    child took before exiting, and the parent took from fork to ``wait4``'s return)."""

    entries: int
    anon_pages: int
    child_faults: int
    parent_faults: int


@dataclass(frozen=True, slots=True)
class MicroSpec:
    """What to run: the host's CPU count and sizes, the parent, and the exec'd
    program (its text pages and the page faults it took after exec)."""

    ncpu: int
    mib: tuple[int, ...]
    big_mib: int
    counts: tuple[int, ...]
    layout: Layout
    program_pages: int
    exec_faults: int
    design: str = "linux"


#: A benchmark's stamped rows by variant (``"16"``: 16 MiB), in run order.
Rows = dict[str, list[dict[str, int]]]


@dataclass(slots=True)
class _Log:
    """What a model run stamps, by benchmark variant."""

    rows: Rows = field(default_factory=dict)

    def add(self, key: str, row: dict[str, int]) -> None:
        self.rows.setdefault(key, []).append(row)


def parent_image(lay: Layout) -> Image:
    """The interpreter's image: a text file, the written anonymous memory in three
    entries (the pages the child writes, those the parent writes, the rest), a stack,
    and one-page library entries up to the host's count of mappings."""
    hot = max(lay.child_faults, 1)
    hotp = max(lay.parent_faults, 1)
    heap = max(lay.anon_pages - hot - hotp - STACK_PAGES, 1)
    segs = [
        Segment("text", TEXT_VPN, 1, "/bench/python", False),
        Segment("hot", HOT_VPN, hot),
        Segment("hotp", HOTP_VPN, hotp),
        Segment("heap", HEAP_VPN, heap),
        Segment("stack", STACK_VPN, STACK_PAGES),
    ]
    for i in range(max(lay.entries - len(segs), 0)):
        segs.append(Segment(f"lib{i}", LIBC_VPN + 512 * i, 1, f"/bench/lib{i}.so", False))
    return Image("python", tuple(sorted(segs, key=lambda s: s.vpn)))


def true_image(spec: MicroSpec) -> Image:
    """The program the exec benchmark runs: its text, data and stack, and library
    pages up to as many page faults as the host's run of it took after exec."""
    text = max(spec.program_pages, 1)
    libs = max(spec.exec_faults - text - TRUE_DATA_PAGES - TRUE_STACK_PAGES, 1)
    return Image(
        "true",
        (
            Segment("text", TEXT_VPN, text, "/bin/true", False),
            Segment("data", DATA_VPN, TRUE_DATA_PAGES),
            Segment("libc", LIBC_VPN, libs, "/lib/libc.so", False),
            Segment("stack", STACK_VPN, TRUE_STACK_PAGES),
        ),
    )


class MicroRun:
    """One benchmark on one simulated kernel."""

    def __init__(self, k: Kernel, spec: MicroSpec, bench: str) -> None:
        self.k = k
        self.spec = spec
        self.bench = bench
        self.log = _Log()
        self.done = False
        self.barrier = 0

    # -- the parent ---------------------------------------------------------------------

    def parent(self, p: Proc) -> KPath:
        k = self.k
        img = parent_image(self.spec.layout)
        yield from sys_execve(k, p, img)
        vm = p.p_vmspace
        assert vm is not None
        for seg in img.segments:
            if seg.file is None:
                yield from uvm_touch(k.uvm, p, vm, seg.vpn, seg.npages, write=True)
            elif seg.name == "text":
                yield from uvm_touch(k.uvm, p, vm, seg.vpn, seg.npages)
        run: Callable[[Proc], KPath] = getattr(self, f"bench_{self.bench}")
        yield from run(p)
        self.done = True
        yield from sys_exit(k, p, 0)

    def after_fork(self, p: Proc) -> KPath:
        """The parent's writes between fork and ``wait4``."""
        vm = p.p_vmspace
        assert vm is not None
        n = max(self.spec.layout.parent_faults, 1)
        yield from uvm_touch(self.k.uvm, p, vm, HOTP_VPN, n, write=True)

    def child_start(self, c: Proc) -> KPath:
        """The child's writes after fork (CPython's work), then back to user space."""
        vm = c.p_vmspace
        assert vm is not None
        n = max(self.spec.layout.child_faults, 1)
        yield from uvm_touch(self.k.uvm, c, vm, HOT_VPN, n, write=True)
        yield from userret(self.k, c)

    def fork_wait(self, p: Proc, body: Callable[[Proc], KPath]) -> KPath:
        """fork a child running ``body``, the parent's writes, ``wait4``; the time
        ``wait4`` returned."""
        yield from fork1(self.k, p, "bench", body)
        yield from self.after_fork(p)
        child = yield from sys_wait4(self.k, p)
        if child is None:
            raise RuntimeError("micro: wait4 found no child")
        return self.k.now

    def mmap(self, p: Proc, vpn: int, npages: int) -> KPath:
        """mmap(2) of anonymous memory: the call's entry and the map entry."""
        vm = p.p_vmspace
        assert vm is not None
        yield Run(self.k.costs.syscall_ns)
        yield from uvm_map(self.k.uvm, p, vm.vm_map, vpn, npages)

    # -- the benchmarks -----------------------------------------------------------------

    def bench_fork_exit(self, p: Proc) -> KPath:
        k = self.k
        for _ in range(MODEL_REPEATS):
            t0 = k.now

            def body(c: Proc) -> KPath:
                yield from self.child_start(c)
                yield from sys_exit(k, c, 0)

            t1 = yield from self.fork_wait(p, body)
            self.log.add("0", {"latency_ns": t1 - t0})

    def bench_touch_exit(self, p: Proc) -> KPath:
        k = self.k
        for m in self.spec.mib:
            n = m * MIB_PAGES
            for _ in range(MODEL_REPEATS):
                stamp: dict[str, int] = {}

                def body(c: Proc, n: int = n, stamp: dict[str, int] = stamp) -> KPath:
                    yield from self.child_start(c)
                    t1 = t2 = 0
                    if n:
                        yield from self.mmap(c, BIG_VPN, n)
                        vm = c.p_vmspace
                        assert vm is not None
                        t1 = k.now
                        yield from uvm_touch(k.uvm, c, vm, BIG_VPN, n, write=True)
                        t2 = k.now
                    stamp["fault"] = t2 - t1
                    stamp["exit"] = k.now
                    yield from sys_exit(k, c, 0)

                t5 = yield from self.fork_wait(p, body)
                self.log.add(str(m), {"fault_ns": stamp["fault"], "exit_ns": t5 - stamp["exit"]})

    def bench_exec(self, p: Proc) -> KPath:
        k = self.k
        img = true_image(self.spec)
        for _ in range(MODEL_REPEATS):
            t0 = k.now

            def body(c: Proc) -> KPath:
                yield from self.child_start(c)
                yield from sys_execve(k, c, img)
                vm = c.p_vmspace
                assert vm is not None
                for seg in img.segments:
                    yield from uvm_touch(k.uvm, c, vm, seg.vpn, seg.npages, write=seg.file is None)
                yield from sys_exit(k, c, 0)

            t1 = yield from self.fork_wait(p, body)
            self.log.add("0", {"latency_ns": t1 - t0})

    def bench_cow(self, p: Proc) -> KPath:
        k = self.k
        vm = p.p_vmspace
        assert vm is not None
        for m in self.spec.mib:
            n = m * MIB_PAGES
            for _ in range(MODEL_REPEATS):
                if n:
                    yield from self.mmap(p, BIG_VPN, n)
                    yield from uvm_touch(k.uvm, p, vm, BIG_VPN, n, write=True)
                stamp: dict[str, int] = {}

                def body(c: Proc, n: int = n, stamp: dict[str, int] = stamp) -> KPath:
                    stamp["start"] = k.now
                    yield from self.child_start(c)
                    t1 = t2 = k.now
                    if n:
                        cvm = c.p_vmspace
                        assert cvm is not None
                        yield from uvm_touch(k.uvm, c, cvm, BIG_VPN, n, write=True)
                        t2 = k.now
                    stamp["fault"] = t2 - t1
                    stamp["exit"] = k.now
                    yield from sys_exit(k, c, 0)

                t0 = k.now
                t5 = yield from self.fork_wait(p, body)
                if n:
                    yield Run(k.costs.syscall_ns)
                    yield from uvm_unmap(k.uvm, p, vm.vm_map, BIG_VPN, BIG_VPN + n)
                self.log.add(
                    str(m),
                    {
                        "fork_ns": stamp["start"] - t0,
                        "fault_ns": stamp["fault"],
                        "exit_ns": t5 - stamp["exit"],
                    },
                )

    def bench_file(self, p: Proc) -> KPath:
        k = self.k
        vm = p.p_vmspace
        assert vm is not None
        for m in (m for m in self.spec.mib if m):
            n = m * MIB_PAGES
            name = f"/tmp/exitsim-calibrate-{m}"
            # The file is in the page cache: the parent wrote and read it before.
            obj = uvn_attach(k.uvm, name, n)
            yield from uvm_map(k.uvm, p, vm.vm_map, SHM_VPN, n, obj, 0, PROT_READ)
            yield from uvm_touch(k.uvm, p, vm, SHM_VPN, n)
            yield from uvm_unmap(k.uvm, p, vm.vm_map, SHM_VPN, SHM_VPN + n)
            for _ in range(MODEL_REPEATS):
                stamp: dict[str, int] = {}

                def body(
                    c: Proc, n: int = n, name: str = name, stamp: dict[str, int] = stamp
                ) -> KPath:
                    yield from self.child_start(c)
                    cvm = c.p_vmspace
                    assert cvm is not None
                    yield Run(k.costs.syscall_ns)
                    cobj = uvn_attach(k.uvm, name, n)
                    yield from uvm_map(k.uvm, c, cvm.vm_map, SHM_VPN, n, cobj, 0, PROT_READ)
                    t1 = k.now
                    yield from uvm_touch(k.uvm, c, cvm, SHM_VPN, n)
                    stamp["fault"] = k.now - t1
                    yield from sys_exit(k, c, 0)

                yield from self.fork_wait(p, body)
                self.log.add(str(m), {"fault_ns": stamp["fault"]})

    def bench_concurrent(self, p: Proc) -> KPath:
        k = self.k
        n = self.spec.big_mib * MIB_PAGES
        chan = ("calibrate", "barrier")
        for count in self.spec.counts:
            for _ in range(MODEL_REPEATS):
                self.barrier = 0
                stamps: dict[int, int] = {}

                def body(c: Proc, count: int = count, stamps: dict[int, int] = stamps) -> KPath:
                    yield from self.child_start(c)
                    yield from self.mmap(c, BIG_VPN, n)
                    cvm = c.p_vmspace
                    assert cvm is not None
                    yield from uvm_touch(k.uvm, c, cvm, BIG_VPN, n, write=True)
                    self.barrier += 1
                    if self.barrier == count:
                        yield Wakeup(chan)
                    while self.barrier < count:
                        yield from tsleep(chan, "barrier")
                    assert c.p_p is not None
                    stamps[c.p_p.ps_pid] = k.now
                    yield from sys_exit(k, c, 0)

                for _ in range(count):
                    yield from fork1(k, p, "bench", body)
                for _ in range(count):
                    child = yield from sys_wait4(k, p)
                    if child is None:
                        raise RuntimeError("micro: wait4 found no child")
                    self.log.add(str(count), {"exit_ns": k.now - stamps[child.ps_pid]})


def run_bench(spec: MicroSpec, profile: CostProfile, bench: str) -> Rows:
    """Run one benchmark in the model; its stamped rows by variant, in run order."""
    if bench not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {bench!r} (known: {', '.join(BENCHMARKS)})")
    machine = Machine(profile.arch, spec.ncpu, "range", profile)
    k = Kernel(machine, get_policy(spec.design), total_pages=DEFAULT_TOTAL_PAGES)
    k.start_kernel_threads()
    run = MicroRun(k, spec, bench)
    spawn_user_process(k, "python", run.parent)
    k.engine.run()
    k.engine.finish()
    if not run.done:
        raise RuntimeError(f"micro: the {bench} benchmark did not finish")
    return run.log.rows


def _med(rows: list[dict[str, int]], key: str) -> float:
    return median([r[key] for r in rows])


def _per_page(by_size: Rows, sizes: list[int], key: str) -> float:
    """``key``'s medians summed over ``sizes`` (MiB, none 0), per page."""
    pages = sum(m * MIB_PAGES for m in sizes)
    return sum(_med(by_size[str(m)], key) for m in sizes) / pages


def _line(sizes: tuple[int, ...], ys: list[float]) -> tuple[float, float]:
    """The line through ``ys`` over the pages of ``sizes``: (slope, intercept)."""
    return line_fit([m * MIB_PAGES for m in sizes], ys)


def model_figures(
    spec: MicroSpec, profile: CostProfile, benches: tuple[str, ...] = BENCHMARKS
) -> dict[str, float]:
    """The model's figures for ``benches``, named as ``measured.figures`` names the
    host's (those the model has; medians over the model's runs)."""
    out: dict[str, float] = {}
    sizes = [m for m in spec.mib if m]
    if "fork_exit" in benches or "exec" in benches:
        fe = run_bench(spec, profile, "fork_exit")
        out["fork_exit_ns"] = _med(fe["0"], "latency_ns")
    if "touch_exit" in benches:
        te = run_bench(spec, profile, "touch_exit")
        for m in spec.mib:
            out[f"exit_ns@{m}"] = _med(te[str(m)], "exit_ns")
        if sizes:
            out["fault_per_page_ns"] = _per_page(te, sizes, "fault_ns")
        if len(spec.mib) >= 2:
            slope, icpt = _line(spec.mib, [out[f"exit_ns@{m}"] for m in spec.mib])
            out["teardown_per_page_ns"] = slope
            out["teardown_per_mib_ns"] = slope * MIB_PAGES
            out["exit_fixed_ns"] = icpt
    if "exec" in benches:
        ex = run_bench(spec, profile, "exec")
        out["exec_ns"] = _med(ex["0"], "latency_ns")
        out["exec_minus_fork_ns"] = out["exec_ns"] - out["fork_exit_ns"]
    if "cow" in benches:
        cw = run_bench(spec, profile, "cow")
        for m in spec.mib:
            out[f"cow_exit_ns@{m}"] = _med(cw[str(m)], "exit_ns")
        if sizes:
            out["cow_fault_per_page_ns"] = _per_page(cw, sizes, "fault_ns")
        if len(spec.mib) >= 2:
            ys = [_med(cw[str(m)], "fork_ns") for m in spec.mib]
            out["cow_fork_per_page_ns"] = _line(spec.mib, ys)[0]
    if "file" in benches and sizes:
        fl = run_bench(spec, profile, "file")
        out["file_fault_per_page_ns"] = _per_page(fl, sizes, "fault_ns")
    if "concurrent" in benches:
        cc = run_bench(spec, profile, "concurrent")
        for c in spec.counts:
            out[f"concurrent_exit_ns@{c}"] = _med(cc[str(c)], "exit_ns")
        alone = out.get(f"concurrent_exit_ns@{spec.counts[0]}")
        for c in spec.counts[1:]:
            if alone:
                out[f"concurrent_ratio@{c}"] = out[f"concurrent_exit_ns@{c}"] / alone
    return out


def describe(spec: MicroSpec) -> dict[str, Any]:
    """The spec as plain data (for the JSON the command writes)."""
    return {
        "design": spec.design,
        "ncpu": spec.ncpu,
        "mib": list(spec.mib),
        "big_mib": spec.big_mib,
        "counts": list(spec.counts),
        "layout": {
            "entries": spec.layout.entries,
            "anon_pages": spec.layout.anon_pages,
            "child_faults": spec.layout.child_faults,
            "parent_faults": spec.layout.parent_faults,
        },
        "program_pages": spec.program_pages,
        "exec_faults": spec.exec_faults,
    }
