"""Small helpers the engine tests share."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from exitsim.engine.sched import Engine
from exitsim.engine.thread import Thread

Body = Generator[Any, None, Any]


def spawn(
    eng: Engine, name: str, fn: Callable[..., Body], *args: Any, at: int | None = None
) -> Thread:
    """Spawn ``fn(me, *args)``: the generator gets its own Thread as ``me``."""
    return eng.spawn(name, lambda me: fn(me, *args), at=at)


def run_to_end(eng: Engine, max_events: int = 100_000) -> None:
    """Run until the heap drains; a run that never drains is a failure, not a hang."""
    eng.run(max_events=max_events)
    assert not eng.heap, f"engine still busy after {max_events} events at t={eng.now}ns"
    eng.finish()
