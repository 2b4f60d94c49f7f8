"""A simulated thread: a generator plus what the engine needs to schedule it."""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from exitsim.engine.locks import Lock
    from exitsim.engine.ops import Op

#: What a kernel path is: a generator that yields ops and gets None back.
KPath = Generator["Op", None, Any]

# Thread states (the engine's, not OpenBSD's p_stat).
RUNNABLE = 0  # on a run queue
ONPROC = 1  # on a CPU: running, spinning or waiting for IPI acks
SLEEPING = 2  # off CPU, waiting for a wakeup or a sleeping lock
DEAD = 3


class Thread:
    """One schedulable thread. ``kern`` subclasses it as ``Proc``.

    Times are integer nanoseconds. ``sys_ns`` includes spinning, as a real kernel
    charges spin time to the spinning thread; ``spin_ns`` is that part on its own.
    """

    __slots__ = (
        "tid",
        "name",
        "gen",
        "state",
        "cpu",
        "last_cpu",
        "user_ns",
        "sys_ns",
        "spin_ns",
        "held",
        "saved_depths",
        "pending_depth",
        "run_left",
        "wchan",
        "wmesg",
        "interlock",
        "result",
        "exit_ns",
        "nosleep",
        "nops",
    )

    def __init__(self, tid: int, name: str, gen: KPath | None) -> None:
        self.tid = tid
        self.name = name
        self.gen: KPath = gen  # type: ignore[assignment]  # set by Engine.spawn
        self.state = RUNNABLE
        self.cpu: int | None = None
        self.last_cpu: int | None = None
        self.user_ns = 0
        self.sys_ns = 0
        self.spin_ns = 0
        self.held: list[Lock] = []
        # Locks dropped on a switch (kernel lock), with their depth, to take back.
        self.saved_depths: list[tuple[Lock, int]] = []
        self.pending_depth = 0
        # A user run cut by preemption: what is left of it.
        self.run_left = 0
        self.wchan: object = None
        self.wmesg = ""
        self.interlock: Lock | None = None
        self.result: Any = None
        self.exit_ns: int | None = None
        #: Set where the kernel may no longer sleep (exit1 after SDEAD); a sleep then
        #: is an error (openbsd-exit-path.md E4).
        self.nosleep = False
        self.nops = 0  # ops this thread has yielded

    def __repr__(self) -> str:
        return f"<Thread {self.tid} {self.name}>"


def innermost_frame(t: Thread) -> Any:
    """The frame at the bottom of ``t``'s ``yield from`` chain: the kernel function
    that yielded the op ``t`` is waiting on (None once the generator is finished)."""
    g: Any = t.gen
    frame = None
    while g is not None:
        frame = getattr(g, "gi_frame", None) or frame
        g = getattr(g, "gi_yieldfrom", None)
    return frame


def where(t: Thread) -> str:
    """The name of the kernel function ``t`` is in, or "?"."""
    frame = innermost_frame(t)
    return frame.f_code.co_name if frame is not None else "?"
