"""Simulator cost of one process exit, by resident size and granularity.

A process maps program text (a shared vnode), data, a heap and a stack, faults its heap
in to the given resident size, and exits the committed way (uvm_purge with pmap_purge
where the arch has it, pmap_deactivate, uvmspace_free). We time only the exit, in wall
seconds of this machine, and print the simulated sys time it cost the process. In range
granularity the wall time must stay flat as the size grows; in exact granularity it
grows with the number of pages, so exact runs stop at --exact-max.

The last line printed is ``range 16GiB/1MiB wall ratio: R``.
Usage: python bench/teardown.py [--arch amd64|arm64] [--exact-max MiB]
"""

from __future__ import annotations

import argparse
import platform
import time

from exitsim.engine.locks import TicketLock
from exitsim.engine.sched import Engine
from exitsim.machine.machine import Machine
from exitsim.vm.fault import uvm_fault
from exitsim.vm.map import PROT_READ, uvm_map
from exitsim.vm.object import uvn_attach
from exitsim.vm.pmap import pmap_activate, pmap_deactivate
from exitsim.vm.uvm import Uvm
from exitsim.vm.vmspace import uvm_purge, uvmspace_alloc, uvmspace_free

MIB_PAGES = 256  # 4 KiB pages per MiB
SIZES_MIB = [1, 16, 64, 256, 1024, 4096, 16384]


def one_exit(arch: str, granularity: str, mib: int) -> tuple[float, int, int]:
    """Returns (wall seconds of the exit, simulated sys ns of the exit, pages freed)."""
    machine = Machine(arch, 2, granularity)
    eng = Engine(machine.engine_config())
    uvm = Uvm(eng, machine, TicketLock("kernel_lock"), total_pages=mib * MIB_PAGES * 2 + 65536)
    heap = mib * MIB_PAGES
    timing: dict[str, float | int] = {}

    def proc(me):
        vm = yield from uvmspace_alloc(uvm, me, "big")
        pmap_activate(uvm, me, vm.pmap)
        text = uvn_attach(uvm, "/usr/bin/prog", 64)
        yield from uvm_map(uvm, me, vm.vm_map, 0x400, 64, text, 0, PROT_READ, copy_on_write=False)
        yield from uvm_map(uvm, me, vm.vm_map, 0x1000, 16)  # data
        yield from uvm_map(uvm, me, vm.vm_map, 0x10000, heap)  # heap
        yield from uvm_map(uvm, me, vm.vm_map, 0x7F000000, 64)  # stack
        yield from uvm_fault(uvm, me, vm, 0x400, 64)
        yield from uvm_fault(uvm, me, vm, 0x1000, 16, write=True)
        yield from uvm_fault(uvm, me, vm, 0x10000, heap, write=True)
        yield from uvm_fault(uvm, me, vm, 0x7F000000, 64, write=True)
        freed0 = uvm.counters.pages_freed
        sys0 = me.sys_ns
        t0 = time.perf_counter()
        yield from uvm_purge(uvm, me, vm, True)
        pmap_deactivate(uvm, me, vm.pmap)
        yield from uvmspace_free(uvm, me, vm)
        timing["wall"] = time.perf_counter() - t0
        timing["sys"] = me.sys_ns - sys0
        timing["freed"] = uvm.counters.pages_freed - freed0

    eng.spawn("big", proc)
    eng.run()
    eng.finish()
    return float(timing["wall"]), int(timing["sys"]), int(timing["freed"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="arm64", choices=["amd64", "arm64"])
    ap.add_argument("--exact-max", type=int, default=256, help="largest exact run, MiB")
    a = ap.parse_args()
    print(
        f"machine: {platform.machine()} {platform.python_implementation()} "
        f"{platform.python_version()}; arch {a.arch}"
    )
    print(
        f"{'resident':>10} {'granularity':>11} {'exit wall s':>12} {'sim sys ms':>11} "
        f"{'pages freed':>12}"
    )
    walls: dict[int, float] = {}
    for mib in SIZES_MIB:
        for gran in ("exact", "range"):
            if gran == "exact" and mib > a.exact_max:
                print(f"{mib:>8}Mi {gran:>11} {'(not run)':>12}")
                continue
            wall, sys_ns, freed = one_exit(a.arch, gran, mib)
            if gran == "range":
                walls[mib] = wall
            print(f"{mib:>8}Mi {gran:>11} {wall:>12.4f} {sys_ns / 1e6:>11.3f} {freed:>12}")
    print(f"range 16GiB/1MiB wall ratio: {walls[SIZES_MIB[-1]] / walls[SIZES_MIB[0]]:.2f}")


if __name__ == "__main__":
    main()
