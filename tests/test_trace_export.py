"""The Perfetto export (report/perfetto.py, report/steptrace.py): the structure the
Perfetto importer needs, checked fast without a browser (tests/browser/ loads a trace
into the real UI), and the timeline's agreement with the engine's own accounting.

Traces are decoded here with Perfetto's own schema (``perfetto_trace_pb2`` from the
``perfetto`` package), not with report/perfetto.py's reader, so that the writer and the
reader cannot agree on a mistake; a field the schema does not know fails the decode."""

from __future__ import annotations

import collections
import itertools
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from exitsim.cli import main
from exitsim.report.perfetto import (
    COUNTER,
    COUNTERS,
    INSTANT,
    PROCESS_BASE,
    SLICE_BEGIN,
    SLICE_END,
    THREAD_BASE,
    TRACK_BASE,
    Event,
    TraceWriter,
    Track,
    read_trace,
)
from exitsim.sim import SimConfig, simulate_traced

SMALL = {"jobs": 6, "cc1_user_ms": 4}
PID = re.compile(r"\[(\d+)\]$")


# -- decoding with Perfetto's schema -----------------------------------------------------


def assert_schema_knows_every_field(msg: Message, where: str) -> None:
    """A field number or wire type the schema does not expect parses as an unknown
    field, which Perfetto would ignore: none may be left anywhere in the message."""
    assert len(UnknownFieldSet(msg)) == 0, f"fields unknown to Perfetto's schema in {where}"
    for fd, value in msg.ListFields():
        if fd.message_type is not None:
            for sub in [value] if isinstance(value, Message) else value:
                assert_schema_knows_every_field(sub, f"{where}.{fd.name}")


def schema_read(data: bytes) -> tuple[dict[int, Track], list[Event]]:
    """The trace's tracks by uuid and its events in file order, decoded with Perfetto's
    schema (``Trace``, ``TracePacket``, ``TrackDescriptor``, ``TrackEvent``): every
    packet parses, every field is known, names resolve through the interned data of
    the one packet sequence, which is cleared first and needed by every event."""
    trace = pb.Trace()
    trace.ParseFromString(data)
    assert_schema_knows_every_field(trace, "Trace")
    names: dict[int, str] = {}
    arg_names: dict[int, str] = {}
    tracks: dict[int, Track] = {}
    events: list[Event] = []
    for i, pkt in enumerate(trace.packet):
        assert pkt.trusted_packet_sequence_id == 1
        if pkt.HasField("interned_data"):
            assert i == 0 and pkt.sequence_flags & pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
            names.update((n.iid, n.name) for n in pkt.interned_data.event_names)
            arg_names.update((n.iid, n.name) for n in pkt.interned_data.debug_annotation_names)
        if pkt.HasField("track_descriptor"):
            d = pkt.track_descriptor
            assert d.uuid not in tracks, f"track uuid {d.uuid} declared twice"
            tr = Track(d.uuid, d.name, counter=d.HasField("counter"))
            if d.HasField("parent_uuid"):
                tr.parent = d.parent_uuid
            if d.HasField("sibling_order_rank"):
                tr.rank = d.sibling_order_rank
            if d.HasField("process"):
                tr.pid, tr.name = d.process.pid, tr.name or d.process.process_name
            if d.HasField("thread"):
                tr.pid, tr.tid = d.thread.pid, d.thread.tid
                tr.name = tr.name or d.thread.thread_name
            tracks[d.uuid] = tr
        if pkt.HasField("track_event"):
            assert pkt.sequence_flags == pb.TracePacket.SEQ_NEEDS_INCREMENTAL_STATE
            te = pkt.track_event
            ev = Event(pkt.timestamp, te.type, te.track_uuid)
            if te.HasField("name_iid"):
                ev.name = names[te.name_iid]
            for a in te.debug_annotations:
                key = arg_names[a.name_iid]
                ev.args[key] = a.string_value if a.HasField("string_value") else a.int_value
            ev.flows = list(te.flow_ids)
            ev.terminating = list(te.terminating_flow_ids)
            if te.HasField("counter_value"):
                ev.value = te.counter_value
            events.append(ev)
    return tracks, events


def test_event_types_are_perfettos() -> None:
    assert (SLICE_BEGIN, SLICE_END, INSTANT, COUNTER) == (
        pb.TrackEvent.TYPE_SLICE_BEGIN,
        pb.TrackEvent.TYPE_SLICE_END,
        pb.TrackEvent.TYPE_INSTANT,
        pb.TrackEvent.TYPE_COUNTER,
    )


@dataclass
class Slice:
    track: int
    name: str
    ts: int
    end: int
    depth: int
    args: dict[str, Any]
    #: Interrupt-handler time inside this slice (the engine accounts it apart).
    intr_ns: int = 0
    #: On a CPU track, the tid of the thread whose slice this is (the ``tid`` of the
    #: outermost slice around it), None for the CPU's own (handlers, cpu_switchto).
    owner: int | None = None
    #: Interrupt handlers around it on its CPU track (not on its thread's track).
    handlers_above: int = 0


@dataclass
class Checked:
    """A trace that passed ``check_structure``, in a form tests can query."""

    tracks: dict[int, Track]
    data: bytes = b""
    slices: list[Slice] = field(default_factory=list)
    instants: list[Event] = field(default_factory=list)
    counters: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    flows: int = 0

    def names(self) -> set[str]:
        return {s.name for s in self.slices}


def check_structure(data: bytes, pids: set[int]) -> Checked:
    """What Perfetto needs to import a trace whole, asserted through its schema:
    integer-ns timestamps in order, track uuids unique, non-zero and never a pid or
    tid, slices properly nested on each track, every flow with exactly one start
    before its one end, counters only on counter tracks; a thread track in the
    process track of its pid, one track per pid and per tid."""
    tracks, events = schema_read(data)
    procs = {tr.pid: u for u, tr in tracks.items() if tr.pid is not None and tr.tid is None}
    threads = [tr for tr in tracks.values() if tr.tid is not None]
    assert len(procs) == sum(tr.pid is not None and tr.tid is None for tr in tracks.values())
    assert len({tr.tid for tr in threads}) == len(threads), "a tid with two tracks"
    for tr in threads:
        assert tr.parent == procs[tr.pid], f"thread {tr.tid} outside its process's track"
    pids = pids | set(procs) | {tr.tid for tr in threads if tr.tid is not None}
    for uuid in tracks:
        assert uuid > 0 and uuid not in pids, f"track uuid {uuid} is zero or a pid"
    out = Checked(tracks, data)
    open_: dict[int, list[tuple[Event, list[int]]]] = collections.defaultdict(list)
    starts: dict[int, int] = {}
    ends: dict[int, int] = {}
    last = 0
    for e in events:
        assert isinstance(e.ts, int) and e.ts >= last, f"timestamp {e.ts} out of order"
        last = e.ts
        tr = tracks.get(e.track)
        assert tr is not None, f"event on undeclared track {e.track}"
        assert tr.counter == (e.kind == COUNTER), f"{e.kind} event on track {tr.name}"
        for f in e.flows:
            assert f not in starts, f"flow {f} starts twice"
            starts[f] = e.ts
        for f in e.terminating:
            assert f in starts and f not in ends, f"flow {f} ends before it starts, or twice"
            assert starts[f] <= e.ts
            ends[f] = e.ts
        stack = open_[e.track]
        if e.kind == SLICE_BEGIN:
            assert e.name, "a slice without a name"
            stack.append((e, [0]))
        elif e.kind == SLICE_END:
            assert stack, f"an end with no open slice on {tr.name} at {e.ts}"
            b, intr = stack.pop()
            assert e.ts >= b.ts
            assert b.name is not None
            s = Slice(e.track, b.name, b.ts, e.ts, len(stack), b.args, intr[0])
            if tr.name.startswith("cpu") and not s.name.startswith("IPI "):
                s.owner = (stack[0][0] if stack else b).args.get("tid")
                s.handlers_above = sum(o.name.startswith("IPI ") for o, _ in stack)  # type: ignore[union-attr]
            out.slices.append(s)
            if s.name.startswith("IPI "):
                for _, outer in stack:
                    outer[0] += s.end - s.ts
        elif e.kind == INSTANT:
            out.instants.append(e)
        else:
            assert e.value is not None
            out.counters.setdefault(tr.name, []).append((e.ts, e.value))
    for uuid, stack in open_.items():
        assert not stack, f"slices left open on {tracks[uuid].name}"
    assert starts.keys() == ends.keys(), "a flow without its end"
    out.flows = len(starts)
    return out


def pids_of(result: dict[str, Any], checked_args: list[dict[str, Any]]) -> set[int]:
    """Every pid and tid the run had: from the result and the slices' arguments."""
    ids = {p["pid"] for p in result["per_process"]}
    for args in checked_args:
        if isinstance(args.get("tid"), int):
            ids.add(args["tid"])
        m = PID.search(str(args.get("thread", "")))
        if m:
            ids.add(int(m.group(1)))
    return ids


@cache
def traced(
    arch: str, policy: str, cpus: int = 4, params: tuple[tuple[str, int], ...] | None = None
) -> tuple[dict[str, Any], Checked]:
    cfg = SimConfig(
        policy=policy, arch=arch, cpus=cpus, workload_params=dict(params or SMALL.items())
    )
    result, data = simulate_traced(cfg)
    _, events = schema_read(data)
    pids = pids_of(result, [e.args for e in events])
    return result, check_structure(data, pids)


DESIGNS = [
    ("amd64", "purge"),
    ("arm64", "purge+pmap_purge"),
    ("amd64", "reaper"),
    ("arm64", "no-reaper"),
]


@pytest.mark.parametrize(("arch", "policy"), DESIGNS)
def test_trace_structure_is_what_perfetto_imports(arch: str, policy: str) -> None:
    _, t = traced(arch, policy)
    cpu_tracks = {u: tr.name for u, tr in t.tracks.items() if tr.name.startswith("cpu")}
    assert sorted(cpu_tracks.values()) == [f"cpu{i}" for i in range(4)]
    assert sorted(cpu_tracks) == [TRACK_BASE + i for i in range(4)]
    assert set(t.counters) == {name for _, name, _ in COUNTERS}
    for name, samples in t.counters.items():
        assert len(samples) >= 2, f"counter {name} never moves"
    assert t.flows > 0


@pytest.mark.parametrize(("arch", "policy"), DESIGNS)
def test_the_timeline_accounts_every_nanosecond_as_the_engine_does(arch: str, policy: str) -> None:
    """Per CPU: the outermost slices cover exactly its busy time; user slices and
    spin/wait leaves, less the interrupts inside them, are its user and spin time."""
    result, t = traced(arch, policy)
    busy: collections.Counter[int] = collections.Counter()
    acct: collections.Counter[tuple[int, str]] = collections.Counter()
    for s in t.slices:
        if s.depth == 0:
            busy[s.track] += s.end - s.ts
        if s.name.startswith("user "):
            acct[(s.track, "user_ns")] += s.end - s.ts - s.intr_ns
        elif s.name.startswith(("spinning on ", "spin-wait ", "wait for ")):
            acct[(s.track, "spin_ns")] += s.end - s.ts - s.intr_ns
    for c in result["cpus"]:
        track = TRACK_BASE + c["cpu"]
        assert busy[track] == result["makespan_ns"] - c["idle_ns"], f"cpu{c['cpu']} busy"
        assert acct[(track, "user_ns")] == c["user_ns"], f"cpu{c['cpu']} user"
        assert acct[(track, "spin_ns")] == c["spin_ns"], f"cpu{c['cpu']} spin"


def test_amd64_slices_are_the_kernel_functions_and_ipis_have_arrows() -> None:
    _, t = traced("amd64", "purge")
    names = t.names()
    for fn in (
        "exit1",
        "uvm_purge",
        "uvm_map_teardown",
        "pmap_remove",
        "uvm_unmap_detach",
        "reaper",
        "uvm_exit",
        "spinning on kernel_lock",
        "cpu_switchto",
        "user cc1",
    ):
        assert fn in names, fn
    # Nesting follows the call chain: pmap_remove inside uvm_purge inside exit1.
    by_name: dict[str, list[Slice]] = collections.defaultdict(list)
    for s in t.slices:
        by_name[s.name].append(s)

    def inside(inner: Slice, outer: str) -> bool:
        return any(
            o.track == inner.track
            and o.depth < inner.depth
            and o.ts <= inner.ts <= inner.end <= o.end
            for o in by_name[outer]
        )

    assert all(inside(p, "exit1") for p in by_name["uvm_purge"])
    assert any(inside(p, "uvm_purge") for p in by_name["pmap_remove"])
    handoffs = [e for e in t.instants if e.name == "hand off kernel_lock"]
    assert handoffs and all(e.flows for e in handoffs)
    # Outermost slices name their thread; user time is per process.
    top = [
        s
        for s in t.slices
        if s.depth == 0 and s.name != "cpu_switchto" and t.tracks[s.track].name.startswith("cpu")
    ]
    assert all("thread" in s.args for s in top if not s.name.startswith("IPI "))


def _munmap_under_a_running_sibling() -> Checked:
    """amd64: a 2-thread process unmaps its region while its sibling computes on the
    other CPU, so ``pmap_remove`` shoots that CPU down (the build workload sends no
    IPI: a CPU that went idle loaded the kernel's %cr3 and is no target)."""
    from exitsim.engine.ops import USER, Run
    from exitsim.kern.exit import sys_exit
    from exitsim.kern.fork import thread_fork
    from exitsim.kern.sig import userret
    from exitsim.report.perfetto import TraceRecorder
    from exitsim.vm.fault import uvm_touch
    from exitsim.vm.map import uvm_map, uvm_unmap
    from tests.kernkit import make_kernel, run_to_end, user_process

    k = make_kernel("purge", "amd64", cpus=2, granularity="exact", record=True)
    rec = TraceRecorder(k)

    def worker(p: Any) -> Any:
        for _ in range(20):
            yield Run(10_000, USER)
            yield from userret(k, p)
        yield from sys_exit(k, p, 0)

    def main_body(k: Any, p: Any) -> Any:
        vm = p.p_vmspace
        yield from uvm_map(k.uvm, p, vm.vm_map, 0x1000, 4)
        yield from uvm_touch(k.uvm, p, vm, 0x1000, 4, write=True)
        yield from thread_fork(k, p, "t1", worker)
        yield Run(50_000, USER)
        yield from uvm_unmap(k.uvm, p, vm.vm_map, 0x1000, 0x1004)
        yield from sys_exit(k, p, 0)

    user_process(k, "mt", main_body)
    run_to_end(k)
    data = rec.to_bytes()
    ids = {pr.ps_pid for pr in k.all_processes()} | {t.tid for t in k.engine.threads}
    return check_structure(data, ids)


def test_amd64_ipis_have_arrows() -> None:
    """Every IPI sent reaches a handler on another CPU through an arrow, and the
    sender's wait for the acks is its own slice."""
    t = _munmap_under_a_running_sibling()
    sends = [e for e in t.instants if e.name == "send tlb_shoot"]
    handlers = [e for e in t.slices if e.name == "IPI tlb_shoot"]
    assert sends and sum(len(e.flows) for e in sends) == len(handlers)
    assert "wait for tlb_shoot acks" in t.names()


def test_arm64_shows_pmap_purge_and_broadcast_invalidations() -> None:
    _, t = traced("arm64", "purge+pmap_purge")
    names = t.names()
    assert {"exit1", "uvm_purge", "pmap_purge", "uvm_map_teardown"} <= names
    assert names & {"tlbi_vae1is", "tlbi_aside1is"}
    assert not any(n.startswith("IPI ") for n in names)  # no shootdown IPIs on arm64


def test_simulator_helpers_and_workload_code_are_not_slices() -> None:
    _, t = traced("amd64", "purge")
    names = t.names()
    assert not any(n.startswith("_") for n in names)
    assert not names & {"run_program", "compute", "exec_and_run", "cc_driver"}


def test_run_trace_writes_a_perfetto_protobuf_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``exitsim run --trace``: the file is the protobuf trace, a track per CPU."""
    trace = tmp_path / "run.pftrace"
    argv = ["run", "--policy", "purge+pmap_purge", "--arch", "arm64", "--cpus", "2"]
    argv += ["--json", "--trace", str(trace), "--param", "jobs=2", "--param", "cc1_user_ms=2"]
    assert main(argv) == 0
    capsys.readouterr()
    tracks, events = schema_read(trace.read_bytes())
    cpus = {tr.name: u for u, tr in tracks.items() if tr.name.startswith("cpu")}
    assert cpus == {"cpu0": TRACK_BASE, "cpu1": TRACK_BASE + 1}
    assert any(e.name == "uvm_map_teardown" for e in events)


def test_writer_round_trips_and_refuses_bad_track_ids() -> None:
    """What the writer writes, Perfetto's schema reads, and so does our reader."""
    w = TraceWriter()
    tr = w.track(TRACK_BASE, "cpu0")
    ctr = w.track(TRACK_BASE + 1, "level", counter_unit="pages")
    proc = w.track(PROCESS_BASE + 7, None, process=(7, "cc1"))
    thr = w.track(THREAD_BASE + 9, None, parent=proc, thread=(7, 9, "cc1.1"))
    for bad in (0, TRACK_BASE):
        with pytest.raises(ValueError):
            w.track(bad, "again")
    big = (1 << 40) + 3
    w.begin(big, w.next_seq(), tr, "outer", {"n": -5, "s": "x"}, flows=(7,))
    w.instant(big, w.next_seq(), tr, "mark", terminating=(7,))
    w.end(big + 1, w.next_seq(), tr)
    w.counter(5, w.next_seq(), ctr, -(1 << 33))
    w.begin(6, w.next_seq(), thr, "user")
    w.end(8, w.next_seq(), thr)
    data = w.to_bytes()
    tracks, events = schema_read(data)
    assert read_trace(data) == (tracks, events)
    assert tracks[proc] == Track(proc, "cc1", pid=7)
    assert tracks[thr] == Track(thr, "cc1.1", parent=proc, pid=7, tid=9)
    assert tracks[ctr].counter and not tracks[tr].counter
    assert [(e.ts, e.kind) for e in events] == [
        (5, COUNTER),
        (6, SLICE_BEGIN),
        (8, SLICE_END),
        (big, SLICE_BEGIN),
        (big, INSTANT),
        (big + 1, SLICE_END),
    ]
    assert events[0].value == -(1 << 33)
    assert events[3].args == {"n": -5, "s": "x"} and events[3].flows == [7]
    assert events[4].terminating == [7]


def test_events_at_one_nanosecond_keep_the_order_they_happened_in() -> None:
    """An end and the begin after it at the same ns must not swap: Perfetto would
    nest the second slice in the first."""
    w = TraceWriter()
    tr = w.track(TRACK_BASE, "cpu0")
    seqs = [w.next_seq() for _ in range(4)]
    w.end(10, seqs[2], tr)  # recorded out of order, as a closed slice is
    w.begin(10, seqs[3], tr, "b")
    w.begin(0, seqs[0], tr, "a")
    w.end(20, w.next_seq(), tr)
    _, events = schema_read(w.to_bytes())
    assert [(e.ts, e.kind) for e in events] == [
        (0, SLICE_BEGIN),
        (10, SLICE_END),
        (10, SLICE_BEGIN),
        (20, SLICE_END),
    ]
    assert all(a.ts <= b.ts for a, b in itertools.pairwise(events))


# -- process and thread tracks -----------------------------------------------------------

#: The issue's small run: two jobs on 4 arm64 CPUs under ``purge``.
FOLLOWED = ("arm64", "purge", 4, (("jobs", 2),))


def test_process_and_thread_tracks_name_each_process_and_thread() -> None:
    result, t = traced(*FOLLOWED)
    procs = {tr.pid: tr for tr in t.tracks.values() if tr.pid is not None and tr.tid is None}
    comms = {pid: tr.name for pid, tr in procs.items()}
    # Every user process by its pid and comm, and the kernel's own: init and the reaper.
    assert {p["pid"]: p["comm"] for p in result["per_process"]}.items() <= comms.items()
    assert comms[1] == "init" and "reaper" in comms.values()
    assert all(u == PROCESS_BASE + pid for pid, u in ((tr.pid, tr.uuid) for tr in procs.values()))
    threads = [tr for tr in t.tracks.values() if tr.tid is not None]
    assert {tr.pid for tr in threads} == set(procs), "a process without its thread"
    for tr in threads:
        assert tr.uuid == THREAD_BASE + tr.tid and tr.name
    # Nothing on a process track itself; kernel threads have slices on theirs.
    assert not any(s.track in {tr.uuid for tr in procs.values()} for s in t.slices)
    named = {t.tracks[s.track].name for s in t.slices if t.tracks[s.track].tid is not None}
    assert {"init", "reaper"} <= named


def test_one_exiting_process_is_followed_on_its_thread_track() -> None:
    """The main thread of an exiting process: its exit1 and uvm_purge on its own track,
    taking as long there as on the CPU tracks it ran on."""
    result, t = traced(*FOLLOWED)
    pid = next(p["pid"] for p in result["per_process"] if p["comm"] == "cc1")
    main = min(
        (tr for tr in t.tracks.values() if tr.pid == pid and tr.tid is not None),
        key=lambda tr: tr.tid or 0,
    )
    mine = [s for s in t.slices if s.track == main.uuid]
    on_cpus = [s for s in t.slices if s.owner == main.tid]
    for fn in ("exit1", "uvm_purge"):
        dur = sum(s.end - s.ts for s in mine if s.name == fn)
        assert dur > 0, f"no {fn} on {main.name}[{pid}]'s thread track"
        assert dur == sum(s.end - s.ts for s in on_cpus if s.name == fn), fn
    assert any(s.name == "user" for s in mine)
    # Whichever CPU it ran on: the outermost slices name the CPU tracks it used.
    cpus_used = {t.tracks[s.track].name for s in on_cpus if s.depth == 0}
    assert {s.args["cpu"] for s in mine if s.depth == 0} == cpus_used
    # Some thread of the run moved between CPUs, and its track follows it.
    moved = collections.defaultdict(set)
    for s in t.slices:
        if s.depth == 0 and "cpu" in s.args:
            moved[s.track].add(s.args["cpu"])
    assert max(len(v) for v in moved.values()) > 1


@pytest.mark.parametrize(("arch", "policy"), DESIGNS)
def test_thread_tracks_hold_each_threads_slices_from_the_cpu_tracks(arch: str, policy: str) -> None:
    """Exactly: every slice of a thread on a CPU track is on its thread track, at the
    same time and depth (the interrupt handlers around it are the CPU's, not drawn
    there), ``user <comm>`` as ``user``, the outermost naming its CPU; nothing else."""
    _, t = traced(arch, policy)
    tid_of = {u: tr.tid for u, tr in t.tracks.items() if tr.tid is not None}
    on_threads = collections.Counter(
        (tid_of[s.track], s.ts, s.end, s.depth, s.name, s.args.get("cpu"))
        for s in t.slices
        if s.track in tid_of
    )
    on_cpus = collections.Counter(
        (
            s.owner,
            s.ts,
            s.end,
            s.depth - s.handlers_above,
            "user" if s.name.startswith("user ") else s.name,
            t.tracks[s.track].name if s.depth == 0 else None,
        )
        for s in t.slices
        if s.owner is not None
    )
    assert on_threads == on_cpus
    assert not any("thread" in s.args for s in t.slices if s.track in tid_of)


def test_read_trace_agrees_with_perfettos_schema() -> None:
    """report/perfetto.py's reader (the browser test's, and tools') reads what
    Perfetto's schema reads."""
    _, t = traced("amd64", "purge")
    assert read_trace(t.data) == schema_read(t.data)


def test_the_same_config_gives_the_same_bytes() -> None:
    cfg = SimConfig(policy="purge", arch="arm64", cpus=4, workload_params={"jobs": 2})
    assert simulate_traced(cfg)[1] == simulate_traced(cfg)[1]
