"""Errors the engine raises. A model error is never swallowed: it stops the run."""

from __future__ import annotations


class SimError(Exception):
    """Base of every error raised by the simulated kernel or the engine."""


class LockError(SimError):
    """A lock was misused: released when not held, recursed, slept on while spinning."""


class BadYield(SimError):
    """A thread yielded something that is not an op; the message names where."""


class Deadlock(SimError):
    """No event is pending but some thread still waits (invariant 7 of design.md)."""


class InvariantViolation(SimError):
    """A design.md invariant failed. Carries its number, the objects, the CPU, the time
    and the schedule that led there."""

    def __init__(
        self,
        invariant: int,
        message: str,
        *,
        objects: tuple[object, ...] = (),
        cpu: int | None = None,
        time_ns: int | None = None,
        schedule: str | None = None,
    ) -> None:
        self.invariant = invariant
        self.message = message
        self.objects = objects
        self.cpu = cpu
        self.time_ns = time_ns
        self.schedule = schedule
        where = []
        if cpu is not None:
            where.append(f"cpu{cpu}")
        if time_ns is not None:
            where.append(f"t={time_ns}ns")
        suffix = f" [{' '.join(where)}]" if where else ""
        super().__init__(f"invariant {invariant}: {message}{suffix}")


def kassert(cond: bool, msg: str) -> None:
    """The model's KASSERT: always on (never stripped by ``python -O``)."""
    if not cond:
        raise SimError(f"kassert failed: {msg}")
