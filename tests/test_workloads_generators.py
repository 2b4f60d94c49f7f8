"""The built-in generators besides ``build``: forkstorm, bigexit, threads, shm and
configure, each run end to end at small sizes in the designs it is about, on both
arches.

Every run is checked for what a whole run must show (every process the generator made
was freed and counted, every page it allocated freed again except the vnode cache of
the programs it exec'd), then each generator for the case it exists for. What the
Result does not carry (threads, the order of exits, where a segment was freed) is read
from the finished kernel, or observed by wrapping the function the kernel path calls
through its module attribute (``monkeypatch``), never by changing what it does.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from exitsim.cli import main
from exitsim.engine.thread import DEAD, KPath, Thread
from exitsim.kern import exit as exit_mod
from exitsim.kern.kernel import Kernel
from exitsim.kern.proc import (
    EXIT_NORMAL,
    EXIT_THREAD,
    EXIT_THREAD_NOCHECK,
    P_SYSTEM,
    P_THREAD,
    SDEAD,
    Proc,
)
from exitsim.machine.machine import Machine
from exitsim.policies import purge as purge_mod
from exitsim.report.result import build_result
from exitsim.sim import SimConfig, build_kernel, simulate
from exitsim.vm import shm as shm_mod
from exitsim.vm.shm import ShmSegment
from exitsim.vm.uvm import PAGE_SIZE
from exitsim.workloads import bigexit, configure, forkstorm, shm, threads
from exitsim.workloads.program import LIBC_PAGES, Program
from exitsim.workloads.registry import WORKLOADS, WorkloadError, check_params
from tests.kernkit import run_to_end

ARCHES = ["amd64", "arm64"]
DESIGNS = ["reaper", "purge", "purge+pmap_purge"]
PURGE_DESIGNS = ["purge", "purge+pmap_purge"]
CPUS = 4

#: Small runs of each generator: a few hundredths of a second each.
SMALL: dict[str, dict[str, Any]] = {
    "forkstorm": {"loopers": 3, "iterations": 6},
    "bigexit": {"big_gib": 0.25, "workers": 2, "job_ms": 1.0, "big_user_ms": 3.0},
    "threads": {
        "servers": 2,
        "threads": 3,
        "server_ms": 3.0,
        "churn_threads": 8,
        "pool": 2,
        "thread_ms": 0.2,
    },
    "shm": {"groups": 3, "sharers": 2, "segment_pages": 512, "user_ms": 1.0},
    "configure": {"steps": 24},
}
RUNS = [
    (name, policy, arch)
    for name in SMALL
    for policy in DESIGNS + (["no-reaper"] if name == "threads" else [])
    for arch in ARCHES
]


# -- helpers ---------------------------------------------------------------------------


def _config(name: str, policy: str, arch: str, seed: int = 0, **params: Any) -> SimConfig:
    return SimConfig(
        policy=policy,
        arch=arch,
        cpus=CPUS,
        workload=name,
        seed=seed,
        workload_params=SMALL[name] | params,
    )


@functools.cache
def _result(name: str, policy: str, arch: str, params: tuple = ()) -> dict[str, Any]:
    """``simulate`` once per config for the whole module (Results are only read)."""
    return simulate(_config(name, policy, arch, **dict(params)))


def _run_kernel(cfg: SimConfig) -> tuple[Kernel, dict[str, Any]]:
    """What ``simulate`` does, keeping the finished kernel to look into."""
    k = build_kernel(cfg)
    run_to_end(k)
    assert sum(len(pr.dead_threads) for pr in k.all_processes()) == 0
    return k, build_result(k, cfg)


def _vnode_cache(*progs: Program) -> int:
    """The pages left in the vnode cache at the end: the text of each program exec'd
    and libc, which every one maps."""
    return sum(p.text_pages for p in set(progs)) + LIBC_PAGES


def _comms(r: dict[str, Any]) -> Counter[str]:
    return Counter(p["comm"] for p in r["per_process"])


def _params(name: str, **over: Any) -> Any:
    return check_params(name, SMALL[name] | over)


def _expected(name: str, r: dict[str, Any]) -> tuple[int, int]:
    """(processes made, pages left cached) for the small run of ``name``."""
    p = _params(name, **r["config"]["workload_params"])
    if name == "forkstorm":
        progs = [forkstorm.looper_program(p)]
        if "exec" in p.modes():
            progs.append(forkstorm.hello_program(p))
        return p.processes(CPUS), _vnode_cache(*progs)
    if name == "bigexit":
        jobs = _comms(r)["job"]
        # Each worker runs at least one job: it starts before the big process exits.
        assert jobs >= p.nworkers(CPUS)
        progs = [bigexit.SH, bigexit.big_program(p), bigexit.job_program(p)]
        return 2 + p.nworkers(CPUS) + jobs, _vnode_cache(*progs)
    if name == "threads":
        progs = [threads.SH]
        if p.with_servers:
            progs.append(threads.server_program(p))
        if p.with_churn:
            progs.append(threads.CHURN)
        return p.processes(), _vnode_cache(*progs)
    if name == "shm":
        return p.processes(), _vnode_cache(shm.SHMD)
    assert name == "configure"
    return p.steps + 1, _vnode_cache(configure.SH, configure.probe_program(p))


# -- every generator, every design it is about -------------------------------------------


@pytest.mark.parametrize(("name", "policy", "arch"), RUNS)
def test_every_process_is_freed_and_every_anonymous_page_comes_back(
    name: str, policy: str, arch: str
) -> None:
    """design.md invariant 2 on each generator (``simulate`` runs the leak audit and
    refuses live processes, zombies and unfreed threads at the end): every process the
    generator made exited, was freed and counted, its vmspace and pmap are gone, and
    every page allocated was freed but the vnode cache (program text and libc)."""
    r = _result(name, policy, arch)
    made, cached = _expected(name, r)
    assert r["processes"]["count"] == made
    assert r["vm"]["vmspaces_freed"] == made
    assert r["vm"]["pmaps_destroyed"] == made
    mem = r["memory"]
    assert mem["pages_allocated"] - mem["pages_freed"] == cached
    assert r["vm"]["pages_allocated"] == mem["pages_allocated"]
    assert mem["held_after_exit_peak_bytes"] > 0
    if policy == "no-reaper":
        # The design hands a child to its parent before its purge (invariant 6).
        assert r["known_violations"].get("6", 0) > 0
    else:
        assert r["known_violations"] == {}


@pytest.mark.parametrize("name", list(SMALL))
def test_the_same_config_gives_a_byte_identical_result(name: str) -> None:
    """style.md "Ordering is deterministic", for each generator."""
    cfg = _config(name, "purge+pmap_purge", "arm64")
    a = json.dumps(simulate(cfg), sort_keys=True)
    b = json.dumps(simulate(cfg), sort_keys=True)
    assert a == b


# -- forkstorm -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["fork", "exec", "both"])
def test_forkstorm_makes_one_child_per_iteration_of_each_loop(mode: str) -> None:
    """Each looper runs its loops; a fork child's first return to user space writes
    its stack (a copy-on-write copy of the looper's 4-page stack run), an exec child
    copies nothing: it runs hello in a fresh image. Every child is waited for by its
    looper; the loopers are init's."""
    r = _result("forkstorm", "purge+pmap_purge", "amd64", (("mode", mode),))
    p = _params("forkstorm", mode=mode)
    loops = p.loopers * p.iterations
    comms = _comms(r)
    forks = loops if mode in ("fork", "both") else 0
    execs = loops if mode in ("exec", "both") else 0
    want = Counter({"forkloop": p.loopers + forks})
    if execs:
        want["hello"] = execs
    assert comms == want
    assert r["processes"]["count"] == p.processes(CPUS)
    assert r["processes"]["waited_for"] == forks + execs
    stack = forkstorm.looper_program(p).stack_pages
    assert r["vm"]["cow_copies"] == forks * stack


@pytest.mark.parametrize("arch", ARCHES)
def test_forkstorm_exits_keep_the_reaper_busy_only_under_reaper(arch: str) -> None:
    """Under ``reaper`` the reaper tears every child down; under the purge designs the
    children do it in exit1 and the reaper only frees u-areas, pmaps and structs."""
    reaper = _result("forkstorm", "reaper", arch)
    for policy in PURGE_DESIGNS:
        purge = _result("forkstorm", policy, arch)
        assert purge["reaper"]["busy_ns"] * 2 < reaper["reaper"]["busy_ns"]


# -- bigexit ---------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("policy", DESIGNS)
def test_bigexit_holds_the_big_process_after_its_exit(policy: str, arch: str) -> None:
    """From exit1 until its teardown unmaps them, the big process's pages count as
    held after exit: the peak covers its whole data set, in every design."""
    r = _result("bigexit", policy, arch)
    big = _params("bigexit").big_pages() * PAGE_SIZE
    assert r["memory"]["held_after_exit_peak_bytes"] >= big
    assert r["memory"]["held_after_exit_integral_byte_ns"] > 0
    assert _comms(r)["big"] == 1


def test_bigexit_at_its_default_size_holds_gigabytes() -> None:
    """Range granularity makes a big resident set one run: the default 4 GiB process
    on 8 CPUs runs quickly, and under ``reaper`` its whole data set stays mapped after
    its exit until the reaper has torn it down."""
    r = simulate(SimConfig(policy="reaper", arch="amd64", cpus=8, workload="bigexit"))
    p = bigexit.BigexitParams()
    assert p.big_gib == 4.0
    assert r["memory"]["held_after_exit_peak_bytes"] >= 4 << 30
    assert r["processes"]["count"] == 2 + p.nworkers(8) + _comms(r)["job"]


@pytest.mark.parametrize("arch", ARCHES)
def test_bigexit_teardown_runs_in_the_reaper_and_moves_to_the_exiting_process(
    arch: str,
) -> None:
    """Under every reading of the reaper it tears the big address space down, so its
    busy time covers the whole teardown (at least the free of every page); under the
    purge designs the big process pays in its own exit1. Even the reading where the
    reaper holds the kernel lock (``reaper-locked``: kern_exit.c 1.212 with uvm_map.c
    up to 1.329) lets go of it for the page work, so the kernel lock is held for far
    less than the reaper is busy."""
    page_free = Machine(arch, CPUS, "range").costs.page_free_ns
    for baseline in ("reaper", "reaper-locked", "reaper-fifo"):
        reaper = _result("bigexit", baseline, arch)
        busy = reaper["reaper"]["busy_ns"]
        assert busy >= _params("bigexit").big_pages() * page_free
        assert reaper["locks"]["kernel_lock"]["hold_ns"] * 10 < busy
        for policy in PURGE_DESIGNS:
            purge = _result("bigexit", policy, arch)
            assert purge["reaper"]["busy_ns"] * 10 < busy


# -- threads ---------------------------------------------------------------------------


def _record_exit1(monkeypatch: pytest.MonkeyPatch, flags: dict[Proc, int]) -> None:
    """Note the flags every thread enters exit1 with (userret and sys_exit call it
    through the module)."""
    orig = exit_mod.exit1

    def exit1(k: Kernel, p: Proc, xexit: int, xsig: int, fl: int) -> KPath:
        flags[p] = fl
        yield from orig(k, p, xexit, xsig, fl)

    monkeypatch.setattr(exit_mod, "exit1", exit1)


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("policy", [*DESIGNS, "no-reaper"])
def test_threads_servers_are_single_threaded_and_churned_threads_all_freed(
    monkeypatch: pytest.MonkeyPatch, policy: str, arch: str
) -> None:
    """A server has ``threads`` threads; its main thread's exit(2) single-threads them,
    so each worker entered exit1 from userret (EXIT_THREAD_NOCHECK): most after
    computing, and one that had not yet been on a CPU when the exit began at its very
    first userret (``child_return``), with no user time. The churner made
    ``churn_threads`` threads, each leaving by __threxit (EXIT_THREAD). Every thread is
    dead and freed at the end; with a reaper every u-area was freed by it, without one
    the dead threads piled up on their process: ``threads.unfreed_peak`` counts at least
    the churner's."""
    flags: dict[Proc, int] = {}
    _record_exit1(monkeypatch, flags)
    k, r = _run_kernel(_config("threads", policy, arch))
    p = _params("threads")
    by_proc: dict[str, list[Proc]] = {}
    for t in k.engine.threads:
        if isinstance(t, Proc) and not t.p_flag & P_SYSTEM and t.p_p is not None:
            by_proc.setdefault(f"{t.p_p.comm}.{t.p_p.ps_pid}", []).append(t)
    servers = {n: ts for n, ts in by_proc.items() if n.startswith("server.")}
    (churn,) = (ts for n, ts in by_proc.items() if n.startswith("churn."))
    assert len(servers) == p.servers
    for ts in servers.values():
        assert len(ts) == p.threads
        workers = [t for t in ts if t.p_flag & P_THREAD]
        assert [flags[t] for t in workers] == [EXIT_THREAD_NOCHECK] * (p.threads - 1)
        assert any(t.user_ns > 0 for t in workers)
    assert len(churn) == p.churn_threads + 1
    assert sorted(flags[t] for t in churn) == [EXIT_NORMAL] + [EXIT_THREAD] * p.churn_threads
    everyone = [t for ts in by_proc.values() for t in ts]
    assert all(t.state == DEAD and t.p_stat == SDEAD for t in everyone)
    assert r["processes"]["count"] == p.processes()
    if policy == "no-reaper":
        # At least the churn's threads and its main thread waited for the process.
        assert r["threads"]["unfreed_peak"] >= p.churn_threads + 1
        assert k.meters.unfreed_threads.value == 0
    else:
        assert r["threads"]["unfreed_peak"] == 0
    # Every dead thread's u-area is freed, by the reaper or by the waiter.
    assert [t.name for t in everyone if t.p_addr] == []


@pytest.mark.parametrize(("policy", "unfreed"), [("no-reaper", 12 + 1), ("reaper", 0)])
def test_threads_churn_alone_shows_what_the_reaper_frees(policy: str, unfreed: int) -> None:
    """The objection to "R.I.P the reaper": in mode ``churn`` the only multi-threaded
    process is the churner. Without a reaper none of its dead threads is freed until
    it is: all ``churn_threads`` of them and, at last, its main thread are waiting at
    once. With the reaper none ever waits on its process."""
    r = simulate(_config("threads", policy, "amd64", mode="churn", churn_threads=12))
    assert r["threads"]["unfreed_peak"] == unfreed
    assert r["processes"]["count"] == 2  # sh and the churner


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("policy", PURGE_DESIGNS)
def test_threads_server_purges_only_after_its_workers_are_gone(
    monkeypatch: pytest.MonkeyPatch, policy: str, arch: str
) -> None:
    """pmap_purge's wait for siblings: every server's ``uvm_purge`` runs in its main
    thread once every worker is SDEAD (ps_threadcnt 0), though they were all computing
    when it called exit(2)."""
    seen: list[tuple[int, list[int]]] = []
    orig = purge_mod.uvm_purge_checked

    def wrapped(k: Kernel, p: Proc, with_pmap_purge: bool) -> KPath:
        pr = p.p_p
        assert pr is not None
        if pr.comm == "server":
            assert not p.p_flag & P_THREAD
            sibs = [t for t in k.engine.threads if isinstance(t, Proc) and t.p_p is pr]
            seen.append((pr.ps_threadcnt, [t.p_stat for t in sibs if t is not p]))
        yield from orig(k, p, with_pmap_purge)

    monkeypatch.setattr(purge_mod, "uvm_purge_checked", wrapped)
    simulate(_config("threads", policy, arch, mode="server"))
    p = _params("threads")
    assert seen == [(0, [SDEAD] * (p.threads - 1))] * p.servers


# -- shm -------------------------------------------------------------------------------


def _record_deallocations(monkeypatch: pytest.MonkeyPatch, where: list[Thread]) -> None:
    orig = shm_mod.shm_deallocate_segment

    def dealloc(uvm: Any, p: Thread, seg: ShmSegment) -> KPath:
        where.append(p)
        yield from orig(uvm, p, seg)

    monkeypatch.setattr(shm_mod, "shm_deallocate_segment", dealloc)


def _who(k: Kernel, p: Thread) -> str:
    if p is k.reaper_proc:
        return "reaper"
    assert isinstance(p, Proc) and p.p_p is not None
    return p.p_p.comm


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize(
    ("policy", "order", "detach", "freed_by"),
    [
        # Every exit's shmexit runs in the reaper's uvm_exit.
        ("reaper", "creator-last", "exit", "reaper"),
        ("reaper", "creator-first", "exit", "reaper"),
        ("reaper", "random", "exit", "reaper"),
        # uvm_purge in exit1: the last to leave pays for the segment.
        ("purge", "creator-last", "exit", "shmd"),
        ("purge+pmap_purge", "creator-last", "exit", "shmd"),
        ("purge", "creator-first", "exit", "sharer"),
        ("purge+pmap_purge", "creator-first", "exit", "sharer"),
        # shmdt(2) before exit: a live process's system call, whatever the design.
        ("reaper", "creator-last", "shmdt", "shmd"),
        ("reaper", "creator-first", "shmdt", "sharer"),
        ("purge+pmap_purge", "creator-first", "shmdt", "sharer"),
    ],
)
def test_shm_segment_goes_with_the_last_detach(
    monkeypatch: pytest.MonkeyPatch,
    policy: str,
    order: str,
    detach: str,
    freed_by: str,
    arch: str,
) -> None:
    """openbsd-exit-path.md 10.3: a segment marked removed is freed at its last
    detach. Each group's segment is freed once, by whoever detaches last: the creator
    when it waits for its sharers, a sharer when the creator leaves first; in the
    reaper when exits detach there (``reaper``), in exit1 under the purge designs,
    in shmdt(2) when processes detach themselves."""
    where: list[Thread] = []
    _record_deallocations(monkeypatch, where)
    k, r = _run_kernel(_config("shm", policy, arch, order=order, detach=detach))
    p = _params("shm")
    assert [_who(k, t) for t in where] == [freed_by] * p.groups
    assert not k.uvm.shm_segments
    assert r["processes"]["count"] == p.processes()
    waited = p.groups * p.sharers if order == "creator-last" else 0
    assert r["processes"]["waited_for"] == waited  # the rest are init's


def test_shm_random_orders_come_from_the_seed() -> None:
    """``random`` draws each group's exit order from the seed: the same seed, the same
    run; another seed, other lifetimes and another run."""
    a = simulate(_config("shm", "purge", "amd64", order="random"))
    b = simulate(_config("shm", "purge", "amd64", seed=1, order="random"))
    assert a["per_process"] != b["per_process"]
    assert a["processes"]["count"] == b["processes"]["count"]


# -- configure -------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("policy", DESIGNS)
def test_configure_runs_its_processes_strictly_one_after_another(policy: str, arch: str) -> None:
    """A configure script's children never overlap: each exits and is waited for
    before the shell forks the next, so at most one zombie ever exists, the sum of
    all user time fits in the wall time, and every child but the shell (init's) has
    an exit latency."""
    k, r = _run_kernel(_config("configure", policy, arch))
    p = _params("configure")
    assert _comms(r) == Counter({"probe": p.steps - p.subshells(), "sh": p.subshells() + 1})
    assert r["processes"]["waited_for"] == p.steps
    assert r["zombies"]["peak"] == 1
    assert r["processes"]["charged_user_ns_total"] <= r["makespan_ns"]
    kids = sorted(
        (rec for rec in k.meters.records.values() if rec.reaped_ns is not None),
        key=lambda rec: rec.pid,
    )
    assert len(kids) == p.steps
    for a, b in itertools.pairwise(kids):
        assert a.reaped_ns is not None and a.reaped_ns < b.exit1_ns


# -- parameters and the command line -------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("forkstorm", {"iterations": 0}, "iterations"),
        ("forkstorm", {"mode": "spawn"}, "mode"),
        ("forkstorm", {"loopers": -1}, "loopers"),
        ("forkstorm", {"loop_user_us": -1.0}, "loop_user_us"),
        ("bigexit", {"big_gib": 0}, "big_gib"),
        ("bigexit", {"big_gib": float("nan")}, "big_gib"),
        ("bigexit", {"workers": "many"}, "workers"),
        ("threads", {"pool": 0}, "pool"),
        ("threads", {"mode": "forks"}, "mode"),
        ("threads", {"thread_ms": float("inf")}, "thread_ms"),
        ("threads", {"server_ms": 1e300}, "server_ms"),
        ("forkstorm", {"hello_user_us": 1e300}, "hello_user_us"),
        ("configure", {"probe_user_ms": 1e12}, "probe_user_ms"),
        ("shm", {"order": "lifo"}, "order"),
        ("shm", {"detach": "never"}, "detach"),
        ("shm", {"segment_pages": 0}, "segment_pages"),
        ("shm", {"segment_pages": 10**8}, "segment_pages"),
        ("forkstorm", {"looper_heap_pages": 10**8}, "looper_heap_pages"),
        ("bigexit", {"big_gib": 65}, "big_gib"),
        ("build", {"cc1_anon_pages": 10**8}, "cc1_anon_pages"),
        ("configure", {"steps": 0}, "steps"),
        ("configure", {"subshell_every": -1}, "subshell_every"),
        ("configure", {"stepz": 3}, "stepz"),
    ],
)
def test_a_bad_parameter_is_one_line_naming_the_field(
    name: str, params: dict[str, Any], field: str
) -> None:
    with pytest.raises(WorkloadError) as ei:
        check_params(name, params)
    msg = str(ei.value)
    assert msg.startswith(f"workload {name}: ")
    assert field in msg
    assert "\n" not in msg


@pytest.mark.parametrize("name", list(SMALL))
def test_every_default_is_valid_and_the_generator_is_listed(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert name in WORKLOADS
    assert check_params(name, {}) == WORKLOADS[name].params()
    assert main(["list"]) == 0
    assert f"  {name} " in capsys.readouterr().out


def test_a_generator_table_in_a_workload_file_runs_forkstorm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/workloads.md "A generator": ``[generator]`` names forkstorm and gives its
    parameters; ``--param`` overrides one of them."""
    wl = tmp_path / "storm.toml"
    wl.write_text(
        'format = 1\nname = "a small storm"\n\n[generator]\nname = "forkstorm"\n'
        'loopers = 2\niterations = 4\nmode = "exec"\n'
    )
    argv = ["run", "--workload", str(wl), "--json", "--cpus", "2", "--param", "iterations=3"]
    assert main(argv) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["config"]["workload"] == "forkstorm"
    assert r["config"]["workload_params"] == {"loopers": 2, "iterations": 3, "mode": "exec"}
    assert r["processes"]["count"] == 2 * (1 + 3)
    assert _comms(r) == Counter({"forkloop": 2, "hello": 6})


#: Sizes small enough for exact granularity, page by page.
TINY: dict[str, dict[str, Any]] = {
    "forkstorm": {"loopers": 2, "iterations": 3, "looper_heap_pages": 16},
    "bigexit": {"big_gib": 0.001, "workers": 2, "job_ms": 1.0, "big_user_ms": 3.0},
    "threads": {"servers": 1, "threads": 3, "server_ms": 3.0, "churn_threads": 4, "pool": 2},
    "shm": {"groups": 2, "sharers": 2, "segment_pages": 16, "user_ms": 1.0},
    "configure": {"steps": 8},
}


@pytest.mark.parametrize("name", list(TINY))
def test_exact_and_range_granularity_do_the_same_work(name: str) -> None:
    """design.md "Granularity is a knob": every generator touches whole runs, so page
    by page and run by run make the same processes, allocate and free the same pages
    and copy the same pages on write."""

    def work(granularity: str) -> tuple[int, ...]:
        cfg = SimConfig(
            policy="purge+pmap_purge",
            arch="arm64",
            cpus=2,
            workload=name,
            granularity=granularity,
            workload_params=TINY[name],
        )
        r = simulate(cfg)
        m = r["memory"]
        return (
            r["processes"]["count"],
            m["pages_allocated"],
            m["pages_freed"],
            r["vm"]["cow_copies"],
        )

    assert work("exact") == work("range")
