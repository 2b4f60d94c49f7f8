"""Workloads by name: each puts its processes on a fresh kernel at time 0."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from exitsim.workloads.build import BuildParams, start_build

if TYPE_CHECKING:
    from exitsim.kern.kernel import Kernel


class WorkloadError(ValueError):
    """An unknown workload or a bad parameter; one line."""


WORKLOADS: dict[str, tuple[str, type, Callable[[Kernel, Any, int], None]]] = {
    "build": (
        "make -jN of compile jobs: sh -> cc -> cc1, as (the default)",
        BuildParams,
        start_build,
    ),
}


def start_workload(k: Kernel, name: str, params: dict[str, Any], seed: int) -> None:
    if name not in WORKLOADS:
        raise WorkloadError(f"unknown workload {name!r} (known: {', '.join(WORKLOADS)})")
    _, cls, start = WORKLOADS[name]
    known = {f.name for f in fields(cls)}
    for key in params:
        if key not in known:
            raise WorkloadError(
                f"workload {name}: unknown parameter {key!r} (known: {', '.join(sorted(known))})"
            )
    try:
        p = cls(**params)
    except (TypeError, ValueError) as e:
        raise WorkloadError(f"workload {name}: {e}") from None
    start(k, p, seed)
