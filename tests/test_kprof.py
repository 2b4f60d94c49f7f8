"""Time by kernel function (report/kprof.py): exact, attributed to the right stacks,
off by default without a trace, and the folded file flame-graph tools read."""

from __future__ import annotations

import json
import re
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from exitsim.cli import main
from exitsim.engine.locks import SpinMutex, TicketLock
from exitsim.engine.ops import (
    SYS,
    USER,
    Acquire,
    Broadcast,
    Ipi,
    Release,
    Run,
    Sleep,
    SpinWait,
    Wakeup,
    Yield,
)
from exitsim.engine.sched import Engine, EngineConfig
from exitsim.engine.thread import Thread
from exitsim.report.kprof import KernelProfiler, folded_text, kind, kprof_rows
from exitsim.sim import SimConfig, simulate, simulate_traced
from tests.clikit import assert_usage_error
from tests.enginekit import Body, run_to_end

SMALL = {"jobs": 4, "cc1_user_ms": 2}
SMALL_ARGS = ["--param", "jobs=4", "--param", "cc1_user_ms=2"]

#: How flamegraph.pl (and stackcollapse's consumers) read a line: the stack, the
#: last run of blanks, the count; frames split on ";".
FLAMEGRAPH_LINE = re.compile(r"^(.*)\s+?(\d+(?:\.\d*)?)$")


def cfg(policy: str, arch: str, cpus: int = 4) -> SimConfig:
    return SimConfig(policy=policy, arch=arch, cpus=cpus, workload_params=SMALL)


def by_kind(folded: dict[str, int]) -> dict[str, int]:
    out = dict.fromkeys(("user", "sys", "spin", "idle", "intr"), 0)
    for stack, ns in folded.items():
        out[kind(tuple(stack.split(";")))] += ns
    return out


def frames_in_order(stack: str, *names: str) -> bool:
    """``names`` all on ``stack``, outermost first (not necessarily adjacent)."""
    frames = stack.split(";")
    i = 0
    for f in frames:
        if i < len(names) and f == names[i]:
            i += 1
    return i == len(names)


# -- exact ---------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["purge", "reaper", "purge+pmap_purge"])
@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_the_samples_add_up_to_the_results_cpu_time(arch: str, policy: str) -> None:
    """Every nanosecond the engine charged is in one stack, of its own kind: the sum
    is user + sys + spin + idle of the Result's cpu block, and each kind its own."""
    r = simulate(cfg(policy, arch), kprof=True)
    kp, cpu = r["kprof"], r["cpu"]
    assert all(isinstance(ns, int) and ns > 0 for ns in kp.values())
    assert list(kp) == sorted(kp)
    total = sum(kp.values())
    assert total == cpu["user_ns"] + cpu["sys_ns"] + cpu["spin_ns"] + cpu["idle_ns"]
    assert total == r["config"]["cpus"] * r["makespan_ns"]
    assert by_kind(kp) == {
        "user": cpu["user_ns"],
        "sys": cpu["sys_ns"] - cpu["intr_ns"],
        "spin": cpu["spin_ns"],
        "idle": cpu["idle_ns"],
        "intr": cpu["intr_ns"],
    }
    assert kp["idle"] == cpu["idle_ns"]
    # Not about the profile: the run exercises what the leaves are for.
    if arch == "amd64":
        # Local invalidations only: every CPU a process left loaded the kernel's %cr3
        # there (the build has no sibling threads), so no shootdown has a target. The
        # IPI leaves are exercised by the engine-level programs below.
        assert any(s.endswith("pmap_tlb_shootrange") for s in kp)
        assert r["tlb"]["ipis"] == 0 and not any(":tlb_shoot" in s for s in kp)
    else:
        assert any(frames_in_order(s, "ttlb_flush_range", "tlbi_vae1is") for s in kp)


def test_each_thread_gets_exactly_what_the_engine_charged_it() -> None:
    """Per thread, user + sys (spin included) as the engine counts them is what the
    profile attributed to it: nothing goes to the thread before or after it."""
    from exitsim.sim import _run, build_kernel

    for c in (cfg("purge", "amd64", 8), cfg("reaper", "arm64", 8)):
        k = build_kernel(c)
        prof = KernelProfiler(k.engine)
        _run(k)
        prof.close()
        for t in k.engine.threads:
            assert prof.by_thread.get(t.tid, 0) == t.user_ns + t.sys_ns, t


# Random engine programs, with everything that charges time: user and sys runs,
# quantum cuts, wakeup preemption (timers), sleeps that drop and retake the kernel
# lock, spin locks, IPIs with handlers, broadcasts that stall the other CPUs.
OP_KINDS = (
    "user",
    "sys",
    "yield",
    "acq_kl",
    "rel_kl",
    "acq_m",
    "rel_m",
    "ipi",
    "bcast",
    "sleep",
    "spinwait",
    "wake",
)


def program(
    me: Thread, eng: Engine, raw: list[tuple[str, int]], kl: TicketLock, m: SpinMutex
) -> Body:
    kl_depth = 0
    m_held = False
    chan: Hashable = "chan"
    for what, ns in raw:
        if what == "user" and not kl_depth and not m_held:
            yield Run(ns, USER)
        elif what == "sys":
            yield Run(ns, SYS)
        elif what == "yield" and not m_held:
            yield Yield()
        elif what == "acq_kl" and not m_held:
            yield Acquire(kl)
            kl_depth += 1
        elif what == "rel_kl" and kl_depth and not m_held:
            yield Release(kl)
            kl_depth -= 1
        elif what == "acq_m" and not m_held:
            yield Acquire(m)
            m_held = True
        elif what == "rel_m" and m_held:
            yield Release(m)
            m_held = False
        elif what == "ipi":
            others = tuple(x for x in range(len(eng.cpus)) if x != me.cpu)
            yield Ipi(others, ns, None, "t")
        elif what == "bcast":
            yield Broadcast(1 + ns % 3, ns, ns // 4, None, "tlbi_t", ns // 2)
        elif what == "sleep" and not m_held:
            eng.call_at(eng.now + ns, eng.wakeup, chan)
            yield Sleep(chan, None, "zz")
        elif what == "spinwait":
            mine = ("sw", me.tid)
            eng.call_at(eng.now + ns, eng.wakeup, mine)
            yield SpinWait(mine, "sw")
        elif what == "wake":
            yield Wakeup(chan)
    if m_held:
        yield Release(m)
    if kl_depth:
        yield Release(kl, all_levels=True)


programs = st.fixed_dictionaries(
    {
        "ncpu": st.integers(1, 4),
        "ctxsw": st.integers(0, 15),
        "quantum": st.integers(20, 120),
        "latency": st.integers(0, 20),
        "threads": st.lists(
            st.tuples(
                st.integers(0, 30),
                st.lists(
                    st.tuples(st.sampled_from(OP_KINDS), st.integers(1, 200)),
                    min_size=1,
                    max_size=14,
                ),
            ),
            min_size=1,
            max_size=6,
        ),
    }
)

# Two CPUs interrupting each other while a third thread waits to preempt a user run.
CROSSFIRE = {
    "ncpu": 2,
    "ctxsw": 3,
    "quantum": 40,
    "latency": 5,
    "threads": [
        (0, [("user", 100), ("ipi", 30), ("acq_kl", 1), ("sleep", 20), ("rel_kl", 1)]),
        (0, [("ipi", 40), ("bcast", 50), ("user", 60), ("spinwait", 30)]),
        (3, [("sleep", 10), ("acq_kl", 1), ("sys", 20), ("rel_kl", 1), ("user", 80)]),
    ],
}

# A thread woken from a sleep it took with the kernel lock held switches in (after
# another thread, so the switch costs) and spins to take the lock back (mi_switch)
# while another CPU holds it; its wakeup cuts that other thread's user run.
RETAKE = {
    "ncpu": 2,
    "ctxsw": 7,
    "quantum": 100,
    "latency": 0,
    "threads": [
        (0, [("acq_kl", 1), ("sleep", 10), ("rel_kl", 1)]),
        (1, [("acq_kl", 1), ("sys", 100), ("rel_kl", 1)]),
        (9, [("user", 5)]),
    ],
}


@settings(deadline=None, max_examples=60, derandomize=True)
@given(w=programs)
@example(w=CROSSFIRE)
@example(w=RETAKE)
def test_attribution_is_exact_on_random_engine_programs(w: dict[str, Any]) -> None:
    eng = Engine(
        EngineConfig(
            ncpu=w["ncpu"],
            quantum_ns=w["quantum"],
            ctxsw_ns=w["ctxsw"],
            ipi_latency_ns=w["latency"],
        )
    )
    prof = KernelProfiler(eng)
    kl = TicketLock("kernel_lock")
    m = SpinMutex("m.1")
    for i, (at, raw) in enumerate(w["threads"]):
        eng.spawn(f"t{i}", lambda me, raw=raw: program(me, eng, raw, kl, m), at=at)
    run_to_end(eng, max_events=20_000)
    folded = prof.folded()
    assert all(ns > 0 for ns in folded.values())
    got = by_kind(folded)
    for i, name in enumerate(("user", "sys", "spin", "idle", "intr")):
        assert got[name] == sum(c.acct[i] for c in eng.cpus), (name, folded)
    for t in eng.threads:
        assert prof.by_thread.get(t.tid, 0) == t.user_ns + t.sys_ns, (t, folded)
    # Context switches are under cpu_switchto; spin stacks name what they spin on.
    switching = sum(ns for s, ns in folded.items() if s.endswith(";cpu_switchto"))
    assert switching == w["ctxsw"] * sum(c.switches for c in eng.cpus), folded
    for s in folded:
        leaf = s.rsplit(";", 1)[-1]
        if leaf.startswith("spin:"):
            assert leaf in ("spin:kernel_lock", "spin:m", "spin:ipi_acks:t", "spin:sw"), s


# -- where the time goes -----------------------------------------------------------------


def test_purge_tears_down_in_exit1_and_the_reaper_in_uvm_exit() -> None:
    purge = simulate(cfg("purge", "amd64"), kprof=True)["kprof"]
    reaper = simulate(cfg("reaper", "amd64"), kprof=True)["kprof"]

    def under(kp: dict[str, int], *names: str, root: str | None = None) -> int:
        return sum(
            ns
            for s, ns in kp.items()
            if frames_in_order(s, *names) and (root is None or s.split(";", 1)[0] == root)
        )

    teardown = ("uvm_map_teardown", "pmap_remove")
    assert under(purge, "exit1", "uvm_purge", *teardown) > 0
    assert under(purge, "reaper", "uvm_exit", *teardown, root="reaper") == 0
    assert under(reaper, "reaper", "uvm_exit", *teardown, root="reaper") > 0
    assert under(reaper, "exit1", *teardown) == 0
    # The same pages are freed either way: pmap_remove's time moves, it does not vanish.
    assert under(purge, "pmap_remove") == pytest.approx(under(reaper, "pmap_remove"), rel=0.05)


def test_the_table_has_the_functions_of_interest_per_design() -> None:
    rs = [simulate(cfg(p, "arm64"), kprof=True) for p in ("reaper", "purge")]
    ((title, cols, rows),) = kprof_rows(rs)
    assert "arm64, 4 CPUs" in title
    assert cols == [
        "function",
        "reaper self ms",
        "reaper total ms",
        "purge self ms",
        "purge total ms",
    ]
    table = {row[0]: row[1:] for row in rows}
    for label in ("exit1", "uvm_purge", "uvm_map_teardown", "pmap_remove", "reaper"):
        assert label in table
    assert table["uvm_purge"][1] == "0.000" and float(table["uvm_purge"][3]) > 0
    assert float(table["reaper"][1]) > float(table["reaper"][3])
    assert "TLB broadcast: stall of other CPUs" in table
    for r, cell in zip(rs, (table["kernel time (sys, spin, interrupts)"][1::2]), strict=True):
        assert cell == f"{(r['cpu']['sys_ns'] + r['cpu']['spin_ns']) / 1e6:,.3f}"
    # A run's table: one pair of columns.
    ((_, cols1, _),) = kprof_rows(rs[:1])
    assert cols1 == ["function", "self ms", "total ms"]


# -- off by default, deterministic -----------------------------------------------------


def test_off_leaves_the_result_as_it_was_and_on_changes_nothing_else() -> None:
    c = cfg("purge", "arm64")
    plain = simulate(c)
    assert "kprof" not in plain
    assert json.dumps(simulate(c, kprof=False), sort_keys=True) == json.dumps(plain, sort_keys=True)
    profiled = simulate(c, kprof=True)
    rest = {k: v for k, v in profiled.items() if k != "kprof"}
    assert json.dumps(rest, sort_keys=True) == json.dumps(plain, sort_keys=True)


def test_the_same_run_gives_the_same_profile_traced_or_not() -> None:
    c = cfg("purge+pmap_purge", "amd64")
    once = folded_text(simulate(c, kprof=True))
    assert folded_text(simulate(c, kprof=True)) == once
    traced, trace = simulate_traced(c, kprof=True)
    assert folded_text(traced) == once
    assert trace == simulate_traced(c)[1]


def test_folded_text_refuses_a_result_that_was_not_profiled() -> None:
    with pytest.raises(ValueError, match="has no kprof"):
        folded_text(simulate(cfg("purge", "amd64", 1)))


# -- the command line ----------------------------------------------------------------


def read_folded(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in path.read_text().splitlines():
        assert re.fullmatch(r"[^ ]+ \d+", line), line
        m = FLAMEGRAPH_LINE.match(line)
        assert m is not None, line
        frames = m.group(1).split(";")
        assert all(frames), line
        assert m.group(1) not in out, line
        out[m.group(1)] = int(m.group(2))
    return out


def test_run_folded_writes_flamegraph_input_and_prints_the_table(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    folded, result = tmp_path / "run.folded", tmp_path / "r.json"
    argv = ["run", "--policy", "purge", "--cpus", "4", "-q", *SMALL_ARGS]
    assert main([*argv, "--folded", str(folded), "-o", str(result)]) == 0
    out = capsys.readouterr().out
    assert "Time by kernel function, amd64, 4 CPUs" in out
    assert out.index("TLB work") < out.index("Time by kernel function")
    assert f"folded: {folded}" in out
    stacks = read_folded(folded)
    r = json.loads(result.read_text())
    assert sum(stacks.values()) == r["config"]["cpus"] * r["makespan_ns"]
    assert stacks == r["kprof"]
    assert folded.read_text() == folded_text(r)
    assert any(frames_in_order(s, "cc1", "sys_exit", "exit1", "uvm_purge") for s in stacks)

    # Without --folded: no table, and the Result is as before.
    assert main([*argv, "-o", str(result)]) == 0
    assert "Time by kernel function" not in capsys.readouterr().out
    assert "kprof" not in json.loads(result.read_text())


def test_compare_folded_holds_every_run_under_its_design_arch_and_cpus(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    folded, results = tmp_path / "c.folded", tmp_path / "c.json"
    argv = ["compare", "--policies", "reaper,purge", "--arches", "arm64", "--cpus", "2"]
    argv += ["--workers", "1", "-q", *SMALL_ARGS, "--folded", str(folded), "-o", str(results)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Time by kernel function, arm64, 2 CPUs" in out
    assert "reaper self ms" in out and "purge total ms" in out
    stacks = read_folded(folded)
    rs = json.loads(results.read_text())
    for r in rs:
        root = f"{r['config']['policy']};arm64;2cpus;"
        mine = {s[len(root) :]: ns for s, ns in stacks.items() if s.startswith(root)}
        assert mine == r["kprof"]
        assert sum(mine.values()) == 2 * r["makespan_ns"]
    assert len(stacks) == sum(len(r["kprof"]) for r in rs)


def test_folded_into_a_missing_directory_is_refused_before_the_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = str(tmp_path / "nowhere" / "x.folded")
    assert_usage_error(["run", "--folded", bad, *SMALL_ARGS], "--folded", capsys)
    argv = ["compare", "--arches", "amd64", "--cpus", "1", "--folded", bad]
    assert_usage_error([*argv, *SMALL_ARGS], "--folded", capsys)
