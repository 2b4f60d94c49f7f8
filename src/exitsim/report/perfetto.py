"""A timed run as a Perfetto trace, in Perfetto's own protobuf format (TrackEvent).

What is in it (docs/traces.md has the why):

* a track per CPU; on it nested slices named after the kernel functions the running
  thread is in (``syscall``, ``exit1``, ``uvm_purge``, ``uvm_map_teardown``,
  ``pmap_remove``, ``uvm_unmap_detach``, ``reaper``, ``uvm_exit`` ...), with leaves for
  what the innermost one waits on (``spinning on kernel_lock``, ``wait for tlb_shoot
  acks``, a broadcast ``tlbi_vae1is``), ``cpu_switchto`` for a context switch, ``user
  <program>`` for user time, and interrupt handlers (``IPI tlb_shoot``) on the target;
* flow arrows from each IPI sent to its handler, and from each lock hand-off (a release
  with a waiter) to the waiter that got the lock;
* counters: run-queue length, free pages, reaper backlog, zombies, and pages still
  mapped by processes that began exiting;
* a process track per process (its pid and comm) and under it a thread track per
  thread (pid, tid, name), kernel threads too: the thread's slices, as on the CPU
  track, wherever it runs (``user`` for its user time), so one process can be
  followed across CPUs; no slice while it sleeps or waits to run.

Timestamps are the model's own integer nanoseconds. Track uuids are ``TRACK_BASE`` and
up: non-zero, unique, and never a pid (pids are small integers counted from 1).

The recorder watches the engine through its tracer, switch and exit hooks, and by
wrapping, on this one engine instance, the few methods that mark an interrupt, a CPU
going on after a wait, a lock hand-off and a thread made runnable. An untraced run pays
nothing for any of it.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import CodeType
from typing import TYPE_CHECKING, Any

import exitsim.workloads
from exitsim.engine.ops import USER, Acquire, Broadcast, Ipi, Run, SpinWait

if TYPE_CHECKING:
    from exitsim.engine.locks import Lock
    from exitsim.engine.sched import Cpu
    from exitsim.engine.thread import Thread
    from exitsim.kern.kernel import Kernel

#: The first track uuid; CPU c is TRACK_BASE + c, counters start at COUNTER_BASE.
TRACK_BASE = 1_000_000_000
COUNTER_BASE = TRACK_BASE + 100_000
#: Process ``pid``'s track is PROCESS_BASE + pid; thread ``tid``'s is THREAD_BASE + tid.
PROCESS_BASE = 2 * TRACK_BASE
THREAD_BASE = 3 * TRACK_BASE

# -- the protobuf wire format ------------------------------------------------------------
# Field numbers from perfetto/protos/perfetto/trace/{trace,trace_packet}.proto and
# track_event/{track_event,track_descriptor,counter_descriptor,debug_annotation}.proto.

_TRACE_PACKET = 1
_PKT_TIMESTAMP = 8
_PKT_SEQ_ID = 10
_PKT_TRACK_EVENT = 11
_PKT_INTERNED = 12
_PKT_SEQ_FLAGS = 13
_PKT_TRACK_DESCRIPTOR = 60
_SEQ_CLEARED = 1  # SEQ_INCREMENTAL_STATE_CLEARED
_SEQ_NEEDS = 2  # SEQ_NEEDS_INCREMENTAL_STATE
_INT_EVENT_NAMES = 2
_INT_ANNOTATION_NAMES = 3
_TD_UUID = 1
_TD_NAME = 2
_TD_PROCESS = 3
_TD_THREAD = 4
_TD_PARENT = 5
_TD_COUNTER = 8
_TD_CHILD_ORDERING = 11
_TD_RANK = 12
_CD_UNIT_NAME = 6
_ORDER_EXPLICIT = 3
_PD_PID = 1  # ProcessDescriptor
_PD_NAME = 6
_THD_PID = 1  # ThreadDescriptor
_THD_TID = 2
_THD_NAME = 5
_TE_ANNOTATIONS = 4
_TE_TYPE = 9
_TE_NAME_IID = 10
_TE_TRACK = 11
_TE_COUNTER = 30
_TE_FLOWS = 47
_TE_TERMINATING = 48
_DA_NAME_IID = 1
_DA_INT = 4
_DA_STRING = 6

#: TrackEvent.Type
SLICE_BEGIN = 1
SLICE_END = 2
INSTANT = 3
COUNTER = 4

_SEQUENCE = 1  # every packet comes from one writer: one trusted sequence


_ONE_BYTE = [bytes((n,)) for n in range(0x80)]


def _varint(n: int) -> bytes:
    if 0 <= n < 0x80:
        return _ONE_BYTE[n]
    if n < 0:
        n += 1 << 64  # int64 as two's complement, as protobuf does
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _key(field_no: int, wire: int) -> bytes:
    return _varint(field_no << 3 | wire)


def _vfield(field_no: int, n: int) -> bytes:
    return _key(field_no, 0) + _varint(n)


def _bfield(field_no: int, data: bytes) -> bytes:
    return _key(field_no, 2) + _varint(len(data)) + data


def _sfield(field_no: int, text: str) -> bytes:
    return _bfield(field_no, text.encode())


_COUNTER_KEY = _key(_TE_COUNTER, 0)
_FLOW_KEY = _key(_TE_FLOWS, 1)
_TERMINATING_KEY = _key(_TE_TERMINATING, 1)
_FIXED64 = struct.Struct("<Q")

#: A debug annotation's value: an int or a string.
ArgValue = int | str


class TraceWriter:
    """Collects track descriptors and TrackEvents; ``to_bytes`` writes the trace.

    Events carry ``(ts, seq)``; the file lists them in that order, so that of two
    events at the same nanosecond the one that happened first in the model comes
    first (an end before the begin that follows it on a track, a flow's start before
    its end). Event and argument names are interned once, in the first packet."""

    def __init__(self) -> None:
        self.seq = 0
        self._names: dict[str, int] = {}
        self._arg_names: dict[str, int] = {}
        self._tracks: list[bytes] = []
        self.track_uuids: list[int] = []
        self._events: list[tuple[int, int, bytes]] = []
        # Encoded pieces that repeat, by what they encode: most of an event's bytes.
        self._heads: dict[tuple[int, int], bytes] = {}
        self._name_fields: dict[str, bytes] = {}
        self._arg_fields: dict[tuple[str, ArgValue], bytes] = {}

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def track(
        self,
        uuid: int,
        name: str | None,
        parent: int | None = None,
        counter_unit: str | None = None,
        rank: int | None = None,
        explicit_order: bool = False,
        process: tuple[int, str] | None = None,
        thread: tuple[int, int, str] | None = None,
    ) -> int:
        """Declare a track; ``counter_unit`` makes it a counter track, ``process``
        (pid, name) a process's track, ``thread`` (pid, tid, name) a thread's. Those
        two take their name from the UI, so ``name`` is None for them."""
        if uuid <= 0 or uuid in self.track_uuids:
            raise ValueError(f"track uuid {uuid} is zero or taken")
        body = _vfield(_TD_UUID, uuid)
        if name is not None:
            body += _sfield(_TD_NAME, name)
        if process is not None:
            pid, pname = process
            body += _bfield(_TD_PROCESS, _vfield(_PD_PID, pid) + _sfield(_PD_NAME, pname))
        if thread is not None:
            pid, tid, tname = thread
            desc = _vfield(_THD_PID, pid) + _vfield(_THD_TID, tid) + _sfield(_THD_NAME, tname)
            body += _bfield(_TD_THREAD, desc)
        if parent is not None:
            body += _vfield(_TD_PARENT, parent)
        if counter_unit is not None:
            body += _bfield(_TD_COUNTER, _sfield(_CD_UNIT_NAME, counter_unit))
        if explicit_order:
            body += _vfield(_TD_CHILD_ORDERING, _ORDER_EXPLICIT)
        if rank is not None:
            body += _vfield(_TD_RANK, rank)
        self._tracks.append(_bfield(_PKT_TRACK_DESCRIPTOR, body) + _vfield(_PKT_SEQ_ID, _SEQUENCE))
        self.track_uuids.append(uuid)
        return uuid

    def _name_field(self, name: str) -> bytes:
        field_ = self._name_fields.get(name)
        if field_ is None:
            iid = self._names[name] = len(self._names) + 1
            field_ = self._name_fields[name] = _vfield(_TE_NAME_IID, iid)
        return field_

    def _arg_field(self, key: str, value: ArgValue) -> bytes:
        field_ = self._arg_fields.get((key, value))
        if field_ is None:
            iid = self._arg_names.get(key)
            if iid is None:
                iid = self._arg_names[key] = len(self._arg_names) + 1
            if isinstance(value, int):
                body = _vfield(_DA_NAME_IID, iid) + _vfield(_DA_INT, value)
            else:
                body = _vfield(_DA_NAME_IID, iid) + _sfield(_DA_STRING, value)
            field_ = self._arg_fields[(key, value)] = _bfield(_TE_ANNOTATIONS, body)
        return field_

    def _event(
        self,
        ts: int,
        seq: int,
        kind: int,
        track: int,
        name: str | None,
        args: dict[str, ArgValue] | None,
        flows: Sequence[int],
        terminating: Sequence[int],
    ) -> None:
        body = self._heads.get((kind, track))
        if body is None:
            body = self._heads[(kind, track)] = _vfield(_TE_TYPE, kind) + _vfield(_TE_TRACK, track)
        if name is not None:
            body += self._name_field(name)
        if args:
            for key, value in args.items():
                body += self._arg_field(key, value)
        for f in flows:
            body += _FLOW_KEY + _FIXED64.pack(f)
        for f in terminating:
            body += _TERMINATING_KEY + _FIXED64.pack(f)
        self._events.append((ts, seq, body))

    def begin(
        self,
        ts: int,
        seq: int,
        track: int,
        name: str,
        args: dict[str, ArgValue] | None = None,
        flows: Sequence[int] = (),
        terminating: Sequence[int] = (),
    ) -> None:
        self._event(ts, seq, SLICE_BEGIN, track, name, args, flows, terminating)

    def end(self, ts: int, seq: int, track: int) -> None:
        self._event(ts, seq, SLICE_END, track, None, None, (), ())

    def instant(
        self,
        ts: int,
        seq: int,
        track: int,
        name: str,
        args: dict[str, ArgValue] | None = None,
        flows: Sequence[int] = (),
        terminating: Sequence[int] = (),
    ) -> None:
        self._event(ts, seq, INSTANT, track, name, args, flows, terminating)

    def counter(self, ts: int, seq: int, track: int, value: int) -> None:
        head = self._heads.get((COUNTER, track))
        if head is None:
            head = self._heads[(COUNTER, track)] = _vfield(_TE_TYPE, COUNTER) + _vfield(
                _TE_TRACK, track
            )
        self._events.append((ts, seq, head + _COUNTER_KEY + _varint(value)))

    def to_bytes(self) -> bytes:
        interned = b"".join(
            _bfield(_INT_EVENT_NAMES, _vfield(1, iid) + _sfield(2, name))
            for name, iid in self._names.items()
        ) + b"".join(
            _bfield(_INT_ANNOTATION_NAMES, _vfield(1, iid) + _sfield(2, name))
            for name, iid in self._arg_names.items()
        )
        first = (
            _vfield(_PKT_TIMESTAMP, 0)
            + _vfield(_PKT_SEQ_ID, _SEQUENCE)
            + _vfield(_PKT_SEQ_FLAGS, _SEQ_CLEARED)
            + _bfield(_PKT_INTERNED, interned)
        )
        out = [_bfield(_TRACE_PACKET, first)]
        out.extend(_bfield(_TRACE_PACKET, td) for td in self._tracks)
        # Every event packet ends the same way: sequence id, flags, then the event.
        tail = _vfield(_PKT_SEQ_ID, _SEQUENCE) + _vfield(_PKT_SEQ_FLAGS, _SEQ_NEEDS)
        pkt_key = _key(_TRACE_PACKET, 2)
        ts_key = _key(_PKT_TIMESTAMP, 0)
        ev_key = _key(_PKT_TRACK_EVENT, 2)
        self._events.sort(key=lambda e: (e[0], e[1]))
        varint = _varint
        append = out.append
        for ts, _, body in self._events:
            pkt = ts_key + varint(ts) + tail + ev_key + varint(len(body)) + body
            append(pkt_key + varint(len(pkt)) + pkt)
        return b"".join(out)


# -- recording a timed run ---------------------------------------------------------------

_WORKLOADS_DIR = os.path.dirname(exitsim.workloads.__file__) + os.sep

# A slice open on a CPU track: (key, name, start, seq, args, thread). ``key`` tells a
# new call from the one already open: the generator for a kernel function, the thread
# for user time, the lock for a spin, the op for a wait. ``thread`` is the thread whose
# slice it is (drawn on its thread track too), None for the CPU's own (cpu_switchto).
_Frame = tuple[object, str, int, int, dict[str, ArgValue] | None, "Thread | None"]

#: The counter tracks, in the order they are shown: (key, name, unit).
COUNTERS = (
    ("runq", "run queue (threads waiting)", "threads"),
    ("free", "free pages", "pages"),
    ("backlog", "reaper backlog (threads)", "threads"),
    ("zombies", "zombies", "processes"),
    ("held", "held after exit (pages)", "pages"),
)


def kernel_frames(
    t: Thread, names: dict[Any, str], skip: tuple[str, ...] = ("_",)
) -> list[tuple[object, str]]:
    """The kernel functions ``t`` is in, outermost first, each with its generator, down
    its ``yield from`` chain. Left out: the workload's own code (the program driving
    the process: it stands for user land) and functions whose name starts with one of
    ``skip`` (the simulator's private helpers, as ``_pmap_remove_amd64`` inside
    ``pmap_remove``), whose time is their caller's. ``names`` caches the decision per
    code object; give each ``skip`` its own."""
    out: list[tuple[object, str]] = []
    g: Any = t.gen
    while g is not None:
        frame = getattr(g, "gi_frame", None)
        if frame is not None:
            code = frame.f_code
            name = names.get(code)
            if name is None:
                name = code.co_name
                if name.startswith(skip) or code.co_filename.startswith(_WORKLOADS_DIR):
                    name = ""
                names[code] = name
            if name:
                out.append((g, name))
        g = getattr(g, "gi_yieldfrom", None)
    return out


def lock_family(lock: Lock) -> str:
    """A lock's name without its instance suffix (``pm_mtx.cc1.7`` is ``pm_mtx``)."""
    return lock.name.split(".", 1)[0]


def thread_label(t: Thread) -> str:
    """``comm[pid]`` for a process's thread, else the thread's name."""
    pr = getattr(t, "p_p", None)
    if pr is None:
        return t.name
    return f"{pr.comm}[{pr.ps_pid}]"


class _CpuTrack:
    __slots__ = ("frames", "name", "uuid")

    def __init__(self, uuid: int, name: str) -> None:
        self.uuid = uuid
        self.name = name
        self.frames: list[_Frame] = []


class TraceRecorder:
    """Records a kernel's timed run as it happens; ``to_bytes`` gives the trace.

    Attach it after building the kernel (with ``record=True``) and before running it;
    call ``close`` once the run has finished."""

    def __init__(self, k: Kernel, title: str | None = None) -> None:
        eng = k.engine
        if eng.log is None:
            raise ValueError("TraceRecorder needs a kernel built with record=True")
        self.k = k
        self.eng = eng
        self.w = w = TraceWriter()
        self.cpus = [_CpuTrack(TRACK_BASE + c.index, f"cpu{c.index}") for c in eng.cpus]
        self._code_names: dict[CodeType, str] = {}
        self._flow = 0
        self._ipi_flows: dict[tuple[int, int], int] = {}
        # A sleeper given a lock: where its hand-off arrow starts, drawn once it runs.
        self._sleeper_flows: dict[Thread, tuple[int, int, int, str, dict[str, ArgValue]]] = {}
        self._cur_cpu = 0
        self._ops_seen = 0
        self._closed = False
        self.counter_tracks: dict[str, int] = {}
        self._last: dict[str, int] = {}

        if title is None:
            m = k.machine
            title = f"{k.policy.name} {m.arch.name} {m.ncpu} CPUs"
        root = w.track(TRACK_BASE - 1, title, explicit_order=True)
        for i, ct in enumerate(self.cpus):
            w.track(ct.uuid, ct.name, parent=root, rank=i)
        for i, (key, name, unit) in enumerate(COUNTERS):
            uuid = w.track(COUNTER_BASE + i, name, parent=root, counter_unit=unit, rank=1000 + i)
            self.counter_tracks[key] = uuid
        self._physmem = k.uvm.physmem
        self._sample(0)
        self._attach()

    # -- wiring ------------------------------------------------------------------------

    def _attach(self) -> None:
        eng = self.eng
        eng.tracer = self._on_op
        switch_hook = eng.switch_hook
        exit_hook = eng.exit_hook

        def on_switch(cpu: int, t: Thread | None) -> None:
            if switch_hook is not None:
                switch_hook(cpu, t)
            self._on_switch(cpu, t)

        def on_exit(cpu: int, t: Thread) -> None:
            if exit_hook is not None:
                exit_hook(cpu, t)
            self._sample(eng.now)  # exit2 may free memory

        eng.switch_hook = on_switch
        eng.exit_hook = on_exit
        # The engine calls these through the instance (its hot loop binds them when
        # run() starts), so wrapping them here reaches every call.
        for name in ("_on_intr", "_on_cont", "_hand_to", "make_runnable"):
            if not callable(getattr(eng, name, None)):
                raise RuntimeError(f"the engine has no {name}: TraceRecorder needs updating")
        on_intr, on_cont, hand_to = eng._on_intr, eng._on_cont, eng._hand_to
        make_runnable = eng.make_runnable

        def wrapped_intr(c: Cpu, payload: tuple[int, Ipi]) -> None:
            on_intr(c, payload)
            self._on_intr(c, payload)

        def wrapped_cont(c: Cpu) -> None:
            self._cur_cpu = c.index
            t = c.thread
            seen = self._ops_seen
            on_cont(c)
            if t is not None and c.thread is t and self._ops_seen == seen:
                self._went_on_without_op(c, t)
            self._sample(eng.now)

        def wrapped_hand_to(lock: Lock, granted: Sequence[Thread]) -> None:
            self._on_hand_off(lock, granted)
            hand_to(lock, granted)

        def wrapped_make_runnable(t: Thread, *args: Any, **kwargs: Any) -> None:
            make_runnable(t, *args, **kwargs)
            self._sample(eng.now)

        eng._on_intr = wrapped_intr  # type: ignore[method-assign]
        eng._on_cont = wrapped_cont  # type: ignore[method-assign]
        eng._hand_to = wrapped_hand_to  # type: ignore[method-assign]
        eng.make_runnable = wrapped_make_runnable  # type: ignore[method-assign]

    # -- counters ----------------------------------------------------------------------

    def _sample(self, now: int) -> None:
        """Emit the run-queue length and free pages where they changed. Model state
        changes only between two yields, so sampling at every event is exact."""
        last = self._last
        free = self._physmem.free
        if last.get("free") != free:
            last["free"] = free
            self.w.counter(now, self.w.next_seq(), self.counter_tracks["free"], free)
        runq = 0
        for c in self.eng.cpus:
            runq += len(c.runq)
        if last.get("runq") != runq:
            last["runq"] = runq
            self.w.counter(now, self.w.next_seq(), self.counter_tracks["runq"], runq)

    # -- slices ------------------------------------------------------------------------

    def _kernel_frames(self, t: Thread) -> list[tuple[object, str]]:
        """The kernel functions ``t`` is in, outermost first, each with its generator
        (``kernel_frames``)."""
        return kernel_frames(t, self._code_names)

    def _go(
        self,
        ct: _CpuTrack,
        now: int,
        target: list[tuple[object, str]],
        t: Thread | None,
        leaf_args: dict[str, ArgValue] | None = None,
    ) -> None:
        """Move the track's open slices to ``target``: close those that are no longer
        on it (innermost first), open the new ones."""
        frames = ct.frames
        n = min(len(frames), len(target))
        i = 0
        while i < n and frames[i][0] is target[i][0]:
            i += 1
        if i < len(frames):
            self._close_to(ct, i, now)
        w = self.w
        last = len(target) - 1
        for j in range(i, len(target)):
            key, name = target[j]
            args: dict[str, ArgValue] | None = None
            if j == 0 and t is not None:
                args = {"thread": thread_label(t), "tid": t.tid}
            if j == last and leaf_args:
                args = {**args, **leaf_args} if args else leaf_args
            frames.append((key, name, now, w.next_seq(), args, t))

    def _close_to(self, ct: _CpuTrack, depth: int, now: int) -> None:
        """Close the slices open on ``ct`` deeper than ``depth``. A slice that took no
        time is dropped: uncontended lock calls and the like would only clutter. A
        thread's slice is drawn on its thread track too, at the same depth: its slices
        on a CPU start at the bottom, and all of them end when it leaves the CPU."""
        w = self.w
        frames = ct.frames
        while len(frames) > depth:
            key, name, start, seq, args, t = frames.pop()
            if now > start:
                w.begin(start, seq, ct.uuid, name, args)
                w.end(now, w.next_seq(), ct.uuid)
                if t is not None:
                    self._thread_slice(ct, len(frames), key, name, start, seq, args, t, now)

    def _thread_slice(
        self,
        ct: _CpuTrack,
        depth: int,
        key: object,
        name: str,
        start: int,
        seq: int,
        args: dict[str, ArgValue] | None,
        t: Thread,
        now: int,
    ) -> None:
        """A slice of ``t`` on its thread track: user time is ``user``; the outermost
        names the CPU instead of the thread; the leaves keep their arguments. A thread
        of no process (the engine's own demos) has no track."""
        if getattr(t, "p_p", None) is None:
            return
        w = self.w
        if args:
            args = {k: v for k, v in args.items() if k not in ("thread", "tid")}
        if depth == 0:
            args = {"cpu": ct.name, **args} if args else {"cpu": ct.name}
        track = THREAD_BASE + t.tid
        w.begin(start, seq, track, "user" if key is t else name, args)
        w.end(now, w.next_seq(), track)

    def _on_op(self, now: int, cpu: int, t: Thread, op: Any) -> None:
        self._ops_seen += 1
        self._cur_cpu = cpu
        ct = self.cpus[cpu]
        cls = type(op)
        target = self._kernel_frames(t)
        leaf_args: dict[str, ArgValue] | None = None
        if cls is Run:
            if op.mode == USER:
                pr = getattr(t, "p_p", None)
                comm = pr.comm if pr is not None else t.name
                target.append((t, f"user {comm}"))
                if len(target) > 1:
                    leaf_args = {"thread": thread_label(t)}
        elif cls is Acquire:
            if op.lock.spins:
                # Dropped as empty when the lock is free; a spin when it is not.
                target.append((op.lock, f"spinning on {lock_family(op.lock)}"))
                leaf_args = {"lock": op.lock.name}
        elif cls is Ipi:
            if op.targets:
                target.append((op, f"wait for {op.label} acks"))
                leaf_args = {"targets": ",".join(f"cpu{x}" for x in op.targets)}
        elif cls is Broadcast:
            if op.count > 0:
                target.append((op, op.label))
                leaf_args = {"count": op.count}
        elif cls is SpinWait:
            target.append((op, f"spin-wait {op.wmesg}"))
        self._go(ct, now, target, t, leaf_args)
        if cls is Ipi and op.targets:
            self._send_ipi(ct, now, cpu, op)
        self._sample(now)

    def _send_ipi(self, ct: _CpuTrack, now: int, cpu: int, op: Ipi) -> None:
        flows = []
        for x in op.targets:
            self._flow += 1
            self._ipi_flows[(cpu, x)] = self._flow
            flows.append(self._flow)
        self.w.instant(now, self.w.next_seq(), ct.uuid, f"send {op.label}", flows=flows)

    def _went_on_without_op(self, c: Cpu, t: Thread) -> None:
        """After a wait the CPU went on with ``t`` but the thread yielded nothing: it
        is spinning to take back the kernel lock (or a sleep's interlock) after a
        switch, or going on with a user run that the quantum or a switch cut."""
        ct = self.cpus[c.index]
        now = self.eng.now
        target = self._kernel_frames(t)
        lock = c.spinning_on
        if c.spin_since >= 0 and lock is not None:
            target.append((lock, f"spinning on {lock_family(lock)}"))
            self._go(ct, now, target, t, {"lock": lock.name})
        else:
            pr = getattr(t, "p_p", None)
            target.append((t, f"user {pr.comm if pr is not None else t.name}"))
            self._go(ct, now, target, t)

    def _on_switch(self, cpu: int, t: Thread | None) -> None:
        self._cur_cpu = cpu
        ct = self.cpus[cpu]
        now = self.eng.now
        if t is None:
            self._close_to(ct, 0, now)
        else:
            c = self.eng.cpus[cpu]
            # The engine charges a switch only to a thread other than the last one.
            if self.eng.ctxsw and t is not c.last_thread:
                self._go(ct, now, [(c, "cpu_switchto")], None, {"to": thread_label(t)})
            handed = self._sleeper_flows.pop(t, None)
            if handed is not None:
                self._flow += 1
                w = self.w
                ts, seq, track, family, args = handed
                w.instant(ts, seq, track, f"hand off {family}", args, flows=(self._flow,))
                w.instant(now, w.next_seq(), ct.uuid, f"got {family}", terminating=(self._flow,))
        self._sample(now)

    def _on_intr(self, c: Cpu, payload: tuple[int, Ipi]) -> None:
        """The handler runs from ``intr_until - handler_ns`` to ``intr_until`` and holds
        back everything else on that CPU, so it nests inside whatever is open there."""
        sender, op = payload
        end = c.intr_until
        start = end - op.handler_ns
        ct = self.cpus[c.index]
        w = self.w
        flow = self._ipi_flows.pop((sender, c.index), None)
        w.begin(
            start,
            w.next_seq(),
            ct.uuid,
            f"IPI {op.label}",
            {"from": f"cpu{sender}"},
            terminating=(flow,) if flow is not None else (),
        )
        w.end(end, w.next_seq(), ct.uuid)

    def _on_hand_off(self, lock: Lock, granted: Sequence[Thread]) -> None:
        """A release gave ``lock`` to waiters: an arrow from the releasing CPU to each.
        A spinner goes on where it spins, as soon as its CPU is free of interrupts; a
        sleeper when it next runs, so its arrow is drawn then."""
        now = self.eng.now
        w = self.w
        src = self.cpus[self._cur_cpu].uuid
        family = lock_family(lock)
        for waiter in granted:
            args: dict[str, ArgValue] = {"lock": lock.name, "to": thread_label(waiter)}
            if waiter.cpu is None:
                self._sleeper_flows[waiter] = (now, w.next_seq(), src, family, args)
                continue
            self._flow += 1
            w.instant(now, w.next_seq(), src, f"hand off {family}", args, flows=(self._flow,))
            at = max(now + self.eng.handoff, self.eng.cpus[waiter.cpu].intr_until)
            dst = self.cpus[waiter.cpu].uuid
            w.instant(at, w.next_seq(), dst, f"got {family}", terminating=(self._flow,))

    # -- the end -----------------------------------------------------------------------

    def close(self) -> None:
        """Close what is still open at the end of the run and add the kernel's meters."""
        if self._closed:
            return
        self._closed = True
        now = self.eng.now
        for ct in self.cpus:
            self._close_to(ct, 0, now)
        self._sample(now)
        m = self.k.meters
        w = self.w
        for key, level in (("backlog", m.backlog), ("zombies", m.zombies), ("held", m.held_pages)):
            for ts, value in level.samples:
                w.counter(ts, w.next_seq(), self.counter_tracks[key], value)
        # A sleeper granted a lock that never ran again: its hand-off has no arrow.
        for ts, seq, track, family, args in self._sleeper_flows.values():
            w.instant(ts, seq, track, f"hand off {family}", args)
        self._sleeper_flows.clear()
        self._process_tracks()

    def _process_tracks(self) -> None:
        """A track per process (pid, comm as at the end of the run) and, under it, one
        per thread (pid, tid, name; the main thread's is the comm, as exec renames it),
        for every thread of the run, in pid and tid order."""
        w = self.w
        by_pid: dict[int, tuple[Any, list[Any]]] = {}
        for t in self.eng.threads:
            pr = getattr(t, "p_p", None)
            if pr is None:
                continue
            by_pid.setdefault(pr.ps_pid, (pr, []))[1].append(t)
        for pid in sorted(by_pid):
            pr, threads = by_pid[pid]
            ptrack = w.track(PROCESS_BASE + pid, None, process=(pid, pr.comm))
            for t in sorted(threads, key=lambda x: x.tid):
                name = pr.comm if t is pr.ps_mainproc else t.name
                w.track(THREAD_BASE + t.tid, None, parent=ptrack, thread=(pid, t.tid, name))

    def to_bytes(self) -> bytes:
        self.close()
        return self.w.to_bytes()


# -- reading a trace back (tests, tools) -------------------------------------------------


@dataclass(slots=True)
class Track:
    """A track descriptor; a process's or thread's track has its pid (and tid), and
    its process or thread name as ``name``."""

    uuid: int
    name: str
    parent: int | None = None
    counter: bool = False
    rank: int | None = None
    pid: int | None = None
    tid: int | None = None


@dataclass(slots=True)
class Event:
    """One TrackEvent; ``kind`` is SLICE_BEGIN, SLICE_END, INSTANT or COUNTER."""

    ts: int
    kind: int
    track: int
    name: str | None = None
    args: dict[str, ArgValue] = field(default_factory=dict)
    flows: list[int] = field(default_factory=list)
    terminating: list[int] = field(default_factory=list)
    value: int | None = None


def _fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of one message: ints for varints and fixed
    fields, bytes for length-delimited ones."""
    i = 0
    n = len(buf)
    while i < n:
        key = 0
        shift = 0
        while True:
            b = buf[i]
            i += 1
            key |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                break
        fno, wire = key >> 3, key & 7
        if wire == 0:
            v = 0
            shift = 0
            while True:
                b = buf[i]
                i += 1
                v |= (b & 0x7F) << shift
                shift += 7
                if b < 0x80:
                    break
            yield fno, wire, v
        elif wire == 1:
            yield fno, wire, _FIXED64.unpack_from(buf, i)[0]
            i += 8
        elif wire == 2:
            ln = 0
            shift = 0
            while True:
                b = buf[i]
                i += 1
                ln |= (b & 0x7F) << shift
                shift += 7
                if b < 0x80:
                    break
            yield fno, wire, buf[i : i + ln]
            i += ln
        elif wire == 5:
            yield fno, wire, struct.unpack_from("<I", buf, i)[0]
            i += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def _int64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def read_trace(data: bytes) -> tuple[dict[int, Track], list[Event]]:
    """Decode a trace this module wrote: its tracks by uuid and its events in file
    order, names and argument names resolved."""
    tracks: dict[int, Track] = {}
    events: list[Event] = []
    names: dict[int, str] = {}
    arg_names: dict[int, str] = {}
    for fno, _, pkt in _fields(data):
        if fno != _TRACE_PACKET:
            continue
        ts = 0
        te: bytes | None = None
        for f, _, v in _fields(pkt):
            if f == _PKT_TIMESTAMP:
                ts = v
            elif f == _PKT_TRACK_EVENT:
                te = v
            elif f == _PKT_INTERNED:
                for g, _, entry in _fields(v):
                    d = {h: x for h, _, x in _fields(entry)}
                    table = names if g == _INT_EVENT_NAMES else arg_names
                    table[d[1]] = d[2].decode()
            elif f == _PKT_TRACK_DESCRIPTOR:
                tr = Track(0, "")
                for h, _, x in _fields(v):
                    if h == _TD_UUID:
                        tr.uuid = x
                    elif h == _TD_NAME:
                        tr.name = x.decode()
                    elif h == _TD_PARENT:
                        tr.parent = x
                    elif h == _TD_COUNTER:
                        tr.counter = True
                    elif h == _TD_RANK:
                        tr.rank = x
                    elif h in (_TD_PROCESS, _TD_THREAD):
                        d = {k: y for k, _, y in _fields(x)}
                        tr.pid = d.get(_PD_PID)  # the same field number in both
                        if h == _TD_THREAD:
                            tr.tid = d.get(_THD_TID)
                        name = d.get(_PD_NAME if h == _TD_PROCESS else _THD_NAME)
                        if name is not None and not tr.name:
                            tr.name = name.decode()
                if tr.uuid in tracks:
                    raise ValueError(f"track uuid {tr.uuid} declared twice")
                tracks[tr.uuid] = tr
        if te is None:
            continue
        ev = Event(ts, 0, 0)
        for f, _, v in _fields(te):
            if f == _TE_TYPE:
                ev.kind = v
            elif f == _TE_TRACK:
                ev.track = v
            elif f == _TE_NAME_IID:
                ev.name = names[v]
            elif f == _TE_COUNTER:
                ev.value = _int64(v)
            elif f == _TE_FLOWS:
                ev.flows.append(v)
            elif f == _TE_TERMINATING:
                ev.terminating.append(v)
            elif f == _TE_ANNOTATIONS:
                d = {h: x for h, _, x in _fields(v)}
                key = arg_names[d[_DA_NAME_IID]]
                ev.args[key] = d[_DA_STRING].decode() if _DA_STRING in d else _int64(d[_DA_INT])
        events.append(ev)
    return tracks, events
