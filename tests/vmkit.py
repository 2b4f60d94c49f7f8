"""A small harness for driving vm/ directly: an engine, a machine, a Uvm, and threads
that each use one vmspace (the kernel layer does this for real)."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from exitsim.engine.locks import TicketLock
from exitsim.engine.sched import Engine
from exitsim.engine.thread import Thread
from exitsim.machine.machine import Machine
from exitsim.vm.pmap import pmap_deactivate, pmap_switch
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
        self.engine.idle_hook = self._idled

    def _switched(self, cpu: int, t: Thread | None) -> None:
        if t is not None and t.tid in self.vm_of:
            vm = self.vm_of[t.tid]
            if vm.vm_map.pmap is not None:
                pmap_switch(self.uvm, cpu, vm.vm_map.pmap)

    def _idled(self, cpu: int) -> None:
        """The CPU runs its idle thread: the kernel's address space is loaded."""
        pmap_switch(self.uvm, cpu, None)

    def switch_away(self, me: Thread) -> None:
        """``me``'s CPU loads the kernel's address space, as the switch to the reaper
        does before it frees an exited process's vmspace (the kit runs both parts of
        an exit in one thread)."""
        if me.cpu is not None:
            pmap_switch(self.uvm, me.cpu, None)

    def leave(self, me: Thread, pm: Any) -> None:
        """exit1's ``pmap_deactivate`` of ``pm`` and the switch away that follows
        (``sched_toidle``), before anything else frees the address space."""
        pmap_deactivate(self.uvm, me, pm)
        self.switch_away(me)

    def spawn(
        self, name: str, fn: Callable[..., Body], *args: Any, at: int | None = None
    ) -> Thread:
        return self.engine.spawn(name, lambda me: fn(me, *args), at=at)

    def run(self) -> None:
        self.engine.run()
        self.engine.finish()
