"""The Perfetto export (report/perfetto.py, report/steptrace.py): the structure the
Perfetto importer needs, checked fast without a browser (tests/browser/ loads a trace
into the real UI), and the timeline's agreement with the engine's own accounting."""

from __future__ import annotations

import collections
import itertools
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from exitsim.cli import main
from exitsim.report.perfetto import (
    COUNTER,
    COUNTERS,
    INSTANT,
    SLICE_BEGIN,
    SLICE_END,
    TRACK_BASE,
    Event,
    TraceWriter,
    Track,
    read_trace,
)
from exitsim.sim import SimConfig, simulate_traced

SMALL = {"jobs": 6, "cc1_user_ms": 4}
PID = re.compile(r"\[(\d+)\]$")


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


@dataclass
class Checked:
    """A trace that passed ``check_structure``, in a form tests can query."""

    tracks: dict[int, Track]
    slices: list[Slice] = field(default_factory=list)
    instants: list[Event] = field(default_factory=list)
    counters: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    flows: int = 0

    def names(self) -> set[str]:
        return {s.name for s in self.slices}


def check_structure(data: bytes, pids: set[int]) -> Checked:
    """What Perfetto needs to import a trace whole, asserted: integer-ns timestamps in
    order, track uuids unique, non-zero and never a pid, slices properly nested on
    each track, every flow with exactly one start before its one end, counters only
    on counter tracks."""
    tracks, events = read_trace(data)
    for uuid in tracks:
        assert uuid > 0 and uuid not in pids, f"track uuid {uuid} is zero or a pid"
    out = Checked(tracks)
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
def traced(arch: str, policy: str, cpus: int = 4) -> tuple[dict[str, Any], Checked]:
    cfg = SimConfig(policy=policy, arch=arch, cpus=cpus, workload_params=SMALL)
    result, data = simulate_traced(cfg)
    _, events = read_trace(data)
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
        "IPI tlb_shoot",
        "wait for tlb_shoot acks",
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
    # Every IPI sent reaches a handler on another CPU through an arrow.
    sends = [e for e in t.instants if e.name == "send tlb_shoot"]
    handlers = [e for e in t.slices if e.name == "IPI tlb_shoot"]
    assert sends and sum(len(e.flows) for e in sends) == len(handlers)
    handoffs = [e for e in t.instants if e.name == "hand off kernel_lock"]
    assert handoffs and all(e.flows for e in handoffs)
    # Outermost slices name their thread; user time is per process.
    top = [s for s in t.slices if s.depth == 0 and s.name not in ("cpu_switchto",)]
    assert all("thread" in s.args for s in top if not s.name.startswith("IPI "))


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
    tracks, events = read_trace(trace.read_bytes())
    cpus = {tr.name: u for u, tr in tracks.items() if tr.name.startswith("cpu")}
    assert cpus == {"cpu0": TRACK_BASE, "cpu1": TRACK_BASE + 1}
    assert any(e.name == "uvm_map_teardown" for e in events)


def test_writer_round_trips_and_refuses_bad_track_ids() -> None:
    w = TraceWriter()
    tr = w.track(TRACK_BASE, "cpu0")
    ctr = w.track(TRACK_BASE + 1, "level", counter_unit="pages")
    for bad in (0, TRACK_BASE):
        with pytest.raises(ValueError):
            w.track(bad, "again")
    big = (1 << 40) + 3
    w.begin(big, w.next_seq(), tr, "outer", {"n": -5, "s": "x"}, flows=(7,))
    w.instant(big, w.next_seq(), tr, "mark", terminating=(7,))
    w.end(big + 1, w.next_seq(), tr)
    w.counter(5, w.next_seq(), ctr, -(1 << 33))
    tracks, events = read_trace(w.to_bytes())
    assert tracks[ctr].counter and not tracks[tr].counter
    assert [(e.ts, e.kind) for e in events] == [
        (5, COUNTER),
        (big, SLICE_BEGIN),
        (big, INSTANT),
        (big + 1, SLICE_END),
    ]
    assert events[0].value == -(1 << 33)
    assert events[1].args == {"n": -5, "s": "x"} and events[1].flows == [7]
    assert events[2].terminating == [7]


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
    _, events = read_trace(w.to_bytes())
    assert [(e.ts, e.kind) for e in events] == [
        (0, SLICE_BEGIN),
        (10, SLICE_END),
        (10, SLICE_BEGIN),
        (20, SLICE_END),
    ]
    assert all(a.ts <= b.ts for a, b in itertools.pairwise(events))
