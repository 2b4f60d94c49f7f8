"""A harness for driving the kernel directly: a kernel of a given design with init and
the reaper running, user processes with bodies written in the test, and the end-of-run
checks that ``simulate`` makes."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from exitsim.kern.fork import spawn_user_process
from exitsim.kern.kernel import Kernel
from exitsim.kern.proc import Proc, Process
from exitsim.machine.machine import Machine
from exitsim.policies.base import Policy
from exitsim.policies.registry import get_policy
from exitsim.vm.audit import audit_all_exited

Body = Generator[Any, None, Any]


def make_kernel(
    policy: str | Policy = "purge+pmap_purge",
    arch: str = "amd64",
    cpus: int = 4,
    granularity: str = "range",
    strict: bool = False,
    **kw: Any,
) -> Kernel:
    pol = get_policy(policy) if isinstance(policy, str) else policy
    k = Kernel(
        Machine(arch, cpus, granularity), pol, total_pages=1 << 22, debug=True, strict=strict, **kw
    )
    k.start_kernel_threads()
    return k


def user_process(
    k: Kernel, name: str, body: Callable[[Kernel, Proc], Body], at: int | None = None
) -> Process:
    """A process whose first thread runs ``body(k, p)`` in a fresh address space."""
    return spawn_user_process(k, name, lambda p: body(k, p), at=at)


def run_to_end(k: Kernel) -> None:
    """Run until nothing is pending, then check nothing is left or leaked."""
    k.engine.run()
    k.engine.finish()
    k.meters.close()
    left = [pr for pr in k.allprocess.values() if pr is not k.initprocess and pr.comm != "reaper"]
    assert not left, f"processes still alive: {left}"
    assert not k.zombprocess, f"zombies never waited for: {k.zombprocess}"
    audit_all_exited(k.uvm)
