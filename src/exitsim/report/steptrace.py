"""A trace of a checked schedule for the Perfetto UI (Chrome JSON trace format): one
track per CPU, one slice per step named after the kernel function the thread was in.
Steps have no duration of their own, so step i is drawn at i microseconds."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from exitsim.check.run import Step

#: Track ids start here, away from any pid (Perfetto drops clashing tracks).
TRACK_BASE = 1000


def steps_to_trace(steps: list[Step], title: str) -> str:
    events: list[dict[str, Any]] = [
        {"ph": "M", "name": "process_name", "pid": 1, "tid": 0, "args": {"name": title}},
    ]
    cpus = sorted({s.cpu for s in steps if s.cpu is not None})
    for c in cpus:
        events.append(
            {
                "ph": "M",
                "name": "thread_name",
                "pid": 1,
                "tid": TRACK_BASE + c,
                "args": {"name": f"cpu{c}"},
            }
        )
    for s in steps:
        if s.cpu is None:
            continue
        events.append(
            {
                "ph": "X",
                "pid": 1,
                "tid": TRACK_BASE + s.cpu,
                "ts": s.index,
                "dur": 1,
                "name": s.function,
                "args": {"thread": s.thread, "after": s.op, "sim_time_ns": s.time_ns},
            }
        )
    return json.dumps({"traceEvents": events, "displayTimeUnit": "ns"}, indent=1) + "\n"
