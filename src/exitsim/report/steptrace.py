"""A checked schedule as a Perfetto trace (the protobuf format of ``report/perfetto.py``,
docs/traces.md): a track per CPU, a slice per step named after the kernel function the
thread was in, with the thread, the op and the model's clock as arguments. Steps have no
duration of their own, so step i is drawn from i to i+1 microseconds (shared in order by
the ops one step logs on one CPU)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from exitsim.report.perfetto import TRACK_BASE, TraceWriter

if TYPE_CHECKING:
    from exitsim.check.run import Step

#: Nanoseconds a step takes on the timeline.
STEP_NS = 1000


def steps_to_trace(steps: list[Step], title: str) -> bytes:
    w = TraceWriter()
    root = w.track(TRACK_BASE - 1, title, explicit_order=True)
    cpus = sorted({s.cpu for s in steps if s.cpu is not None})
    for c in cpus:
        w.track(TRACK_BASE + c, f"cpu{c}", parent=root, rank=c)
    # A step can log several ops on one CPU (an op, then the thread's exit): they
    # share the step's microsecond in order.
    groups: dict[tuple[int, int], list[Step]] = {}
    for s in steps:
        if s.cpu is not None:
            groups.setdefault((s.index, s.cpu), []).append(s)
    for (index, cpu), group in groups.items():
        track = TRACK_BASE + cpu
        share = STEP_NS // len(group)
        for j, s in enumerate(group):
            args: dict[str, int | str] = {"thread": s.thread, "op": s.op, "sim_time_ns": s.time_ns}
            if s.note:
                args["note"] = s.note
            start = index * STEP_NS + j * share
            w.begin(start, w.next_seq(), track, s.function, args)
            w.end(start + share, w.next_seq(), track)
    return w.to_bytes()
