"""A small harness for driving vm/ directly: an engine, a machine, a Uvm, and threads
that each use one vmspace (the kernel layer does this for real)."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from exitsim.engine.locks import TicketLock
from exitsim.engine.sched import Engine
from exitsim.engine.thread import Thread
from exitsim.machine.machine import Machine
from exitsim.vm.pmap import pmap_switch
from exitsim.vm.uvm import Uvm
from exitsim.vm.vmspace import Vmspace

Body = Generator[Any, None, Any]


class VmKit:
    """One simulated machine with the vm layer on it."""

    def __init__(
        self,
        arch: str = "amd64",
        ncpu: int = 2,
        granularity: str = "exact",
        total_pages: int = 1 << 20,
        debug: bool = True,
    ) -> None:
        self.machine = Machine(arch, ncpu, granularity)
        self.engine = Engine(self.machine.engine_config())
        self.kernel_lock = TicketLock("kernel_lock")
        self.uvm = Uvm(self.engine, self.machine, self.kernel_lock, total_pages, debug=debug)
        self.vm_of: dict[int, Vmspace] = {}
        self.engine.switch_hook = self._switched

    def _switched(self, cpu: int, t: Thread | None) -> None:
        if t is not None and t.tid in self.vm_of:
            vm = self.vm_of[t.tid]
            if vm.vm_map.pmap is not None:
                pmap_switch(self.uvm, cpu, vm.vm_map.pmap)

    def spawn(
        self, name: str, fn: Callable[..., Body], *args: Any, at: int | None = None
    ) -> Thread:
        return self.engine.spawn(name, lambda me: fn(me, *args), at=at)

    def run(self) -> None:
        self.engine.run()
        self.engine.finish()
