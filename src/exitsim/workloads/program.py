"""Programs as the workloads run them: an image exec maps, the pages the program
touches, and its compute with system calls in between.

Every workload (the generators and a replayed process tree) is built from these, so a
``cc1`` is the same kind of thing whichever workload runs it. Addresses are fixed per
segment: they only have to be distinct, page-table placement follows from them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from exitsim.engine.thread import KPath
from exitsim.kern.exec import Image, Segment, sys_execve
from exitsim.kern.sig import userret
from exitsim.kern.syscall import syscall, user
from exitsim.machine.machine import DEFAULT_TOTAL_PAGES
from exitsim.vm.fault import uvm_touch

if TYPE_CHECKING:
    from exitsim.kern.kernel import Kernel
    from exitsim.kern.proc import Proc

#: libc's resident pages (assumption: a 1 MiB libc, the part a small program touches).
LIBC_PAGES = 250
TEXT_VPN = 0x400
#: The run size a partial text is touched in (256 KiB; a program's text object is a
#: whole number of these when its processes touch different amounts of it).
TEXT_CHUNK = 64
# Segment addresses, in pages: far enough apart for any size a machine of the model can
# hold (text up to 4 GiB, heap up to 2 TiB, SysV segments up to 4 TiB), and 512-page
# aligned, so each segment starts its own page-table page.
DATA_VPN = 0x100000
HEAP_VPN = 0x200000
LIBC_VPN = 0x20000000
#: Free for a workload's own big mapping (bigexit's data set), up to SHM_VPN.
BIG_VPN = 0x30000000
SHM_VPN = 0x40000000
STACK_VPN = 0x7F000000
#: A replayed process's data and stack (tree.py): its anon pages less these are heap.
DATA_PAGES = 8
STACK_PAGES = 16


#: The longest time any workload parameter or field can give (a day, in ms): more is a
#: mistake, and would run for ever (or overflow) in the simulation.
MAX_MS = 86_400_000.0


def check_number(name: str, value: float, top: float) -> None:
    """A generator parameter that must be a finite number from 0 to ``top``."""
    if not math.isfinite(value) or not 0 <= value <= top:
        raise ValueError(f"{name} must be a finite number from 0 to {top:.10g} (got {value})")


def check_time(name: str, value: float) -> None:
    """A time parameter: at most a day, in its own unit (``_ms`` or ``_us``)."""
    check_number(name, value, MAX_MS * 1000 if name.endswith("_us") else MAX_MS)


def check_count(name: str, value: int, least: int = 1) -> None:
    """A count parameter: a whole number from ``least``."""
    if value < least:
        raise ValueError(f"{name} must be at least {least} (got {value})")


def check_pages(name: str, value: int, least: int = 1) -> None:
    """A size parameter of a generator: from ``least`` to what the simulated machine
    holds (more runs out of memory, which is a bad parameter, not a finding)."""
    if not least <= value <= DEFAULT_TOTAL_PAGES:
        raise ValueError(
            f"{name} must be from {least} to {DEFAULT_TOTAL_PAGES} pages, the simulated"
            f" machine's memory (got {value})"
        )


@dataclass(frozen=True, slots=True)
class Program:
    """What one program does between exec and exit."""

    name: str
    text_pages: int
    heap_pages: int
    user_ns: int
    locked_calls: int
    unlocked_calls: int
    stack_pages: int = 16
    #: Named calls made between returns to user space, ``(call, count)``; when given,
    #: they replace the ``open``/``read`` stand-ins of ``locked_calls``/``unlocked_calls``.
    mix: tuple[tuple[str, int], ...] = ()

    def image(self) -> Image:
        return Image(
            self.name,
            (
                Segment("text", TEXT_VPN, self.text_pages, f"/usr/bin/{self.name}", False),
                Segment("data", DATA_VPN, 8),
                Segment("heap", HEAP_VPN, self.heap_pages),
                Segment("libc", LIBC_VPN, LIBC_PAGES, "/usr/lib/libc.so", False),
                Segment("stack", STACK_VPN, self.stack_pages),
            ),
        )


#: A small shell that drives a generator's processes (assumption: file 290 pages with
#: libc, anon 40: data 8, heap 16, stack 16; 0.5 ms of its own work).
SH = Program("sh", 290 - LIBC_PAGES, 16, 500_000, 20, 20)


def fault_in(k: Kernel, p: Proc, prog: Program, text: int | None = None) -> KPath:
    """The first touches after exec: text (all of it, or its first ``text`` pages) and
    libc read, data, heap and stack written. A partial text is touched in
    TEXT_CHUNK-page runs, so that processes touching different amounts of one shared
    text object still agree on its page runs in range granularity."""
    vm = p.p_vmspace
    assert vm is not None
    if text is None:
        yield from uvm_touch(k.uvm, p, vm, TEXT_VPN, prog.text_pages)
    else:
        for off in range(0, text, TEXT_CHUNK):
            n = min(TEXT_CHUNK, prog.text_pages - off)
            yield from uvm_touch(k.uvm, p, vm, TEXT_VPN + off, n)
    yield from uvm_touch(k.uvm, p, vm, LIBC_VPN, LIBC_PAGES)
    yield from uvm_touch(k.uvm, p, vm, DATA_VPN, 8, write=True)
    yield from uvm_touch(k.uvm, p, vm, HEAP_VPN, prog.heap_pages, write=True)
    yield from uvm_touch(k.uvm, p, vm, STACK_VPN, prog.stack_pages, write=True)


def compute(k: Kernel, p: Proc, user_ns: int, locked: int, unlocked: int) -> KPath:
    """``user_ns`` of user time cut by ``locked + unlocked`` system calls, the locked
    ones (``open``) spread evenly among the unlocked ones (``read``). Each return to
    user space passes ``userret``, where a thread of an exiting process is made to exit."""
    calls = locked + unlocked
    chunk = user_ns // (calls + 1)
    left = user_ns
    for i in range(calls):
        yield user(chunk)
        left -= chunk
        is_locked = (i * locked) // calls != ((i + 1) * locked) // calls
        yield from syscall(k, p, "open" if is_locked else "read")
        yield from userret(k, p)
    yield user(max(left, 1))
    yield from userret(k, p)


def spread(mix: tuple[tuple[str, int], ...]) -> list[str]:
    """The calls of ``mix`` in one order that spreads each name evenly through the
    run: the i-th of n calls of a name sits at (i + 1/2) / n of the way, ties in the
    order of ``mix``. Deterministic, so a run is the same for the same program."""
    marks = [((i + 0.5) / n, rank, name) for rank, (name, n) in enumerate(mix) for i in range(n)]
    return [name for _, _, name in sorted(marks)]


def compute_mix(k: Kernel, p: Proc, user_ns: int, mix: tuple[tuple[str, int], ...]) -> KPath:
    """``user_ns`` of user time cut by the named calls of ``mix``, spread evenly (each
    return to user space passes ``userret``, as in ``compute``)."""
    calls = spread(mix)
    chunk = user_ns // (len(calls) + 1)
    left = user_ns
    for name in calls:
        yield user(chunk)
        left -= chunk
        yield from syscall(k, p, name)
        yield from userret(k, p)
    yield user(max(left, 1))
    yield from userret(k, p)


def run_program(k: Kernel, p: Proc, prog: Program) -> KPath:
    """After exec: fault the image in, then compute with system calls in between."""
    yield from fault_in(k, p, prog)
    if prog.mix:
        yield from compute_mix(k, p, prog.user_ns, prog.mix)
    else:
        yield from compute(k, p, prog.user_ns, prog.locked_calls, prog.unlocked_calls)


def exec_and_run(k: Kernel, p: Proc, prog: Program) -> KPath:
    yield from sys_execve(k, p, prog.image())
    yield from run_program(k, p, prog)
