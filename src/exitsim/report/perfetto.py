"""A timed run as a Perfetto trace (Chrome JSON trace format, which the Perfetto UI
imports): a track per CPU with a slice per stretch of CPU time, named after the kernel
function that spent it (``uvm_map_teardown``, ``_pmap_remove_arm64``, ``reaper`` ...) or
``user <program>``; counters for the reaper backlog, zombies and memory held by exited
processes. Track ids start at 1000, so they are non-zero and never a pid.

Timestamps are microseconds with nanosecond decimals (the format's unit); the model's
clock is integer nanoseconds.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from exitsim.engine.ops import USER, Run
from exitsim.engine.thread import where

if TYPE_CHECKING:
    from exitsim.engine.thread import Thread
    from exitsim.kern.kernel import Kernel

TRACK_BASE = 1000
PID = 1


class TraceRecorder:
    """Collects slices while a kernel runs; ``to_json`` renders them."""

    def __init__(self, k: Kernel) -> None:
        self.k = k
        self.slices: list[tuple[int, int, int, str, str]] = []  # ts, dur, cpu, name, thread
        k.engine.tracer = self.on_op

    def on_op(self, now: int, cpu: int, t: Thread, op: Any) -> None:
        if type(op) is not Run or op.ns <= 0:
            return
        if op.mode == USER:
            comm = getattr(getattr(t, "p_p", None), "comm", t.name)
            name = f"user {comm}"
        else:
            name = where(t)
        self.slices.append((now, op.ns, cpu, name, t.name))

    def to_json(self, title: str) -> str:
        k = self.k
        ev: list[dict[str, Any]] = [
            {"ph": "M", "name": "process_name", "pid": PID, "tid": 0, "args": {"name": title}},
        ]
        for c in range(k.machine.ncpu):
            ev.append(
                {
                    "ph": "M",
                    "name": "thread_name",
                    "pid": PID,
                    "tid": TRACK_BASE + c,
                    "args": {"name": f"cpu{c}"},
                }
            )
        for ts, dur, cpu, name, thread in self.slices:
            ev.append(
                {
                    "ph": "X",
                    "pid": PID,
                    "tid": TRACK_BASE + cpu,
                    "ts": ts / 1000,
                    "dur": dur / 1000,
                    "name": name,
                    "args": {"thread": thread},
                }
            )
        m = k.meters
        for label, level in (
            ("reaper backlog", m.backlog),
            ("zombies", m.zombies),
            ("held after exit (pages)", m.held_pages),
        ):
            for ts, value in level.samples:
                ev.append(
                    {
                        "ph": "C",
                        "pid": PID,
                        "tid": 0,
                        "ts": ts / 1000,
                        "name": label,
                        "args": {"value": value},
                    }
                )
        return json.dumps({"traceEvents": ev, "displayTimeUnit": "ns"}) + "\n"
