"""Workloads by name: each puts its processes on a fresh kernel at time 0.

A generator's parameters are a frozen dataclass; they are checked with pydantic (in its
lax mode, as ``--param`` gives strings or numbers; unknown keys refused) so ``--param``
and a workload file's ``[generator]`` table give the same one-line errors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import cache
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter, ValidationError

from exitsim.workloads.bigexit import BigexitParams, start_bigexit
from exitsim.workloads.build import BuildParams, start_build
from exitsim.workloads.cbuild import CBuildParams, OpenBSDKernelParams, start_cbuild
from exitsim.workloads.configure import ConfigureParams, start_configure
from exitsim.workloads.forkstorm import ForkstormParams, start_forkstorm
from exitsim.workloads.shm import ShmParams, start_shm
from exitsim.workloads.spec import TREE, validation_message
from exitsim.workloads.threads import ThreadsParams, start_threads
from exitsim.workloads.tree import start_tree

if TYPE_CHECKING:
    from exitsim.kern.kernel import Kernel


class WorkloadError(ValueError):
    """An unknown workload or a bad parameter; one line."""


@dataclass(frozen=True, slots=True)
class Generator:
    """A built-in workload: what it is for, its parameters, how it starts."""

    summary: str
    params: type
    start: Callable[[Kernel, Any, int], None]


WORKLOADS: dict[str, Generator] = {
    "build": Generator(
        "make -jN of compile jobs: sh -> cc -> cc1, as (the default)", BuildParams, start_build
    ),
    "cbuild": Generator(
        "a C build as captured: units gcc -> cc1, as with their file calls; ar, link",
        CBuildParams,
        start_cbuild,
    ),
    "openbsd-kernel": Generator(
        "cbuild shaped like a GENERIC.MP kernel build: 1,000 units, then ld -o bsd",
        OpenBSDKernelParams,
        start_cbuild,
    ),
    "forkstorm": Generator(
        "fork+exit and fork+exec+exit loops on every CPU (lmbench lat_proc)",
        ForkstormParams,
        start_forkstorm,
    ),
    "bigexit": Generator(
        "one process with gigabytes resident exits while workers run short jobs",
        BigexitParams,
        start_bigexit,
    ),
    "threads": Generator(
        "multi-threaded servers exiting, and a process whose threads come and go",
        ThreadsParams,
        start_threads,
    ),
    "shm": Generator(
        "families sharing SysV segments, exiting in orders that move the last detach",
        ShmParams,
        start_shm,
    ),
    "configure": Generator(
        "a configure script: a shell running short programs one at a time",
        ConfigureParams,
        start_configure,
    ),
}


@cache
def _adapter(cls: type) -> TypeAdapter[Any]:
    return TypeAdapter(cls)


def check_params(name: str, params: dict[str, Any]) -> Any:
    """The generator's parameter object for ``params``, or WorkloadError."""
    if name == TREE:
        raise WorkloadError(f"{TREE!r} is not a generator: give the tree as [[process]]")
    if name not in WORKLOADS:
        raise WorkloadError(f"unknown workload {name!r} (known: {', '.join(WORKLOADS)})")
    cls = WORKLOADS[name].params
    known = {f.name for f in fields(cls)}
    for key in params:
        if key not in known:
            raise WorkloadError(
                f"workload {name}: unknown parameter {key!r} (known: {', '.join(sorted(known))})"
            )
    try:
        return _adapter(cls).validate_python(params)
    except ValidationError as e:
        raise WorkloadError(f"workload {name}: {validation_message(e)}") from None
    except (TypeError, ValueError) as e:
        raise WorkloadError(f"workload {name}: {e}") from None


def start_workload(k: Kernel, name: str, params: dict[str, Any], seed: int) -> None:
    if name == TREE:
        try:
            start_tree(k, params, seed)
        except ValidationError as e:
            raise WorkloadError(f"workload tree: {validation_message(e)}") from None
        except ValueError as e:
            raise WorkloadError(f"workload tree: {e}") from None
        return
    p = check_params(name, params)
    WORKLOADS[name].start(k, p, seed)
